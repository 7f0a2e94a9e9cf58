import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDate, sqlDateOrNull } from '../db.js';
import { THREAD_ACCESS_COLUMNS, type ThreadAccess, threadAccessOf } from '../thread/thread.repository.js';
import { Message } from './message.entity.js';

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

/** What the send statement did: see MessageRepository.appendOrFind. */
export interface AppendOutcome {
  readonly inserted: MessageRecord | undefined;
  readonly earlier: MessageRecord | undefined;
  readonly thread: ThreadAccess | undefined;
}

/** A stored message, as the use cases pass it around. */
export interface MessageRecord {
  readonly tenantId: string;
  readonly messageId: string;
  readonly threadId: string;
  readonly seq: number;
  readonly senderUserId: string;
  readonly clientMutationId: string;
  readonly body: string;
  readonly bodySha256: Buffer;
  readonly clientSentAt?: Date | null;
  readonly sentAt: Date;
}

const COLUMNS = `tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body, body_sha256,
  client_sent_at, sent_at`;

function toRecord(row: Record<string, unknown>): MessageRecord {
  return {
    tenantId: row.tenant_id as string,
    messageId: row.message_id as string,
    threadId: row.thread_id as string,
    seq: Number(row.seq),
    senderUserId: row.sender_user_id as string,
    clientMutationId: row.client_mutation_id as string,
    body: row.body as string,
    bodySha256: row.body_sha256 as Buffer,
    clientSentAt: sqlDateOrNull(row.client_sent_at),
    sentAt: sqlDate(row.sent_at),
  };
}

/** A message row as `row_to_json` renders it (bytea as `\\x…` hex, timestamps ISO 8601). */
function fromJson(row: Record<string, unknown>): MessageRecord {
  return toRecord({ ...row, body_sha256: Buffer.from(String(row.body_sha256).slice(2), 'hex') });
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
      `select ${COLUMNS} from message where tenant_id = ? and sender_user_id = ? and client_mutation_id = ?`,
      [tenantId, senderUserId, clientMutationId],
    );
    return rows[0] && toRecord(rows[0]);
  }

  async findById(tenantId: string, messageId: string): Promise<MessageRecord | undefined> {
    return (await this.em.findOne(Message, { tenantId, messageId })) ?? undefined;
  }

  /** Message `seq` of a thread. */
  async atSeq(tenantId: string, threadId: string, seq: number): Promise<MessageRecord | undefined> {
    return (await this.em.findOne(Message, { tenantId, threadId, seq })) ?? undefined;
  }

  /**
   * A send in ONE statement (one round trip, its own transaction): lock the thread row, look up the
   * sender's idempotency key, and, when the sender takes part, the thread is active and the key is
   * new, insert the message with the next seq, `sent_at = max(now, previous sent_at)` and an id greater
   * than the previous one (`candidateId`, or the previous id's successor), and advance the thread.
   * The caller decides from the result: `inserted`, `earlier` (the key's message, from the statement's
   * snapshot) or neither, with `thread` (its state and the sender's membership) to say why; neither
   * with an allowed, active thread means a concurrent send with the same key committed first.
   */
  async appendOrFind(m: NewMessage): Promise<AppendOutcome> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `with t as (
         select ${THREAD_ACCESS_COLUMNS}, t.tenant_id, t.thread_id
           from thread t
          where t.tenant_id = ? and t.thread_id = ?
            for update of t
       ), earlier as (
         select ${COLUMNS} from message m
          where m.tenant_id = ? and m.sender_user_id = ? and m.client_mutation_id = ?
       ), inserted as (
         insert into message as m (tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body,
                                   body_sha256, client_sent_at, sent_at)
         select t.tenant_id,
                case when t.last_message_id is null or ?::uuid > t.last_message_id then ?::uuid
                     else comms_uuid_next(t.last_message_id) end,
                t.thread_id, t.message_seq + 1, ?, ?, ?, decode(?, 'hex'), ?::timestamptz,
                greatest(?::timestamptz, t.last_message_at)
           from t
          where t.member and t.state = 'active' and not exists (select 1 from earlier)
         on conflict (tenant_id, sender_user_id, client_mutation_id) do nothing
         returning ${COLUMNS}
       ), advanced as (
         update thread t2
            set message_seq = i.seq, last_message_id = i.message_id, last_message_at = i.sent_at,
                last_activity_at = greatest(t2.last_activity_at, i.sent_at)
           from inserted i
          where t2.tenant_id = i.tenant_id and t2.thread_id = i.thread_id
       )
       select (select row_to_json(i) from inserted i) as inserted,
              (select row_to_json(e) from earlier e) as earlier,
              (select row_to_json(t) from t) as thread`,
      [
        m.userId,
        m.tenantId,
        m.threadId,
        m.tenantId,
        m.userId,
        m.clientMutationId,
        m.candidateId,
        m.candidateId,
        m.userId,
        m.clientMutationId,
        m.body,
        m.bodySha256.toString('hex'),
        m.clientSentAt ?? null,
        m.now,
      ],
    );
    const row = rows[0]!;
    const json = (v: unknown) => (v === null || v === undefined ? undefined : (v as Record<string, unknown>));
    const inserted = json(row.inserted);
    const earlier = json(row.earlier);
    const thread = json(row.thread);
    return {
      inserted: inserted && fromJson(inserted),
      earlier: earlier && fromJson(earlier),
      thread: thread && threadAccessOf(thread),
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
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${THREAD_ACCESS_COLUMNS}, m.*
         from thread t
         left join lateral (
           select ${COLUMNS} from message m
            where m.tenant_id = t.tenant_id and m.thread_id = t.thread_id${range}
            order by m.seq ${forward ? 'asc' : 'desc'} limit ?
         ) m on true
        where t.tenant_id = ? and t.thread_id = ?`,
      [userId, ...(boundary === undefined ? [] : [boundary]), limit + 1, tenantId, threadId],
    );
    if (rows.length === 0) return undefined;
    return {
      access: threadAccessOf(rows[0]!),
      rows: rows.filter((r) => r.message_id !== null).map(toRecord),
    };
  }
}
