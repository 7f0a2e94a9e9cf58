import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDate } from '../db.js';
import { position, type MessagePosition } from '../message/message.entity.js';

/** A message the caller is about to mark read, with what the upsert needs of it. */
export interface MarkTarget {
  readonly messageId: string;
  readonly threadId: string;
  readonly seq: number;
  readonly sentAt: Date;
  /** The read time for this message: the requested one, clamped to [sent_at, server now]. */
  readonly readAt: Date;
}

/**
 * Where a mark moves a reader's watermark in one thread: to `seq` (never backwards), and, for
 * MarkThreadRead, `completeSeq` (receipts exist for everything by others up to it; 0 = unchanged).
 */
export interface WatermarkMove {
  readonly threadId: string;
  readonly seq: number;
  readonly messageId: string;
  readonly sentAt: Date;
  readonly completeSeq: number;
}

/** A stored receipt. */
export interface ReceiptRecord {
  readonly messageId: string;
  readonly threadId: string;
  readonly userId: string;
  readonly readAt: Date;
}

/** A reader's watermark in a thread, with its unread count. */
export interface WatermarkRecord {
  readonly threadId: string;
  readonly userId: string;
  readonly readUpTo: MessagePosition | undefined;
  readonly unreadCount: number;
}

/** A message the caller asked about, whether it may mark it, and its position. */
export interface MessageForMark {
  readonly messageId: string;
  readonly threadId: string;
  readonly seq: number;
  readonly sentAt: Date;
  readonly member: boolean;
}

/**
 * Database access for read receipts (LWW on (message_id, user_id)) and watermarks (never backwards).
 * Arrays travel as JSON (`jsonb_to_recordset`), since MikroORM expands array parameters into lists.
 */
export class ReadReceiptRepository {
  constructor(private readonly em: EntityManager) {}

