import { ResyncRequired } from '../domain/feed/feed.errors.js';
import { type FeedEvent, FeedRepository, type InboxEvent, type InboxPosition } from '../domain/feed/feed.repository.js';
import { decodeResumeToken, encodeResumeToken } from '../domain/feed/feed.token.js';
import type { FeedHub, Prepare, Prepared, Revise, Subscription } from './hub.js';
import type { FeedLog } from './watch.js';

/**
 * A thread's or session's log: gapless sequence numbers in commit order (feed_stream.head). The
 * replica's tail reads and prepares new events once for all its subscribers and caches the latest.
 */
export function seqLog<S>(
  hub: FeedHub,
  tenantId: string,
  stream: string,
  prepare: Prepare<S>,
  sub: Subscription<S>,
  revise?: Revise<S>,
): FeedLog<S, FeedEvent, number> {
  return {
    async open(resumeToken) {
      const raw = decodeResumeToken(resumeToken, stream, /^\d{1,15}$/);
      const start = raw === undefined ? undefined : Number(raw);
      const { head, prunedThrough } = await new FeedRepository(hub.fork()).head(tenantId, stream);
      sub.tail.start(head, prepare, revise);
      if (start !== undefined && start > head) throw new ResyncRequired('the token is not from this feed');
      if (start !== undefined && start < prunedThrough) throw new ResyncRequired('events after the token were pruned');
      return { cursor: start ?? head, end: head };
    },
    async read(after) {
      const em = hub.fork();
      const events = await new FeedRepository(em).after(tenantId, stream, after, hub.opts.pageSize);
      return { batch: await prepare(em, tenantId, events), pending: false };
    },
    cached: (after) => sub.tail.after(after),
    positionAfter(cursor, event) {
      // Numbers are gapless: a jump means retention deleted events this subscriber has not seen.
      if (event.seq !== cursor + 1) throw new ResyncRequired('events after the token were pruned');
      return event.seq;
    },
    before: (a, b) => a < b,
    token: (seq) => encodeResumeToken(stream, seq),
  };
}

/** An inbox position as a token writes it: `<xid, 20 digits>:<thread uuid>`. */
const INBOX_POSITION = /^\d{20}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * A user's inbox log: events stamped with their transaction id, read only below the oldest transaction
 * still running (see migration 20261129060000), so none can appear later behind a reader's cursor.
 * Subscribers read it themselves (an inbox has few subscribers); the tail only wakes them.
 */
export function inboxLog(
  hub: FeedHub,
  tenantId: string,
  userId: string,
  stream: string,
  sub: Subscription<undefined>,
): FeedLog<undefined, InboxEvent, InboxPosition> {
  sub.tail.startWakeOnly();
  return {
    async open(resumeToken) {
      const start = decodeResumeToken(resumeToken, stream, INBOX_POSITION);
      const { frontier, pruned, nextXid } = await new FeedRepository(hub.fork()).inboxFrontier(tenantId, userId);
      if (start !== undefined) {
        if (BigInt(start.slice(0, 20)) >= nextXid) throw new ResyncRequired('the token is not from this feed');
        if (pruned !== undefined && start < pruned) throw new ResyncRequired('events after the token were pruned');
      }
      return { cursor: start ?? frontier, end: frontier };
    },
    async read(after) {
      const { events, pending, pruned } = await new FeedRepository(hub.fork()).inboxAfter(
        tenantId,
        userId,
        after,
        hub.opts.pageSize,
      );
      if (pruned) throw new ResyncRequired('events after the token were pruned');
      return { batch: events.map((event): Prepared<undefined, InboxEvent> => ({ event, shared: undefined })), pending };
    },
    cached: () => undefined,
    positionAfter: (_cursor, event) => event.position,
    before: (a, b) => a < b,
    token: (position) => encodeResumeToken(stream, position),
  };
}
