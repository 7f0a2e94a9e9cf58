import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDate } from '../db.js';
import type { ThreadSnapshot } from '../thread/thread.snapshot.js';

/** The kinds of event the log holds (feed_event.kind). */
export type FeedEventKind =
  | 'message_posted'
  | 'message_retracted'
  | 'receipts_updated'
  | 'thread_changed'
  | 'thread_updated'
  | 'thread_removed'
  | 'session_changed'
  | 'participant_changed';

/** One event to append: which stream, what happened, and the ids the feed reads when it delivers. */
export interface NewFeedEvent {
  readonly stream: string;
  readonly kind: FeedEventKind;
  readonly aggregate_id: string;
  readonly message_id?: string;
  readonly user_id?: string;
  readonly message_ids?: readonly string[];
  /** What a change event delivers, as JSON: the thread (ThreadSnapshot), the session, the participant. */
  readonly snapshot?: ThreadSnapshot | Record<string, unknown>;
}

/** A stored event. */
export interface FeedEvent {
  readonly stream: string;
  readonly seq: number;
  readonly kind: FeedEventKind;
  readonly aggregateId: string;
  readonly messageId: string | null;
  readonly userId: string | null;
  readonly messageIds: readonly string[];
  readonly snapshot: Record<string, unknown> | null;
  readonly occurredAt: Date;
}

/** A stream's position: its last sequence number, and up to where old events were pruned. */
export interface StreamHead {
  readonly head: number;
  readonly prunedThrough: number;
}

/**
 * A position in an inbox: (transaction id, thread id) as one string that sorts like the pair
 * (`<xid, 20 digits>:<uuid>`).
 */
export type InboxPosition = string;

const NO_THREAD = '00000000-0000-0000-0000-000000000000';

export function inboxPosition(xid: string, threadId = NO_THREAD): InboxPosition {
  return `${xid.padStart(20, '0')}:${threadId}`;
}

function inboxParts(position: InboxPosition): [string, string] {
  const at = position.indexOf(':');
  return [String(BigInt(position.slice(0, at))), position.slice(at + 1)];
}

/** One inbox event: the thread changed for that user (in some transaction, committed). */
export interface InboxEvent {
  readonly position: InboxPosition;
  readonly threadId: string;
  readonly occurredAt: Date;
}

/** Stream keys: one feed per thread, per user's inbox, per virtual session. */
export const streams = {
  thread: (threadId: string) => `t:${threadId}`,
  inbox: (userId: string) => `u:${userId}`,
  session: (sessionId: string) => `s:${sessionId}`,
};

/** The inbox events telling `userIds` that a thread changed (or, `thread_removed`, that they left it). */
export function inboxEvents(
  threadId: string,
  userIds: readonly string[],
  kind: 'thread_updated' | 'thread_removed' = 'thread_updated',
): NewFeedEvent[] {
  return userIds.map((u) => ({ stream: streams.inbox(u), kind, aggregate_id: threadId }));
}

/**
 * The events a change to a thread's metadata appends: thread_changed (naming the participant it removed,
 * if any, so that participant's feed ends exactly there), and each inbox as it is affected.
 */
export function threadChangeEvents(
  snapshot: ThreadSnapshot,
  participants: readonly string[],
  removed: readonly string[],
): NewFeedEvent[] {
  if (removed.length > 1) throw new Error('one thread change removes at most one participant');
  const threadId = snapshot.threadId as string;
  return [
    {
      stream: streams.thread(threadId),
      kind: 'thread_changed',
      aggregate_id: threadId,
      user_id: removed[0],
      snapshot,
    },
    ...inboxEvents(threadId, participants),
    ...inboxEvents(threadId, removed, 'thread_removed'),
  ];
}

/**
 * The feed event log (migration 20261129060000). Sends and marks append inside their own database
 * functions; other writers call `append` inside their transaction, as its last statement.
 */
export class FeedRepository {
  constructor(private readonly em: EntityManager) {}

  /** Appends events in one statement (`comms_feed_append`): numbers them and notifies listeners on commit. */
  async append(tenantId: string, events: readonly NewFeedEvent[], at: Date): Promise<void> {
    if (events.length === 0) return;
    await this.em.execute('select comms_feed_append(?, ?::jsonb, ?::timestamptz)', [
      tenantId,
      JSON.stringify(events),
      at,
    ]);
  }