  /** The messages among `ids` that exist in the tenant, each with whether `userId` takes part in its thread. */
  async messagesForMark(tenantId: string, userId: string, ids: readonly string[]): Promise<MessageForMark[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select m.message_id, m.thread_id, m.seq, m.sent_at,
              exists (select 1 from thread_participant p
                       where p.tenant_id = m.tenant_id and p.thread_id = m.thread_id and p.user_id = ?) as member
         from message m
        where m.tenant_id = ? and m.message_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))`,
      [userId, tenantId, JSON.stringify(ids)],
    );
    return rows.map((r) => ({
      messageId: r.message_id as string,
      threadId: r.thread_id as string,
      seq: Number(r.seq),
      sentAt: sqlDate(r.sent_at),
      member: r.member === true,
    }));
  }

  /**
   * Messages by others than `userId` up to `upToSeq` that MarkThreadRead has not covered yet: those
   * after the reader's `complete_seq` (not after its watermark, which MarkRead of a later message may
   * have moved past messages without receipts).
   */
  async unreadRange(
    tenantId: string,
    threadId: string,
    userId: string,
    upToSeq: number,
  ): Promise<{ messageId: string; seq: number; sentAt: Date }[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select m.message_id, m.seq, m.sent_at
         from message m
        where m.tenant_id = ? and m.thread_id = ? and m.sender_user_id <> ? and m.seq <= ?
          and m.seq > coalesce((select w.complete_seq from read_watermark w
                                 where w.tenant_id = ? and w.thread_id = ? and w.user_id = ?), 0)
        order by m.seq`,
      [tenantId, threadId, userId, upToSeq, tenantId, threadId, userId],
    );
    return rows.map((r) => ({ messageId: r.message_id as string, seq: Number(r.seq), sentAt: sqlDate(r.sent_at) }));
  }

  /**
   * Marks `targets` read by `userId` and moves the watermark of each thread to the furthest of them (or
   * to `watermarks`' positions), in one statement: receipts keep the latest read_at ever reported
   * (`ON CONFLICT … DO UPDATE … WHERE excluded.read_at > current`), watermarks only move forward. Rows
   * are locked in key order, so concurrent marks cannot deadlock. Returns the converged receipts and how
   * many were inserted or moved later.
   */
  async mark(
    tenantId: string,
    userId: string,
    targets: readonly MarkTarget[],
    watermarks: readonly WatermarkMove[],
    now: Date,
  ): Promise<{ receipts: ReceiptRecord[]; changed: number }> {
    const input = [...targets]
      .sort((a, b) => (a.messageId < b.messageId ? -1 : 1))
      .map((t) => ({ message_id: t.messageId, thread_id: t.threadId, seq: t.seq, read_at: t.readAt.toISOString() }));
    const marks = [...watermarks]
      .sort((a, b) => (a.threadId < b.threadId ? -1 : 1))
      .map((w) => ({
        thread_id: w.threadId,
        seq: w.seq,
        message_id: w.messageId,
        sent_at: w.sentAt.toISOString(),
        complete_seq: w.completeSeq,
      }));
    const rows: Record<string, unknown>[] = await this.em.execute(
      `with input as (
         select * from jsonb_to_recordset(?::jsonb) as i(message_id uuid, thread_id uuid, seq integer, read_at timestamptz)
       ), upserted as (
         insert into read_receipt as r (tenant_id, message_id, user_id, thread_id, seq, read_at)
         select ?, message_id, ?, thread_id, seq, read_at from input order by message_id
         on conflict (tenant_id, message_id, user_id) do update set read_at = excluded.read_at
           where r.read_at < excluded.read_at
         returning r.message_id, r.read_at
       ), marks as (
         insert into read_watermark as w
                (tenant_id, thread_id, user_id, seq, message_id, sent_at, complete_seq, updated_at)
         select ?, thread_id, ?, seq, message_id, sent_at, complete_seq, ?
           from jsonb_to_recordset(?::jsonb)
                as m(thread_id uuid, seq integer, message_id uuid, sent_at timestamptz, complete_seq integer)
          order by thread_id
         on conflict (tenant_id, thread_id, user_id) do update
           set seq = greatest(w.seq, excluded.seq),
               message_id = case when excluded.seq > w.seq then excluded.message_id else w.message_id end,
               sent_at = case when excluded.seq > w.seq then excluded.sent_at else w.sent_at end,
               complete_seq = greatest(w.complete_seq, excluded.complete_seq),
               updated_at = excluded.updated_at
           where w.seq < excluded.seq or w.complete_seq < excluded.complete_seq
       )
       select i.message_id, i.thread_id, u.read_at as changed_read_at, r.read_at as stored_read_at
         from input i
         left join upserted u on u.message_id = i.message_id
         left join read_receipt r on r.tenant_id = ? and r.message_id = i.message_id and r.user_id = ?`,
      [JSON.stringify(input), tenantId, userId, tenantId, userId, now, JSON.stringify(marks), tenantId, userId],
    );
    let changed = 0;
    const receipts: ReceiptRecord[] = [];
    const unseen: string[] = [];
    for (const r of rows) {
      if (r.changed_read_at !== null) changed++;
      const readAt = r.changed_read_at ?? r.stored_read_at;
      // A row a concurrent call inserted after this statement's snapshot: read it back below.
      if (readAt === null) unseen.push(r.message_id as string);
      else
        receipts.push({
          messageId: r.message_id as string,
          threadId: r.thread_id as string,
          userId,
          readAt: sqlDate(readAt),
        });
    }
    if (unseen.length > 0) receipts.push(...(await this.receiptsOf(tenantId, userId, unseen)));
    return { receipts, changed };
  }

  /** The caller's stored receipts for `ids`. */
  async receiptsOf(tenantId: string, userId: string, ids: readonly string[]): Promise<ReceiptRecord[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select message_id, thread_id, read_at from read_receipt
        where tenant_id = ? and user_id = ? and message_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))`,
      [tenantId, userId, JSON.stringify(ids)],
    );
    return rows.map((r) => ({
      messageId: r.message_id as string,
      threadId: r.thread_id as string,
      userId,
      readAt: sqlDate(r.read_at),
    }));
  }

  /**
   * `userId`'s watermark and unread count in each of `threadIds`. Unread = messages after the watermark
   * (the thread's dense seq makes that a subtraction) minus the reader's own messages after it (an index
   * range over its own rows, `message_by_sender`): no scan of the thread.
   */
  async watermarks(tenantId: string, userId: string, threadIds: readonly string[]): Promise<WatermarkRecord[]> {
    if (threadIds.length === 0) return [];
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select t.thread_id, w.seq, w.message_id, w.sent_at,
              (t.message_seq - coalesce(w.seq, 0))
              - (select count(*) from message m
                  where m.tenant_id = t.tenant_id and m.thread_id = t.thread_id and m.sender_user_id = ?
                    and m.seq > coalesce(w.seq, 0)) as unread
         from thread t
         left join read_watermark w on w.tenant_id = t.tenant_id and w.thread_id = t.thread_id and w.user_id = ?
        where t.tenant_id = ? and t.thread_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))`,
      [userId, userId, tenantId, JSON.stringify(threadIds)],
    );
    return rows.map((r) => ({
      threadId: r.thread_id as string,
      userId,
      readUpTo:
        r.seq === null
          ? undefined
          : position(r.thread_id as string, Number(r.seq), r.message_id as string, sqlDate(r.sent_at)),
      unreadCount: Number(r.unread),
    }));
  }

  /** A page of a thread's receipts ordered by (seq, user_id), after the position `after`. */
  async list(
    tenantId: string,
    threadId: string,
    messageIds: readonly string[] | undefined,
    after: { seq: number; userId: string } | undefined,
    limit: number,
  ): Promise<(ReceiptRecord & { seq: number })[]> {
    const params: unknown[] = [tenantId, threadId];
    let where = '';
    if (messageIds) {
      where += ' and message_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))';
      params.push(JSON.stringify(messageIds));
    }
    if (after) {
      where += ' and (seq, user_id) > (?, ?)';
      params.push(after.seq, after.userId);
    }
    params.push(limit + 1);
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select message_id, thread_id, user_id, seq, read_at from read_receipt
        where tenant_id = ? and thread_id = ?${where}
        order by seq, user_id limit ?`,
      params,
    );
    return rows.map((r) => ({
      messageId: r.message_id as string,
      threadId: r.thread_id as string,
      userId: r.user_id as string,
      seq: Number(r.seq),
      readAt: sqlDate(r.read_at),
    }));
  }
}
