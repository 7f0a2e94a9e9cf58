import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDate, sqlDateOrNull, unpooled } from '../db.js';
import { THREAD_ACCESS_COLUMNS, type ThreadAccess, threadAccessOf } from '../thread/thread.repository.js';
import { FeedRepository, streams } from '../feed/feed.repository.js';

/** What a send asks to store; the statement assigns seq, sent_at and the final id under the lock. */
export interface NewMessage {
  readonly tenantId: string;
  readonly threadId: string;
  readonly userId: string;
  readonly clientMutationId: string;
  readonly body: string;
  readonly bodySha256: Buffer;
  readonly clientSentAt: Date | undefined;
  /** A fresh UUIDv7 for `now`; used unless the thread's last id is not below it. */
  readonly candidateId: string;
  readonly now: Date;
}

/** What the send did: see MessageRepository.appendOrFind. */
export interface AppendOutcome {
  readonly inserted: MessageRecord | undefined;
  readonly earlier: MessageRecord | undefined;
  readonly thread: Pick<ThreadAccess, 'state' | 'member'> | undefined;
}

/** A message's retraction (message_retraction row). */
export interface Retraction {
  readonly retractedBy: string;
  readonly byModerator: boolean;
  /** For auditors only. */
  readonly reason: string;
  readonly retractedAt: Date;
}

/** A stored message, as the use cases pass it around. */
export interface MessageRecord {
  readonly tenantId: string;
  readonly messageId: string;
  readonly threadId: string;
  readonly seq: number;
  readonly senderUserId: string;
  readonly clientMutationId: string;
  /** The text as sent; null once purged. Readers show it only when neither retracted nor purged. */
  readonly body: string | null;
  readonly bodySha256: Buffer | null;
  readonly clientSentAt?: Date | null;
  readonly sentAt: Date;
  /** When the retention purge cleared the body (a tombstone). */
  readonly purgedAt?: Date | null;
  readonly retraction?: Retraction;
}

/** A message's own columns. */
const MESSAGE_COLUMNS = `m.tenant_id, m.message_id, m.thread_id, m.seq, m.sender_user_id, m.client_mutation_id,
  m.body, m.body_sha256, m.client_sent_at, m.sent_at, m.purged_at`;
const RETRACTION_COLUMNS = 'r.retracted_by, r.by_moderator, r.reason as retraction_reason, r.retracted_at';
/** A message with its retraction: `message m left join message_retraction r`. */
const COLUMNS = `${MESSAGE_COLUMNS}, ${RETRACTION_COLUMNS}`;
const FROM = `message m
  left join message_retraction r on r.tenant_id = m.tenant_id and r.message_id = m.message_id`;

function toRecord(row: Record<string, unknown>): MessageRecord {
  return {
    tenantId: row.tenant_id as string,
    messageId: row.message_id as string,
    threadId: row.thread_id as string,
    seq: Number(row.seq),
    senderUserId: row.sender_user_id as string,
    clientMutationId: row.client_mutation_id as string,
    body: (row.body as string | null) ?? null,
    // Records are cached by the feeds: keep the hash off Node's shared Buffer slabs.
    bodySha256: row.body_sha256 ? unpooled(row.body_sha256 as Buffer) : null,
    clientSentAt: sqlDateOrNull(row.client_sent_at),
    sentAt: sqlDate(row.sent_at),
    purgedAt: sqlDateOrNull(row.purged_at),
    retraction: row.retracted_by
      ? {
          retractedBy: row.retracted_by as string,
          byModerator: row.by_moderator === true,
          reason: (row.retraction_reason as string | null) ?? '',
          retractedAt: sqlDate(row.retracted_at),
        }
      : undefined,
  };
}

/** A new message row as `row_to_json` renders it (bytea as `\\x…` hex, timestamps ISO 8601). */
function fromJson(row: Record<string, unknown>): MessageRecord {
  return toRecord({
    ...row,
    body_sha256: row.body_sha256 ? Buffer.from(String(row.body_sha256).slice(2), 'hex') : null,
  });
}

/**
 * Database access for messages. Hot paths use MikroORM's connection with hand-written SQL (one statement
 * where the unit of work would need several); every statement is scoped by tenant_id first.
 */
export class MessageRepository {
  constructor(private readonly em: EntityManager) {}

