import type { Actor } from '../actor.js';
import type { Clock } from '../clock.js';
import { type Db, withinDeadline } from '../db.js';
import { InvalidArgument, Violations } from '../errors.js';
import { decodeCursor, isSeq } from '../message/message.cursor.js';
import { MessageNotFound } from '../message/message.errors.js';
import { type MessageRecord, MessageRepository } from '../message/message.repository.js';
import { decodePageToken, encodePageToken } from '../page-token.js';
import { ThreadNotFound, ThreadPermissionDenied } from '../thread/thread.errors.js';
import { memberPermissions } from '../thread/thread.policy.js';
import { ThreadRepository } from '../thread/thread.repository.js';
import { checkUuid, pageSize } from '../validation.js';
import { ReadReceiptRepository, type ReceiptRecord, type WatermarkRecord } from './read-receipt.repository.js';

/** Limits of the receipt aggregate; `maxIdsPerCall` is MARK_READ_MAX_IDS. */
export interface ReceiptLimits {
  readonly maxIdsPerCall: number;
}

export interface MarkReadResult {
  readonly receipts: readonly ReceiptRecord[];
  readonly watermarks: readonly WatermarkRecord[];
}

/**
 * Read receipts (last-write-wins on (message_id, user_id)) and the read watermarks derived from them.
 * A mark's `read_at` is clamped to [the message's sent_at, server now]: a reader cannot have read a
 * message before it was sent, nor in the future.
 */
export class ReadReceiptService {
  constructor(
    private readonly clock: Clock,
    private readonly limits: ReceiptLimits,
  ) {}

