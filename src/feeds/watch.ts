import type { EntityManager } from '@mikro-orm/postgresql';
import { Unauthenticated, type DomainError } from '../domain/errors.js';
import { FeedShuttingDown } from '../domain/feed/feed.errors.js';
import type { FeedHub, Prepared, Subscription } from './hub.js';

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

/** What a feed stream yields: events, the caught-up marker, heartbeats; each with its resume token. */
export type FeedOutput<Item> =
  | { readonly type: 'event'; readonly resumeToken: string; readonly occurredAt: Date; readonly item: Item }
  | { readonly type: 'caught_up'; readonly resumeToken: string; readonly at: Date }
  | { readonly type: 'heartbeat'; readonly resumeToken: string; readonly at: Date };

/**
 * A stream's log as one subscriber reads it (src/feeds/logs.ts: sequence-numbered thread and session
 * streams, commit-visibility inboxes). Positions are opaque to the loop; it only compares them.
 */
export interface FeedLog<S, E extends { readonly occurredAt: Date }, P> {
  /**
   * Starts a subscription at the resume token's position (validated: RESYNC_REQUIRED when it cannot be
   * replayed, INVALID_ARGUMENT when it is not a token of this stream) or, without one, at the log's end.
   * `end`: where the backlog of events committed before this moment ends.
   */
  open(resumeToken: string): Promise<{ cursor: P; end: P }>;
  /** Up to a page of prepared events after `after`; `pending`: more exist that cannot be read yet. */
  read(after: P): Promise<{ batch: readonly Prepared<S, E>[]; pending: boolean }>;
  /** What this replica already holds after `after` ([] = nothing newer, undefined = read the log). */
  cached(after: P): readonly Prepared<S, E>[] | undefined;
  /** The position of an event; throws RESYNC_REQUIRED when it cannot follow `cursor` (events pruned). */
  positionAfter(cursor: P, event: E): P;
  before(a: P, b: P): boolean;
  token(position: P): string;
}

export interface WatchOptions<S, E extends { readonly occurredAt: Date }, P, Item> {
  readonly hub: FeedHub;
  readonly tenantId: string;
  readonly stream: string;
  /** The log of the stream, read through this subscription. */
  readonly log: (sub: Subscription<S>) => FeedLog<S, E, P>;
  /** The client's resume token ('' = start live). */
  readonly resumeToken: string;
  /**
   * Renders prepared events for this subscriber (one output per event, in order); `em` forks an
   * EntityManager for the reads it needs, if any.
   */
  readonly present: (em: () => EntityManager, batch: readonly Prepared<S, E>[]) => Promise<Presented<Item>[]>;
  readonly signal: AbortSignal;
  readonly heartbeatMs: number;
  /** When the caller's token expires: the stream ends with UNAUTHENTICATED then. */
  readonly expiresAt: Date;
}

/** setTimeout's longest delay. */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * How soon to look again when events exist that an older running transaction keeps unreadable: soon at
 * first (a concurrent write about to commit), then backing off, so a transaction left open elsewhere on
 * the cluster does not turn every waiting inbox into a busy poll. A notification still wakes it at once.
 */
const PENDING_RETRY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000];

/** The outputs of shared events, by prepared event: one object for all subscribers on this replica. */
const sharedOutputs = new WeakMap<object, FeedOutput<unknown>>();

/**
 * A live feed as an async iterable: replays the events after the resume token from the log, yields the
 * caught-up marker, then follows the stream live, with heartbeats while idle. The cursor moves only by
 * position in the log, so the seam between replay and live has no gap and no duplicate. Ends (returns)
 * when the client goes away; throws to end the stream with a status: UNAVAILABLE on shutdown,
 * UNAUTHENTICATED when the caller's token expires, or the error an event carries (e.g. access revoked).
 */
export async function* watch<S, E extends { readonly occurredAt: Date }, P, Item>(
  o: WatchOptions<S, E, P, Item>,
): AsyncGenerator<FeedOutput<Item>, void, undefined> {
  const sub = o.hub.join<S>(o.tenantId, o.stream);
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
  /** False when the stream must stop now: returns on abort, throws on shutdown or expiry. */
  const check = () => {
    if (o.signal.aborted) return false;
    if (sub.closed) throw new FeedShuttingDown();
    if (expired) throw new Unauthenticated('token expired; subscribe again with a fresh token and the resume token');
    return true;
  };

  try {
    const log = o.log(sub);
    const opened = await log.open(o.resumeToken);
    let cursor = opened.cursor;

    // Yields a batch's events for this subscriber; advances the cursor past each one sent.
    const emit = async function* (batch: readonly Prepared<S, E>[]) {
      let em: EntityManager | undefined;
      const presented = await o.present(() => (em ??= o.hub.fork()), batch);
      for (const [i, p] of presented.entries()) {
        if (!check()) return;
        const prepared = batch[i]!;
        const position = log.positionAfter(cursor, prepared.event);
        let out = p.shared ? (sharedOutputs.get(prepared) as FeedOutput<Item> | undefined) : undefined;
        if (!out) {
          out = {
            type: 'event',
            resumeToken: log.token(position),
            occurredAt: prepared.event.occurredAt,
            item: p.item,
          };
          if (p.shared) sharedOutputs.set(prepared, out);
        }
        yield out;
        cursor = position;
        if (p.endAfter) throw p.endAfter;
      }
    };

    // The backlog: everything committed before this subscription started.
    while (log.before(cursor, opened.end) && check()) {
      const { batch } = await log.read(cursor);
      if (batch.length === 0) break;
      yield* emit(batch);
    }
    if (!check()) return;
    yield { type: 'caught_up', resumeToken: log.token(cursor), at: new Date() };

    // Live. A heartbeat goes out whenever nothing was sent for heartbeatMs.
    let retries = 0;
    let lastSent = Date.now();
    while (check()) {
      const cached = log.cached(cursor);
      const { batch, pending } = cached ? { batch: cached, pending: false } : await log.read(cursor);
      if (batch.length > 0) {
        retries = 0;
        yield* emit(batch);
        lastSent = Date.now();
        continue;
      }
      const idleFor = o.heartbeatMs - (Date.now() - lastSent);
      // Committed but an older transaction still runs: look again soon (it may never notify).
      const waitMs = pending ? PENDING_RETRY_MS[Math.min(retries++, PENDING_RETRY_MS.length - 1)]! : o.heartbeatMs;
      if (!pending) retries = 0;
      await sub.wait(Math.max(0, Math.min(waitMs, idleFor)));
      if (Date.now() - lastSent >= o.heartbeatMs && check()) {
        yield { type: 'heartbeat', resumeToken: log.token(cursor), at: new Date() };
        lastSent = Date.now();
      }
    }
  } finally {
    clearTimeout(expiry);
    o.signal.removeEventListener('abort', onAbort);
    sub.leave();
  }
}