  async head(tenantId: string, stream: string): Promise<StreamHead> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      'select head, pruned_through from feed_stream where tenant_id = ? and stream = ?',
      [tenantId, stream],
    );
    const row = rows[0];
    return row ? { head: Number(row.head), prunedThrough: Number(row.pruned_through) } : { head: 0, prunedThrough: 0 };
  }

  /** Up to `limit` events of a stream after `afterSeq`, in order. */
  async after(tenantId: string, stream: string, afterSeq: number, limit: number): Promise<FeedEvent[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select stream, seq, kind, aggregate_id, message_id, user_id, message_ids::text[] as message_ids, snapshot,
              occurred_at
         from feed_event where tenant_id = ? and stream = ? and seq > ? order by seq limit ?`,
      [tenantId, stream, afterSeq, limit],
    );
    return rows.map((r) => ({
      stream: r.stream as string,
      seq: Number(r.seq),
      kind: r.kind as FeedEventKind,
      aggregateId: r.aggregate_id as string,
      messageId: (r.message_id as string | null) ?? null,
      userId: (r.user_id as string | null) ?? null,
      messageIds: (r.message_ids as string[] | null) ?? [],
      snapshot: (r.snapshot as Record<string, unknown> | null) ?? null,
      occurredAt: sqlDate(r.occurred_at),
    }));
  }

  /**
   * Where an inbox's readable log ends now (every transaction before the oldest one still running has
   * ended), how far it was pruned, and the next transaction id (no valid position lies beyond it).
   */
  async inboxFrontier(
    tenantId: string,
    userId: string,
  ): Promise<{ frontier: InboxPosition; pruned: InboxPosition | undefined; nextXid: bigint }> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select pg_snapshot_xmin(s)::text as xmin, pg_snapshot_xmax(s)::text as xmax, p.xid::text as pruned_xid,
              p.thread_id as pruned_thread
         from pg_current_snapshot() s
         left join inbox_pruned p on p.tenant_id = ? and p.user_id = ?`,
      [tenantId, userId],
    );
    const r = rows[0]!;
    return {
      frontier: inboxPosition(r.xmin as string),
      pruned: r.pruned_xid === null ? undefined : inboxPosition(r.pruned_xid as string, r.pruned_thread as string),
      nextXid: BigInt(r.xmax as string),
    };
  }

  /**
   * Up to `limit` inbox events after `after` that are final (their transaction and every older one have
   * ended), in position order; `pending` when committed events exist after them that are not final yet
   * (an older transaction is still running: read again shortly); `pruned`: true when retention deleted
   * events after `after`.
   */
  async inboxAfter(
    tenantId: string,
    userId: string,
    after: InboxPosition,
    limit: number,
  ): Promise<{ events: InboxEvent[]; pending: boolean; pruned: boolean }> {
    const [xid, thread] = inboxParts(after);
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select e.xid::text as xid, e.thread_id, e.occurred_at,
              exists (select 1 from inbox_event p
                       where p.tenant_id = ? and p.user_id = ? and (p.xid, p.thread_id) > (?::xid8, ?::uuid)
                         and p.xid >= x.xmin) as pending,
              exists (select 1 from inbox_pruned d
                       where d.tenant_id = ? and d.user_id = ? and (d.xid, d.thread_id) > (?::xid8, ?::uuid)) as pruned
         from (select pg_snapshot_xmin(pg_current_snapshot()) as xmin) x
         left join lateral (
           select i.xid, i.thread_id, i.occurred_at from inbox_event i
            where i.tenant_id = ? and i.user_id = ? and (i.xid, i.thread_id) > (?::xid8, ?::uuid) and i.xid < x.xmin
            order by i.xid, i.thread_id limit ?
         ) e on true`,
      [tenantId, userId, xid, thread, tenantId, userId, xid, thread, tenantId, userId, xid, thread, limit],
    );
    return {
      events: rows
        .filter((r) => r.xid !== null)
        .map((r) => ({
          position: inboxPosition(r.xid as string, r.thread_id as string),
          threadId: r.thread_id as string,
          occurredAt: sqlDate(r.occurred_at),
        })),
      pending: rows[0]?.pending === true,
      pruned: rows[0]?.pruned === true,
    };
  }

  /** Deletes up to `limit` events that occurred before `before` (optionally of one tenant); returns how many. */
  async prune(before: Date, limit: number, tenantId?: string): Promise<number> {
    const rows: { n: number }[] = await this.em.execute('select comms_feed_prune(?::timestamptz, ?, ?) as n', [
      before,
      limit,
      tenantId ?? null,
    ]);
    return Number(rows[0]!.n);
  }
}
