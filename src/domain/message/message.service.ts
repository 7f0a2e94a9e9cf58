import { createHash } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { type Actor, hasPermission, hasRole } from '../actor.js';
import type { Clock } from '../clock.js';
import { type Db, withinDeadline } from '../db.js';
import { InvalidArgument, Violations } from '../errors.js';
import { decodePageToken, encodePageToken } from '../page-token.js';
import { ThreadArchived, ThreadNotFound, ThreadPermissionDenied } from '../thread/thread.errors.js';
import { memberPermissions } from '../thread/thread.policy.js';
import { type ThreadAccess, ThreadRepository } from '../thread/thread.repository.js';
import { checkText, checkUuid, pageSize } from '../validation.js';
import { decodeCursor, isSeq } from './message.cursor.js';
import { latestPosition, type MessagePosition } from './message.entity.js';
import { IdempotencyKeyReused, MessageNotFound, NotSender, RetractionWindowPassed } from './message.errors.js';
import { checkSend, type MessageLimits, type SendInput } from './message.policy.js';
import { type MessageRecord, MessageRepository, type NewMessage } from './message.repository.js';

export interface SendResult {
  readonly message: MessageRecord;
  /** True when an earlier call stored the message and this one replayed it. */
  readonly replayed: boolean;
}

export interface RetractResult {
  /** The message with its retraction. */
  readonly message: MessageRecord;
  /** True when it was retracted already and this call changed nothing. */
  readonly replayed: boolean;
}

export interface ListMessagesInput {
  readonly threadId: string;
  readonly pageSize: number;
  readonly pageToken: string;
  readonly direction: 'forward' | 'backward' | undefined;
  readonly cursor: string;
}

export interface MessagePage {
  readonly messages: readonly MessageRecord[];
  readonly nextPageToken: string;
  readonly latest: MessagePosition | undefined;
  readonly asOf: Date;
}

/**
 * The message aggregate's use cases (append_only). A send takes the thread's row lock in the statement
 * that inserts, so messages of one thread get consecutive `seq`, non-decreasing `sent_at` and increasing
 * ids in commit order.
 */
export class MessageService {
  constructor(
    private readonly clock: Clock,
    private readonly limits: MessageLimits & {
      /** How long after sending its sender may retract a message (RETRACT_WINDOW_MS). */
      readonly retractWindowMs: number;
    },
  ) {}

  async send(actor: Actor, db: Db, input: SendInput): Promise<SendResult> {
    const threadId = checkSend(input, this.limits);
    const now = this.clock.now();
    const message: NewMessage = {
      tenantId: actor.tenantId,
      threadId,
      userId: actor.userId,
      clientMutationId: input.clientMutationId,
      body: input.body,
      bodySha256: createHash('sha256').update(input.body, 'utf8').digest(),
      clientSentAt: input.clientSentAt,
      candidateId: uuidv7({ msecs: now.getTime() }),
      now,
    };
    const outcome = await withinDeadline(db, (em) => new MessageRepository(em).appendOrFind(message));
    // A retry is answered with the stored message: also once the thread is archived.
    if (outcome.earlier) return replay(outcome.earlier, threadId, message.bodySha256);
    if (outcome.inserted) return { message: outcome.inserted, replayed: false };
    requirePost(actor, threadId, outcome.thread);
    if (outcome.thread.state === 'archived') throw new ThreadArchived(threadId);
    // Allowed and active, yet not stored: a concurrent send with the same key committed first.
    const winner = await new MessageRepository(db.em).findByKey(actor.tenantId, actor.userId, input.clientMutationId);
    if (!winner) throw new Error('idempotency key conflict without a stored message');
    return replay(winner, threadId, message.bodySha256);
  }

  async get(actor: Actor, db: Db, messageId: string): Promise<MessageRecord> {
    const v = new Violations();
    const id = checkUuid(v, 'message_id', messageId);
    v.throwIfAny();
    const message = await new MessageRepository(db.em).findById(actor.tenantId, id);
    if (!message) throw new MessageNotFound(id);
    const access = await new ThreadRepository(db.em).access(actor.tenantId, message.threadId, actor.userId);
    if (!access || !memberPermissions(actor, access.member).see) throw new MessageNotFound(id);
    return message;
  }

