import { credentials } from '@grpc/grpc-js';
import { expect } from 'chai';
import { type Notification, NotificationServiceClient, NotificationStatus } from '../../gen/comms/v1/notification.js';
import { call, type TestUser } from './clients.js';
import type { App } from '../../src/app.js';
import { env, startTestApp } from './hooks.js';
import { db } from './threads.js';
import { sleep } from './messages.js';

/**
 * Runs a dispatching instance (NOTIFY_DISPATCH=true, with `overrides`) on the test database for the
 * suite: started in `before`, stopped in `after`. The shared test server only serves the API.
 */
export function useDispatcher(overrides: Record<string, string> = {}): { readonly app: App } {
  const holder = {} as { app: App };
  before(async function () {
    this.timeout(30_000);
    holder.app = await startTestApp({ NOTIFY_DISPATCH: 'true', NOTIFY_POLL_MS: '500', ...overrides });
  });
  after(async function () {
    this.timeout(30_000);
    await holder.app?.shutdown();
  });
  return holder;
}

/** A NotificationService client on the shared test server. */
export function notificationClient(address = env.address): NotificationServiceClient {
  return new NotificationServiceClient(address, credentials.createInsecure());
}

/** GetNotification as `user`. */
export async function getNotification(
  client: NotificationServiceClient,
  user: TestUser,
  notificationId: string,
): Promise<Notification> {
  const res = await call(client, client.getNotification, { notificationId }, user.md);
  return res.notification!;
}

/** Every intent of `recipient` as `user` sees them (newest first). */
export async function listAll(
  client: NotificationServiceClient,
  user: TestUser,
  recipientUserId = '',
): Promise<Notification[]> {
  const out: Notification[] = [];
  let pageToken = '';
  do {
    const res = await call(
      client,
      client.listNotifications,
      { pageSize: 200, pageToken, recipientUserId, status: 0, kind: 0 },
      user.md,
    );
    out.push(...res.notifications);
    pageToken = res.nextPageToken;
  } while (pageToken !== '');
  return out;
}

const FINAL = new Set([
  NotificationStatus.NOTIFICATION_STATUS_DELIVERED,
  NotificationStatus.NOTIFICATION_STATUS_FAILED,
  NotificationStatus.NOTIFICATION_STATUS_SUPPRESSED,
  NotificationStatus.NOTIFICATION_STATUS_CANCELLED,
]);

/** Polls GetNotification until `done` holds (default: a final status); fails after `timeoutMs`. */
export async function waitForNotification(
  client: NotificationServiceClient,
  user: TestUser,
  notificationId: string,
  done: (n: Notification) => boolean = (n) => FINAL.has(n.status),
  timeoutMs = 15_000,
): Promise<Notification> {
  const until = Date.now() + timeoutMs;
  let last: Notification | undefined;
  while (Date.now() < until) {
    last = await getNotification(client, user, notificationId);
    if (done(last)) return last;
    await sleep(100);
  }
  const { rows: jobs } = await db().query(
    'select state, retry_count, start_after, started_on, completed_on, output from pgboss.job where singleton_key = $1',
    [notificationId],
  );
  const { rows: queue } = await db().query(
    `select state, count(*)::int, min(start_after) from pgboss.job where start_after < now() group by state`,
  );
  jobs.push(...queue);
  expect.fail(
    `notification ${notificationId} did not get there in ${timeoutMs} ms; last: ${JSON.stringify(last)}; jobs: ${JSON.stringify(jobs)}`,
  );
}

/** Stored intents of a tenant (straight from the table). */
export async function storedIntents(tenantId: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query('select * from notification_intent where tenant_id = $1 order by created_at', [
    tenantId,
  ]);
  return rows;
}

/** What the sandbox provider was asked to send for a tenant, one row per request. */
export async function sandboxSends(tenantId: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query('select * from sandbox_message where tenant_id = $1 order by accepted_at', [
    tenantId,
  ]);
  return rows;
}

/** Tells the sandbox how to treat requests for `userId` on `channel` ('*' = every channel). */
export async function sandboxBehavior(
  tenantId: string,
  userId: string,
  b: {
    channel?: string;
    outcome?: 'accept' | 'reject' | 'error' | 'timeout';
    delayMs?: number;
    reports?: string[] | null;
  },
): Promise<void> {
  await db().query(
    `insert into sandbox_behavior (tenant_id, recipient_user_id, channel, outcome, delay_ms, reports)
     values ($1, $2, $3, $4, $5, $6)
     on conflict (tenant_id, recipient_user_id, channel) do update
       set outcome = excluded.outcome, delay_ms = excluded.delay_ms, reports = excluded.reports`,
    [tenantId, userId, b.channel ?? '*', b.outcome ?? 'accept', b.delayMs ?? 0, b.reports ?? null],
  );
}

