import type { Actor } from '../actor.js';
import { type AuditFilter, type AuditRecord, AuditRepository } from '../audit/audit.log.js';
import type { Clock } from '../clock.js';
import type { Db } from '../db.js';
import { EtagMismatch, InvalidArgument, Violations } from '../errors.js';
import { isUuid, newId } from '../ids.js';
import { latestPosition, type MessagePosition } from '../message/message.entity.js';
import { type MessageRecord, MessageRepository } from '../message/message.repository.js';
import { decodePageToken, encodePageToken } from '../page-token.js';
import type { ReceiptRecord } from '../read-receipt/read-receipt.repository.js';
import type { ThreadView } from '../thread/thread.entity.js';
import { ThreadNotFound } from '../thread/thread.errors.js';
import { ThreadRepository } from '../thread/thread.repository.js';
import type { MessageService } from '../message/message.service.js';
import type { ThreadService } from '../thread/thread.service.js';
import { checkText, checkUserId, checkUuid, pageSize } from '../validation.js';
import { ExportsBusy, HoldNotFound } from './governance.errors.js';
import { GovernanceRepository, type HoldRecord, type RetentionRecord } from './governance.repository.js';

/** Longest retention period: 15 years. */
export const MAX_RETENTION_DAYS = 5479;

/** What QueryAudit carries, decoded. */
export interface AuditQueryInput {
  readonly threadId: string;
  readonly actorUserId: string;
  readonly patientUserId: string;
  readonly messageId: string;
  readonly startTime: Date | undefined;
  readonly endTime: Date | undefined;
  readonly pageSize: number;
  readonly pageToken: string;
}

/** One item of an export, in stream order. */
export type ExportItem =
  | {
      readonly kind: 'header';
      readonly thread: ThreadView;
      readonly asOf: Date;
      readonly through: MessagePosition | undefined;
      readonly count: number;
    }
  | {
      /** The next messages in thread order (a contiguous run), each with its receipts. */
      readonly kind: 'batch';
      readonly items: readonly { readonly message: MessageRecord; readonly receipts: readonly ReceiptRecord[] }[];
    }
  | { readonly kind: 'end'; readonly messages: number; readonly receipts: number };

/** Messages read per export batch: the next batch is read only once the client took the previous one. */
const EXPORT_BATCH = 500;

/**
 * The governance use cases: the audit's query side, the audit path to retracted originals, retention
 * policies, legal holds and thread exports. Who may call each is decided by the RPC policy (roles and
 * permissions, src/rpc/policy.ts): every caller here governs its tenant.
 */
export class GovernanceService {
  #exports = 0;

  constructor(
    private readonly clock: Clock,
    private readonly threads: ThreadService,
    private readonly messages: MessageService,
    private readonly options: { readonly exportConcurrency: number },
  ) {}