  async markRead(
    actor: Actor,
    db: Db,
    input: { messageIds: readonly string[]; readAt: Date | undefined },
  ): Promise<MarkReadResult> {
    const v = new Violations();
    if (input.messageIds.length === 0) v.add('message_ids', 'is required');
    const ids = [...new Set(this.#checkIds(v, input.messageIds))];
    checkReadAt(v, input.readAt);
    v.throwIfAny();

    const now = this.clock.now();
    const result = await withinDeadline(db, (em) =>
      new ReadReceiptRepository(em).markMessages(actor.tenantId, actor.userId, ids, clampToNow(input.readAt, now), now),
    );
    if (result.refused) {
      // Nothing was written: every message must exist and the caller must take part in its thread.
      const byId = new Map(result.refused.map((m) => [m.messageId, m]));
      for (const id of ids) {
        const m = byId.get(id);
        if (!m) throw new MessageNotFound(id);
        if (!m.member) {
          // Staff and service may see the message, but only participants keep receipts.
          if (memberPermissions(actor, false).see)
            throw new ThreadPermissionDenied(m.threadId, 'mark messages read in');
          throw new MessageNotFound(id);
        }
      }
      throw new Error('MarkRead refused without a reason');
    }
    const { receipts, watermarks } = result;
    return { receipts: sortLike(receipts, ids), watermarks };
  }

  async markThreadRead(
    actor: Actor,
    db: Db,
    input: { threadId: string; upToMessageId: string; upToCursor: string; readAt: Date | undefined },
  ): Promise<{ watermark: WatermarkRecord; changed: number }> {
    const v = new Violations();
    const threadId = checkUuid(v, 'thread_id', input.threadId);
    const upToId = input.upToMessageId === '' ? '' : checkUuid(v, 'up_to_message_id', input.upToMessageId);
    if (upToId !== '' && input.upToCursor !== '') v.add('up_to_cursor', 'must be empty when up_to_message_id is set');
    checkReadAt(v, input.readAt);
    v.throwIfAny();
    const cursorSeq =
      input.upToCursor === '' ? undefined : decodeCursor('up_to_cursor', input.upToCursor, threadId).seq;

    const access = await new ThreadRepository(db.em).access(actor.tenantId, threadId, actor.userId);
    const can = access && memberPermissions(actor, access.member);
    if (!access || !can?.see) throw new ThreadNotFound(threadId);
    if (!can.post) throw new ThreadPermissionDenied(threadId, 'mark messages read in');

    const messages = new MessageRepository(db.em);
    let upToMessage: MessageRecord | undefined;
    if (upToId !== '') {
      upToMessage = await messages.findById(actor.tenantId, upToId);
      if (!upToMessage || upToMessage.threadId !== threadId) throw new MessageNotFound(upToId);
    }
    const upTo = upToMessage?.seq ?? Math.min(cursorSeq ?? access.messageSeq, access.messageSeq);
    const repo = new ReadReceiptRepository(db.em);
    let changed = 0;
    if (upTo > 0) {
      const now = this.clock.now();
      const requested = clampToNow(input.readAt, now);
      const range = await repo.unreadRange(actor.tenantId, threadId, actor.userId, upTo);
      const targets = range.map((m) => ({ ...m, threadId, readAt: laterOf(requested, m.sentAt) }));
      const last = upToMessage ?? (await messages.atSeq(actor.tenantId, threadId, upTo))!;
      const mark = { threadId, seq: upTo, messageId: last.messageId, sentAt: last.sentAt, completeSeq: upTo };
      ({ changed } = await withinDeadline(db, (em) =>
        new ReadReceiptRepository(em).mark(actor.tenantId, actor.userId, targets, [mark], now),
      ));
    }
    const [watermark] = await repo.watermarks(actor.tenantId, actor.userId, [threadId]);
    return { watermark: watermark!, changed };
  }

  async list(
    actor: Actor,
    db: Db,
    input: { threadId: string; messageIds: readonly string[]; pageSize: number; pageToken: string },
  ): Promise<{ receipts: ReceiptRecord[]; nextPageToken: string }> {
    const v = new Violations();
    const threadId = checkUuid(v, 'thread_id', input.threadId);
    const ids = this.#checkIds(v, input.messageIds);
    v.throwIfAny();
    const size = pageSize(input.pageSize, 100, 500);
    const filter = [...ids].sort().join(',');
    let after: { seq: number; userId: string } | undefined;
    if (input.pageToken !== '') {
      const token = decodePageToken('receipts', input.pageToken);
      if (token.t !== threadId || token.f !== filter || !isSeq(token.s) || typeof token.u !== 'string') {
        throw new InvalidArgument([{ field: 'page_token', description: 'does not continue this listing' }]);
      }
      after = { seq: token.s, userId: token.u };
    }
    const access = await new ThreadRepository(db.em).access(actor.tenantId, threadId, actor.userId);
    if (!access || !memberPermissions(actor, access.member).see) throw new ThreadNotFound(threadId);
    const rows = await new ReadReceiptRepository(db.em).list(
      actor.tenantId,
      threadId,
      ids.length > 0 ? ids : undefined,
      after,
      size,
    );
    const page = rows.slice(0, size);
    const last = page.at(-1);
    const nextPageToken =
      rows.length > size && last
        ? encodePageToken('receipts', { t: threadId, f: filter, s: last.seq, u: last.userId })
        : '';
    return { receipts: page, nextPageToken };
  }

  /** Checks a list of message ids: at most MARK_READ_MAX_IDS, each a UUID; returns them normalized. */
  #checkIds(v: Violations, ids: readonly string[]): string[] {
    const max = this.limits.maxIdsPerCall;
    if (ids.length > max) v.add('message_ids', `must hold at most ${max} ids`);
    return ids.slice(0, max).map((id, i) => checkUuid(v, `message_ids[${i}]`, id));
  }
}

function checkReadAt(v: Violations, readAt: Date | undefined): void {
  if (readAt && Number.isNaN(readAt.getTime())) v.add('read_at', 'is not a valid time');
}

function clampToNow(readAt: Date | undefined, now: Date): Date {
  return !readAt || readAt.getTime() > now.getTime() ? now : readAt;
}

function laterOf(a: Date, b: Date): Date {
  return a.getTime() >= b.getTime() ? a : b;
}

function sortLike<T extends { messageId: string }>(items: readonly T[], order: readonly string[]): T[] {
  const rank = new Map(order.map((id, i) => [id, i]));
  return [...items].sort((a, b) => (rank.get(a.messageId) ?? 0) - (rank.get(b.messageId) ?? 0));
}
