import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  Channel,
  ChannelPlanCondition,
  type KindChannelPreference,
  NotificationKind,
  type NotificationPreferences,
  NotificationStatus,
  type QuietHours,
} from '../../gen/comms/v1/notification.js';
import { expectError, messageClient, newTenant, newUser, type TestUser, threadClient } from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { expectAll, expectInvalid, send } from '../support/messages.js';
import { db, expectWithin } from '../support/threads.js';
import { DEFAULT_PLANS } from '../../src/domain/notification/notification.policy.js';
import {
  getNotification,
  getPreferences,
  listAll,
  notificationClient,
  planStep,
  quietWindowAround,
  requestNotification,
  sandboxSends,
  tenantPlans,
  tenantRows,
  updatePreferences,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';

const { CHANNEL_PUSH, CHANNEL_SMS, CHANNEL_EMAIL, CHANNEL_IN_APP, CHANNEL_UNSPECIFIED } = Channel;
const { NOTIFICATION_KIND_MESSAGE_POSTED, NOTIFICATION_KIND_SERVICE_EVENT, NOTIFICATION_KIND_THREAD_ESCALATED } =
  NotificationKind;
const { NOTIFICATION_STATUS_PENDING, NOTIFICATION_STATUS_SUPPRESSED, NOTIFICATION_STATUS_DELIVERED } =
  NotificationStatus;

const kc = (kind: NotificationKind, ...channels: Channel[]): KindChannelPreference => ({ kind, channels });
const time = (hours: number, minutes = 0) => ({ hours, minutes });
const CHICAGO_NIGHT: QuietHours = { start: time(22), end: time(7), timeZone: 'America/Chicago' };

describe('NotificationService: preferences', () => {
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let notifications: ReturnType<typeof notificationClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    notifications = notificationClient();
  });
  after(() => [threads, messages, notifications].forEach((c) => c.close()));

  /** A fresh tenant with a patient, staff and a service caller. */
  async function people() {
    const tenant = newTenant();
    const [patient, staff, service] = await Promise.all([
      newUser(tenant, 'patient'),
      newUser(tenant, 'staff'),
      newUser(tenant, 'service'),
    ]);
    return { tenant, patient, staff, service };
  }

  const update = (user: TestUser, req: Parameters<typeof updatePreferences>[2]) =>
    updatePreferences(notifications, user, req);

  describe('reading and changing', () => {
    it('never set: the tenant defaults, etag p0, no quiet hours, no updated_at', async () => {
      const { patient, staff } = await people();
      const expected: NotificationPreferences = {
        userId: patient.userId,
        kindChannels: [],
        quietHours: undefined,
        etag: 'p0',
        updatedAt: undefined,
      };
      expect(await getPreferences(notifications, patient)).to.deep.equal(expected);
      expect(await getPreferences(notifications, patient, patient.userId)).to.deep.equal(expected);
      expect(await getPreferences(notifications, staff, patient.userId)).to.deep.equal(expected);
    });

    it('update and get round trip; the etag moves p0 → p1 → p2; update_mask limits what changes', async () => {
      const { patient, tenant } = await people();
      const kinds = [
        kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_PUSH, CHANNEL_SMS),
        kc(NOTIFICATION_KIND_SERVICE_EVENT),
      ];
      const before = new Date();
      const first = await update(patient, {
        preferences: { kindChannels: kinds, quietHours: CHICAGO_NIGHT },
        etag: 'p0',
      });
      expectWithin(first.updatedAt, before, new Date(), 'updated_at');
      expect(first.etag).to.equal('p1');
      expect(first.userId).to.equal(patient.userId);
      expect(first.kindChannels).to.have.deep.members(kinds);
      expect(first.quietHours).to.deep.equal(CHICAGO_NIGHT);
      expect(await getPreferences(notifications, patient)).to.deep.equal(first);
      expect(await tenantRows('notification_preference', tenant)).to.equal(1);

      // Only quiet hours: the channels stay.
      const utcMorning: QuietHours = { start: time(6, 30), end: time(8, 15), timeZone: 'UTC' };
      const second = await update(patient, {
        preferences: { kindChannels: [], quietHours: utcMorning },
        updateMask: ['quiet_hours'],
        etag: 'p1',
      });
      expect(second.etag).to.equal('p2');
      expect(second.kindChannels).to.have.deep.members(kinds);
      expect(second.quietHours).to.deep.equal(utcMorning);

      // Only kind_channels: the quiet hours stay, whatever the request's quiet_hours say.
      const third = await update(patient, {
        preferences: { kindChannels: [kc(NOTIFICATION_KIND_THREAD_ESCALATED, CHANNEL_EMAIL)], quietHours: undefined },
        updateMask: ['kind_channels'],
      });
      expect(third.etag).to.equal('p3');
      expect(third.kindChannels).to.deep.equal([kc(NOTIFICATION_KIND_THREAD_ESCALATED, CHANNEL_EMAIL)]);
      expect(third.quietHours).to.deep.equal(utcMorning);

      // quiet_hours named and unset: cleared.
      const fourth = await update(patient, { preferences: {}, updateMask: ['quiet_hours'] });
      expect(fourth.quietHours).to.equal(undefined);
      expect(fourth.kindChannels).to.deep.equal(third.kindChannels);
      // An empty mask means both.
      const fifth = await update(patient, { preferences: { kindChannels: [], quietHours: CHICAGO_NIGHT } });
      expect(fifth.kindChannels).to.deep.equal([]);
      expect(fifth.quietHours).to.deep.equal(CHICAGO_NIGHT);
      expect(fifth.etag).to.equal('p5');
      expect(await getPreferences(notifications, patient)).to.deep.equal(fifth);
    });

    it('a stale etag is ABORTED (ETAG_MISMATCH) and nothing changes', async () => {
      const { patient, tenant } = await people();
      const first = await update(patient, { preferences: { quietHours: CHICAGO_NIGHT } });
      const { info } = await expectError(
        update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_MESSAGE_POSTED)] }, etag: 'p0' }),
        status.ABORTED,
        'ETAG_MISMATCH',
      );
      expect(info!.metadata.current_etag).to.equal('p1');
      await expectError(update(patient, { preferences: {}, etag: 'garbage' }), status.ABORTED, 'ETAG_MISMATCH');
      expect(await getPreferences(notifications, patient)).to.deep.equal(first);
      const { rows } = await db().query('select version from notification_preference where tenant_id = $1', [tenant]);
      expect(rows).to.deep.equal([{ version: 1 }]);
    });

    it('concurrent updates with the same etag: exactly one wins, also before the first row exists', async () => {
      const { patient } = await people();
      for (const etag of ['p0', 'p1']) {
        const results = await Promise.allSettled(
          Array.from({ length: 8 }, (_, i) =>
            update(patient, { preferences: { quietHours: { ...CHICAGO_NIGHT, end: time(5, i) } }, etag }),
          ),
        );
        const won = results.filter((r) => r.status === 'fulfilled');
        expect(won, `winners with etag ${etag}`).to.have.length(1);
        for (const r of results) {
          if (r.status === 'rejected') expect((r.reason as { code: number }).code).to.equal(status.ABORTED);
        }
        const prefs = await getPreferences(notifications, patient);
        expect(prefs.quietHours).to.deep.equal(
          (won[0] as PromiseFulfilledResult<NotificationPreferences>).value.quietHours,
        );
      }
      expect((await getPreferences(notifications, patient)).etag).to.equal('p2');
    });

    it('staff may read but not change another user’s preferences; service may do both', async () => {
      const { patient, staff, service, tenant } = await people();
      await expectError(
        update(staff, { userId: patient.userId, preferences: { quietHours: CHICAGO_NIGHT } }),
        status.PERMISSION_DENIED,
        'ROLE_NOT_ALLOWED',
      );
      expect(await tenantRows('notification_preference', tenant)).to.equal(0);
      const changed = await update(service, {
        userId: patient.userId,
        preferences: { kindChannels: [kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_SMS)] },
        etag: 'p0',
      });
      expect(changed.userId).to.equal(patient.userId);
      expect(await getPreferences(notifications, staff, patient.userId)).to.deep.equal(changed);
      expect(await getPreferences(notifications, patient)).to.deep.equal(changed);
      // The service's own preferences are untouched.
      expect((await getPreferences(notifications, service)).etag).to.equal('p0');
    });

    it('invalid preferences are INVALID_ARGUMENT naming the fields, and nothing is stored', async () => {
      const { patient, tenant } = await people();
      const quiet = (q: Partial<QuietHours>) =>
        update(patient, { preferences: { quietHours: { ...CHICAGO_NIGHT, ...q } }, updateMask: ['quiet_hours'] });
      const kinds = (...entries: KindChannelPreference[]) =>
        update(patient, { preferences: { kindChannels: entries }, updateMask: ['kind_channels'] });
      const qh = 'preferences.quiet_hours';
      await expectAll([
        ['unknown time zone', () => expectInvalid(quiet({ timeZone: 'Mars/Olympus' }), [`${qh}.time_zone`], 'tz')],
        ['empty time zone', () => expectInvalid(quiet({ timeZone: '' }), [`${qh}.time_zone`], 'empty tz')],
        ['hours 24', () => expectInvalid(quiet({ start: time(24) }), [`${qh}.start.hours`], 'hours 24')],
        ['negative hours', () => expectInvalid(quiet({ end: time(-1) }), [`${qh}.end.hours`], 'hours -1')],
        ['minutes 60', () => expectInvalid(quiet({ end: time(6, 60) }), [`${qh}.end.minutes`], 'minutes 60')],
        ['start == end', () => expectInvalid(quiet({ start: time(7), end: time(7) }), [`${qh}.end`], 'empty window')],
        ['no start', () => expectInvalid(quiet({ start: undefined }), [`${qh}.start`], 'no start')],
        ['no end', () => expectInvalid(quiet({ end: undefined }), [`${qh}.end`], 'no end')],
        [
          'a kind listed twice',
          () =>
            expectInvalid(
              kinds(kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_PUSH), kc(NOTIFICATION_KIND_MESSAGE_POSTED)),
              ['preferences.kind_channels[1].kind'],
              'duplicate kind',
            ),
        ],
        [
          'kind unspecified',
          () =>
            expectInvalid(
              kinds(kc(NotificationKind.NOTIFICATION_KIND_UNSPECIFIED, CHANNEL_PUSH)),
              ['preferences.kind_channels[0].kind'],
              'unspecified kind',
            ),
        ],
        [
          'a channel listed twice',
          () =>
            expectInvalid(
              kinds(kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_SMS, CHANNEL_SMS)),
              ['preferences.kind_channels[0].channels[1]'],
              'duplicate channel',
            ),
        ],
        [
          'channel unspecified',
          () =>
            expectInvalid(
              kinds(kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_UNSPECIFIED)),
              ['preferences.kind_channels[0].channels[0]'],
              'unspecified channel',
            ),
        ],
        [
          'unknown update_mask path',
          () => expectInvalid(update(patient, { preferences: {}, updateMask: ['etag'] }), ['update_mask'], 'etag path'),
        ],
        [
          'nested update_mask path',
          () =>
            expectInvalid(
              update(patient, { preferences: {}, updateMask: ['quiet_hours.start'] }),
              ['update_mask'],
              'nested path',
            ),
        ],
        ['no preferences', () => expectInvalid(update(patient, {}), ['preferences'], 'preferences unset')],
      ]);
      expect(await tenantRows('notification_preference', tenant)).to.equal(0);
      expect((await getPreferences(notifications, patient)).etag).to.equal('p0');
    });

    it('a UTC offset is not an IANA time zone name (INVALID_ARGUMENT)', async () => {
      const { patient } = await people();
      await expectInvalid(
        update(patient, { preferences: { quietHours: { ...CHICAGO_NIGHT, timeZone: '+05:00' } } }),
        ['preferences.quiet_hours.time_zone'],
        'offset time zone',
      );
    });
  });

  describe('effect on intents', () => {
    useDispatcher();

    it('the channels allowed for a kind restrict the plan of later intents; IN_APP is always allowed', async () => {
      const { patient, service } = await people();
      const full = [
        planStep(CHANNEL_PUSH),
        planStep(CHANNEL_SMS, 60_000, ChannelPlanCondition.CHANNEL_PLAN_CONDITION_IF_NOT_DELIVERED),
        planStep(CHANNEL_EMAIL, 3_600_000),
        planStep(CHANNEL_IN_APP, 7_200_000),
      ];
      const far = full.map((s) => ({ ...s, delay: { seconds: String(Number(s.delay!.seconds) + 3600), nanos: 0 } }));
      const before = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: far,
      });
      expect(before.channelPlan).to.deep.equal(far);

      await update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_SERVICE_EVENT, CHANNEL_SMS)] } });
      const after = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: far,
      });
      expect(after.channelPlan, 'SMS and IN_APP kept, with their delays and conditions').to.deep.equal([
        far[1],
        far[3],
      ]);
      expect(after.status).to.equal(NOTIFICATION_STATUS_PENDING);
      // The earlier intent keeps its plan.
      expect((await getNotification(notifications, patient, before.notificationId)).channelPlan).to.deep.equal(far);

      // Nothing allowed: suppressed at once.
      await update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_SERVICE_EVENT)] } });
      const none = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [full[0]!, full[1]!],
      });
      expect(none.channelPlan).to.deep.equal([]);
      expect(none.status).to.equal(NOTIFICATION_STATUS_SUPPRESSED);
      expect(none.statusReason).to.equal('NO_CHANNEL_ALLOWED');
      expect(none.nextDispatchAt).to.equal(undefined);
      // Only IN_APP in the plan: it stays.
      const inApp = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [full[0]!, far[3]!],
      });
      expect(inApp.channelPlan).to.deep.equal([far[3]]);
    });

    it('a kind not listed uses the tenant default plan; a listed kind restricts message intents too', async () => {
      const { tenant, provider, patient, thread } = await twoPartyThread(threads);
      await tenantPlans(tenant, {
        message_posted: [
          { channel: 'push', delay_ms: 3_600_000, condition: 'always' },
          { channel: 'sms', delay_ms: 7_200_000, condition: 'if_unread' },
        ],
      });
      await update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_THREAD_ESCALATED, CHANNEL_EMAIL)] } });
      await send(messages, provider, thread.threadId, 'first');
      const [first] = await listAll(notifications, patient);
      expect(first!.channelPlan.map((s) => s.channel)).to.deep.equal([CHANNEL_PUSH, CHANNEL_SMS]);
      await update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_MESSAGE_POSTED, CHANNEL_SMS)] } });
      await send(messages, provider, thread.threadId, 'second');
      const [second] = await listAll(notifications, patient);
      expect(second!.notificationId).to.not.equal(first!.notificationId);
      expect(second!.channelPlan.map((s) => s.channel)).to.deep.equal([CHANNEL_SMS]);
      expect(second!.channelPlan[0]!.condition).to.equal(ChannelPlanCondition.CHANNEL_PLAN_CONDITION_IF_UNREAD);
      expect(
        second!.nextDispatchAt!.getTime() - second!.createdAt!.getTime(),
        'the SMS step is due at its delay',
      ).to.equal(7_200_000);
    });

    it('a change made after an intent was created applies when it is dispatched', async () => {
      const { tenant, patient, service } = await people();
      const n = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [planStep(CHANNEL_PUSH, 1500)],
      });
      expect(n.status).to.equal(NOTIFICATION_STATUS_PENDING);
      await update(patient, { preferences: { kindChannels: [kc(NOTIFICATION_KIND_SERVICE_EVENT, CHANNEL_EMAIL)] } });
      const done = await waitForNotification(notifications, patient, n.notificationId);
      expect(done.status).to.equal(NOTIFICATION_STATUS_SUPPRESSED);
      expect(done.statusReason).to.equal('NO_CHANNEL_ALLOWED');
      expect(done.dispatchRecords).to.deep.equal([]);
      expect(await sandboxSends(tenant)).to.deep.equal([]);
    });

    it('during quiet hours a non-urgent push waits until the window ends (PENDING, next_dispatch_at = end)', async () => {
      const { tenant, patient, service } = await people();
      const { quietHours, end } = quietWindowAround(new Date(), 'UTC', 60, 120);
      await update(patient, { preferences: { quietHours } });
      const n = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [planStep(CHANNEL_PUSH)],
      });
      const deferred = await waitForNotification(
        notifications,
        patient,
        n.notificationId,
        (x) => x.nextDispatchAt !== undefined && x.nextDispatchAt.getTime() > Date.now() + 30 * 60_000,
      );
      expect(deferred.nextDispatchAt).to.deep.equal(end);
      expect(deferred.status).to.equal(NOTIFICATION_STATUS_PENDING);
      expect(deferred.statusReason).to.equal('');
      expect(deferred.dispatchRecords).to.deep.equal([]);
      expect(deferred.quietHoursBypassed).to.equal(false);
      expect(deferred.quietHoursBypassReason).to.equal('');
      expect(await sandboxSends(tenant)).to.deep.equal([]);
    });

    it('an urgent service request goes during quiet hours and records the bypass (URGENT_SERVICE_REQUEST)', async () => {
      const { tenant, patient, service } = await people();
      const { quietHours } = quietWindowAround(new Date(), 'America/Chicago', 90, 90);
      await update(patient, { preferences: { quietHours } });
      const n = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        urgent: true,
        templateKey: 'appointment_reminder',
        channelPlan: [planStep(CHANNEL_SMS)],
      });
      expect(n.urgent).to.equal(true);
      const done = await waitForNotification(notifications, patient, n.notificationId);
      expect(done.status).to.equal(NOTIFICATION_STATUS_DELIVERED);
      expect(done.quietHoursBypassed).to.equal(true);
      expect(done.quietHoursBypassReason).to.equal('URGENT_SERVICE_REQUEST');
      const sends = await sandboxSends(tenant);
      expect(sends).to.have.length(1);
      expect(sends[0]!.channel).to.equal('sms');
      expect(sends[0]!.text).to.equal('You have an upcoming appointment');
    });

    it('IN_APP is not subject to quiet hours; outside the window nothing waits and nothing is bypassed', async () => {
      const { patient, service } = await people();
      const inside = quietWindowAround(new Date(), 'UTC', 30, 60);
      await update(patient, { preferences: { quietHours: inside.quietHours } });
      const inApp = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [planStep(CHANNEL_IN_APP)],
      });
      const delivered = await waitForNotification(notifications, patient, inApp.notificationId);
      expect(delivered.status).to.equal(NOTIFICATION_STATUS_DELIVERED);
      expect(delivered.quietHoursBypassed).to.equal(false);

      // A window that starts in 3 hours does not hold anything back now.
      const later = quietWindowAround(new Date(Date.now() + 4 * 3_600_000), 'UTC', 60, 60);
      await update(patient, { preferences: { quietHours: later.quietHours } });
      const push = await requestNotification(notifications, service, {
        recipientUserId: patient.userId,
        channelPlan: [planStep(CHANNEL_PUSH)],
      });
      const sent = await waitForNotification(notifications, patient, push.notificationId);
      expect(sent.status).to.equal(NOTIFICATION_STATUS_DELIVERED);
      expect(sent.quietHoursBypassed).to.equal(false);
    });

    it('tenant default plans per kind apply to service requests without a plan', async () => {
      const { tenant, patient, service } = await people();
      await tenantPlans(tenant, DEFAULT_PLANS);
      const n = await requestNotification(notifications, service, { recipientUserId: patient.userId });
      expect(n.channelPlan.map((s) => s.channel)).to.deep.equal([CHANNEL_PUSH, CHANNEL_EMAIL]);
      expect(n.channelPlan[1]!.condition).to.equal(ChannelPlanCondition.CHANNEL_PLAN_CONDITION_IF_NOT_DELIVERED);
      expect(n.channelPlan[1]!.delay).to.deep.equal({ seconds: '3600', nanos: 0 });
    });
  });
});
