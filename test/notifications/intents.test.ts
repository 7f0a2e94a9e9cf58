import { expect } from 'chai';
import {
  DeliveryStatus,
  DispatchRecordKind,
  NotificationKind,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import { threadClient } from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { messageClient } from '../support/clients.js';
import { send } from '../support/messages.js';
import { DEFAULT_PLANS } from '../../src/domain/notification/notification.policy.js';
import {
  listAll,
  notificationClient,
  sandboxSends,
  tenantPlans,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';

describe('NotificationService: intents of posted messages', () => {
  useDispatcher();
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let notifications: ReturnType<typeof notificationClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    notifications = notificationClient();
  });
  after(() => [threads, messages, notifications].forEach((c) => c.close()));

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
});
