import type { Actor } from '../actor.js';
import { hasRole } from '../actor.js';

export const KINDS = [
  'message_posted',
  'thread_escalated',
  'patient_waiting',
  'participant_admitted',
  'waiting_expired',
  'service_event',
] as const;
export type NotificationKind = (typeof KINDS)[number];

export const CHANNELS = ['push', 'sms', 'email', 'in_app'] as const;
export type Channel = (typeof CHANNELS)[number];

export const PLAN_CONDITIONS = ['always', 'if_unread', 'if_not_delivered'] as const;
export type PlanCondition = (typeof PLAN_CONDITIONS)[number];

/** One step of a channel plan, as stored in `notification_intent.plan`. */
export interface PlanStep {
  readonly channel: Channel;
  readonly delay_ms: number;
  readonly condition: PlanCondition;
}

/** A plan has at most this many steps; a step's delay at most 7 days. */
export const MAX_PLAN_STEPS = 4;
export const MAX_STEP_DELAY_MS = 7 * 24 * 3_600_000;

export const DELIVERY_STATUSES = [
  'unspecified',
  'queued',
  'sent',
  'delivered',
  'undelivered',
  'failed',
  'read',
] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

/** The dispatcher's stored state of an intent. */
export type IntentState = 'pending' | 'dispatching' | 'settled' | 'suppressed' | 'cancelled';

/** The status clients see, derived from the state and the records. */
export type NotificationStatus =
  'pending' | 'dispatching' | 'sent' | 'delivered' | 'failed' | 'suppressed' | 'cancelled';

export type AttemptOutcome = 'accepted' | 'rejected' | 'error' | 'timeout';

/** One dispatch record as stored (append-only). */
export interface DispatchRecord {
  readonly recordId: string;
  readonly kind: 'attempt' | 'delivery_report' | 'reconciliation';
  readonly notificationId: string | null;
  readonly attemptNumber: number | null;
  readonly planStep: number | null;
  readonly channel: Channel | null;
  readonly provider: string;
  readonly providerMessageId: string;
  readonly providerEventId: string | null;
  readonly status: DeliveryStatus;
  readonly providerTimestamp: Date | null;
  readonly errorCode: string;
  readonly errorMessage: string;
  readonly outcome: AttemptOutcome | null;
  readonly reference: string | null;
  readonly attemptRecordId: string | null;
  readonly recordedAt: Date;
}

/** An attempt with every record linked to it and its derived status. */
export interface AttemptView {
  readonly attempt: DispatchRecord;
  readonly linked: readonly DispatchRecord[];
  readonly derived: DeliveryStatus;
}

const TERMINAL: ReadonlySet<DeliveryStatus> = new Set(['delivered', 'undelivered', 'failed', 'read']);
// The tie-break order of DeliveryStatus at equal provider timestamps.
const TIE_ORDER: readonly DeliveryStatus[] = [
  'unspecified',
  'queued',
  'sent',
  'undelivered',
  'failed',
  'delivered',
  'read',
];
// The intent's delivery status: the best attempt by this rank.
const INTENT_RANK: readonly DeliveryStatus[] = [
  'unspecified',
  'failed',
  'undelivered',
  'queued',
  'sent',
  'delivered',
  'read',
];

export function isTerminal(status: DeliveryStatus): boolean {
  return TERMINAL.has(status);
}

/**
 * An attempt's delivery status from its own status and every record linked to it: terminal statuses beat
 * intermediate ones; among the rest the latest provider timestamp wins, then the later status in
 * TIE_ORDER, then the greater provider event id, then the greater record id. A total order over the
 * set, so the result is the same for every arrival order.
 */
export function deriveAttemptStatus(attempt: DispatchRecord, linked: readonly DispatchRecord[]): DeliveryStatus {
  let candidates = [attempt, ...linked].filter((r) => r.status !== 'unspecified');
  if (candidates.some((r) => isTerminal(r.status))) candidates = candidates.filter((r) => isTerminal(r.status));
  let best: DispatchRecord | undefined;
  for (const r of candidates) if (!best || compareReports(r, best) > 0) best = r;
  return best?.status ?? 'unspecified';
}

function compareReports(a: DispatchRecord, b: DispatchRecord): number {
  const ta = a.providerTimestamp?.getTime() ?? -Infinity;
  const tb = b.providerTimestamp?.getTime() ?? -Infinity;
  if (ta !== tb) return ta < tb ? -1 : 1;
  const sa = TIE_ORDER.indexOf(a.status);
  const sb = TIE_ORDER.indexOf(b.status);
  if (sa !== sb) return sa - sb;
  const ea = a.providerEventId ?? '';
  const eb = b.providerEventId ?? '';
  if (ea !== eb) return ea < eb ? -1 : 1;
  return a.recordId < b.recordId ? -1 : a.recordId > b.recordId ? 1 : 0;
}

/**
 * Groups an intent's records by attempt: a reconciliation answer belongs to the attempt it names; a
 * delivery report to the attempt whose provider message id it carries (the attempt's own, or one a
 * reconciliation answer of it learned). Returns the attempts in number order.
 */
