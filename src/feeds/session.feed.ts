import type { Actor } from '../domain/actor.js';
import type { Db } from '../domain/db.js';
import { type FeedEvent, streams } from '../domain/feed/feed.repository.js';
import { encodeResumeToken } from '../domain/feed/feed.token.js';
import {
  fromJson,
  type ParticipantRecord,
  type SessionRecord,
  type SessionView,
} from '../domain/session/session.repository.js';
import type { SessionService } from '../domain/session/session.service.js';
import type { FeedHub, Prepared } from './hub.js';
import { seqLog } from './logs.js';
import { type FeedOutput, watch } from './watch.js';

/** What a session feed delivers: the session after a change, or one participant after a change. */
export type SessionFeedItem =
  | { readonly kind: 'session_changed'; readonly session: SessionView }
  | { readonly kind: 'participant_changed'; readonly participant: ParticipantRecord };

/** The session or participant as the event kept it (its snapshot); the same for every subscriber. */
function prepare(_em: unknown, _tenantId: string, events: readonly FeedEvent[]): Promise<Prepared<SessionFeedItem>[]> {
  return Promise.resolve(
    events.map((event) => {
      const snapshot = event.snapshot;
      if (!snapshot) throw new Error(`feed event ${event.stream}#${event.seq}: snapshot missing`);
      const shared: SessionFeedItem =
        event.kind === 'participant_changed'
          ? { kind: 'participant_changed', participant: fromJson<ParticipantRecord>(snapshot) }
          : {
              kind: 'session_changed',
              session: {
                session: fromJson<SessionRecord>(snapshot.session as Record<string, unknown>),
                participants: (snapshot.participants as Record<string, unknown>[]).map((p) =>
                  fromJson<ParticipantRecord>(p),
                ),
              },
            };
      return { event, shared };
    }),
  );
}

/**
 * WatchSession: a session's state and waiting-room changes, for those who see the session (participants
 * in any admit_state, staff, service: nobody loses sight of a session, so no stream is ended for access).
 * Without a resume token the first event is the session as it is, read in one snapshot with the feed's
 * head, so the live events that follow start exactly after it.
 */
export async function watchSession(
  hub: FeedHub,
  sessions: SessionService,
  actor: Actor,
  db: Db & { readonly signal: AbortSignal; readonly expiresAt: Date },
  input: { sessionId: string; resumeToken: string; heartbeatMs: number },
): Promise<AsyncIterable<FeedOutput<SessionFeedItem>>> {
  let resumeToken = input.resumeToken;
  let first: FeedOutput<SessionFeedItem> | undefined;
  let sessionId: string;
  if (resumeToken === '') {
    const { view, head } = await sessions.snapshot(actor, db, input.sessionId);
    sessionId = view.session.sessionId;
    resumeToken = encodeResumeToken(streams.session(sessionId), head);
    first = {
      type: 'event',
      resumeToken,
      occurredAt: view.session.updatedAt,
      item: { kind: 'session_changed', session: view },
    };
  } else {
    // Refuses an invalid id, an unknown or invisible session before anything streams.
    sessionId = (await sessions.get(actor, db, input.sessionId)).session.sessionId;
  }
  const stream = streams.session(sessionId);
  const feed = watch<SessionFeedItem, FeedEvent, number, SessionFeedItem>({
    hub,
    tenantId: actor.tenantId,
    stream,
    log: (sub) => seqLog(hub, actor.tenantId, stream, prepare as never, sub),
    resumeToken,
    present: (_em, batch) => Promise.resolve(batch.map(({ shared }) => ({ item: shared, shared: true }))),
    signal: db.signal,
    heartbeatMs: input.heartbeatMs,
    expiresAt: db.expiresAt,
  });
  return first ? prepend(first, feed) : feed;
}

async function* prepend<T>(first: T, rest: AsyncIterable<T>): AsyncIterable<T> {
  yield first;
  yield* rest;
}
