import type { EntityManager } from '@mikro-orm/postgresql';
import { Unauthenticated, type DomainError } from '../domain/errors.js';
import { FeedShuttingDown, ResyncRequired } from '../domain/feed/feed.errors.js';
import { FeedRepository } from '../domain/feed/feed.repository.js';
import { decodeResumeToken, encodeResumeToken } from '../domain/feed/feed.token.js';
import type { FeedHub, Prepare, Prepared } from './hub.js';

/**
 * One event as a subscriber receives it; `endAfter` ends the stream with that error once it is sent.
 * `shared`: the item is the same for every subscriber of the stream (the event's prepared part), so its
 * output is built once per event and replica, and the rpc layer can encode it once.
 */
export interface Presented<Item> {
  readonly item: Item;
  readonly endAfter?: DomainError;
  readonly shared?: boolean;
}

/** The outputs of shared events, by prepared event: one object for all subscribers on this replica. */
const sharedOutputs = new WeakMap<object, FeedOutput<unknown>>();

/** What a feed stream yields: events, the caught-up marker, heartbeats; each with its resume token. */
export type FeedOutput<Item> =
  | { readonly type: 'event'; readonly resumeToken: string; readonly occurredAt: Date; readonly item: Item }
  | { readonly type: 'caught_up'; readonly resumeToken: string; readonly at: Date }
  | { readonly type: 'heartbeat'; readonly resumeToken: string; readonly at: Date };

export interface WatchOptions<S, Item> {
  readonly hub: FeedHub;
  readonly tenantId: string;
  readonly stream: string;
  /** The client's resume token ('' = start live). */
  readonly resumeToken: string;
  readonly prepare: Prepare<S>;
  /**
   * Renders prepared events for this subscriber (one output per event, in order); `em` forks an
   * EntityManager for the reads it needs, if any.
   */
  readonly present: (em: () => EntityManager, batch: readonly Prepared<S>[]) => Promise<Presented<Item>[]>;
  readonly signal: AbortSignal;
  readonly heartbeatMs: number;
  /** When the caller's token expires: the stream ends with UNAUTHENTICATED then. */
  readonly expiresAt: Date;
}

/** setTimeout's longest delay. */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * A live feed as an async iterable: replays the events after the resume token from the log, yields the
 * caught-up marker, then follows the stream live, with heartbeats while idle. The cursor moves only by
 * sequence number, so the seam between replay and live has no gap and no duplicate. Ends (returns) when
 * the client goes away; throws to end the stream with a status: UNAVAILABLE on shutdown, UNAUTHENTICATED
 * when the caller's token expires, or the error an event carries (e.g. access revoked).
 */
export async function* watch<S, Item>(o: WatchOptions<S, Item>): AsyncGenerator<FeedOutput<Item>, void, undefined> {
  const start = decodeResumeToken(o.resumeToken, o.stream);
  const sub = o.hub.join(o.tenantId, o.stream, o.prepare);
  let expired = false;
  const expiry = setTimeout(
    () => {
      expired = true;
      sub.notify();
    },
    Math.min(Math.max(o.expiresAt.getTime() - Date.now(), 0), MAX_TIMER_MS),
  );
  const onAbort = () => sub.notify();
  o.signal.addEventListener('abort', onAbort);
  const { pageSize } = o.hub.opts;
  const token = (seq: number) => encodeResumeToken(o.stream, seq);
  /** False when the stream must stop now: returns on abort, throws on shutdown or expiry. */
  const check = () => {
    if (o.signal.aborted) return false;
    if (sub.closed) throw new FeedShuttingDown();
    if (expired) throw new Unauthenticated('token expired; subscribe again with a fresh token and the resume token');
    return true;
  };
  const read = async (after: number) => {
    const em = o.hub.fork();
    const events = await new FeedRepository(em).after(o.tenantId, o.stream, after, pageSize);
    return o.prepare(em, o.tenantId, events);
  };

  try {
    const { head, prunedThrough } = await new FeedRepository(o.hub.fork()).head(o.tenantId, o.stream);
    sub.tail.start(head);
    if (start !== undefined && start > head) throw new ResyncRequired('the token is not from this feed');
    if (start !== undefined && start < prunedThrough) throw new ResyncRequired('events after the token were pruned');
    let cursor = start ?? head;

    // Yields a batch's events for this subscriber; advances the cursor past each one sent.
    const emit = async function* (batch: readonly Prepared<S>[]) {
      // Numbers are gapless: a jump means retention deleted events this subscriber has not seen.
      if (batch[0]!.event.seq !== cursor + 1) throw new ResyncRequired('events after the token were pruned');
      let em: EntityManager | undefined;
      const presented = await o.present(() => (em ??= o.hub.fork()), batch);
      for (const [i, p] of presented.entries()) {
        if (!check()) return;
        const prepared = batch[i]!;
        const { event } = prepared;
        let out = p.shared ? (sharedOutputs.get(prepared) as FeedOutput<Item> | undefined) : undefined;
        if (!out) {
          out = { type: 'event', resumeToken: token(event.seq), occurredAt: event.occurredAt, item: p.item };
          if (p.shared) sharedOutputs.set(prepared, out);
        }
        yield out;
        cursor = event.seq;
        if (p.endAfter) throw p.endAfter;
      }
    };

    // The backlog: everything committed before this subscription started.
    while (cursor < head && check()) {
      const batch = await read(cursor);
      if (batch.length === 0) break;
      yield* emit(batch);
    }
    if (!check()) return;
    yield { type: 'caught_up', resumeToken: token(cursor), at: new Date() };

    // Live.
    while (check()) {
      const batch = sub.tail.after(cursor) ?? (await read(cursor));
      if (batch.length > 0) {
        yield* emit(batch);
        continue;
      }
      if (!(await sub.wait(o.heartbeatMs)) && check()) {
        yield { type: 'heartbeat', resumeToken: token(cursor), at: new Date() };
      }
    }
  } finally {
    clearTimeout(expiry);
    o.signal.removeEventListener('abort', onAbort);
    sub.leave();
  }
}