  /**
   * Retracts a message (append-only: a retraction row, the message row untouched). Its sender may within
   * the window, staff with `messages.moderate` at any time; a repeat returns the retraction that exists.
   */
  async retract(actor: Actor, db: Db, input: { messageId: string; reason: string }): Promise<RetractResult> {
    const v = new Violations();
    const id = checkUuid(v, 'message_id', input.messageId);
    checkText(v, 'reason', input.reason, 0, 500);
    v.throwIfAny();
    const message = await this.get(actor, db, id);
    const sender = message.senderUserId === actor.userId;
    const moderator = hasRole(actor, 'staff') && hasPermission(actor, 'messages.moderate');
    if (!sender && !moderator) throw new NotSender(id);
    if (message.retraction) return { message, replayed: true };
    const now = this.clock.now();
    if (!moderator && now.getTime() - message.sentAt.getTime() > this.limits.retractWindowMs) {
      throw new RetractionWindowPassed(id, this.limits.retractWindowMs);
    }
    const stored = await withinDeadline(db, (em) =>
      new MessageRepository(em).retract(message, actor.userId, !sender, input.reason, now),
    );
    const after = await new MessageRepository(db.em).findById(actor.tenantId, id);
    if (!after?.retraction) throw new Error(`message ${id}: retraction not found after storing it`);
    return { message: after, replayed: !stored };
  }

  async list(actor: Actor, db: Db, input: ListMessagesInput): Promise<MessagePage> {
    const v = new Violations();
    const threadId = checkUuid(v, 'thread_id', input.threadId);
    v.throwIfAny();
    const size = pageSize(input.pageSize, 50, 200);
    let forward = input.direction === 'forward';
    let boundary: number | undefined;
    let cursor = input.cursor;
    if (input.pageToken !== '') {
      const token = decodePageToken('messages', input.pageToken);
      const tokenForward = token.d === 'f';
      if (
        token.t !== threadId ||
        !isSeq(token.s) ||
        typeof token.c !== 'string' ||
        (input.direction !== undefined && forward !== tokenForward) ||
        (cursor !== '' && cursor !== token.c)
      ) {
        throw new InvalidArgument([{ field: 'page_token', description: 'does not continue this listing' }]);
      }
      forward = tokenForward;
      boundary = token.s;
      cursor = token.c;
    } else if (cursor !== '') {
      boundary = decodeCursor('cursor', cursor, threadId).seq;
    }
    const read = await new MessageRepository(db.em).page(
      actor.tenantId,
      threadId,
      actor.userId,
      forward,
      boundary,
      size,
    );
    if (!read || !memberPermissions(actor, read.access.member).see) throw new ThreadNotFound(threadId);
    const { access, rows } = read;
    const latest = latestPosition({ threadId, ...access });
    // Read after the page; never before the newest send time it reports (another replica's clock).
    const now = this.clock.now();
    const asOf = latest && latest.sentAt > now ? latest.sentAt : now;
    const more = rows.length > size;
    const page = rows.slice(0, size);
    const messages = forward ? page : page.reverse();
    const edge = forward ? messages.at(-1) : messages[0];
    const nextPageToken =
      more && edge ? encodePageToken('messages', { t: threadId, d: forward ? 'f' : 'b', s: edge.seq, c: cursor }) : '';
    return { messages, nextPageToken, latest, asOf };
  }
}

/** Only participants post; a caller who can see the thread but not post is told so, others see nothing. */
function requirePost<A extends Pick<ThreadAccess, 'member'>>(
  actor: Actor,
  threadId: string,
  access: A | undefined,
): asserts access is A {
  const can = access && memberPermissions(actor, access.member);
  if (!can?.see) throw new ThreadNotFound(threadId);
  if (!can.post) throw new ThreadPermissionDenied(threadId, 'post to');
}

/** Answers a retry: the original when thread and body match, IDEMPOTENCY_KEY_REUSED otherwise. */
function replay(earlier: MessageRecord, threadId: string, digest: Buffer): SendResult {
  // A purged body cannot be compared any more: the same thread is enough to answer with the tombstone.
  const sameBody = earlier.bodySha256 ? earlier.bodySha256.equals(digest) : earlier.purgedAt != null;
  if (earlier.threadId !== threadId || !sameBody) {
    throw new IdempotencyKeyReused(earlier.clientMutationId, earlier.messageId);
  }
  return { message: earlier, replayed: true };
}