  async queryAudit(
    actor: Actor,
    db: Db,
    input: AuditQueryInput,
  ): Promise<{ records: AuditRecord[]; nextPageToken: string }> {
    const v = new Violations();
    const threadId = input.threadId === '' ? undefined : checkUuid(v, 'thread_id', input.threadId);
    const messageId = input.messageId === '' ? undefined : checkUuid(v, 'message_id', input.messageId);
    if (input.actorUserId !== '') checkUserId(v, 'actor_user_id', input.actorUserId);
    if (input.patientUserId !== '') checkUserId(v, 'patient_user_id', input.patientUserId);
    if (input.startTime && input.endTime && input.startTime >= input.endTime) {
      v.add('end_time', 'must be after start_time');
    }
    v.throwIfAny();
    const size = pageSize(input.pageSize, 50, 200);
    const filter = {
      t: threadId ?? '',
      a: input.actorUserId,
      p: input.patientUserId,
      m: messageId ?? '',
      s: input.startTime?.toISOString() ?? '',
      e: input.endTime?.toISOString() ?? '',
    };
    let before: string | undefined;
    if (input.pageToken !== '') {
      const token = decodePageToken('audit', input.pageToken);
      const same = Object.entries(filter).every(([k, value]) => token[k] === value);
      if (!same || typeof token.b !== 'string' || !isUuid(token.b)) {
        throw new InvalidArgument([{ field: 'page_token', description: 'does not continue this query' }]);
      }
      before = token.b;
    }
    // A message filter matches its ranges too: it needs the message's thread and position.
    const message = messageId ? await new MessageRepository(db.em).findById(actor.tenantId, messageId) : undefined;
    // An unknown message (or another tenant's) has no records here.
    if (messageId && !message) return { records: [], nextPageToken: '' };
    const where: AuditFilter = {
      threadId,
      actorUserId: input.actorUserId || undefined,
      patientUserId: input.patientUserId || undefined,
      message: message && { messageId: message.messageId, threadId: message.threadId, seq: message.seq },
      from: input.startTime,
      to: input.endTime,
    };
    const rows = await new AuditRepository(db.em).query(actor.tenantId, where, before, size + 1);
    const records = rows.slice(0, size);
    const nextPageToken = rows.length > size ? encodePageToken('audit', { ...filter, b: records.at(-1)!.auditId }) : '';
    return { records, nextPageToken };
  }

  /**
   * A message for an auditor (staff or service: they govern every thread of the tenant), with its original
   * body unless purged; the handler shows it without hiding a retraction.
   */
  async auditedMessage(actor: Actor, db: Db, messageId: string): Promise<MessageRecord> {
    return this.messages.get(actor, db, messageId);
  }

  async retention(actor: Actor, db: Db): Promise<RetentionRecord | undefined> {
    return new GovernanceRepository(db.em).retention(actor.tenantId);
  }

  /** Sets (1..5479 days) or clears (0) the tenant's retention period; `etag` '' overwrites. */
  async setRetention(actor: Actor, db: Db, input: { days: number; etag: string }): Promise<RetentionRecord> {
    const v = new Violations();
    if (!Number.isInteger(input.days) || input.days < 0 || input.days > MAX_RETENTION_DAYS) {
      v.add('body_retention_days', `must be 0 (keep for ever) or 1 to ${MAX_RETENTION_DAYS}`);
    }
    v.throwIfAny();
    // An etag that is not one this policy ever had (stale or invented) matches no version: ABORTED.
    const match = /^r(\d{1,9})$/.exec(input.etag);
    const expected = input.etag === '' ? undefined : match ? Number(match[1]) : -1;
    const repo = new GovernanceRepository(db.em);
    const stored = await repo.setRetention(
      actor.tenantId,
      input.days === 0 ? null : input.days,
      expected,
      actor.userId,
      this.clock.now(),
    );
    if (!stored) {
      const current = await repo.retention(actor.tenantId);
      throw new EtagMismatch('the retention policy', {}, current ? retentionEtag(current) : '');
    }
    return stored;
  }

  async placeHold(
    actor: Actor,
    db: Db,
    input: { threadId: string | undefined; patientUserId: string | undefined; reason: string },
  ): Promise<{ hold: HoldRecord; replayed: boolean }> {
    const v = new Violations();
    let threadId: string | null = null;
    if (input.threadId !== undefined && input.patientUserId !== undefined) {
      v.add('target', 'set thread_id or patient_user_id, not both');
    } else if (input.threadId !== undefined) {
      threadId = checkUuid(v, 'thread_id', input.threadId);
    } else if (input.patientUserId !== undefined) {
      checkUserId(v, 'patient_user_id', input.patientUserId);
    } else {
      v.add('target', 'thread_id or patient_user_id is required');
    }
    checkText(v, 'reason', input.reason, 1, 500);
    v.throwIfAny();
    if (threadId && !(await new ThreadRepository(db.em).access(actor.tenantId, threadId, actor.userId))) {
      throw new ThreadNotFound(threadId);
    }
    const { hold, placed } = await new GovernanceRepository(db.em).placeHold(
      actor.tenantId,
      { holdId: newId(), threadId, patientUserId: input.patientUserId ?? null, reason: input.reason },
      actor.userId,
      this.clock.now(),
    );
    return { hold, replayed: !placed };
  }

