import { randomBytes } from 'node:crypto';
import type { ServiceError } from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  ListDirection,
  type ListMessagesResponse,
  type Message,
  type MessageServiceClient,
  type SendMessageResponse,
} from '../../gen/comms/v1/message.js';
import type {
  ListReadReceiptsResponse,
  MarkReadResponse,
  MarkThreadReadResponse,
  ReadReceipt,
  ReadReceiptServiceClient,
} from '../../gen/comms/v1/read_receipt.js';
import type { ParticipantRole, Thread, ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { call, errorDetails, type TestUser } from './clients.js';
import { db, expectFieldViolations, participant } from './threads.js';

/** A UUIDv7 string: version nibble 7, RFC 9562 variant. */
export const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A fresh idempotency key. */
export function newKey(prefix = 'k'): string {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** Sends one message as `user`; the key is fresh unless given. */
export function send(
  client: MessageServiceClient,
  user: TestUser,
  threadId: string,
  body: string,
  opts: { key?: string; clientSentAt?: Date; deadline?: Date } = {},
): Promise<SendMessageResponse> {
  return call(
    client,
    client.sendMessage,
    { threadId, clientMutationId: opts.key ?? newKey(), body, clientSentAt: opts.clientSentAt },
    user.md,
    opts.deadline ? { deadline: opts.deadline } : {},
  );
}

/** Sends `count` messages one after the other (bodies `${prefix} 0`, …) and returns them in send order. */
export async function sendMany(
  client: MessageServiceClient,
  user: TestUser,
  threadId: string,
  count: number,
  prefix = 'message',
): Promise<Message[]> {
  const out: Message[] = [];
  for (let i = 0; i < count; i++) out.push((await send(client, user, threadId, `${prefix} ${i}`)).message!);
  return out;
}

/** One ListMessages call. */
export function listMessages(
  client: MessageServiceClient,
  user: TestUser,
  threadId: string,
  req: { pageSize?: number; pageToken?: string; direction?: ListDirection; cursor?: string } = {},
): Promise<ListMessagesResponse> {
  return call(
    client,
    client.listMessages,
    {
      threadId,
      pageSize: req.pageSize ?? 0,
      pageToken: req.pageToken ?? '',
      direction: req.direction ?? ListDirection.LIST_DIRECTION_UNSPECIFIED,
      cursor: req.cursor ?? '',
    },
    user.md,
  );
}

/** Follows next_page_token from a first request until it is empty; returns every page. */
export async function walkMessages(
  client: MessageServiceClient,
  user: TestUser,
  threadId: string,
  req: { pageSize?: number; direction?: ListDirection; cursor?: string } = {},
): Promise<Message[][]> {
  const pages: Message[][] = [];
  let res = await listMessages(client, user, threadId, req);
  pages.push(res.messages);
  for (let i = 0; res.nextPageToken !== ''; i++) {
    if (i > 1000) expect.fail('listing did not end');
    res = await listMessages(client, user, threadId, { pageSize: req.pageSize, pageToken: res.nextPageToken });
    pages.push(res.messages);
  }
  return pages;
}

/** Orders two messages (or positions) by (sent_at, message_id): negative when `a` sorts first. */
export function comparePosition(
  a: { sentAt: Date | undefined; messageId: string },
  b: { sentAt: Date | undefined; messageId: string },
): number {
  const dt = a.sentAt!.getTime() - b.sentAt!.getTime();
  if (dt !== 0) return dt;
  return a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0;
}

/** Asserts messages are in strictly ascending (sent_at, message_id) order, with ids strictly increasing. */
export function expectAscending(messages: readonly Message[], what = 'messages'): void {
  for (let i = 1; i < messages.length; i++) {
    const prev = messages[i - 1]!;
    const cur = messages[i]!;
    expect(comparePosition(prev, cur), `${what}[${i - 1}] sorts before ${what}[${i}]`).to.be.lessThan(0);
    expect(cur.sentAt!.getTime(), `${what}[${i}] sent_at non-decreasing`).to.be.at.least(prev.sentAt!.getTime());
    expect(cur.messageId > prev.messageId, `${what}[${i}] message_id increasing`).to.equal(true);
  }
}

/** Reopens an archived thread as `user`. */
export async function reopen(client: ThreadServiceClient, user: TestUser, threadId: string): Promise<Thread> {
  return (await call(client, client.reopenThread, { threadId, etag: '' }, user.md)).thread!;
}

/** Adds `userId` to a thread as `by` (a provider who takes part, or staff). */
export async function addMember(
  client: ThreadServiceClient,
  by: TestUser,
  threadId: string,
  userId: string,
  role: ParticipantRole,
): Promise<Thread> {
  const res = await call(
    client,
    client.addParticipant,
    { threadId, participant: participant(userId, role), etag: '' },
    by.md,
  );
  return res.thread!;
}

/** MarkRead as `user`. */
export function markRead(
  client: ReadReceiptServiceClient,
  user: TestUser,
  messageIds: string[],
  readAt?: Date,
): Promise<MarkReadResponse> {
  return call(client, client.markRead, { messageIds, readAt }, user.md);
}

/** MarkThreadRead as `user`. */
export function markThreadRead(
  client: ReadReceiptServiceClient,
  user: TestUser,
  threadId: string,
  req: { upToMessageId?: string; upToCursor?: string; readAt?: Date } = {},
): Promise<MarkThreadReadResponse> {
  return call(
    client,
    client.markThreadRead,
    { threadId, upToMessageId: req.upToMessageId ?? '', upToCursor: req.upToCursor ?? '', readAt: req.readAt },
    user.md,
  );
}

/** One ListReadReceipts call. */
export function listReceipts(
  client: ReadReceiptServiceClient,
  user: TestUser,
  threadId: string,
  req: { messageIds?: string[]; pageSize?: number; pageToken?: string } = {},
): Promise<ListReadReceiptsResponse> {
  return call(
    client,
    client.listReadReceipts,
    { threadId, messageIds: req.messageIds ?? [], pageSize: req.pageSize ?? 0, pageToken: req.pageToken ?? '' },
    user.md,
  );
}

/** Every receipt of a listing, following next_page_token; returns the receipts and the page sizes. */
export async function walkReceipts(
  client: ReadReceiptServiceClient,
  user: TestUser,
  threadId: string,
  req: { messageIds?: string[]; pageSize?: number } = {},
): Promise<{ receipts: ReadReceipt[]; sizes: number[] }> {
  const receipts: ReadReceipt[] = [];
  const sizes: number[] = [];
  let pageToken = '';
  for (let i = 0; i < 1000; i++) {
    const res = await listReceipts(client, user, threadId, { ...req, pageToken });
    receipts.push(...res.receipts);
    sizes.push(res.receipts.length);
    pageToken = res.nextPageToken;
    if (pageToken === '') return { receipts, sizes };
  }
  expect.fail('listing did not end');
}

/**
 * Asserts a call fails with INVALID_ARGUMENT (reason INVALID_ARGUMENT) naming exactly `fields`; `what`
 * names the case in the failure message, also when the call unexpectedly succeeds.
 */
export async function expectInvalid(promise: Promise<unknown>, fields: string[], what: string): Promise<void> {
  const err = await promise.then(
    (res) => expect.fail(`${what}: expected INVALID_ARGUMENT, got ${JSON.stringify(res).slice(0, 300)}`),
    (e: ServiceError) => e,
  );
  expect(err.code, `${what}: code (message: ${err.details})`).to.equal(status.INVALID_ARGUMENT);
  expect(errorDetails(err).info?.reason, what).to.equal('INVALID_ARGUMENT');
  expectFieldViolations(err, fields);
}

/** Runs every check and reports all that failed at once (so one finding does not hide the next). */
export async function expectAll(checks: [string, () => Promise<unknown>][]): Promise<void> {
  const failed: string[] = [];
  for (const [what, check] of checks) {
    await check().catch((err: Error) =>
      failed.push(err.message.includes(what) ? err.message : `${what}: ${err.message}`),
    );
  }
  expect(failed, 'failed cases').to.deep.equal([]);
}

// ---- direct database access ----

/** How many `message` rows a tenant has (optionally only those of one sender and key). */
export async function messageCount(tenantId: string, where: { sender?: string; key?: string } = {}): Promise<number> {
  const { rows } = await db().query<{ n: number }>(
    `select count(*)::int as n from message
      where tenant_id = $1 and ($2::text is null or sender_user_id = $2) and ($3::text is null or client_mutation_id = $3)`,
    [tenantId, where.sender ?? null, where.key ?? null],
  );
  return rows[0]!.n;
}

/** A message row exactly as stored. */
export async function storedMessage(tenantId: string, messageId: string): Promise<Record<string, unknown>> {
  const { rows } = await db().query('select * from message where tenant_id = $1 and message_id = $2', [
    tenantId,
    messageId,
  ]);
  expect(rows, `message ${messageId} stored`).to.have.length(1);
  return rows[0] as Record<string, unknown>;
}

/** A tenant's read_receipt rows: message id, user id and read_at, in a stable order. */
export async function storedReceipts(
  tenantId: string,
): Promise<{ message_id: string; user_id: string; read_at: Date }[]> {
  const { rows } = await db().query(
    'select message_id, user_id, read_at from read_receipt where tenant_id = $1 order by message_id, user_id',
    [tenantId],
  );
  return rows as { message_id: string; user_id: string; read_at: Date }[];
}

/** A tenant's read_watermark rows. */
export async function storedWatermarks(tenantId: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query(
    'select thread_id, user_id, seq, message_id from read_watermark where tenant_id = $1 order by thread_id, user_id',
    [tenantId],
  );
  return rows as Record<string, unknown>[];
}

/**
 * Appends messages with the given (past) send times to a thread straight in the database, as SendMessage
 * would store them (next seq, UUIDv7 of the send time, the thread's last message moved): fixtures for
 * read times that must lie in the past yet after the messages were sent. `sentAts` must be ascending and
 * later than the thread's newest message.
 */
export async function seedMessages(
  tenantId: string,
  threadId: string,
  senderUserId: string,
  sentAts: readonly Date[],
): Promise<{ messageId: string; seq: number; sentAt: Date }[]> {
  const client = await db().connect();
  try {
    await client.query('begin');
    const { rows } = await client.query<{ message_seq: number }>(
      'select message_seq from thread where tenant_id = $1 and thread_id = $2 for update',
      [tenantId, threadId],
    );
    let seq = rows[0]!.message_seq;
    const seeded = sentAts.map((sentAt) => ({ messageId: uuidv7({ msecs: sentAt.getTime() }), seq: ++seq, sentAt }));
    for (const m of seeded) {
      await client.query(
        `insert into message (tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body,
                              body_sha256, client_sent_at, sent_at)
         values ($1, $2, $3, $4, $5, $6, $7, sha256(convert_to($7, 'UTF8')), null, $8)`,
        [tenantId, m.messageId, threadId, m.seq, senderUserId, newKey('seed'), `seeded ${m.seq}`, m.sentAt],
      );
    }
    const last = seeded.at(-1)!;
    await client.query(
      `update thread set message_seq = $3, last_message_id = $4, last_message_at = $5,
                         last_activity_at = greatest(last_activity_at, $5)
        where tenant_id = $1 and thread_id = $2`,
      [tenantId, threadId, last.seq, last.messageId, last.sentAt],
    );
    await client.query('commit');
    return seeded;
  } catch (err) {
    await client.query('rollback');
    throw err;
  } finally {
    client.release();
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
