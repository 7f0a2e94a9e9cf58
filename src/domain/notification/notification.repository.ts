import type { EntityManager } from '@mikro-orm/postgresql';
import { pgArray, sqlDate, sqlDateOrNull } from '../db.js';
import type {
  AttemptOutcome,
  Channel,
  DeliveryStatus,
  DispatchRecord,
  IntentState,
  NotificationKind,
  PlanStep,
} from './notification.policy.js';
import type { QuietHours } from './quiet-hours.js';

/** A notification intent row. */
export interface Intent {
  readonly tenantId: string;
  readonly notificationId: string;
  readonly recipientUserId: string;
  readonly kind: NotificationKind;
  readonly requestedBy: string;
  readonly eventId: string;
  readonly threadId: string | null;
  readonly messageId: string | null;
  readonly sessionId: string | null;
  readonly templateKey: string;
  readonly deepLink: string;
  readonly plan: readonly PlanStep[];
  readonly urgent: boolean;
  readonly state: IntentState;
  readonly stateReason: string;
  readonly quietHoursBypassed: boolean;
  readonly quietHoursBypassReason: string;
  readonly nextStep: number;
  readonly nextDispatchAt: Date | null;
  readonly claim: Claim | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** An attempt in flight, recorded before the provider is called. */
export interface Claim {
  readonly reference: string;
  readonly attempt: number;
  readonly step: number;
  readonly channel: Channel;
  readonly provider: string;
  readonly claimedAt: Date;
}

/** What a dispatch decision is made from (see `load`). */
export interface DispatchContext {
  readonly intent: Intent;
  readonly records: DispatchRecord[];
  readonly member: boolean;
  readonly read: boolean;
  readonly preferences: Preferences | undefined;
  /** The tenant opted into message previews in channel texts. */
  readonly previews: boolean;
}

/** A user's stored preferences. */
export interface Preferences {
  readonly userId: string;
  readonly kindChannels: Readonly<Record<string, readonly Channel[]>>;
  readonly quietHours: QuietHours | undefined;
  readonly version: number;
  readonly updatedAt: Date | null;
}

/** What comms_notify needs to create the intents of one event. */
export interface NotifyRequest {
  readonly tenantId: string;
  readonly kind: NotificationKind;
  readonly requestedBy: string;
  readonly eventId: string;
  readonly recipients: readonly string[];
  readonly threadId: string | null;
  readonly messageId: string | null;
  readonly sessionId: string | null;
  readonly templateKey: string;
  readonly urgent: boolean;
  /** Undefined: the tenant's default plan for the kind. */
  readonly plan: readonly PlanStep[] | undefined;
  readonly now: Date;
}

/** SQL access for intents, records and preferences. */
export class NotificationRepository {
  constructor(private readonly em: EntityManager) {}