  /** The message a sender stored under an idempotency key, if any. */
  async findByKey(
    tenantId: string,
    senderUserId: string,
    clientMutationId: string,
  ): Promise<MessageRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${COLUMNS} from ${FROM} where m.tenant_id = ? and m.sender_user_id = ? and m.client_mutation_id = ?`,
      [tenantId, senderUserId, clientMutationId],
    );
    return rows[0] && toRecord(rows[0]);
  }

  async findById(tenantId: string, messageId: string): Promise<MessageRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${COLUMNS} from ${FROM} where m.tenant_id = ? and m.message_id = ?`,
      [tenantId, messageId],
    );
    return rows[0] && toRecord(rows[0]);
  }

  /** The messages with these ids (any order; missing ids are left out). */
  async findByIds(tenantId: string, messageIds: readonly string[]): Promise<MessageRecord[]> {
    if (messageIds.length === 0) return [];
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${COLUMNS} from ${FROM}
        where m.tenant_id = ? and m.message_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))`,
      [tenantId, JSON.stringify(messageIds)],
    );
    return rows.map(toRecord);
  }

  /**
   * Appends the message's retraction and, when this call stored it, a `message_retracted` event on the
   * thread's feed, in one transaction. False when the message was already retracted (by anyone).
   */
  async retract(message: MessageRecord, by: string, byModerator: boolean, reason: string, at: Date): Promise<boolean> {
    return this.em.transactional(async (em) => {
      const rows: Record<string, unknown>[] = await em.execute(
        `insert into message_retraction (tenant_id, message_id, thread_id, retracted_by, by_moderator, reason,
                                         retracted_at)
         values (?, ?, ?, ?, ?, ?, ?) on conflict do nothing returning message_id`,
        [message.tenantId, message.messageId, message.threadId, by, byModerator, reason, at],
      );
      if (rows.length === 0) return false;
      // Pages of this thread look for retractions from now on (see `page`).
      await em.execute(
        'update thread set has_retraction = true where tenant_id = ? and thread_id = ? and not has_retraction',
        [message.tenantId, message.threadId],
      );
      await new FeedRepository(em).append(
        message.tenantId,
        [
          {
            stream: streams.thread(message.threadId),
            kind: 'message_retracted',
            aggregate_id: message.threadId,
            message_id: message.messageId,
            user_id: by,
          },
        ],
        at,
      );
      return true;
    });
  }

  /** Up to `limit` messages of a thread with seq in (afterSeq, throughSeq], in order. */
  async range(
    tenantId: string,
    threadId: string,
    afterSeq: number,
    throughSeq: number,
    limit: number,
  ): Promise<MessageRecord[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${COLUMNS} from ${FROM}
        where m.tenant_id = ? and m.thread_id = ? and m.seq > ? and m.seq <= ? order by m.seq limit ?`,
      [tenantId, threadId, afterSeq, throughSeq, limit],
    );
    return rows.map(toRecord);
  }

  /** Message `seq` of a thread. */
  async atSeq(tenantId: string, threadId: string, seq: number): Promise<MessageRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${COLUMNS} from ${FROM} where m.tenant_id = ? and m.thread_id = ? and m.seq = ?`,
      [tenantId, threadId, seq],
    );
    return rows[0] && toRecord(rows[0]);
  }

  /**
   * A send in one round trip: `comms_send_message` (migration 20261129040000) returns the sender's
   * earlier message for this key if there is one; otherwise it locks the thread row and, when the sender
   * takes part and the thread is active, inserts the message with the next seq,
   * `sent_at = max(now, previous sent_at)` and an id above the previous one (`candidateId` or the previous
   * id's successor), and advances the thread. The caller decides from the result: `inserted`, `earlier`,
   * or neither with `thread` (its state and the sender's membership; unset: no such thread) to say why.
   */
  async appendOrFind(m: NewMessage): Promise<AppendOutcome> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select comms_send_message(?, ?::uuid, ?, ?, ?, decode(?, 'hex'), ?::timestamptz, ?::uuid, ?::timestamptz) as r`,
      [
        m.tenantId,
        m.threadId,
        m.userId,
        m.clientMutationId,
        m.body,
        m.bodySha256.toString('hex'),
        m.clientSentAt ?? null,
        m.candidateId,
        m.now,
      ],
    );
    const r = rows[0]!.r as {
      inserted?: Record<string, unknown>;
      earlier?: Record<string, unknown>;
      thread?: Record<string, unknown>;
    };
    return {
      inserted: r.inserted && fromJson(r.inserted),
      earlier: r.earlier && fromJson(r.earlier),
      thread: r.thread && { state: r.thread.state as ThreadAccess['state'], member: r.thread.member === true },
    };
  }

  /**
   * The caller's access to a thread and up to `limit + 1` of its messages strictly after (`forward`) or
   * before `boundary` seq, nearest first, read in ONE statement, so the page and the thread's newest
   * message come from the same snapshot (`latest` never lags the page). `boundary` undefined starts at
   * the oldest (forward) or newest (backward) end. Undefined when the thread does not exist.
   */
  async page(
    tenantId: string,
    threadId: string,
    userId: string,
    forward: boolean,
    boundary: number | undefined,
    limit: number,
  ): Promise<{ access: ThreadAccess; rows: MessageRecord[] } | undefined> {
    const range = boundary === undefined ? '' : forward ? ' and m.seq > ?' : ' and m.seq < ?';
    // Without a retraction in the thread (the common case) no join: the page costs what it did before
    // retractions existed. Otherwise its retractions are read with it (the flag is set in the
    // retraction's transaction, so the snapshot that sees one sees the other).
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${THREAD_ACCESS_COLUMNS}, t.has_retraction, m.*
         from thread t
         left join lateral (
           select ${MESSAGE_COLUMNS} from message m
            where m.tenant_id = t.tenant_id and m.thread_id = t.thread_id${range}
            order by m.seq ${forward ? 'asc' : 'desc'} limit ?
         ) m on true
        where t.tenant_id = ? and t.thread_id = ?`,
      [userId, ...(boundary === undefined ? [] : [boundary]), limit + 1, tenantId, threadId],
    );
    if (rows.length === 0) return undefined;
    const found = rows.filter((r) => r.message_id !== null);
    const page = rows[0]!.has_retraction === true && found.length > 0 ? await this.#withRetractions(found) : found;
    return { access: threadAccessOf(rows[0]!), rows: page.map(toRecord) };
  }

  /** The page's rows with their retraction columns (one query for the page). */
  async #withRetractions(rows: Record<string, unknown>[]): Promise<Record<string, unknown>[]> {
    const retracted: Record<string, unknown>[] = await this.em.execute(
      `select r.message_id, ${RETRACTION_COLUMNS} from message_retraction r
        where r.tenant_id = ? and r.message_id in (select value::uuid from jsonb_array_elements_text(?::jsonb))`,
      [rows[0]!.tenant_id, JSON.stringify(rows.map((r) => r.message_id))],
    );
    const byId = new Map(retracted.map((r) => [r.message_id, r]));
    return rows.map((r) => ({ ...r, ...byId.get(r.message_id) }));
  }
}
