import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  Channel,
  DeliveryStatus,
  DispatchRecordKind,
  type Notification,
  NotificationKind,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import { EscalationLevel, ParticipantRole } from '../../gen/comms/v1/thread.js';
import {
  call,
  expectError,
  messageClient,
  newTenant,
  newUser,
  receiptClient,
  threadClient,
} from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { expectAll, expectInvalid, markRead, messageCount, newKey, send, UUID_V7 } from '../support/messages.js';
import { createThread, db, escalate, participant } from '../support/threads.js';
import { DEFAULT_PLANS } from '../../src/domain/notification/notification.policy.js';
import {
  listAll,
  notificationClient,
  planStep,
  requestNotification,
  sandboxSends,
  storedIntents,
  tenantPlans,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';

const { NOTIFICATION_KIND_MESSAGE_POSTED, NOTIFICATION_KIND_THREAD_ESCALATED, NOTIFICATION_KIND_SERVICE_EVENT } =
  NotificationKind;
const { NOTIFICATION_STATUS_PENDING, NOTIFICATION_STATUS_SUPPRESSED, NOTIFICATION_STATUS_DELIVERED } =
  NotificationStatus;
const HOUR = 3_600_000;

/** (created_at, notification_id) descending: the order ListNotifications promises. */
function expectNewestFirst(list: readonly Notification[]): void {
  for (let i = 1; i < list.length; i++) {
    const prev = list[i - 1]!;
    const cur = list[i]!;
    const dt = prev.createdAt!.getTime() - cur.createdAt!.getTime();
    expect(dt > 0 || (dt === 0 && prev.notificationId > cur.notificationId), `[${i - 1}] sorts before [${i}]`).to.equal(
      true,
    );
  }
}

describe('NotificationService: intents of posted messages', () => {
  useDispatcher();
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let receipts: ReturnType<typeof receiptClient>;
  let notifications: ReturnType<typeof notificationClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    receipts = receiptClient();
    notifications = notificationClient();
  });
  after(() => [threads, messages, receipts, notifications].forEach((c) => c.close()));

  /** A fresh tenant with a provider who created a thread with two patients taking part. */
  async function threePartyThread() {
    const tenant = newTenant();
    const [provider, patient, other] = await Promise.all([
      newUser(tenant, 'provider'),
      newUser(tenant, 'patient'),
      newUser(tenant, 'patient'),
    ]);
    const thread = await createThread(threads, provider, {
      participants: [
        participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        participant(other.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
      ],
    });
    return { tenant, provider, patient, other, thread };
  }

  it('puts a preview of the message in the channel text only for a tenant that opted in', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    await tenantPlans(tenant, DEFAULT_PLANS);
    await db().query('update notification_settings set previews = true where tenant_id = $1', [tenant]);
    await send(messages, provider, thread.threadId, 'your results are ready');
    const [intent] = await listAll(notifications, patient);
    await waitForNotification(notifications, patient, intent!.notificationId);
    const sends = await sandboxSends(tenant);
    expect(sends.map((r) => r.text)).to.deep.equal(['You have a new secure message: your results are ready']);
  });

  it('never previews a message retracted before its push went out', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    // The push waits a moment, so the retraction lands first.
    await tenantPlans(tenant, {
      ...DEFAULT_PLANS,
      message_posted: [{ channel: 'push', delay_ms: 1500, condition: 'always' }],
    });
    await db().query('update notification_settings set previews = true where tenant_id = $1', [tenant]);
    const sent = await send(messages, provider, thread.threadId, 'sent to the wrong patient');
    await call(messages, messages.retractMessage, { messageId: sent.message!.messageId, reason: 'wrong' }, provider.md);
    const [intent] = await listAll(notifications, patient);
    await waitForNotification(notifications, patient, intent!.notificationId);
    const sends = await sandboxSends(tenant);
    expect(sends.map((r) => r.text)).to.deep.equal(['You have a new secure message']);
  });

  it('a posted message yields one intent for the other participant, dispatched through the sandbox', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    await tenantPlans(tenant, DEFAULT_PLANS);
    const sent = await send(messages, provider, thread.threadId, 'your results are ready');
    const [intent, ...rest] = await listAll(notifications, patient);
    expect(rest).to.have.length(0);
    expect(intent!.kind).to.equal(NotificationKind.NOTIFICATION_KIND_MESSAGE_POSTED);
    expect(intent!.source!.messageId).to.equal(sent.message!.messageId);
    expect(intent!.deepLink).to.equal(`comms://threads/${thread.threadId}/messages/${sent.message!.messageId}`);
    expect(await listAll(notifications, provider)).to.have.length(0);
    const done = await waitForNotification(notifications, patient, intent!.notificationId);
    expect(done.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
    expect(done.deliveryStatus).to.equal(DeliveryStatus.DELIVERY_STATUS_DELIVERED);
    const kinds = done.dispatchRecords.map((r) => r.kind);
    expect(kinds).to.include(DispatchRecordKind.DISPATCH_RECORD_KIND_ATTEMPT);
    expect(kinds).to.include(DispatchRecordKind.DISPATCH_RECORD_KIND_DELIVERY_REPORT);
    const sends = await sandboxSends(tenant);
    expect(sends).to.have.length(1);
    expect(sends[0]!.text).to.equal('You have a new secure message');
    expect(String(sends[0]!.text)).not.to.contain('results');
  });

  it('in a 3-party thread each other participant gets exactly one intent and the sender none', async () => {
    const { tenant, provider, patient, other, thread } = await threePartyThread();
    const sent = (await send(messages, patient, thread.threadId, 'question about my dose')).message!;
    for (const user of [provider, other]) {
      const mine = await listAll(notifications, user);
      expect(mine, `intents of ${user.userId}`).to.have.length(1);
      const n = mine[0]!;
      expect(n.recipientUserId).to.equal(user.userId);
      expect(n.kind).to.equal(NOTIFICATION_KIND_MESSAGE_POSTED);
      expect(n.source!.eventId, 'event id = message id').to.equal(sent.messageId);
      expect(n.source!.threadId).to.equal(thread.threadId);
      expect(n.source!.messageId).to.equal(sent.messageId);
      expect(n.source!.requestedBy).to.equal('');
      expect(n.notificationId).to.match(UUID_V7);
      // The test tenant has no plans: nothing to send, suppressed at creation.
      expect(n.status).to.equal(NOTIFICATION_STATUS_SUPPRESSED);
      expect(n.statusReason).to.equal('NO_CHANNEL_ALLOWED');
      expect(n.channelPlan).to.deep.equal([]);
    }
    expect(await listAll(notifications, patient), 'the sender is not told').to.have.length(0);
    const stored = await storedIntents(tenant);
    expect(stored.map((r) => r.recipient_user_id)).to.have.members([provider.userId, other.userId]);
    expect(stored.every((r) => r.event_id === sent.messageId)).to.equal(true);
  });

  it('20 concurrent SendMessage retries with one client_mutation_id: one message, one intent per other participant', async () => {
    const { tenant, provider, patient, other, thread } = await threePartyThread();
    await tenantPlans(tenant, { message_posted: [{ channel: 'push', delay_ms: HOUR, condition: 'always' }] });
    const key = newKey('retry');
    const results = await Promise.all(
      Array.from({ length: 20 }, () => send(messages, provider, thread.threadId, 'please call the office', { key })),
    );
    const ids = new Set(results.map((r) => r.message!.messageId));
    expect(ids.size, 'every retry answers with the same message').to.equal(1);
    expect(await messageCount(tenant, { key })).to.equal(1);
    const stored = await storedIntents(tenant);
    expect(stored.map((r) => r.recipient_user_id)).to.have.members([patient.userId, other.userId]);
    for (const user of [patient, other]) {
      const mine = await listAll(notifications, user);
      expect(mine).to.have.length(1);
      expect(mine[0]!.source!.messageId).to.equal([...ids][0]);
      expect(mine[0]!.status).to.equal(NOTIFICATION_STATUS_PENDING);
    }
    // One dispatch job per intent, not one per retry.
    const { rows } = await db().query<{ n: number }>(
      `select count(*)::int as n from pgboss.job where data ->> 'tenant' = $1`,
      [tenant],
    );
    expect(rows[0]!.n, 'dispatch jobs').to.equal(2);
  });

  it('20 concurrent identical RequestNotification calls create one intent, and every answer names it', async () => {
    const tenant = newTenant();
    const [service, patient] = await Promise.all([newUser(tenant, 'service'), newUser(tenant, 'patient')]);
    const dedupeKey = newKey('lab-result');
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        requestNotification(notifications, service, {
          recipientUserId: patient.userId,
          dedupeKey,
          templateKey: 'result_available',
          channelPlan: [planStep(Channel.CHANNEL_PUSH, HOUR)],
        }),
      ),
    );
    const ids = new Set(answers.map((n) => n.notificationId));
    expect(ids.size).to.equal(1);
    expect(await storedIntents(tenant)).to.have.length(1);
    const n = answers[0]!;
    expect(n.kind).to.equal(NOTIFICATION_KIND_SERVICE_EVENT);
    expect(n.source!.dedupeKey).to.equal(dedupeKey);
    expect(n.source!.eventId).to.equal(dedupeKey);
    expect(n.source!.requestedBy).to.equal(service.userId);
    expect(n.source!.templateKey).to.equal('result_available');
    // A later retry with other fields still returns the first intent, unchanged.
    const retry = await requestNotification(notifications, service, {
      recipientUserId: patient.userId,
      dedupeKey,
      templateKey: 'generic',
      urgent: true,
      channelPlan: [planStep(Channel.CHANNEL_SMS)],
    });
    expect(retry.notificationId).to.equal(n.notificationId);
    expect(retry.urgent).to.equal(false);
    expect(retry.source!.templateKey).to.equal('result_available');
    expect(retry.channelPlan.map((s) => s.channel)).to.deep.equal([Channel.CHANNEL_PUSH]);
    expect(await storedIntents(tenant)).to.have.length(1);
    // The key is per calling service: another service with the same key makes its own intent.
    const otherService = await newUser(tenant, 'service');
    const second = await requestNotification(notifications, otherService, {
      recipientUserId: patient.userId,
      dedupeKey,
    });
    expect(second.notificationId).to.not.equal(n.notificationId);
    // And per recipient: the same service and key for another recipient is another intent.
    const otherPatient = await newUser(tenant, 'patient');
    const third = await requestNotification(notifications, service, {
      recipientUserId: otherPatient.userId,
      dedupeKey,
    });
    expect(third.notificationId).to.not.equal(n.notificationId);
    expect(third.recipientUserId).to.equal(otherPatient.userId);
    expect(await storedIntents(tenant)).to.have.length(3);
  });

  it('a message read before dispatch ends SUPPRESSED (MESSAGE_ALREADY_READ) and the sandbox gets nothing', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    await tenantPlans(tenant, { message_posted: [{ channel: 'push', delay_ms: 1500, condition: 'always' }] });
    const sent = (await send(messages, provider, thread.threadId, 'see you tomorrow')).message!;
    const [intent] = await listAll(notifications, patient);
    expect(intent!.status).to.equal(NOTIFICATION_STATUS_PENDING);
    await markRead(receipts, patient, [sent.messageId]);
    const done = await waitForNotification(notifications, patient, intent!.notificationId);
    expect(done.status).to.equal(NOTIFICATION_STATUS_SUPPRESSED);
    expect(done.statusReason).to.equal('MESSAGE_ALREADY_READ');
    expect(done.dispatchRecords).to.deep.equal([]);
    expect(done.nextDispatchAt).to.equal(undefined);
    expect(await sandboxSends(tenant)).to.have.length(0);
  });

  it('EscalateThread to a staff assignee creates one THREAD_ESCALATED intent for the assignee only', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    await tenantPlans(tenant, DEFAULT_PLANS);
    const [staff, staff2] = await Promise.all([newUser(tenant, 'staff'), newUser(tenant, 'staff')]);
    await escalate(threads, provider, thread.threadId, { assigneeUserId: staff.userId });
    const mine = await listAll(notifications, staff);
    expect(mine).to.have.length(1);
    const n = mine[0]!;
    expect(n.kind).to.equal(NOTIFICATION_KIND_THREAD_ESCALATED);
    expect(n.recipientUserId).to.equal(staff.userId);
    expect(n.deepLink).to.equal(`comms://threads/${thread.threadId}`);
    expect(n.source!.threadId).to.equal(thread.threadId);
    expect(n.source!.messageId).to.equal('');
    expect(n.source!.eventId).to.match(UUID_V7);
    expect(n.channelPlan.map((s) => s.channel)).to.deep.equal([Channel.CHANNEL_PUSH, Channel.CHANNEL_SMS]);
    expect(await listAll(notifications, patient), 'the patient is not told').to.have.length(0);
    expect(await listAll(notifications, provider), 'the escalating provider is not told').to.have.length(0);

    // The same escalation again changes nothing and tells no one again.
    await escalate(threads, provider, thread.threadId, { assigneeUserId: staff.userId });
    expect(await listAll(notifications, staff)).to.have.length(1);
    // The assignee raising the level on themself is not told either.
    await escalate(threads, staff, thread.threadId, {
      assigneeUserId: staff.userId,
      level: EscalationLevel.ESCALATION_LEVEL_ELEVATED,
    });
    expect(await listAll(notifications, staff)).to.have.length(1);
    // A new assignee is.
    await escalate(threads, staff, thread.threadId, { assigneeUserId: staff2.userId });
    expect(await listAll(notifications, staff2)).to.have.length(1);
    expect(await storedIntents(tenant)).to.have.length(2);

    const done = await waitForNotification(notifications, staff, n.notificationId);
    expect(done.status).to.equal(NOTIFICATION_STATUS_DELIVERED);
    const sends = (await sandboxSends(tenant)).filter((s) => s.recipient_user_id === staff.userId);
    expect(sends).to.have.length(1);
    expect(sends[0]!.text).to.equal('A conversation needs your attention');
    expect(sends[0]!.deep_link).to.equal(`comms://threads/${thread.threadId}`);
  });

  it('neither deep links, the API nor the sandbox carry the message body; texts are the fixed templates', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(threads);
    await tenantPlans(tenant, DEFAULT_PLANS);
    const body = `Your biopsy came back positive ${newKey('marker')}`;
    const sent = (await send(messages, provider, thread.threadId, body)).message!;
    const [intent] = await listAll(notifications, patient);
    const done = await waitForNotification(notifications, patient, intent!.notificationId);
    expect(done.deepLink).to.equal(`comms://threads/${thread.threadId}/messages/${sent.messageId}`);
    expect(JSON.stringify(done), 'the API answer').not.to.contain('biopsy');
    const sends = await sandboxSends(tenant);
    expect(sends).to.have.length(1);
    expect(sends[0]!.text).to.equal('You have a new secure message');
    expect(sends[0]!.deep_link).to.equal(done.deepLink);
    expect(JSON.stringify(sends), 'what the provider was given').not.to.contain('biopsy');

    // A service's notification: the named template's fixed text, the link built from ids only.
    const service = await newUser(tenant, 'service');
    await tenantPlans(tenant, { service_event: [{ channel: 'sms', delay_ms: 0, condition: 'always' }] });
    const requested = await requestNotification(notifications, service, {
      recipientUserId: patient.userId,
      templateKey: 'result_available',
      threadId: thread.threadId,
      messageId: sent.messageId,
    });
    expect(requested.deepLink).to.equal(`comms://threads/${thread.threadId}/messages/${sent.messageId}`);
    await waitForNotification(notifications, patient, requested.notificationId);
    const serviceSends = (await sandboxSends(tenant)).filter((s) => s.channel === 'sms');
    expect(serviceSends).to.have.length(1);
    expect(serviceSends[0]!.text).to.equal('A new result is available in your app');
    expect(JSON.stringify(serviceSends)).not.to.contain('biopsy');
    const threadOnly = await requestNotification(notifications, service, {
      recipientUserId: patient.userId,
      threadId: thread.threadId,
    });
    expect(threadOnly.deepLink).to.equal(`comms://threads/${thread.threadId}`);
  });

  describe('ListNotifications', () => {
    /**
     * A tenant with a service and a patient with one SERVICE_EVENT intent per entry of `pattern`, created
     * in that order: PENDING for true (a plan step an hour ahead), SUPPRESSED for false (no plan: the test
     * tenant's default for the kind is empty).
     */
    async function withIntents(pattern: readonly boolean[]) {
      const tenant = newTenant();
      const [service, patient] = await Promise.all([newUser(tenant, 'service'), newUser(tenant, 'patient')]);
      const created: Notification[] = [];
      for (const pending of pattern) {
        created.push(
          await requestNotification(notifications, service, {
            recipientUserId: patient.userId,
            channelPlan: pending ? [planStep(Channel.CHANNEL_PUSH, HOUR)] : [],
          }),
        );
      }
      return { tenant, service, patient, created };
    }

    const page = (
      user: Parameters<typeof listAll>[1],
      req: { pageSize?: number; pageToken?: string; recipientUserId?: string; status?: number; kind?: number },
    ) =>
      call(
        notifications,
        notifications.listNotifications,
        {
          pageSize: req.pageSize ?? 0,
          pageToken: req.pageToken ?? '',
          recipientUserId: req.recipientUserId ?? '',
          status: req.status ?? 0,
          kind: req.kind ?? 0,
        },
        user.md,
      );

    async function walk(user: Parameters<typeof listAll>[1], req: Parameters<typeof page>[1]) {
      const pages: Notification[][] = [];
      let pageToken = '';
      for (let i = 0; i < 50; i++) {
        const res = await page(user, { ...req, pageToken });
        expect(res.asOf, 'as_of set').to.be.instanceOf(Date);
        pages.push(res.notifications);
        pageToken = res.nextPageToken;
        if (pageToken === '') return pages;
      }
      expect.fail('listing did not end');
    }

    it('pages of 2 over 5 intents: newest first, no duplicates, no gaps', async () => {
      const { patient, created } = await withIntents([false, false, false, false, false]);
      const pages = await walk(patient, { pageSize: 2 });
      expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 1]);
      const listed = pages.flat();
      expect(new Set(listed.map((n) => n.notificationId)).size).to.equal(5);
      expect(listed.map((n) => n.notificationId)).to.have.members(created.map((n) => n.notificationId));
      expectNewestFirst(listed);
      // Created one after the other: the last one created comes first.
      expect(listed[0]!.notificationId).to.equal(created.at(-1)!.notificationId);
      expect(listed.at(-1)!.notificationId).to.equal(created[0]!.notificationId);
      // page_size 0 means the default (50): all five in one page.
      const all = await page(patient, {});
      expect(all.notifications.map((n) => n.notificationId)).to.deep.equal(listed.map((n) => n.notificationId));
      expect(all.nextPageToken).to.equal('');
    });

    it('filters by kind and by (derived) status, also across pages', async () => {
      const { tenant, service, patient } = await withIntents([true, false, true, false, true, false]);
      // Plus a MESSAGE_POSTED intent for the same patient.
      const provider = await newUser(tenant, 'provider');
      const thread = await createThread(threads, provider, {
        participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      await send(messages, provider, thread.threadId, 'hello');
      const everything = await listAll(notifications, patient);
      expect(everything).to.have.length(7);

      const posted = (await walk(patient, { pageSize: 1, kind: NOTIFICATION_KIND_MESSAGE_POSTED })).flat();
      expect(posted.map((n) => n.kind)).to.deep.equal([NOTIFICATION_KIND_MESSAGE_POSTED]);
      const byService = (await walk(patient, { pageSize: 2, kind: NOTIFICATION_KIND_SERVICE_EVENT })).flat();
      expect(byService).to.have.length(6);
      expect(byService.every((n) => n.kind === NOTIFICATION_KIND_SERVICE_EVENT)).to.equal(true);
      expectNewestFirst(byService);

      const pendingPages = await walk(patient, { pageSize: 1, status: NOTIFICATION_STATUS_PENDING });
      const pending = pendingPages.flat();
      expect(pending).to.have.length(3);
      expect(pendingPages.every((p) => p.length <= 1)).to.equal(true);
      expect(pending.every((n) => n.status === NOTIFICATION_STATUS_PENDING)).to.equal(true);
      expectNewestFirst(pending);
      const suppressed = (await walk(patient, { pageSize: 2, status: NOTIFICATION_STATUS_SUPPRESSED })).flat();
      expect(suppressed).to.have.length(4);
      expect(suppressed.every((n) => n.statusReason === 'NO_CHANNEL_ALLOWED')).to.equal(true);
      const both = (
        await walk(patient, {
          pageSize: 2,
          status: NOTIFICATION_STATUS_SUPPRESSED,
          kind: NOTIFICATION_KIND_SERVICE_EVENT,
        })
      ).flat();
      expect(both).to.have.length(3);
      // Staff and service name the recipient and see the same.
      const staff = await newUser(tenant, 'staff');
      expect((await listAll(notifications, staff, patient.userId)).map((n) => n.notificationId)).to.deep.equal(
        everything.map((n) => n.notificationId),
      );
      expect(await listAll(notifications, service, patient.userId)).to.have.length(7);
    });

    it('refuses a negative page_size, a token of another filter and a garbage token (INVALID_ARGUMENT)', async () => {
      const { patient } = await withIntents([false, false, false]);
      await expectInvalid(page(patient, { pageSize: -1 }), ['page_size'], 'page_size -1');
      const first = await page(patient, { pageSize: 1 });
      expect(first.nextPageToken).to.not.equal('');
      await expectInvalid(
        page(patient, { pageSize: 1, pageToken: first.nextPageToken, kind: NOTIFICATION_KIND_MESSAGE_POSTED }),
        ['page_token'],
        'token of another kind filter',
      );
      await expectInvalid(
        page(patient, { pageSize: 1, pageToken: first.nextPageToken, status: NOTIFICATION_STATUS_PENDING }),
        ['page_token'],
        'token of another status filter',
      );
      await expectInvalid(page(patient, { pageToken: 'not a token!' }), ['page_token'], 'garbage token');
      await expectInvalid(
        page(patient, { pageToken: Buffer.from('{"k":"threads"}').toString('base64url') }),
        ['page_token'],
        'token of another list',
      );
    });

    it('refuses a token of the right filter whose position is not a time and a UUID (INVALID_ARGUMENT)', async () => {
      const { patient } = await withIntents([false]);
      const token = (at: string, id: string) =>
        Buffer.from(JSON.stringify({ k: 'notifications', r: patient.userId, s: '', kd: '', at, id })).toString(
          'base64url',
        );
      const id = (await listAll(notifications, patient))[0]!.notificationId;
      await expectAll([
        ['not a time', () => expectInvalid(page(patient, { pageToken: token('yesterday', id) }), ['page_token'], 'c')],
        [
          'not a UUID',
          () =>
            expectInvalid(page(patient, { pageToken: token(new Date().toISOString(), 'nope') }), ['page_token'], 'i'),
        ],
      ]);
    });

    it('a recipient with no intents gets an empty page and no token', async () => {
      const tenant = newTenant();
      const patient = await newUser(tenant, 'patient');
      const res = await page(patient, { pageSize: 5 });
      expect(res.notifications).to.deep.equal([]);
      expect(res.nextPageToken).to.equal('');
      await expectError(
        page(patient, { recipientUserId: 'someone-else' }),
        status.PERMISSION_DENIED,
        'ROLE_NOT_ALLOWED',
      );
    });
  });
});