/** Per-tenant notification settings (default plans per kind), overriding the defaults for one tenant. */
export async function tenantPlans(
  tenantId: string,
  kindPlans: Readonly<Record<string, readonly unknown[]>>,
): Promise<void> {
  await db().query(
    `insert into notification_settings (tenant_id, kind_plans, deep_link_base, previews)
     values ($1, $2, 'comms://', false)
     on conflict (tenant_id) do update set kind_plans = excluded.kind_plans`,
    [tenantId, JSON.stringify(kindPlans)],
  );
}

// ---- Request builders, preferences and quiet-hours windows for the notification suites ----

import {
  type Channel,
  ChannelPlanCondition,
  type ChannelPlanStep,
  DeliveryStatus,
  type DispatchRecord as PbDispatchRecord,
  type NotificationPreferences,
  type QuietHours as PbQuietHours,
  type ReportDeliveryRequest,
  type RequestNotificationRequest,
} from '../../gen/comms/v1/notification.js';
import { localMinute } from '../../src/domain/notification/quiet-hours.js';
import { newKey } from './messages.js';

/** A plan step as a request gives it (ALWAYS unless told). */
export function planStep(
  channel: Channel,
  delayMs = 0,
  condition: ChannelPlanCondition = ChannelPlanCondition.CHANNEL_PLAN_CONDITION_ALWAYS,
): ChannelPlanStep {
  return {
    channel,
    delay: { seconds: String(Math.floor(delayMs / 1000)), nanos: (delayMs % 1000) * 1e6 },
    condition,
  };
}

/** RequestNotification as `user`; unset fields default to a fresh dedupe key, template `generic`, no ids. */
export async function requestNotification(
  client: NotificationServiceClient,
  user: TestUser,
  req: Partial<RequestNotificationRequest> & { recipientUserId: string },
): Promise<Notification> {
  const res = await call(
    client,
    client.requestNotification,
    {
      dedupeKey: newKey('dedupe'),
      templateKey: 'generic',
      threadId: '',
      messageId: '',
      sessionId: '',
      urgent: false,
      channelPlan: [],
      ...req,
    },
    user.md,
  );
  return res.notification!;
}

/** ReportDelivery as `user`; unset fields default to the sandbox, fresh ids, DELIVERED, now. */
export async function reportDelivery(
  client: NotificationServiceClient,
  user: TestUser,
  req: Partial<ReportDeliveryRequest> = {},
): Promise<PbDispatchRecord> {
  const res = await call(
    client,
    client.reportDelivery,
    {
      provider: 'sandbox',
      providerMessageId: newKey('pm'),
      providerEventId: newKey('ev'),
      status: DeliveryStatus.DELIVERY_STATUS_DELIVERED,
      providerTimestamp: new Date(),
      errorCode: '',
      errorMessage: '',
      ...req,
    },
    user.md,
  );
  return res.record!;
}

/** GetNotificationPreferences as `user` (of `userId`, default the caller). */
export async function getPreferences(
  client: NotificationServiceClient,
  user: TestUser,
  userId = '',
): Promise<NotificationPreferences> {
  return (await call(client, client.getNotificationPreferences, { userId }, user.md)).preferences!;
}

/** UpdateNotificationPreferences as `user`. */
export async function updatePreferences(
  client: NotificationServiceClient,
  user: TestUser,
  req: { userId?: string; preferences?: Partial<NotificationPreferences>; updateMask?: string[]; etag?: string },
): Promise<NotificationPreferences> {
  const res = await call(
    client,
    client.updateNotificationPreferences,
    {
      userId: req.userId ?? '',
      preferences: req.preferences && {
        userId: '',
        kindChannels: [],
        quietHours: undefined,
        etag: '',
        updatedAt: undefined,
        ...req.preferences,
      },
      updateMask: req.updateMask ?? [],
      etag: req.etag ?? '',
    },
    user.md,
  );
  return res.preferences!;
}

/**
 * A quiet-hours window in `timeZone` that contains `at`: from `beforeMinutes` before to `afterMinutes`
 * after it on the local clock (whole minutes). With no daylight-saving change in between, the window
 * ends at `end` (the start of `at`'s minute plus `afterMinutes`).
 */
export function quietWindowAround(
  at: Date,
  timeZone: string,
  beforeMinutes: number,
  afterMinutes: number,
): { quietHours: PbQuietHours; end: Date } {
  const m = localMinute(at, timeZone);
  const start = (m - beforeMinutes + 1440) % 1440;
  const end = (m + afterMinutes) % 1440;
  return {
    quietHours: {
      start: { hours: Math.floor(start / 60), minutes: start % 60 },
      end: { hours: Math.floor(end / 60), minutes: end % 60 },
      timeZone,
    },
    end: new Date(Math.floor(at.getTime() / 60_000) * 60_000 + afterMinutes * 60_000),
  };
}

/** How many rows of `table` a tenant has. */
export async function tenantRows(table: string, tenantId: string): Promise<number> {
  const { rows } = await db().query<{ n: number }>(`select count(*)::int as n from ${table} where tenant_id = $1`, [
    tenantId,
  ]);
  return rows[0]!.n;
}
