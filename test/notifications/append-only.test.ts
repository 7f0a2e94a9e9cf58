import { expect } from 'chai';
import type { DatabaseError } from 'pg';
import {
  Channel,
  DeliveryStatus,
  DispatchRecordKind,
  type Notification,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import { call, messageClient, newUser, type TestUser, threadClient } from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { send } from '../support/messages.js';
import { db } from '../support/threads.js';
import { DEFAULT_PLANS } from '../../src/domain/notification/notification.policy.js';
import {
  getNotification,
  listAll,
  notificationClient,
  planStep,
  quietWindowAround,
  reportDelivery,
  requestNotification,
  tenantPlans,
  tenantRows,
  updatePreferences,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';

const APPEND_ONLY = 'dispatch records are append-only';
const NEVER_DELETED = 'notification intents are never deleted';
const ABOUT_FIXED = 'what a notification intent is about never changes';

/** Runs `sql` and asserts the database refuses it with insufficient_privilege (42501) and `message`. */
async function expectRefused(sql: string, params: unknown[], message: string | RegExp): Promise<void> {
  const err = await db()
    .query(sql, params)
    .then(
      (res) => expect.fail(`expected "${sql}" to be refused; it affected ${res.rowCount} rows`),
      (e: DatabaseError) => e,
    );
  expect(err.code, `${sql}: ${err.message}`).to.equal('42501');
  if (typeof message === 'string') expect(err.message).to.equal(message);
  else expect(err.message).to.match(message);
}

async function recordRows(tenantId: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query('select * from dispatch_record where tenant_id = $1 order by record_id', [
    tenantId,
  ]);
  return rows;
}

async function intentRow(tenantId: string, notificationId: string): Promise<Record<string, unknown>> {
  const { rows } = await db().query('select * from notification_intent where tenant_id = $1 and notification_id = $2', [
    tenantId,
    notificationId,
  ]);
  expect(rows, `intent ${notificationId} stored`).to.have.length(1);
  return rows[0]!;
}

describe('Notification storage guards (append-only records, server-authoritative intents)', () => {
  useDispatcher();
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let notifications: ReturnType<typeof notificationClient>;

  /** Real rows made through the API: a delivered, a suppressed, a cancelled and a quiet-hours-bypassing intent. */
  const s = {} as {
    tenant: string;
    patient: TestUser;
    service: TestUser;
    delivered: Notification;
    suppressed: Notification;
    cancelled: Notification;
    cancelledTenant: string;
    bypassed: Notification;
  };

  before(async function () {
    this.timeout(30_000);
    threads = threadClient();
    messages = messageClient();
    notifications = notificationClient();

    const a = await twoPartyThread(threads);
    s.tenant = a.tenant;
    s.patient = a.patient;
    s.service = await newUser(a.tenant, 'service');
    // Message intents use the default plan; service requests without a plan have none (suppressed).
    await tenantPlans(a.tenant, { message_posted: DEFAULT_PLANS.message_posted });
    await send(messages, a.provider, a.thread.threadId, 'your appointment moved');
    const [posted] = await listAll(notifications, a.patient);
    s.suppressed = await requestNotification(notifications, s.service, { recipientUserId: a.patient.userId });
    expect(s.suppressed.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_SUPPRESSED);
    // Wait for the delivered intent before quiet hours would hold it back.
    s.delivered = await waitForNotification(notifications, a.patient, posted!.notificationId, (n) =>
      n.dispatchRecords.some((r) => r.kind === DispatchRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT),
    );
    const { quietHours } = quietWindowAround(new Date(), 'UTC', 60, 60);
    await updatePreferences(notifications, a.patient, { preferences: { quietHours } });
    const urgent = await requestNotification(notifications, s.service, {
      recipientUserId: a.patient.userId,
      urgent: true,
      channelPlan: [planStep(Channel.CHANNEL_PUSH)],
    });
    s.bypassed = await waitForNotification(
      notifications,
      a.patient,
      urgent.notificationId,
      (n) => n.quietHoursBypassed,
    );

    // A recipient who leaves the thread before the delayed push is due: the intent is cancelled.
    const b = await twoPartyThread(threads);
    s.cancelledTenant = b.tenant;
    await tenantPlans(b.tenant, { message_posted: [{ channel: 'push', delay_ms: 1500, condition: 'always' }] });
    await send(messages, b.provider, b.thread.threadId, 'are you still there?');
    const [pending] = await listAll(notifications, b.patient);
    await call(
      threads,
      threads.removeParticipant,
      { threadId: b.thread.threadId, userId: b.patient.userId, etag: '' },
      b.provider.md,
    );
    s.cancelled = await waitForNotification(notifications, b.patient, pending!.notificationId);
  });
  after(() => [threads, messages, notifications].forEach((c) => c.close()));

  it('the scene: the intents ended as intended through the API', () => {
    expect(s.delivered.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
    expect(s.suppressed.statusReason).to.equal('NO_CHANNEL_ALLOWED');
    expect(s.cancelled.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_CANCELLED);
    expect(s.cancelled.statusReason).to.equal('NO_LONGER_RELEVANT');
    expect(s.cancelled.dispatchRecords).to.deep.equal([]);
    expect(s.bypassed.quietHoursBypassReason).to.equal('URGENT_SERVICE_REQUEST');
  });

  describe('dispatch_record is append-only', () => {
    it('UPDATE of any column is refused, even one that changes nothing', async () => {
      const before = await recordRows(s.tenant);
      expect(before.length).to.be.at.least(2);
      const attempt = s.delivered.dispatchRecords.find(
        (r) => r.kind === DispatchRecordKind.DISPATCH_RECORD_KIND_ATTEMPT,
      )!;
      const report = s.delivered.dispatchRecords.find(
        (r) => r.kind === DispatchRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT,
      )!;
      const one = 'where tenant_id = $1 and record_id = $2';
      for (const [set, id] of [
        ["status = 'failed'", report.recordId],
        ["status = 'failed'", attempt.recordId],
        ["provider_message_id = 'elsewhere'", report.recordId],
        ["recorded_at = recorded_at + interval '1 hour'", attempt.recordId],
        ["error_message = 'rewritten'", attempt.recordId],
        ['attempt_record_id = record_id', report.recordId],
        ['status = status', report.recordId],
      ] as const) {
        await expectRefused(`update dispatch_record set ${set} ${one}`, [s.tenant, id], APPEND_ONLY);
      }
      await expectRefused("update dispatch_record set error_code = 'x' where tenant_id = $1", [s.tenant], APPEND_ONLY);
      expect(await recordRows(s.tenant)).to.deep.equal(before);
    });

    it('DELETE and TRUNCATE are refused', async () => {
      const before = await recordRows(s.tenant);
      await expectRefused(
        'delete from dispatch_record where tenant_id = $1 and record_id = $2',
        [s.tenant, before[0]!.record_id],
        APPEND_ONLY,
      );
      await expectRefused('delete from dispatch_record where tenant_id = $1', [s.tenant], APPEND_ONLY);
      // In a transaction that is rolled back either way, so a missing guard cannot wipe the table.
      const client = await db().connect();
      try {
        await client.query('begin');
        const err = await client.query('truncate dispatch_record').then(
          () => expect.fail('TRUNCATE dispatch_record was allowed'),
          (e: DatabaseError) => e,
        );
        expect(err.code).to.equal('42501');
        expect(err.message).to.equal(APPEND_ONLY);
      } finally {
        await client.query('rollback');
        client.release();
      }
      expect(await recordRows(s.tenant)).to.deep.equal(before);
    });

    it('appending is the only way: a later report is a new record and changes the derived status', async () => {
      const before = await tenantRows('dispatch_record', s.tenant);
      const attempt = s.delivered.dispatchRecords.find(
        (r) => r.kind === DispatchRecordKind.DISPATCH_RECORD_KIND_ATTEMPT,
      )!;
      const record = await reportDelivery(notifications, s.service, {
        providerMessageId: attempt.providerMessageId,
        providerEventId: `${attempt.providerMessageId}:read`,
        status: DeliveryStatus.DELIVERY_STATUS_READ,
        providerTimestamp: new Date(),
      });
      expect(record.notificationId).to.equal(s.delivered.notificationId);
      expect(record.attemptRecordId).to.equal(attempt.recordId);
      expect(await tenantRows('dispatch_record', s.tenant)).to.equal(before + 1);
      const now = await getNotification(notifications, s.patient, s.delivered.notificationId);
      expect(now.deliveryStatus).to.equal(DeliveryStatus.DELIVERY_STATUS_READ);
      expect(now.dispatchRecords.map((r) => r.recordId)).to.include(record.recordId);
      // The earlier records are still there, as they were.
      for (const r of s.delivered.dispatchRecords) {
        expect(now.dispatchRecords.find((x) => x.recordId === r.recordId)!.status).to.equal(r.status);
      }
    });
  });

  describe('notification_intent is server-authoritative', () => {
    it('DELETE is refused', async () => {
      await expectRefused(
        'delete from notification_intent where tenant_id = $1 and notification_id = $2',
        [s.tenant, s.delivered.notificationId],
        NEVER_DELETED,
      );
      await expectRefused('delete from notification_intent where tenant_id = $1', [s.tenant], NEVER_DELETED);
      expect(await tenantRows('notification_intent', s.tenant)).to.equal(3);
    });

    it('what an intent is about never changes', async () => {
      const id = s.delivered.notificationId;
      const before = await intentRow(s.tenant, id);
      const changes = [
        "recipient_user_id = 'someone-else'",
        "kind = 'thread_escalated'",
        "event_id = 'another-event'",
        'thread_id = gen_random_uuid()',
        'thread_id = null, message_id = null',
        'message_id = gen_random_uuid()',
        "requested_by = 'a-service'",
        "template_key = 'generic'",
        "deep_link = 'comms://threads/elsewhere'",
        `plan = '[{"channel": "sms", "delay_ms": 0, "condition": "always"}]'`,
        'urgent = true',
        "created_at = created_at - interval '1 day'",
        'notification_id = gen_random_uuid()',
        "tenant_id = 'another-tenant'",
      ];
      for (const set of changes) {
        await expectRefused(
          `update notification_intent set ${set} where tenant_id = $1 and notification_id = $2`,
          [s.tenant, id],
          ABOUT_FIXED,
        );
      }
      expect(await intentRow(s.tenant, id)).to.deep.equal(before);
    });

    it('SUPPRESSED and CANCELLED are final', async () => {
      const sup = s.suppressed.notificationId;
      for (const state of ['pending', 'dispatching', 'settled', 'cancelled']) {
        await expectRefused(
          'update notification_intent set state = $3 where tenant_id = $1 and notification_id = $2',
          [s.tenant, sup, state],
          'a suppressed notification intent stays so',
        );
      }
      const can = s.cancelled.notificationId;
      for (const state of ['pending', 'dispatching', 'settled', 'suppressed']) {
        await expectRefused(
          'update notification_intent set state = $3 where tenant_id = $1 and notification_id = $2',
          [s.cancelledTenant, can, state],
          'a cancelled notification intent stays so',
        );
      }
      expect((await intentRow(s.tenant, sup)).state).to.equal('suppressed');
      expect((await intentRow(s.cancelledTenant, can)).state).to.equal('cancelled');
      expect((await getNotification(notifications, s.patient, sup)).status).to.equal(
        NotificationStatus.NOTIFICATION_STATUS_SUPPRESSED,
      );
    });

    it('a recorded quiet-hours bypass is never cleared', async () => {
      const id = s.bypassed.notificationId;
      await expectRefused(
        'update notification_intent set quiet_hours_bypassed = false where tenant_id = $1 and notification_id = $2',
        [s.tenant, id],
        'a recorded quiet-hours bypass is never cleared',
      );
      expect((await intentRow(s.tenant, id)).quiet_hours_bypassed).to.equal(true);
    });

    it('the dispatcher’s own columns stay writable (the guard refuses only the above)', async () => {
      const id = s.delivered.notificationId;
      const before = await intentRow(s.tenant, id);
      const res = await db().query(
        `update notification_intent set updated_at = updated_at, next_step = next_step, state = state
          where tenant_id = $1 and notification_id = $2`,
        [s.tenant, id],
      );
      expect(res.rowCount).to.equal(1);
      expect(await intentRow(s.tenant, id)).to.deep.equal(before);
    });
  });
});
