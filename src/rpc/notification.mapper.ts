import {
  AttemptOutcome as PbOutcome,
  Channel as PbChannel,
  ChannelPlanCondition as PbCondition,
  DeliveryStatus as PbDeliveryStatus,
  DispatchRecordKind as PbRecordKind,
  type DispatchRecord as PbDispatchRecord,
  type Notification as PbNotification,
  type NotificationPreferences as PbPreferences,
  NotificationKind as PbKind,
  NotificationStatus as PbStatus,
  type ChannelPlanStep as PbPlanStep,
} from '../../gen/comms/v1/notification.js';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import type {
  AttemptOutcome,
  Channel,
  DeliveryStatus,
  DispatchRecord,
  NotificationKind,
  NotificationStatus,
  PlanCondition,
} from '../domain/notification/notification.policy.js';
import type {
  NotificationView,
  PlanStepInput,
  PreferencesInput,
  PreferencesView,
  RecordView,
} from '../domain/notification/notification.service.js';

import { fromPb, invert } from './enums.js';

const KIND: Record<NotificationKind, PbKind> = {
  message_posted: PbKind.NOTIFICATION_KIND_MESSAGE_POSTED,
  thread_escalated: PbKind.NOTIFICATION_KIND_THREAD_ESCALATED,
  patient_waiting: PbKind.NOTIFICATION_KIND_PATIENT_WAITING,
  participant_admitted: PbKind.NOTIFICATION_KIND_PARTICIPANT_ADMITTED,
  waiting_expired: PbKind.NOTIFICATION_KIND_WAITING_EXPIRED,
  service_event: PbKind.NOTIFICATION_KIND_SERVICE_EVENT,
};
const STATUS: Record<NotificationStatus, PbStatus> = {
  pending: PbStatus.NOTIFICATION_STATUS_PENDING,
  dispatching: PbStatus.NOTIFICATION_STATUS_DISPATCHING,
  sent: PbStatus.NOTIFICATION_STATUS_SENT,
  delivered: PbStatus.NOTIFICATION_STATUS_DELIVERED,
  failed: PbStatus.NOTIFICATION_STATUS_FAILED,
  suppressed: PbStatus.NOTIFICATION_STATUS_SUPPRESSED,
  cancelled: PbStatus.NOTIFICATION_STATUS_CANCELLED,
};
const CHANNEL: Record<Channel, PbChannel> = {
  push: PbChannel.CHANNEL_PUSH,
  sms: PbChannel.CHANNEL_SMS,
  email: PbChannel.CHANNEL_EMAIL,
  in_app: PbChannel.CHANNEL_IN_APP,
};
const CONDITION: Record<PlanCondition, PbCondition> = {
  always: PbCondition.CHANNEL_PLAN_CONDITION_ALWAYS,
  if_unread: PbCondition.CHANNEL_PLAN_CONDITION_IF_UNREAD,
  if_not_delivered: PbCondition.CHANNEL_PLAN_CONDITION_IF_NOT_DELIVERED,
};
const DELIVERY: Record<DeliveryStatus, PbDeliveryStatus> = {
  unspecified: PbDeliveryStatus.DELIVERY_STATUS_UNSPECIFIED,
  queued: PbDeliveryStatus.DELIVERY_STATUS_QUEUED,
  sent: PbDeliveryStatus.DELIVERY_STATUS_SENT,
  delivered: PbDeliveryStatus.DELIVERY_STATUS_DELIVERED,
  undelivered: PbDeliveryStatus.DELIVERY_STATUS_UNDELIVERED,
  failed: PbDeliveryStatus.DELIVERY_STATUS_FAILED,
  read: PbDeliveryStatus.DELIVERY_STATUS_READ,
};
const OUTCOME: Record<AttemptOutcome, PbOutcome> = {
  accepted: PbOutcome.ATTEMPT_OUTCOME_ACCEPTED,
  rejected: PbOutcome.ATTEMPT_OUTCOME_REJECTED,
  error: PbOutcome.ATTEMPT_OUTCOME_ERROR,
  timeout: PbOutcome.ATTEMPT_OUTCOME_TIMEOUT,
};
const RECORD_KIND: Record<DispatchRecord['kind'], PbRecordKind> = {
  attempt: PbRecordKind.DISPATCH_RECORD_KIND_ATTEMPT,
  delivery_report: PbRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT,
  reconciliation: PbRecordKind.DISPATCH_RECORD_KIND_RECONCILIATION,
};

const KIND_FROM = invert(KIND);
const STATUS_FROM = invert(STATUS);
const CHANNEL_FROM = invert(CHANNEL);
const CONDITION_FROM = invert(CONDITION);
const DELIVERY_FROM = invert(DELIVERY);

export const kindFromPb = (v: PbKind, field: string) => fromPb(KIND_FROM, v, field);
export const statusFromPb = (v: PbStatus, field: string) => fromPb(STATUS_FROM, v, field);
export const channelFromPb = (v: PbChannel, field: string) => fromPb(CHANNEL_FROM, v, field);
export const deliveryFromPb = (v: PbDeliveryStatus, field: string) => fromPb(DELIVERY_FROM, v, field) ?? 'unspecified';

