import type { EntityManager } from '@mikro-orm/postgresql';
import { pgArray, sqlDate } from '../db.js';
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

/** A message a refused MarkRead found, and whether the caller takes part in its thread. */
export interface MessageForMark {
  readonly messageId: string;
  readonly threadId: string;
  readonly member: boolean;
}

/**
 * Database access for read receipts (LWW on (message_id, user_id)) and watermarks (never backwards).
 * Arrays travel as JSON (`jsonb_to_recordset`), since MikroORM expands array parameters into lists.
 */
export class ReadReceiptRepository {
  constructor(private readonly em: EntityManager) {}

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
   * MarkRead in one round trip (`comms_mark_read`, migration 20261129040000): looks the messages up
   * with the caller's membership and, only when every one exists and the caller takes part in its
   * thread, writes the receipts (`readAt` raised to each message's sent_at) and moves each thread's
   * watermark to the furthest of them. Returns what it found (for the caller to explain a refusal;
   * nothing is written then), the converged receipts, and the watermarks after the call with their
   * unread counts.
   */
  async markMessages(
    tenantId: string,
    userId: string,
    ids: readonly string[],
    readAt: Date,
    now: Date,
  ): Promise<
    { refused: MessageForMark[] } | { refused: undefined; receipts: ReceiptRecord[]; watermarks: WatermarkRecord[] }
  > {
    const rows: Record<string, unknown>[] = await this.em.execute(
      'select comms_mark_read(?, ?, ?::uuid[], ?::timestamptz, ?::timestamptz) as r',
      [tenantId, userId, pgArray(ids), readAt, now],
    );
    const result = rows[0]!.r as {
      found: Record<string, unknown>[];
      receipts?: Record<string, unknown>[];
      watermarks?: Record<string, unknown>[];
    };
    if (!result.receipts || !result.watermarks) {
      return {
        refused: result.found.map((r) => ({
          messageId: r.message_id as string,
          threadId: r.thread_id as string,
          member: r.member === true,
        })),
      };
    }
    return {
      refused: undefined,
      receipts: (await this.#converged(tenantId, userId, result.receipts)).receipts,
      watermarks: result.watermarks.map((w) => ({
        threadId: w.thread_id as string,
        userId,
        readUpTo: position(w.thread_id as string, Number(w.seq), w.message_id as string, sqlDate(w.sent_at)),
        unreadCount: Number(w.unread),
      })),
    };
  }

  /**
   * Writes receipts for `targets` and moves watermarks as `moves` say (`comms_mark`; MarkThreadRead).
   * Receipts keep the latest read_at ever reported, watermarks only move forward. Returns the
   * converged receipts and how many were inserted or moved later.
   */
  async mark(
    tenantId: string,
    userId: string,
    targets: readonly MarkTarget[],
    moves: readonly WatermarkMove[],
    now: Date,
  ): Promise<{ receipts: ReceiptRecord[]; changed: number }> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from comms_mark(?, ?, ?::uuid[], ?::uuid[], ?::integer[], ?::timestamptz[],
                                ?::uuid[], ?::integer[], ?::uuid[], ?::timestamptz[], ?::integer[], ?::timestamptz)`,
      [
        tenantId,
        userId,
        pgArray(targets.map((t) => t.messageId)),
        pgArray(targets.map((t) => t.threadId)),
        pgArray(targets.map((t) => t.seq)),
        pgArray(targets.map((t) => t.readAt.toISOString())),
        pgArray(moves.map((m) => m.threadId)),
        pgArray(moves.map((m) => m.seq)),
        pgArray(moves.map((m) => m.messageId)),
        pgArray(moves.map((m) => m.sentAt.toISOString())),
        pgArray(moves.map((m) => m.completeSeq)),
        now,
      ],
    );
    return this.#converged(tenantId, userId, rows);
  }

  /** Receipts from comms_mark's rows; a row a concurrent call inserted after its snapshot is read back. */
  async #converged(
    tenantId: string,
    userId: string,
    rows: Record<string, unknown>[],
  ): Promise<{ receipts: ReceiptRecord[]; changed: number }> {
    let changed = 0;
    const receipts: ReceiptRecord[] = [];
    const unseen: string[] = [];
    for (const r of rows) {
      if (r.changed_read_at !== null) changed++;
      const readAt = r.changed_read_at ?? r.stored_read_at;
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
