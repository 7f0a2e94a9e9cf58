import type { Actor } from '../actor.js';
import { hasRole } from '../actor.js';
import type { Clock } from '../clock.js';
import { boundByDeadline, type Db } from '../db.js';
import { EtagMismatch, Violations } from '../errors.js';
import { newId } from '../ids.js';
import { MessageNotFound } from '../message/message.errors.js';
import { decodePositionToken, encodePositionToken } from '../page-token.js';
import { SessionNotFound } from '../session/session.errors.js';
import { ThreadNotFound } from '../thread/thread.errors.js';
import { checkText, checkUserId, checkUuid, pageSize } from '../validation.js';
import { NotificationNotFound, RoleNotAllowed, UnknownProvider, UnknownTemplate } from './notification.errors.js';
import {
  attemptFailed,
  type AttemptView,
  type Channel,
  type DeliveryStatus,
  deriveDeliveryStatus,
  deriveStatus,
  type DispatchRecord,
  isTerminal,
  linkRecords,
  MAX_PLAN_STEPS,
  MAX_STEP_DELAY_MS,
  maySeeIntentsOf,
  mayChangePreferencesOf,
  type NotificationKind,
  type NotificationStatus,
  type PlanCondition,
  type PlanStep,
  SERVICE_TEMPLATES,
} from './notification.policy.js';
import { type Intent, NotificationRepository, type Preferences } from './notification.repository.js';
import { isKnownTimeZone } from './quiet-hours.js';

/** A dispatch record with what it is linked to. */
export interface RecordView {
  readonly record: DispatchRecord;
  /** The attempt a report or reconciliation answer belongs to (the record itself for an attempt). */
  readonly attempt: DispatchRecord | undefined;
  /** Attempts only: the derived delivery status. */
  readonly derived: DeliveryStatus;
}

/** An intent as clients see it. */
export interface NotificationView {
  readonly intent: Intent;
  readonly status: NotificationStatus;
  readonly statusReason: string;
  readonly delivery: DeliveryStatus;
  readonly records: readonly RecordView[];
}

/** A plan step as a request gives it (unset enums undefined). */
export interface PlanStepInput {
  readonly channel: Channel | undefined;
  readonly delayMs: number;
  readonly condition: PlanCondition | undefined;
}

export interface RequestNotificationInput {
  readonly recipientUserId: string;
  readonly dedupeKey: string;
  readonly templateKey: string;
  readonly threadId: string;
  readonly messageId: string;
  readonly sessionId: string;
  readonly urgent: boolean;
  readonly plan: readonly PlanStepInput[];
}

export interface ReportDeliveryInput {
  readonly provider: string;
  readonly providerMessageId: string;
  readonly providerEventId: string;
  readonly status: DeliveryStatus;
  readonly providerTimestamp: Date | undefined;
  readonly errorCode: string;
  readonly errorMessage: string;
}

export interface PreferencesInput {
  readonly kindChannels: readonly { kind: NotificationKind | undefined; channels: readonly (Channel | undefined)[] }[];
  readonly quietHours:
    | {
        start: { hours: number; minutes: number } | undefined;
        end: { hours: number; minutes: number } | undefined;
        timeZone: string;
      }
    | undefined;
}

/** A user's preferences as clients see them. */
export interface PreferencesView {
  readonly userId: string;
  readonly kindChannels: Readonly<Record<string, readonly Channel[]>>;
  readonly quietHours: Preferences['quietHours'];
  readonly etag: string;
  readonly updatedAt: Date | null;
}

const LIST_SCAN_LIMIT = 1000;

/**
 * NotificationService use cases. Intents are never created here for end users: only RequestNotification
 * (role `service`) creates one, and the dispatcher, ReportDelivery and preferences only change how an
 * intent is delivered. Reads compute the derived statuses from every record, so they never depend on
 * the order reports arrived in.
 */
export class NotificationService {
  constructor(
    private readonly clock: Clock,
    /** Names ReportDelivery accepts: the configured channel providers. */
    private readonly providerNames: ReadonlySet<string>,
  ) {}

