import type { EntityManager } from '@mikro-orm/postgresql';
import { sqlDate, sqlDateOrNull } from '../db.js';
import type { ReceiptRecord } from '../read-receipt/read-receipt.repository.js';

/** A tenant's retention policy (retention_policy row). */
export interface RetentionRecord {
  /** null: bodies are kept for ever. */
  readonly bodyRetentionDays: number | null;
  readonly version: number;
  readonly updatedBy: string;
  readonly updatedAt: Date;
}

/** A legal hold (legal_hold row). */
export interface HoldRecord {
  readonly holdId: string;
  readonly threadId: string | null;
  readonly patientUserId: string | null;
  readonly reason: string;
  readonly placedBy: string;
  readonly placedAt: Date;
  readonly releasedBy: string | null;
  readonly releasedAt: Date | null;
  readonly releaseReason: string | null;
}

function toRetention(r: Record<string, unknown>): RetentionRecord {
  return {
    bodyRetentionDays: (r.body_retention_days as number | null) ?? null,
    version: Number(r.version),
    updatedBy: r.updated_by as string,
    updatedAt: sqlDate(r.updated_at),
  };
}

const HOLD_COLUMNS = `hold_id, thread_id, patient_user_id, reason, placed_by, placed_at, released_by, released_at,
  release_reason`;

function toHold(r: Record<string, unknown>): HoldRecord {
  return {
    holdId: r.hold_id as string,
    threadId: (r.thread_id as string | null) ?? null,
    patientUserId: (r.patient_user_id as string | null) ?? null,
    reason: r.reason as string,
    placedBy: r.placed_by as string,
    placedAt: sqlDate(r.placed_at),
    releasedBy: (r.released_by as string | null) ?? null,
    releasedAt: sqlDateOrNull(r.released_at),
    releaseReason: (r.release_reason as string | null) ?? null,
  };
}

/** Retention policies, legal holds and export reads. Every statement is scoped by tenant first. */
export class GovernanceRepository {
  constructor(private readonly em: EntityManager) {}

  async retention(tenantId: string): Promise<RetentionRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      'select body_retention_days, version, updated_by, updated_at from retention_policy where tenant_id = ?',
      [tenantId],
    );
    return rows[0] && toRetention(rows[0]);
  }

  /**
   * Sets the policy when its version is still `expectedVersion` (undefined: whatever it is; 0: none set
   * yet). Undefined when the version moved on.
   */
  async setRetention(
    tenantId: string,
    days: number | null,
    expectedVersion: number | undefined,
    by: string,
    at: Date,
  ): Promise<RetentionRecord | undefined> {
    const returning = 'returning body_retention_days, version, updated_by, updated_at';
    const rows: Record<string, unknown>[] =
      expectedVersion !== undefined && expectedVersion !== 0
        ? await this.em.execute(
            `update retention_policy set body_retention_days = ?, version = version + 1, updated_by = ?, updated_at = ?
              where tenant_id = ? and version = ? ${returning}`,
            [days, by, at, tenantId, expectedVersion],
          )
        : await this.em.execute(
            `insert into retention_policy as p (tenant_id, body_retention_days, version, updated_by, updated_at)
             values (?, ?, 1, ?, ?)
             on conflict (tenant_id) do ${
               expectedVersion === 0
                 ? 'nothing'
                 : `update set body_retention_days = excluded.body_retention_days, version = p.version + 1,
                               updated_by = excluded.updated_by, updated_at = excluded.updated_at`
             } ${returning}`,
            [tenantId, days, by, at],
          );
    return rows[0] && toRetention(rows[0]);
  }

  /**
   * Places a hold unless the target already has an active one (a unique index keeps one per target);
   * returns the active hold and whether this call placed it.
   */
  async placeHold(
    tenantId: string,
    hold: { holdId: string; threadId: string | null; patientUserId: string | null; reason: string },
    by: string,
    at: Date,
  ): Promise<{ hold: HoldRecord; placed: boolean }> {
    const inserted: Record<string, unknown>[] = await this.em.execute(
      `insert into legal_hold (tenant_id, hold_id, thread_id, patient_user_id, reason, placed_by, placed_at)
       values (?, ?, ?, ?, ?, ?, ?) on conflict do nothing returning ${HOLD_COLUMNS}`,
      [tenantId, hold.holdId, hold.threadId, hold.patientUserId, hold.reason, by, at],
    );
    if (inserted[0]) return { hold: toHold(inserted[0]), placed: true };
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${HOLD_COLUMNS} from legal_hold
        where tenant_id = ? and released_at is null and (thread_id = ? or patient_user_id = ?)`,
      [tenantId, hold.threadId, hold.patientUserId],
    );
    if (!rows[0]) throw new Error('legal hold conflict without an active hold');
    return { hold: toHold(rows[0]), placed: false };
  }

  /** Releases an active hold; returns the hold as it is afterwards (undefined: no such hold). */
  async releaseHold(
    tenantId: string,
    holdId: string,
    by: string,
    reason: string,
    at: Date,
  ): Promise<HoldRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `with released as (
         update legal_hold set released_by = ?, released_at = ?, release_reason = ?
          where tenant_id = ? and hold_id = ? and released_at is null
         returning ${HOLD_COLUMNS}
       )
       select * from released
       union all
       select ${HOLD_COLUMNS} from legal_hold
        where tenant_id = ? and hold_id = ? and not exists (select 1 from released)`,
      [by, at, reason, tenantId, holdId, tenantId, holdId],
    );
    return rows[0] && toHold(rows[0]);
  }

  /** Holds newest first (by placed_at, hold_id), after a keyset position. */
  async holds(
    tenantId: string,
    includeReleased: boolean,
    after: { at: Date; id: string } | undefined,
    limit: number,
  ): Promise<HoldRecord[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select ${HOLD_COLUMNS} from legal_hold
        where tenant_id = ? ${includeReleased ? '' : 'and released_at is null'}
          ${after ? 'and (placed_at, hold_id) < (?, ?)' : ''}
        order by placed_at desc, hold_id desc limit ?`,
      [tenantId, ...(after ? [after.at, after.id] : []), limit],
    );
    return rows.map(toHold);
  }

  /** The read receipts of a thread's messages with seq in (afterSeq, throughSeq], in message order. */
  async receipts(tenantId: string, threadId: string, afterSeq: number, throughSeq: number): Promise<ReceiptRecord[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select message_id, thread_id, user_id, read_at from read_receipt
        where tenant_id = ? and thread_id = ? and seq > ? and seq <= ? order by seq, user_id`,
      [tenantId, threadId, afterSeq, throughSeq],
    );
    return rows.map((r) => ({
      messageId: r.message_id as string,
      threadId: r.thread_id as string,
      userId: r.user_id as string,
      readAt: sqlDate(r.read_at),
    }));
  }
}
