import { LockMode, UniqueConstraintViolationException } from '@mikro-orm/core';
import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDateOrNull } from '../db.js';
import { FeedRepository, type NewFeedEvent } from '../feed/feed.repository.js';
import type { ThreadState } from './thread.entity.js';
import { Thread, ThreadParticipant, type ThreadView } from './thread.entity.js';

/** Keyset position in the caller's thread list: (last_activity_at, thread_id), both descending. */
export interface ThreadListPosition {
  readonly lastActivityAt: Date;
  readonly threadId: string;
}

/** What the message and receipt paths need to know of a thread, for one caller. */
export interface ThreadAccess {
  readonly state: ThreadState;
  /** The caller takes part in the thread. */
  readonly member: boolean;
  readonly messageSeq: number;
  readonly lastMessageId: string | null;
  readonly lastMessageAt: Date | null;
}

/**
 * The select list behind ThreadAccess, for a query over `thread t`; its one parameter is the caller's
 * user id. Shared with queries that read a thread's access together with other rows in one snapshot.
 */
export const THREAD_ACCESS_COLUMNS = `t.state, t.message_seq, t.last_message_id, t.last_message_at,
  exists (select 1 from thread_participant p
           where p.tenant_id = t.tenant_id and p.thread_id = t.thread_id and p.user_id = ?) as member`;

/** A row selected with THREAD_ACCESS_COLUMNS → ThreadAccess. */
export function threadAccessOf(row: Record<string, unknown>): ThreadAccess {
  return {
    state: row.state as ThreadState,
    member: row.member === true,
    messageSeq: Number(row.message_seq),
    lastMessageId: (row.last_message_id as string | null) ?? null,
    lastMessageAt: sqlDateOrNull(row.last_message_at),
  };
}

/**
 * Database access for the thread aggregate. Every query is scoped by tenant_id first, so another
 * tenant's rows cannot be reached from here at all.
 */
export class ThreadRepository {
  constructor(private readonly em: EntityManager) {}

  /** Loads a thread and its participants; with `forUpdate`, locks the thread row (FOR UPDATE). */
  async load(tenantId: string, threadId: string, forUpdate = false): Promise<ThreadView | undefined> {
    const thread = await this.em.findOne(
      Thread,
      { tenantId, threadId },
      forUpdate ? { lockMode: LockMode.PESSIMISTIC_WRITE } : {},
    );
    if (!thread) return undefined;
    const participants = await this.em.find(
      ThreadParticipant,
      { tenantId, threadId },
      { orderBy: { addedAt: 'asc', userId: 'asc' } },
    );
    return { thread, participants };
  }

  /**
   * The thread's state, message sequence and whether `userId` takes part, in one query; with
   * `forUpdate`, locks the thread row (the send path's serialization point).
   */
  async access(
    tenantId: string,
    threadId: string,
    userId: string,
    forUpdate = false,
  ): Promise<ThreadAccess | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${THREAD_ACCESS_COLUMNS} from thread t
        where t.tenant_id = ? and t.thread_id = ?${forUpdate ? ' for update of t' : ''}`,
      [userId, tenantId, threadId],
    );
    return rows[0] && threadAccessOf(rows[0]);
  }

  /** The thread a caller created with this idempotency key, if any. */
  async findByCreateRequest(tenantId: string, createdBy: string, requestId: string): Promise<ThreadView | undefined> {
    const thread = await this.em.findOne(Thread, { tenantId, createdBy, createRequestId: requestId });
    return thread ? this.load(tenantId, thread.threadId) : undefined;
  }

  /**
   * Inserts a new thread with its participants and appends `events` to the feeds, in one transaction.
   * Returns false when the create request id is already taken (the unique index decides, also across
   * replicas).
   */
  async insert(thread: Thread, participants: readonly ThreadParticipant[], events: NewFeedEvent[]): Promise<boolean> {
    try {
      await this.em.transactional(async (em) => {
        // No ORM relation links the two, so order the inserts for the foreign key ourselves.
        await em.persist(thread).flush();
        await em.persist(participants).flush();
        await new FeedRepository(em).append(thread.tenantId, events, thread.createdAt);
      });
      return true;
    } catch (err) {
      if (err instanceof UniqueConstraintViolationException && thread.createRequestId !== null) return false;
      throw err;
    }
  }

  /**
   * One page of the threads `userId` takes part in, most recent activity first, with their participants.
   * Returns up to `limit` views plus whether more follow.
   */
  async listForParticipant(
    tenantId: string,
    userId: string,
    state: ThreadState | undefined,
    after: ThreadListPosition | undefined,
    limit: number,
  ): Promise<{ views: ThreadView[]; more: boolean }> {
    const params: unknown[] = [tenantId, userId];
    let where = '';
    if (state) {
      params.push(state);
      where += ' and t.state = ?';
    }
    if (after) {
      params.push(after.lastActivityAt, after.threadId);
      where += ' and (t.last_activity_at, t.thread_id) < (?, ?::uuid)';
    }
    params.push(limit + 1);
    const rows: { thread_id: string }[] = await this.em.execute(
      `select t.thread_id from thread_participant tp
         join thread t on t.tenant_id = tp.tenant_id and t.thread_id = tp.thread_id
        where tp.tenant_id = ? and tp.user_id = ?${where}
        order by t.last_activity_at desc, t.thread_id desc
        limit ?`,
      params,
    );
    const ids = rows.slice(0, limit).map((r) => r.thread_id);
    return { views: await this.loadMany(tenantId, ids), more: rows.length > limit };
  }

  /** Threads with their participants, in the order of `ids`; ids without a thread are left out. */
  async loadMany(tenantId: string, ids: readonly string[]): Promise<ThreadView[]> {
    if (ids.length === 0) return [];
    const threads = await this.em.find(Thread, { tenantId, threadId: { $in: [...ids] } });
    const participants = await this.em.find(
      ThreadParticipant,
      { tenantId, threadId: { $in: [...ids] } },
      { orderBy: { addedAt: 'asc', userId: 'asc' } },
    );
    const byId = new Map(threads.map((t) => [t.threadId, t]));
    return ids.flatMap((id) => {
      const thread = byId.get(id);
      return thread ? [{ thread, participants: participants.filter((p) => p.threadId === id) }] : [];
    });
  }
}