  /** Creates the intents of one event (none twice) and enqueues their dispatch; returns them. */
  async notify(r: NotifyRequest): Promise<Intent[]> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from comms_notify(?, ?, ?, ?, ?::text[], ?::uuid, ?::uuid, ?::uuid, ?, ?, ?::jsonb, ?::timestamptz)`,
      notifyParams(r),
    );
    return rows.map(intentFromRow);
  }

  /** Creates the intents of one event (none twice) and enqueues their dispatch. */
  async create(r: NotifyRequest): Promise<void> {
    await this.em.execute(
      `select comms_create_intents(?, ?, ?, ?, ?::text[], ?::uuid, ?::uuid, ?::uuid, ?, ?, ?::jsonb, ?::timestamptz)`,
      notifyParams(r),
    );
  }

  async find(tenantId: string, notificationId: string, forUpdate = false): Promise<Intent | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from notification_intent where tenant_id = ? and notification_id = ?::uuid${forUpdate ? ' for update' : ''}`,
      [tenantId, notificationId],
    );
    return rows[0] && intentFromRow(rows[0]);
  }

  /**
   * Everything a dispatch decision needs, in one round trip (`comms_dispatch_load`): the intent, locked
   * until commit; its records with the linked reports; for MESSAGE_POSTED whether the recipient still
   * takes part and has read the message; the recipient's preferences. With `message`, first takes that
   * provider message id's lock and includes the reports already stored for it.
   */
  async load(
    tenantId: string,
    notificationId: string,
    message?: { provider: string; providerMessageId: string },
  ): Promise<DispatchContext | undefined> {
    const rows: { r: string | Record<string, unknown> | null }[] = await this.em.execute(
      'select comms_dispatch_load(?, ?::uuid, ?, ?) as r',
      [tenantId, notificationId, message?.provider ?? null, message?.providerMessageId ?? null],
    );
    const raw = rows[0]?.r;
    if (!raw) return undefined;
    const r = (typeof raw === 'string' ? JSON.parse(raw) : raw) as {
      intent: Record<string, unknown>;
      records: Record<string, unknown>[];
      member: boolean;
      read: boolean;
      prefs: Record<string, unknown> | null;
      previews: boolean;
    };
    return {
      intent: intentFromRow(r.intent),
      records: r.records.map(recordFromRow),
      member: r.member,
      read: r.read,
      preferences: r.prefs ? preferencesFromRow(r.prefs) : undefined,
      previews: r.previews,
    };
  }

  /** A recipient's intents, newest first, after the keyset position `after`. */
  async page(
    tenantId: string,
    recipientUserId: string,
    filter: { kind: NotificationKind | undefined },
    after: { createdAt: Date; notificationId: string } | undefined,
    limit: number,
  ): Promise<Intent[]> {
    const where = ['tenant_id = ?', 'recipient_user_id = ?'];
    const params: unknown[] = [tenantId, recipientUserId];
    if (filter.kind) {
      where.push('kind = ?');
      params.push(filter.kind);
    }
    if (after) {
      where.push('(created_at, notification_id) < (?::timestamptz, ?::uuid)');
      params.push(after.createdAt, after.notificationId);
    }
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from notification_intent where ${where.join(' and ')}
        order by created_at desc, notification_id desc limit ?`,
      [...params, limit],
    );
    return rows.map(intentFromRow);
  }

  /**
   * Every record of these intents: their attempts and reconciliation answers, and the delivery reports
   * carrying the provider message id of one of them. In the order recorded.
   */
  async records(tenantId: string, notificationIds: readonly string[]): Promise<DispatchRecord[]> {
    if (notificationIds.length === 0) return [];
    const rows: Record<string, unknown>[] = await this.em.execute(
      `with own as (
         select * from dispatch_record where tenant_id = ? and notification_id = any (?::uuid[])
       )
       select * from own
       union all
       select r.* from dispatch_record r
        where r.tenant_id = ? and r.kind = 'delivery_report' and r.provider_message_id <> ''
          and (r.provider, r.provider_message_id) in (select o.provider, o.provider_message_id from own o
                                                       where o.provider_message_id <> '')
       order by recorded_at, record_id`,
      [tenantId, pgArray(notificationIds), tenantId],
    );
    return rows.map(recordFromRow);
  }

  /** The attempt (or reconciliation answer naming it) that carries this provider message id. */
  async attemptOf(tenantId: string, provider: string, providerMessageId: string): Promise<string | undefined> {
    const rows: { notification_id: string }[] = await this.em.execute(
      `select notification_id from dispatch_record
        where tenant_id = ? and provider = ? and provider_message_id = ? and kind <> 'delivery_report' limit 1`,
      [tenantId, provider, providerMessageId],
    );
    return rows[0]?.notification_id;
  }

  async findReport(tenantId: string, provider: string, providerEventId: string): Promise<DispatchRecord | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from dispatch_record where tenant_id = ? and provider = ? and provider_event_id = ?`,
      [tenantId, provider, providerEventId],
    );
    return rows[0] && recordFromRow(rows[0]);
  }

  /**
   * Serialises the writers of one provider message id until commit: the attempt that carries it and the
   * reports about it. Whichever commits second sees the other, so a failure report that races its
   * attempt still triggers the fallback.
   */
  async lockProviderMessage(tenantId: string, provider: string, providerMessageId: string): Promise<void> {
    await this.em.execute('select comms_lock_provider_message(?, ?, ?)', [tenantId, provider, providerMessageId]);
  }

  /** Appends a record; returns false when a report with its (provider, provider_event_id) exists. */
  async append(r: DispatchRecord, tenantId: string): Promise<boolean> {
    const rows: unknown[] = await this.em.execute(
      `insert into dispatch_record (tenant_id, record_id, kind, notification_id, attempt_number, plan_step, channel,
                                    provider, provider_message_id, provider_event_id, status, provider_timestamp,
                                    error_code, error_message, outcome, reference, attempt_record_id, recorded_at)
       values (?, ?::uuid, ?, ?::uuid, ?, ?, ?, ?, ?, ?, ?, ?::timestamptz, ?, ?, ?, ?::uuid, ?::uuid, ?::timestamptz)
       on conflict on constraint dispatch_record_report_once do nothing
       returning 1`,
      [
        tenantId,
        r.recordId,
        r.kind,
        r.notificationId,
        r.attemptNumber,
        r.planStep,
        r.channel,
        r.provider,
        r.providerMessageId,
        r.providerEventId,
        r.status,
        r.providerTimestamp,
        r.errorCode,
        r.errorMessage.slice(0, 500),
        r.outcome,
        r.reference,
        r.attemptRecordId,
        r.recordedAt,
      ],
    );
    return rows.length === 1;
  }

  /** Writes the dispatcher's state of an intent (never what it is about; the trigger refuses that). */
  async update(
    tenantId: string,
    notificationId: string,
    change: {
      state?: IntentState;
      stateReason?: string;
      nextStep?: number;
      nextDispatchAt?: Date | null;
      claim?: Claim | null;
      bypass?: string;
      now: Date;
    },
  ): Promise<void> {
    const sets: string[] = ['updated_at = ?::timestamptz'];
    const params: unknown[] = [change.now];
    const set = (column: string, value: unknown, cast = '') => {
      sets.push(`${column} = ?${cast}`);
      params.push(value);
    };
    if (change.state !== undefined) set('state', change.state);
    if (change.stateReason !== undefined) set('state_reason', change.stateReason);
    if (change.nextStep !== undefined) set('next_step', change.nextStep);
    if (change.nextDispatchAt !== undefined) set('next_dispatch_at', change.nextDispatchAt, '::timestamptz');
    if (change.bypass) {
      sets.push('quiet_hours_bypassed = true');
      set('quiet_hours_bypass_reason', change.bypass);
    }
    if (change.claim !== undefined) {
      const c = change.claim;
      set('claim_reference', c?.reference ?? null, '::uuid');
      set('claim_attempt', c?.attempt ?? null);
      set('claim_step', c?.step ?? null);
      set('claim_channel', c?.channel ?? null);
      set('claim_provider', c?.provider ?? null);
      set('claimed_at', c?.claimedAt ?? null, '::timestamptz');
    }
    await this.em.execute(
      `update notification_intent set ${sets.join(', ')} where tenant_id = ? and notification_id = ?::uuid`,
      [...params, tenantId, notificationId],
    );
  }

  /** Enqueues a dispatch job for each intent at its time (same transaction as the caller's writes). */
  async enqueue(tenantId: string, jobs: readonly { notificationId: string; at: Date }[]): Promise<void> {
    if (jobs.length === 0) return;
    await this.em.execute(`select comms_enqueue_dispatch(?, ?::uuid[], ?::timestamptz[])`, [
      tenantId,
      pgArray(jobs.map((j) => j.notificationId)),
      pgArray(jobs.map((j) => j.at.toISOString())),
    ]);
  }

  /** Writes the default settings row (tenant ''); called at start so a changed default takes effect. */
  async saveDefaultSettings(kindPlans: Record<string, readonly unknown[]>, deepLinkBase: string): Promise<void> {
    await this.em.execute(
      `insert into notification_settings (tenant_id, kind_plans, deep_link_base) values ('', ?::jsonb, ?)
       on conflict (tenant_id) do update set kind_plans = excluded.kind_plans, deep_link_base = excluded.deep_link_base`,
      [JSON.stringify(kindPlans), deepLinkBase],
    );
  }

  async preferences(tenantId: string, userId: string, forUpdate = false): Promise<Preferences | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select * from notification_preference where tenant_id = ? and user_id = ?${forUpdate ? ' for update' : ''}`,
      [tenantId, userId],
    );
    return rows[0] && preferencesFromRow(rows[0]);
  }

  async savePreferences(tenantId: string, p: Preferences, now: Date): Promise<void> {
    await this.em.execute(
      `insert into notification_preference (tenant_id, user_id, kind_channels, quiet_start, quiet_end, time_zone,
                                            version, updated_at)
       values (?, ?, ?::jsonb, ?, ?, ?, 1, ?::timestamptz)
       on conflict (tenant_id, user_id) do update
         set kind_channels = excluded.kind_channels, quiet_start = excluded.quiet_start,
             quiet_end = excluded.quiet_end, time_zone = excluded.time_zone,
             version = notification_preference.version + 1, updated_at = excluded.updated_at`,
      [
        tenantId,
        p.userId,
        JSON.stringify(p.kindChannels),
        p.quietHours?.startMinute ?? null,
        p.quietHours?.endMinute ?? null,
        p.quietHours?.timeZone ?? null,
        now,
      ],
    );
  }
}

function notifyParams(r: NotifyRequest): unknown[] {
  return [
    r.tenantId,
    r.kind,
    r.requestedBy,
    r.eventId,
    pgArray(r.recipients),
    r.threadId,
    r.messageId,
    r.sessionId,
    r.templateKey,
    r.urgent,
    r.plan === undefined ? null : JSON.stringify(r.plan),
    r.now,
  ];
}

function preferencesFromRow(r: Record<string, unknown>): Preferences {
  return {
    userId: String(r.user_id),
    kindChannels: (typeof r.kind_channels === 'string' ? JSON.parse(r.kind_channels) : r.kind_channels) as Record<
      string,
      Channel[]
    >,
    quietHours:
      r.time_zone === null || r.time_zone === undefined
        ? undefined
        : { startMinute: Number(r.quiet_start), endMinute: Number(r.quiet_end), timeZone: String(r.time_zone) },
    version: Number(r.version),
    updatedAt: sqlDate(r.updated_at),
  };
}

function intentFromRow(r: Record<string, unknown>): Intent {
  return {
    tenantId: String(r.tenant_id),
    notificationId: String(r.notification_id),
    recipientUserId: String(r.recipient_user_id),
    kind: r.kind as NotificationKind,
    requestedBy: String(r.requested_by),
    eventId: String(r.event_id),
    threadId: (r.thread_id as string | null) ?? null,
    messageId: (r.message_id as string | null) ?? null,
    sessionId: (r.session_id as string | null) ?? null,
    templateKey: String(r.template_key),
    deepLink: String(r.deep_link),
    plan: (typeof r.plan === 'string' ? JSON.parse(r.plan) : r.plan) as PlanStep[],
    urgent: r.urgent === true,
    state: r.state as IntentState,
    stateReason: String(r.state_reason),
    quietHoursBypassed: r.quiet_hours_bypassed === true,
    quietHoursBypassReason: String(r.quiet_hours_bypass_reason),
    nextStep: Number(r.next_step),
    nextDispatchAt: sqlDateOrNull(r.next_dispatch_at),
    claim:
      r.claim_reference === null || r.claim_reference === undefined
        ? null
        : {
            reference: String(r.claim_reference),
            attempt: Number(r.claim_attempt),
            step: Number(r.claim_step),
            channel: r.claim_channel as Channel,
            provider: String(r.claim_provider),
            claimedAt: sqlDate(r.claimed_at),
          },
    createdAt: sqlDate(r.created_at),
    updatedAt: sqlDate(r.updated_at),
  };
}

/** A dispatch_record row (as the driver or row_to_json returns it) as a DispatchRecord. */
export function recordFromRow(r: Record<string, unknown>): DispatchRecord {
  return {
    recordId: String(r.record_id),
    kind: r.kind as DispatchRecord['kind'],
    notificationId: (r.notification_id as string | null) ?? null,
    attemptNumber: r.attempt_number === null ? null : Number(r.attempt_number),
    planStep: r.plan_step === null ? null : Number(r.plan_step),
    channel: (r.channel as Channel | null) ?? null,
    provider: String(r.provider),
    providerMessageId: String(r.provider_message_id),
    providerEventId: (r.provider_event_id as string | null) ?? null,
    status: r.status as DeliveryStatus,
    providerTimestamp: sqlDateOrNull(r.provider_timestamp),
    errorCode: String(r.error_code),
    errorMessage: String(r.error_message),
    outcome: (r.outcome as AttemptOutcome | null) ?? null,
    reference: (r.reference as string | null) ?? null,
    attemptRecordId: (r.attempt_record_id as string | null) ?? null,
    recordedAt: sqlDate(r.recorded_at),
  };
}