export function linkRecords(records: readonly DispatchRecord[]): AttemptView[] {
  const attempts = records.filter((r) => r.kind === 'attempt').sort((a, b) => a.attemptNumber! - b.attemptNumber!);
  const byId = new Map(attempts.map((a) => [a.recordId, [] as DispatchRecord[]]));
  const byMessage = new Map<string, string>();
  for (const a of attempts) if (a.providerMessageId) byMessage.set(`${a.provider} ${a.providerMessageId}`, a.recordId);
  for (const r of records) {
    if (r.kind === 'reconciliation' && r.attemptRecordId && byId.has(r.attemptRecordId)) {
      byId.get(r.attemptRecordId)!.push(r);
      if (r.providerMessageId) byMessage.set(`${r.provider} ${r.providerMessageId}`, r.attemptRecordId);
    }
  }
  for (const r of records) {
    if (r.kind !== 'delivery_report') continue;
    const attemptId = byMessage.get(`${r.provider} ${r.providerMessageId}`);
    if (attemptId) byId.get(attemptId)!.push(r);
  }
  return attempts.map((attempt) => {
    const linked = byId.get(attempt.recordId)!;
    return { attempt, linked, derived: deriveAttemptStatus(attempt, linked) };
  });
}

/** The intent's delivery status: the best derived status among its attempts. */
export function deriveDeliveryStatus(attempts: readonly AttemptView[]): DeliveryStatus {
  let best: DeliveryStatus = 'unspecified';
  for (const a of attempts) if (INTENT_RANK.indexOf(a.derived) > INTENT_RANK.indexOf(best)) best = a.derived;
  return best;
}

/** True when the attempt ended without reaching the recipient (nothing more will come of it). */
export function attemptFailed(a: AttemptView): boolean {
  if (a.derived === 'failed' || a.derived === 'undelivered') return true;
  return a.attempt.outcome === 'rejected' || (a.attempt.outcome === 'error' && a.derived === 'unspecified');
}

/** The status a client sees, with its reason. */
export function deriveStatus(
  state: IntentState,
  stateReason: string,
  attempts: readonly AttemptView[],
): { status: NotificationStatus; reason: string } {
  if (state === 'suppressed' || state === 'cancelled') return { status: state, reason: stateReason };
  const delivery = deriveDeliveryStatus(attempts);
  if (delivery === 'delivered' || delivery === 'read') return { status: 'delivered', reason: '' };
  if (state === 'dispatching') return { status: 'dispatching', reason: '' };
  if (delivery === 'queued' || delivery === 'sent') return { status: 'sent', reason: '' };
  if (attempts.length === 0) return { status: 'pending', reason: '' };
  if (state === 'settled') return { status: 'failed', reason: 'PLAN_EXHAUSTED' };
  return { status: 'dispatching', reason: '' };
}

/** Urgent kinds may bypass quiet hours. */
export function kindIsUrgent(kind: NotificationKind): boolean {
  return kind === 'patient_waiting';
}

/** Reading any intent of a recipient: the recipient, and staff and service callers of the tenant. */
export function maySeeIntentsOf(actor: Actor, recipientUserId: string): boolean {
  return actor.userId === recipientUserId || hasRole(actor, 'staff') || hasRole(actor, 'service');
}

/** Reading a user's preferences: the user, staff and service. Changing another's: service only. */
export function mayChangePreferencesOf(actor: Actor, userId: string): boolean {
  return actor.userId === userId || hasRole(actor, 'service');
}

/** The per-kind texts: they say only that something is waiting, never what. */
export const KIND_TEXTS: Readonly<Record<Exclude<NotificationKind, 'service_event'>, string>> = {
  message_posted: 'You have a new secure message',
  thread_escalated: 'A conversation needs your attention',
  patient_waiting: 'A patient is waiting for your visit',
  participant_admitted: 'You have been admitted to your visit',
  waiting_expired: 'Your place in the waiting room has expired',
};

/** The templates internal services may name in RequestNotification. */
export const SERVICE_TEMPLATES: Readonly<Record<string, string>> = {
  generic: 'You have a new notification',
  appointment_reminder: 'You have an upcoming appointment',
  result_available: 'A new result is available in your app',
  document_available: 'A new document is available in your app',
};

/** The default settings (tenant ''): per-kind plans, the deep-link base, no previews. */
export const DEFAULT_PLANS: Readonly<Record<NotificationKind, readonly PlanStep[]>> = {
  message_posted: [
    { channel: 'push', delay_ms: 0, condition: 'always' },
    { channel: 'sms', delay_ms: 15 * 60_000, condition: 'if_unread' },
  ],
  thread_escalated: [
    { channel: 'push', delay_ms: 0, condition: 'always' },
    { channel: 'sms', delay_ms: 5 * 60_000, condition: 'if_not_delivered' },
  ],
  patient_waiting: [
    { channel: 'push', delay_ms: 0, condition: 'always' },
    { channel: 'sms', delay_ms: 2 * 60_000, condition: 'if_not_delivered' },
  ],
  participant_admitted: [{ channel: 'push', delay_ms: 0, condition: 'always' }],
  waiting_expired: [
    { channel: 'push', delay_ms: 0, condition: 'always' },
    { channel: 'sms', delay_ms: 0, condition: 'if_not_delivered' },
  ],
  service_event: [
    { channel: 'push', delay_ms: 0, condition: 'always' },
    { channel: 'email', delay_ms: 60 * 60_000, condition: 'if_not_delivered' },
  ],
};