  async releaseHold(actor: Actor, db: Db, input: { holdId: string; reason: string }): Promise<HoldRecord> {
    const v = new Violations();
    const holdId = checkUuid(v, 'hold_id', input.holdId);
    checkText(v, 'reason', input.reason, 1, 500);
    v.throwIfAny();
    const hold = await new GovernanceRepository(db.em).releaseHold(
      actor.tenantId,
      holdId,
      actor.userId,
      input.reason,
      this.clock.now(),
    );
    if (!hold) throw new HoldNotFound(holdId);
    return hold;
  }

  async holds(
    actor: Actor,
    db: Db,
    input: { includeReleased: boolean; pageSize: number; pageToken: string },
  ): Promise<{ holds: HoldRecord[]; nextPageToken: string }> {
    const size = pageSize(input.pageSize, 50, 200);
    let after: { at: Date; id: string } | undefined;
    if (input.pageToken !== '') {
      const token = decodePageToken('holds', input.pageToken);
      if (token.r !== input.includeReleased || typeof token.at !== 'string' || typeof token.id !== 'string') {
        throw new InvalidArgument([{ field: 'page_token', description: 'does not continue this listing' }]);
      }
      after = { at: new Date(token.at), id: token.id };
      if (Number.isNaN(after.at.getTime())) {
        throw new InvalidArgument([{ field: 'page_token', description: 'does not continue this listing' }]);
      }
    }
    const rows = await new GovernanceRepository(db.em).holds(actor.tenantId, input.includeReleased, after, size + 1);
    const holds = rows.slice(0, size);
    const last = holds.at(-1);
    const nextPageToken =
      rows.length > size && last
        ? encodePageToken('holds', { r: input.includeReleased, at: last.placedAt.toISOString(), id: last.holdId })
        : '';
    return { holds, nextPageToken };
  }

  /**
   * A thread's history up to its newest message when the export starts, in thread order, read in
   * batches by position (short statements, no long-lived snapshot holding back the database's
   * cleanup): the consumer pulls the next batch only when the client has taken the last one.
   */
  async *exportThread(actor: Actor, db: Db, threadId: string): AsyncGenerator<ExportItem> {
    const thread = await this.threads.get(actor, db, threadId);
    if (this.#exports >= this.options.exportConcurrency) throw new ExportsBusy(this.options.exportConcurrency);
    this.#exports++;
    try {
      const { threadId: id, messageSeq: head } = thread.thread;
      const through = latestPosition(thread.thread);
      yield { kind: 'header', thread, asOf: this.clock.now(), through, count: head };
      let after = 0;
      let messages = 0;
      let receipts = 0;
      while (after < head) {
        const em = db.em.fork();
        const batch = await new MessageRepository(em).range(actor.tenantId, id, after, head, EXPORT_BATCH);
        if (batch.length === 0) break;
        const last = batch.at(-1)!.seq;
        const byMessage = new Map<string, ReceiptRecord[]>();
        for (const r of await new GovernanceRepository(em).receipts(actor.tenantId, id, after, last)) {
          let list = byMessage.get(r.messageId);
          if (!list) byMessage.set(r.messageId, (list = []));
          list.push(r);
        }
        const items = batch.map((message) => ({ message, receipts: byMessage.get(message.messageId) ?? [] }));
        messages += items.length;
        for (const item of items) receipts += item.receipts.length;
        yield { kind: 'batch', items };
        after = last;
      }
      yield { kind: 'end', messages, receipts };
    } finally {
      this.#exports--;
    }
  }
}

/** The etag of a stored policy. */
export function retentionEtag(policy: RetentionRecord): string {
  return `r${policy.version}`;
}
