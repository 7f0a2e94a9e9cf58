import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  Channel,
  DeliveryStatus,
  DispatchRecordKind,
  type Notification,
  NotificationKind,
  type RequestNotificationRequest,
} from '../../gen/comms/v1/notification.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import type { Role } from '../../src/domain/actor.js';
import {
  call,
  expectError,
  messageClient,
  newTenant,
  newUser,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { expectAll, expectInvalid, newKey, send } from '../support/messages.js';
import { createThread, participant, sameSubjectIn } from '../support/threads.js';
import {
  getNotification,
  getPreferences,
  listAll,
  notificationClient,
  planStep,
  reportDelivery,
  requestNotification,
  storedIntents,
  tenantRows,
  updatePreferences,
} from '../support/notifications.js';

const END_USER_ROLES: readonly Role[] = ['patient', 'provider', 'staff'];
const DAY_MS = 24 * 3_600_000;

describe('NotificationService: access and validation', () => {
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let notifications: ReturnType<typeof notificationClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    notifications = notificationClient();
  });
  after(() => [threads, messages, notifications].forEach((c) => c.close()));

  /** One tenant with a service, a patient (the recipient of one intent) and every other caller the rules name. */
  async function scene() {
    const tenant = newTenant();
    const foreign = newTenant();
    const [service, patient, otherPatient, provider, staff, foreignStaff, foreignService] = await Promise.all([
      newUser(tenant, 'service'),
      newUser(tenant, 'patient'),
      newUser(tenant, 'patient'),
      newUser(tenant, 'provider'),
      newUser(tenant, 'staff'),
      newUser(foreign, 'staff'),
      newUser(foreign, 'service'),
    ]);
    const intent = await requestNotification(notifications, service, { recipientUserId: patient.userId });
    return { tenant, foreign, service, patient, otherPatient, provider, staff, foreignStaff, foreignService, intent };
  }

  const list = (user: TestUser, recipientUserId = '') =>
    call(
      notifications,
      notifications.listNotifications,
      { pageSize: 0, pageToken: '', recipientUserId, status: 0, kind: 0 },
      user.md,
    );

  describe('writes are for `service` callers only', () => {
    for (const role of END_USER_ROLES) {
      it(`RequestNotification as ${role}: PERMISSION_DENIED (ROLE_NOT_ALLOWED), nothing stored`, async () => {
        const tenant = newTenant();
        const [caller, patient] = await Promise.all([newUser(tenant, role), newUser(tenant, 'patient')]);
        await expectError(
          requestNotification(notifications, caller, {
            recipientUserId: patient.userId,
            channelPlan: [planStep(Channel.CHANNEL_PUSH)],
          }),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
        // Also when the caller names itself as the recipient.
        await expectError(
          requestNotification(notifications, caller, { recipientUserId: caller.userId }),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
        expect(await storedIntents(tenant)).to.deep.equal([]);
        expect(await listAll(notifications, patient)).to.deep.equal([]);
      });

      it(`ReportDelivery as ${role}: PERMISSION_DENIED (ROLE_NOT_ALLOWED), nothing appended`, async () => {
        const tenant = newTenant();
        const caller = await newUser(tenant, role);
        await expectError(reportDelivery(notifications, caller), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
        await expectError(
          reportDelivery(notifications, caller, { status: DeliveryStatus.DELIVERY_STATUS_FAILED, errorCode: '30003' }),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
        expect(await tenantRows('dispatch_record', tenant)).to.equal(0);
      });

      it(`UpdateNotificationPreferences of another user as ${role}: PERMISSION_DENIED, nothing changes`, async () => {
        const tenant = newTenant();
        const [caller, patient] = await Promise.all([newUser(tenant, role), newUser(tenant, 'patient')]);
        const before = await getPreferences(notifications, patient);
        await expectError(
          updatePreferences(notifications, caller, {
            userId: patient.userId,
            preferences: { kindChannels: [{ kind: NotificationKind.NOTIFICATION_KIND_MESSAGE_POSTED, channels: [] }] },
          }),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
        expect(await tenantRows('notification_preference', tenant)).to.equal(0);
        expect(await getPreferences(notifications, patient)).to.deep.equal(before);
        // Its own preferences it may change.
        const own = await updatePreferences(notifications, caller, {
          preferences: { kindChannels: [{ kind: NotificationKind.NOTIFICATION_KIND_MESSAGE_POSTED, channels: [] }] },
        });
        expect(own.userId).to.equal(caller.userId);
        expect(own.etag).to.equal('p1');
      });
    }

    it('a service caller may request, report and change another user’s preferences', async () => {
      const tenant = newTenant();
      const [service, patient] = await Promise.all([newUser(tenant, 'service'), newUser(tenant, 'patient')]);
      const n = await requestNotification(notifications, service, { recipientUserId: patient.userId });
      expect(n.recipientUserId).to.equal(patient.userId);
      const record = await reportDelivery(notifications, service);
      expect(record.kind).to.equal(DispatchRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT);
      const prefs = await updatePreferences(notifications, service, {
        userId: patient.userId,
        preferences: {
          kindChannels: [{ kind: NotificationKind.NOTIFICATION_KIND_MESSAGE_POSTED, channels: [Channel.CHANNEL_SMS] }],
        },
      });
      expect(prefs.userId).to.equal(patient.userId);
      expect((await getPreferences(notifications, patient)).kindChannels).to.deep.equal(prefs.kindChannels);
    });
  });

  describe('reads', () => {
    it('the recipient sees its own intent, by id and in its list', async () => {
      const s = await scene();
      const got = await getNotification(notifications, s.patient, s.intent.notificationId);
      expect(got.notificationId).to.equal(s.intent.notificationId);
      expect(got.recipientUserId).to.equal(s.patient.userId);
      expect((await listAll(notifications, s.patient)).map((n) => n.notificationId)).to.deep.equal([
        s.intent.notificationId,
      ]);
      // Ids are compared case-insensitively.
      const upper = await getNotification(notifications, s.patient, s.intent.notificationId.toUpperCase());
      expect(upper.notificationId).to.equal(s.intent.notificationId);
      // Naming itself is the same as naming no one.
      expect((await list(s.patient, s.patient.userId)).notifications).to.have.length(1);
    });

    it('staff and service callers of the tenant see any intent and list any recipient', async () => {
      const s = await scene();
      for (const user of [s.staff, s.service]) {
        const got = await getNotification(notifications, user, s.intent.notificationId);
        expect(got.notificationId, user.userId).to.equal(s.intent.notificationId);
        const listed = await listAll(notifications, user, s.patient.userId);
        expect(
          listed.map((n) => n.notificationId),
          user.userId,
        ).to.deep.equal([s.intent.notificationId]);
        const prefs = await getPreferences(notifications, user, s.patient.userId);
        expect(prefs.userId).to.equal(s.patient.userId);
      }
    });

    it('other patients and providers of the tenant: NOT_FOUND by id, PERMISSION_DENIED naming the recipient', async () => {
      const s = await scene();
      for (const user of [s.otherPatient, s.provider]) {
        await expectError(
          getNotification(notifications, user, s.intent.notificationId),
          status.NOT_FOUND,
          'NOTIFICATION_NOT_FOUND',
        );
        await expectError(list(user, s.patient.userId), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
        await expectError(
          getPreferences(notifications, user, s.patient.userId),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
        expect((await list(user)).notifications, `own list of ${user.userId}`).to.deep.equal([]);
      }
    });

    it('another tenant’s staff and service, and the same subject in another tenant: NOT_FOUND', async () => {
      const s = await scene();
      const sameSubject = await sameSubjectIn(s.foreign, s.patient);
      for (const user of [s.foreignStaff, s.foreignService, sameSubject]) {
        const { info } = await expectError(
          getNotification(notifications, user, s.intent.notificationId),
          status.NOT_FOUND,
          'NOTIFICATION_NOT_FOUND',
        );
        expect(info!.metadata.notification_id).to.equal(s.intent.notificationId);
        expect((await list(user, s.patient.userId)).notifications, user.userId).to.deep.equal([]);
      }
      // Not found is not found: an id that never existed answers the same.
      await expectError(getNotification(notifications, s.staff, uuidv7()), status.NOT_FOUND, 'NOTIFICATION_NOT_FOUND');
    });

    it('malformed ids and user ids are INVALID_ARGUMENT naming the field', async () => {
      const s = await scene();
      await expectAll([
        [
          'empty notification_id',
          () => expectInvalid(getNotification(notifications, s.patient, ''), ['notification_id'], 'empty'),
        ],
        [
          'notification_id not a UUID',
          () => expectInvalid(getNotification(notifications, s.staff, 'n-123'), ['notification_id'], 'not a UUID'),
        ],
        [
          'recipient_user_id too long',
          () => expectInvalid(list(s.staff, 'u'.repeat(129)), ['recipient_user_id'], 'too long'),
        ],
        [
          'recipient_user_id with a control character',
          () => expectInvalid(list(s.staff, 'bad\u0007id'), ['recipient_user_id'], 'control character'),
        ],
        [
          'preferences user_id too long',
          () => expectInvalid(getPreferences(notifications, s.staff, 'u'.repeat(129)), ['user_id'], 'too long'),
        ],
        [
          'update preferences user_id too long',
          () =>
            expectInvalid(
              updatePreferences(notifications, s.service, { userId: 'u'.repeat(129), preferences: {} }),
              ['user_id'],
              'too long',
            ),
        ],
      ]);
    });
  });

  describe('RequestNotification validation', () => {
    /** A tenant with a service, a patient, and a thread with one message (and a second thread). */
    async function withThreads() {
      const tenant = newTenant();
      const [service, provider, patient] = await Promise.all([
        newUser(tenant, 'service'),
        newUser(tenant, 'provider'),
        newUser(tenant, 'patient'),
      ]);
      const participants = [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)];
      const thread = await createThread(threads, provider, { participants });
      const other = await createThread(threads, provider, { participants });
      const message = (await send(messages, provider, thread.threadId, 'hello')).message!;
      const base = await storedIntents(tenant);
      return { tenant, service, provider, patient, thread, other, message, intentsBefore: base.length };
    }

    it('field violations: ids, texts, thread/message/session combinations, plan steps', async () => {
      const s = await withThreads();
      const req = (extra: Partial<RequestNotificationRequest>) =>
        requestNotification(notifications, s.service, { recipientUserId: s.patient.userId, ...extra });
      const step = planStep(Channel.CHANNEL_PUSH);
      await expectAll([
        ['empty recipient', () => expectInvalid(req({ recipientUserId: '' }), ['recipient_user_id'], 'empty')],
        [
          'long recipient',
          () => expectInvalid(req({ recipientUserId: 'r'.repeat(129) }), ['recipient_user_id'], 'long'),
        ],
        ['empty dedupe key', () => expectInvalid(req({ dedupeKey: '' }), ['dedupe_key'], 'empty')],
        ['long dedupe key', () => expectInvalid(req({ dedupeKey: 'k'.repeat(129) }), ['dedupe_key'], 'long')],
        ['empty template', () => expectInvalid(req({ templateKey: '' }), ['template_key'], 'empty')],
        ['long template', () => expectInvalid(req({ templateKey: 't'.repeat(65) }), ['template_key'], 'long')],
        ['thread_id not a UUID', () => expectInvalid(req({ threadId: 'thread-1' }), ['thread_id'], 'not a UUID')],
        [
          'message_id not a UUID',
          () => expectInvalid(req({ threadId: s.thread.threadId, messageId: 'm-1' }), ['message_id'], 'not a UUID'),
        ],
        ['session_id not a UUID', () => expectInvalid(req({ sessionId: 'visit' }), ['session_id'], 'not a UUID')],
        [
          'message_id without thread_id',
          () => expectInvalid(req({ messageId: s.message.messageId }), ['message_id'], 'message without thread'),
        ],
        [
          'thread_id and session_id together',
          () => expectInvalid(req({ threadId: s.thread.threadId, sessionId: uuidv7() }), ['session_id'], 'both'),
        ],
        [
          'more than 4 plan steps',
          () => expectInvalid(req({ channelPlan: [step, step, step, step, step] }), ['channel_plan'], '5 steps'),
        ],
        [
          'plan step without channel',
          () =>
            expectInvalid(
              req({ channelPlan: [step, planStep(Channel.CHANNEL_UNSPECIFIED)] }),
              ['channel_plan[1].channel'],
              'unspecified channel',
            ),
        ],
        [
          'negative delay',
          () =>
            expectInvalid(
              req({ channelPlan: [{ ...step, delay: { seconds: '-1', nanos: 0 } }] }),
              ['channel_plan[0].delay'],
              'negative delay',
            ),
        ],
        [
          'delay over 7 days',
          () =>
            expectInvalid(
              req({ channelPlan: [planStep(Channel.CHANNEL_SMS, 7 * DAY_MS + 1000)] }),
              ['channel_plan[0].delay'],
              'delay 7 days + 1 s',
            ),
        ],
      ]);
      expect(await storedIntents(s.tenant), 'nothing stored').to.have.length(s.intentsBefore);
      // The limits themselves are accepted.
      const atLimit = await req({
        channelPlan: [step, step, step, planStep(Channel.CHANNEL_EMAIL, 7 * DAY_MS)],
        dedupeKey: 'k'.repeat(128),
      });
      expect(atLimit.channelPlan).to.have.length(4);
      expect(atLimit.channelPlan[3]!.delay).to.deep.equal({ seconds: String(7 * 24 * 3600), nanos: 0 });
    });

    it('an unknown template is INVALID_ARGUMENT (UNKNOWN_TEMPLATE); free text is not a template', async () => {
      const s = await withThreads();
      for (const templateKey of ['no_such_template', 'You have a new notification', 'toString', '__proto__']) {
        const { info } = await expectError(
          requestNotification(notifications, s.service, { recipientUserId: s.patient.userId, templateKey }),
          status.INVALID_ARGUMENT,
          'UNKNOWN_TEMPLATE',
        );
        expect(info!.metadata.template_key).to.equal(templateKey);
      }
      expect(await storedIntents(s.tenant)).to.have.length(s.intentsBefore);
    });

    it('a thread, message or session that does not exist in the tenant is NOT_FOUND with its reason', async () => {
      const s = await withThreads();
      const foreignProvider = await newUser(newTenant(), 'provider');
      const foreignThread = await createThread(threads, foreignProvider);
      const req = (extra: { threadId?: string; messageId?: string; sessionId?: string }) =>
        requestNotification(notifications, s.service, { recipientUserId: s.patient.userId, ...extra });
      await expectError(req({ threadId: uuidv7() }), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      await expectError(req({ threadId: foreignThread.threadId }), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      await expectError(
        req({ threadId: s.other.threadId, messageId: s.message.messageId }),
        status.NOT_FOUND,
        'MESSAGE_NOT_FOUND',
      );
      await expectError(
        req({ threadId: s.thread.threadId, messageId: uuidv7() }),
        status.NOT_FOUND,
        'MESSAGE_NOT_FOUND',
      );
      await expectError(req({ sessionId: uuidv7() }), status.NOT_FOUND, 'SESSION_NOT_FOUND');
      expect(await storedIntents(s.tenant)).to.have.length(s.intentsBefore);
      // The right combination is accepted.
      const ok = await req({ threadId: s.thread.threadId, messageId: s.message.messageId });
      expect(ok.source).to.include({ threadId: s.thread.threadId, messageId: s.message.messageId });
    });
  });

  describe('ReportDelivery', () => {
    it('validates its fields and refuses an unknown provider (UNKNOWN_PROVIDER)', async () => {
      const tenant = newTenant();
      const service = await newUser(tenant, 'service');
      await expectAll([
        [
          'empty provider',
          () => expectInvalid(reportDelivery(notifications, service, { provider: '' }), ['provider'], 'empty'),
        ],
        [
          'empty provider_message_id',
          () =>
            expectInvalid(
              reportDelivery(notifications, service, { providerMessageId: '' }),
              ['provider_message_id'],
              'empty',
            ),
        ],
        [
          'empty provider_event_id',
          () =>
            expectInvalid(
              reportDelivery(notifications, service, { providerEventId: '' }),
              ['provider_event_id'],
              'empty',
            ),
        ],
        [
          'unspecified status',
          () =>
            expectInvalid(
              reportDelivery(notifications, service, { status: DeliveryStatus.DELIVERY_STATUS_UNSPECIFIED }),
              ['status'],
              'unspecified',
            ),
        ],
        [
          'no provider_timestamp',
          () =>
            expectInvalid(
              reportDelivery(notifications, service, { providerTimestamp: undefined }),
              ['provider_timestamp'],
              'missing timestamp',
            ),
        ],
        [
          'error_message over 500 characters',
          () =>
            expectInvalid(
              reportDelivery(notifications, service, { errorMessage: 'e'.repeat(501) }),
              ['error_message'],
              'long error message',
            ),
        ],
      ]);
      await expectError(
        reportDelivery(notifications, service, { provider: 'twilio' }),
        status.INVALID_ARGUMENT,
        'UNKNOWN_PROVIDER',
      );
      expect(await tenantRows('dispatch_record', tenant)).to.equal(0);
    });

    it('a repeated report returns the first record and appends nothing; an early report is kept unlinked', async () => {
      const tenant = newTenant();
      const service = await newUser(tenant, 'service');
      const report = {
        providerMessageId: newKey('pm'),
        providerEventId: newKey('ev'),
        status: DeliveryStatus.DELIVERY_STATUS_DELIVERED,
        providerTimestamp: new Date('2026-01-02T03:04:05.678Z'),
      };
      const first = await reportDelivery(notifications, service, report);
      expect(first.kind).to.equal(DispatchRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT);
      expect(first.notificationId, 'no attempt yet').to.equal('');
      expect(first.attemptNumber).to.equal(0);
      expect(first.attemptRecordId).to.equal('');
      expect(first.providerEventId).to.equal(report.providerEventId);
      expect(first.providerTimestamp).to.deep.equal(report.providerTimestamp);
      const again = await reportDelivery(notifications, service, {
        ...report,
        status: DeliveryStatus.DELIVERY_STATUS_FAILED,
        providerTimestamp: new Date(),
      });
      expect(again.recordId).to.equal(first.recordId);
      expect(again.status).to.equal(DeliveryStatus.DELIVERY_STATUS_DELIVERED);
      expect(await tenantRows('dispatch_record', tenant)).to.equal(1);
    });
  });

  it('intents of one tenant never appear in another tenant’s lists, even for the same recipient id', async () => {
    const s = await scene();
    const foreignPatient = await sameSubjectIn(s.foreign, s.patient);
    const theirs: Notification = await requestNotification(notifications, s.foreignService, {
      recipientUserId: s.patient.userId,
      dedupeKey: s.intent.source!.dedupeKey,
    });
    expect(theirs.notificationId).to.not.equal(s.intent.notificationId);
    expect((await listAll(notifications, foreignPatient)).map((n) => n.notificationId)).to.deep.equal([
      theirs.notificationId,
    ]);
    expect((await listAll(notifications, s.patient)).map((n) => n.notificationId)).to.deep.equal([
      s.intent.notificationId,
    ]);
  });
});