  async get(actor: Actor, db: Db, notificationId: string): Promise<NotificationView> {
    const v = new Violations();
    const id = checkUuid(v, 'notification_id', notificationId);
    v.throwIfAny();
    const repo = new NotificationRepository(db.em);
    const intent = await repo.find(actor.tenantId, id);
    if (!intent || !maySeeIntentsOf(actor, intent.recipientUserId)) throw new NotificationNotFound(id);
    return (await this.#views(repo, [intent]))[0]!;
  }

  async list(
    actor: Actor,
    db: Db,
    input: {
      pageSize: number;
      pageToken: string;
      recipientUserId: string;
      status: NotificationStatus | undefined;
      kind: NotificationKind | undefined;
    },
  ): Promise<{ views: NotificationView[]; nextPageToken: string; asOf: Date }> {
    const size = pageSize(input.pageSize, 50, 200);
    const recipient = input.recipientUserId === '' ? actor.userId : input.recipientUserId;
    if (recipient !== actor.userId) {
      const v = new Violations();
      checkUserId(v, 'recipient_user_id', recipient);
      v.throwIfAny();
      if (!maySeeIntentsOf(actor, recipient)) throw new RoleNotAllowed('listing the notifications of another user');
    }
    const filter = { r: recipient, s: input.status ?? '', kd: input.kind ?? '' };
    let after: { createdAt: Date; notificationId: string } | undefined;
    if (input.pageToken !== '') {
      const { at, id } = decodePositionToken('notifications', input.pageToken, filter);
      after = { createdAt: at, notificationId: id };
    }
    const asOf = this.clock.now();
    const repo = new NotificationRepository(db.em);
    const views: NotificationView[] = [];
    let scanned = 0;
    let more = true;
    // A status filter applies to derived statuses: read pages until this one is full, bounded per call.
    while (views.length < size && more && scanned < LIST_SCAN_LIMIT) {
      const batch = await repo.page(actor.tenantId, recipient, { kind: input.kind }, after, size + 1);
      more = batch.length > size;
      const taken = batch.slice(0, size);
      for (const view of await this.#views(repo, taken)) {
        scanned++;
        after = { createdAt: view.intent.createdAt, notificationId: view.intent.notificationId };
        if (!input.status || view.status === input.status) views.push(view);
        if (views.length === size) {
          more ||= view.intent !== taken.at(-1);
          break;
        }
      }
    }
    const nextPageToken =
      more && after
        ? encodePositionToken('notifications', filter, { at: after.createdAt, id: after.notificationId })
        : '';
    return { views, nextPageToken, asOf };
  }

  async request(actor: Actor, db: Db, input: RequestNotificationInput): Promise<NotificationView> {
    if (!hasRole(actor, 'service')) throw new RoleNotAllowed('RequestNotification');
    const v = new Violations();
    checkUserId(v, 'recipient_user_id', input.recipientUserId);
    checkText(v, 'dedupe_key', input.dedupeKey, 1, 128);
    checkText(v, 'template_key', input.templateKey, 1, 64);
    const threadId = input.threadId === '' ? null : checkUuid(v, 'thread_id', input.threadId);
    const messageId = input.messageId === '' ? null : checkUuid(v, 'message_id', input.messageId);
    const sessionId = input.sessionId === '' ? null : checkUuid(v, 'session_id', input.sessionId);
    if (messageId && !threadId) v.add('message_id', 'requires thread_id');
    if (threadId && sessionId) v.add('session_id', 'must not be set together with thread_id');
    const plan = input.plan.length === 0 ? undefined : checkPlan(v, input.plan);
    v.throwIfAny();
    if (!Object.hasOwn(SERVICE_TEMPLATES, input.templateKey)) throw new UnknownTemplate(input.templateKey);
    const repo = new NotificationRepository(db.em);
    if (threadId) {
      const rows: { found: boolean }[] = await db.em.execute(
        'select exists (select 1 from thread where tenant_id = ? and thread_id = ?::uuid) as found',
        [actor.tenantId, threadId],
      );
      if (!rows[0]!.found) throw new ThreadNotFound(threadId);
      if (messageId) {
        const m: { found: boolean }[] = await db.em.execute(
          'select exists (select 1 from message where tenant_id = ? and message_id = ?::uuid and thread_id = ?::uuid) as found',
          [actor.tenantId, messageId, threadId],
        );
        if (!m[0]!.found) throw new MessageNotFound(messageId);
      }
    }
    if (sessionId) {
      const rows: { found: boolean }[] = await db.em.execute(
        'select exists (select 1 from virtual_session where tenant_id = ? and session_id = ?::uuid) as found',
        [actor.tenantId, sessionId],
      );
      if (!rows[0]!.found) throw new SessionNotFound(sessionId);
    }
    const [intent] = await repo.notify({
      tenantId: actor.tenantId,
      kind: 'service_event',
      requestedBy: actor.userId,
      eventId: input.dedupeKey,
      recipients: [input.recipientUserId],
      threadId,
      messageId,
      sessionId,
      templateKey: input.templateKey,
      urgent: input.urgent,
      plan,
      now: this.clock.now(),
    });
    return (await this.#views(repo, [intent!]))[0]!;
  }

  /** ReportDelivery (role `service`): appends a delivery report once per (provider, provider_event_id). */
  async report(actor: Actor, db: Db, input: ReportDeliveryInput): Promise<RecordView> {
    if (!hasRole(actor, 'service')) throw new RoleNotAllowed('ReportDelivery');
    const v = new Violations();
    checkText(v, 'provider', input.provider, 1, 64);
    checkText(v, 'provider_message_id', input.providerMessageId, 1, 256);
    checkText(v, 'provider_event_id', input.providerEventId, 1, 256);
    if (input.status === 'unspecified') v.add('status', 'is required');
    if (!input.providerTimestamp) v.add('provider_timestamp', 'is required');
    if (input.errorCode.length > 64) v.add('error_code', 'must be at most 64 characters');
    if ([...input.errorMessage].length > 500) v.add('error_message', 'must be at most 500 characters');
    v.throwIfAny();
    if (!this.providerNames.has(input.provider)) throw new UnknownProvider(input.provider);
    return db.em.transactional(async (em) => {
      await boundByDeadline(em, db);
      return this.recordReport(new NotificationRepository(em), actor.tenantId, input);
    });
  }

  /**
   * Appends a report inside the caller's transaction (the RPC's, or the sandbox provider's own webhook),
   * and when it ends its attempt FAILED or UNDELIVERED, enqueues the intent's dispatch now (fallback).
   */
  async recordReport(repo: NotificationRepository, tenantId: string, input: ReportDeliveryInput): Promise<RecordView> {
    await repo.lockProviderMessage(tenantId, input.provider, input.providerMessageId);
    const record: DispatchRecord = {
      recordId: newId(),
      kind: 'delivery_report',
      notificationId: null,
      attemptNumber: null,
      planStep: null,
      channel: null,
      provider: input.provider,
      providerMessageId: input.providerMessageId,
      providerEventId: input.providerEventId,
      status: input.status,
      providerTimestamp: input.providerTimestamp!,
      errorCode: input.errorCode,
      errorMessage: input.errorMessage,
      outcome: null,
      reference: null,
      attemptRecordId: null,
      recordedAt: this.clock.now(),
    };
    const inserted = await repo.append(record, tenantId);
    const stored = inserted ? record : (await repo.findReport(tenantId, input.provider, input.providerEventId))!;
    const notificationId = await repo.attemptOf(tenantId, stored.provider, stored.providerMessageId);
    const ctx = notificationId && (await repo.load(tenantId, notificationId));
    if (!ctx) return { record: stored, attempt: undefined, derived: 'unspecified' };
    const attempts = linkRecords(ctx.records);
    const owner = attempts.find((a) => a.linked.some((r) => r.recordId === stored.recordId));
    if (inserted && owner && attemptFailed(owner)) {
      // The next plan step may run now (fallback): the dispatcher decides.
      await repo.enqueue(tenantId, [{ notificationId: ctx.intent.notificationId, at: this.clock.now() }]);
    } else if (inserted && owner && isTerminal(owner.derived)) {
      // Delivered and no step left: nothing is pending any more (the confirmation check would find so).
      const { intent } = ctx;
      const open = attempts.some((a) => a.attempt.outcome === 'accepted' && !isTerminal(a.derived));
      if (!intent.claim && !open && intent.state === 'pending' && intent.nextStep >= intent.plan.length) {
        await repo.update(tenantId, intent.notificationId, {
          state: 'settled',
          nextDispatchAt: null,
          now: this.clock.now(),
        });
      }
    }
    return { record: stored, attempt: owner?.attempt, derived: 'unspecified' };
  }

  async getPreferences(actor: Actor, db: Db, userId: string): Promise<PreferencesView> {
    const user = userId === '' ? actor.userId : userId;
    if (user !== actor.userId) {
      const v = new Violations();
      checkUserId(v, 'user_id', user);
      v.throwIfAny();
      if (!maySeeIntentsOf(actor, user)) throw new RoleNotAllowed('reading the preferences of another user');
    }
    return preferencesView(user, await new NotificationRepository(db.em).preferences(actor.tenantId, user));
  }

  async updatePreferences(
    actor: Actor,
    db: Db,
    input: { userId: string; preferences: PreferencesInput | undefined; mask: readonly string[]; etag: string },
  ): Promise<PreferencesView> {
    const user = input.userId === '' ? actor.userId : input.userId;
    const v = new Violations();
    if (user !== actor.userId) checkUserId(v, 'user_id', user);
    v.throwIfAny();
    if (!mayChangePreferencesOf(actor, user)) throw new RoleNotAllowed('changing the preferences of another user');
    if (!input.preferences) v.add('preferences', 'is required');
    const mask = input.mask.length === 0 ? ['kind_channels', 'quiet_hours'] : input.mask;
    for (const path of mask) {
      if (path !== 'kind_channels' && path !== 'quiet_hours') v.add('update_mask', `unknown path "${path}"`);
    }
    const kindChannels = mask.includes('kind_channels')
      ? checkKindChannels(v, input.preferences?.kindChannels ?? [])
      : undefined;
    const quiet = mask.includes('quiet_hours') ? checkQuietHours(v, input.preferences?.quietHours) : undefined;
    v.throwIfAny();
    return db.em.transactional(async (em) => {
      await boundByDeadline(em, db);
      const repo = new NotificationRepository(em);
      // Serialise changes of one user's preferences, also before the first row exists.
      await em.execute('select pg_advisory_xact_lock(hashtextextended(?, 0))', [`prefs ${actor.tenantId} ${user}`]);
      const current = await repo.preferences(actor.tenantId, user, true);
      const currentEtag = preferencesEtag(current);
      if (input.etag !== '' && input.etag !== currentEtag)
        throw new EtagMismatch(`the notification preferences of ${user}`, { user_id: user }, currentEtag);
      const now = this.clock.now();
      await repo.savePreferences(
        actor.tenantId,
        {
          userId: user,
          kindChannels: kindChannels ?? current?.kindChannels ?? {},
          quietHours: quiet ? quiet.value : current?.quietHours,
          version: 0,
          updatedAt: now,
        },
        now,
      );
      return preferencesView(user, await repo.preferences(actor.tenantId, user));
    });
  }

  async #views(repo: NotificationRepository, intents: readonly Intent[]): Promise<NotificationView[]> {
    if (intents.length === 0) return [];
    const records = await repo.records(
      intents[0]!.tenantId,
      intents.map((i) => i.notificationId),
    );
    return intents.map((intent) => {
      const own = records.filter((r) => r.notificationId === intent.notificationId || r.kind === 'delivery_report');
      const attempts = linkRecords(own);
      return toView(intent, own, attempts);
    });
  }
}

function toView(
  intent: Intent,
  records: readonly DispatchRecord[],
  attempts: readonly AttemptView[],
): NotificationView {
  const ownerOf = new Map<string, AttemptView>();
  for (const a of attempts) {
    ownerOf.set(a.attempt.recordId, a);
    for (const r of a.linked) ownerOf.set(r.recordId, a);
  }
  const { status, reason } = deriveStatus(intent.state, intent.stateReason, attempts);
  return {
    intent,
    status,
    statusReason: reason,
    delivery: deriveDeliveryStatus(attempts),
    // Reports of other intents' attempts came with the query; keep only the linked ones.
    records: records
      .filter((r) => ownerOf.has(r.recordId) || r.notificationId === intent.notificationId)
      .map((record) => {
        const owner = ownerOf.get(record.recordId);
        return {
          record,
          attempt: owner?.attempt,
          derived: record.kind === 'attempt' && owner ? owner.derived : 'unspecified',
        };
      }),
  };
}

function preferencesEtag(p: Preferences | undefined): string {
  return `p${p?.version ?? 0}`;
}

function preferencesView(userId: string, p: Preferences | undefined): PreferencesView {
  return {
    userId,
    kindChannels: p?.kindChannels ?? {},
    quietHours: p?.quietHours,
    etag: preferencesEtag(p),
    updatedAt: p?.updatedAt ?? null,
  };
}

function checkPlan(v: Violations, steps: readonly PlanStepInput[]): PlanStep[] {
  if (steps.length > MAX_PLAN_STEPS) v.add('channel_plan', `must have at most ${MAX_PLAN_STEPS} steps`);
  return steps.map((s, i) => {
    if (!s.channel) v.add(`channel_plan[${i}].channel`, 'is required');
    if (s.delayMs < 0) v.add(`channel_plan[${i}].delay`, 'must not be negative');
    if (s.delayMs > MAX_STEP_DELAY_MS) v.add(`channel_plan[${i}].delay`, 'must be at most 7 days');
    return {
      channel: s.channel ?? 'push',
      delay_ms: Math.max(0, Math.round(s.delayMs)),
      condition: s.condition ?? 'always',
    };
  });
}

function checkKindChannels(v: Violations, entries: PreferencesInput['kindChannels']): Record<string, Channel[]> {
  const out: Record<string, Channel[]> = {};
  entries.forEach((e, i) => {
    if (!e.kind) v.add(`preferences.kind_channels[${i}].kind`, 'is required');
    else if (Object.hasOwn(out, e.kind)) v.add(`preferences.kind_channels[${i}].kind`, 'is listed twice');
    const channels: Channel[] = [];
    e.channels.forEach((c, j) => {
      if (!c) v.add(`preferences.kind_channels[${i}].channels[${j}]`, 'must not be CHANNEL_UNSPECIFIED');
      else if (channels.includes(c)) v.add(`preferences.kind_channels[${i}].channels[${j}]`, 'is listed twice');
      else channels.push(c);
    });
    if (e.kind) out[e.kind] = channels;
  });
  return out;
}

function checkQuietHours(v: Violations, q: PreferencesInput['quietHours']): { value: Preferences['quietHours'] } {
  if (!q) return { value: undefined };
  const minute = (field: string, t: { hours: number; minutes: number } | undefined): number => {
    if (!t) {
      v.add(`preferences.quiet_hours.${field}`, 'is required');
      return 0;
    }
    if (!Number.isInteger(t.hours) || t.hours < 0 || t.hours > 23)
      v.add(`preferences.quiet_hours.${field}.hours`, 'must be 0 to 23');
    if (!Number.isInteger(t.minutes) || t.minutes < 0 || t.minutes > 59) {
      v.add(`preferences.quiet_hours.${field}.minutes`, 'must be 0 to 59');
    }
    return t.hours * 60 + t.minutes;
  };
  const start = minute('start', q.start);
  const end = minute('end', q.end);
  if (q.start && q.end && start === end) v.add('preferences.quiet_hours.end', 'must differ from start');
  if (!isKnownTimeZone(q.timeZone)) v.add('preferences.quiet_hours.time_zone', 'must be a known IANA time zone');
  return { value: { startMinute: start, endMinute: end, timeZone: q.timeZone } };
}