const MAX_DURATION_SECONDS = 8 * 24 * 3600;

/** A request's plan steps; a delay beyond the range is passed on as such so the domain refuses it. */
export function planFromPb(steps: readonly PbPlanStep[]): PlanStepInput[] {
  return steps.map((s, i) => ({
    channel: channelFromPb(s.channel, `channel_plan[${i}].channel`),
    delayMs: durationMs(s.delay),
    condition: fromPb(CONDITION_FROM, s.condition, `channel_plan[${i}].condition`),
  }));
}

function durationMs(d: Duration | undefined): number {
  if (!d) return 0;
  const seconds = Number(d.seconds);
  if (!Number.isFinite(seconds) || Math.abs(seconds) > MAX_DURATION_SECONDS)
    return seconds < 0 ? -1 : Number.MAX_SAFE_INTEGER;
  return seconds * 1000 + Math.trunc(d.nanos / 1e6);
}

function durationToPb(ms: number): Duration {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

export function preferencesFromPb(p: PbPreferences | undefined): PreferencesInput | undefined {
  if (!p) return undefined;
  return {
    kindChannels: p.kindChannels.map((k, i) => ({
      kind: fromPb(KIND_FROM, k.kind, `preferences.kind_channels[${i}].kind`),
      channels: k.channels.map((c, j) => fromPb(CHANNEL_FROM, c, `preferences.kind_channels[${i}].channels[${j}]`)),
    })),
    quietHours: p.quietHours && {
      start: p.quietHours.start,
      end: p.quietHours.end,
      timeZone: p.quietHours.timeZone,
    },
  };
}

export function preferencesToPb(p: PreferencesView): PbPreferences {
  return {
    userId: p.userId,
    kindChannels: Object.entries(p.kindChannels).map(([kind, channels]) => ({
      kind: KIND[kind as NotificationKind],
      channels: channels.map((c) => CHANNEL[c]),
    })),
    quietHours: p.quietHours && {
      start: { hours: Math.floor(p.quietHours.startMinute / 60), minutes: p.quietHours.startMinute % 60 },
      end: { hours: Math.floor(p.quietHours.endMinute / 60), minutes: p.quietHours.endMinute % 60 },
      timeZone: p.quietHours.timeZone,
    },
    etag: p.etag,
    updatedAt: p.updatedAt ?? undefined,
  };
}

export function recordToPb(v: RecordView): PbDispatchRecord {
  const { record: r, attempt } = v;
  return {
    recordId: r.recordId,
    notificationId: attempt?.notificationId ?? r.notificationId ?? '',
    kind: RECORD_KIND[r.kind],
    attemptNumber: attempt?.attemptNumber ?? 0,
    attemptRecordId: r.kind === 'attempt' ? '' : (attempt?.recordId ?? ''),
    planStepIndex: attempt?.planStep ?? 0,
    channel: attempt?.channel ? CHANNEL[attempt.channel] : PbChannel.CHANNEL_UNSPECIFIED,
    provider: r.provider,
    providerMessageId: r.providerMessageId,
    providerEventId: r.providerEventId ?? '',
    status: DELIVERY[r.status],
    providerTimestamp: r.providerTimestamp ?? undefined,
    errorCode: r.errorCode,
    errorMessage: r.errorMessage,
    outcome: r.outcome ? OUTCOME[r.outcome] : PbOutcome.ATTEMPT_OUTCOME_UNSPECIFIED,
    derivedStatus: DELIVERY[v.derived],
    recordedAt: r.recordedAt,
  };
}

export function notificationToPb(v: NotificationView): PbNotification {
  const i = v.intent;
  const service = i.kind === 'service_event';
  return {
    notificationId: i.notificationId,
    recipientUserId: i.recipientUserId,
    kind: KIND[i.kind],
    source: {
      eventId: i.eventId,
      threadId: i.threadId ?? '',
      messageId: i.messageId ?? '',
      sessionId: i.sessionId ?? '',
      requestedBy: service ? i.requestedBy : '',
      dedupeKey: service ? i.eventId : '',
      templateKey: service ? i.templateKey : '',
    },
    deepLink: i.deepLink,
    channelPlan: i.plan.map((s) => ({
      channel: CHANNEL[s.channel],
      delay: durationToPb(s.delay_ms),
      condition: CONDITION[s.condition],
    })),
    status: STATUS[v.status],
    statusReason: v.statusReason,
    urgent: i.urgent,
    quietHoursBypassed: i.quietHoursBypassed,
    quietHoursBypassReason: i.quietHoursBypassReason,
    deliveryStatus: DELIVERY[v.delivery],
    dispatchRecords: v.records.map(recordToPb),
    nextDispatchAt: i.nextDispatchAt ?? undefined,
    createdAt: i.createdAt,
    updatedAt: v.records.reduce((at, r) => (r.record.recordedAt > at ? r.record.recordedAt : at), i.updatedAt),
  };
}
