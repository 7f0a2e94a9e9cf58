import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ListDirection } from '../../gen/comms/v1/message.js';
import { DeliveryStatus, NotificationStatus } from '../../gen/comms/v1/notification.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { messageClient, newTenant, newUser, threadClient, type TestUser } from '../support/clients.js';
import { type AnyFeedStream, feedClient, watchInbox, watchThread } from '../support/feeds.js';
import { sleep, walkMessages } from '../support/messages.js';
import {
  notificationClient,
  requestNotification,
  sandboxBehavior,
  tenantPlans,
  waitForNotification,
} from '../support/notifications.js';
import { type Replica, startReplica } from '../support/replicas.js';
import { createThread, db, newUserId, participant } from '../support/threads.js';
import { until } from '../support/wait.js';
import { attemptSend, eventTokens, label, posted, report, type SendAttempt, settled, tally } from './load.js';

/** Crash recovery of jobs rests on pg-boss heartbeats: the smallest intervals the configuration allows. */
const HEARTBEAT_SECONDS = 10;
const SUPERVISE_SECONDS = 1;
const DISPATCHING = {
  NOTIFY_DISPATCH: 'true',
  NOTIFY_JOB_HEARTBEAT_SECONDS: String(HEARTBEAT_SECONDS),
  NOTIFY_SUPERVISE_SECONDS: String(SUPERVISE_SECONDS),
  NOTIFY_POLL_MS: '500',
  NOTIFY_SANDBOX_REPORTS: 'delivered',
  SESSION_TIMERS: 'false',
};

/** The pg-boss jobs of a notification intent (its singleton key). */
async function jobsOf(notificationId: string) {
  const { rows } = await db().query<{ id: string; state: string; retry_count: number; heartbeat_seconds: number }>(
    `select id::text, state::text, retry_count, heartbeat_seconds from pgboss.job
      where name = 'notification-dispatch' and singleton_key = $1 order by created_on`,
    [notificationId],
  );
  return rows;
}

describe('fault: a replica killed (SIGKILL) mid-burst', () => {
  it('its feed subscribers resume elsewhere with their last token and get every event once, in order; the job it held completes on a surviving replica', async function () {
    this.timeout(60_000);
    const shared = { threads: threadClient(), messages: messageClient(), feeds: feedClient() };
    const notifications = notificationClient();
    const replicas: Replica[] = [];
    const streams: AnyFeedStream[] = [];
    const closers: { close(): void }[] = [];
    let stopBurst = false;
    let bursting: Promise<unknown> = Promise.resolve();
    try {
      const tenant = newTenant();
      const [provider, patient, family] = await Promise.all([
        newUser(tenant, 'provider'),
        newUser(tenant, 'patient'),
        newUser(tenant, 'patient'),
      ]);
      const thread = await createThread(shared.threads, provider, {
        participants: [
          participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          participant(family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
        ],
      });
      // A notification whose push the sandbox answers only after a minute: its job is running on the
      // replica (message stored at the provider, no answer yet) when the replica is killed.
      const nTenant = newTenant();
      const service = await newUser(nTenant, 'service');
      const recipient = newUserId('r');
      await tenantPlans(nTenant, { service_event: [{ channel: 'push', delay_ms: 0, condition: 'always' }] });
      await sandboxBehavior(nTenant, recipient, { delayMs: 60_000 });

      // K, the replica that is killed: the only one working the dispatch queue (the shared server does not).
      const k = await startReplica(DISPATCHING);
      replicas.push(k);
      const onK = { messages: messageClient(k.address), feeds: feedClient(k.address) };
      closers.push(...Object.values(onK));

      const intent = await requestNotification(notifications, service, { recipientUserId: recipient });
      await until(
        'the job runs on K: its message is at the provider',
        async () => (await db().query('select 1 from sandbox_message where tenant_id = $1', [nTenant])).rows.length > 0,
        15_000,
      );
      const [heldJob, ...otherJobs] = await jobsOf(intent.notificationId);
      expect(otherJobs, 'one job for the intent').to.deep.equal([]);
      expect(heldJob, 'the job K holds').to.include({ state: 'active', heartbeat_seconds: HEARTBEAT_SECONDS });

      // Feeds: the reference on the shared server, and the subscribers on K.
      const refThread = watchThread(shared.feeds, patient.md, thread.threadId);
      const refInbox = watchInbox(shared.feeds, patient.md);
      streams.push(refThread, refInbox);
      await Promise.all([refThread.caughtUp(), refInbox.caughtUp()]);
      const onKFeeds = {
        patientThread: watchThread(onK.feeds, patient.md, thread.threadId),
        providerThread: watchThread(onK.feeds, provider.md, thread.threadId),
        patientInbox: watchInbox(onK.feeds, patient.md),
      };
      streams.push(...Object.values(onKFeeds));
      await Promise.all(Object.values(onKFeeds).map((s) => s.caughtUp()));

      // The burst: provider and patient send through K and, once K is gone, retry the send that failed
      // with its key on the shared server and go on there (as a client behind a balancer would); the
      // family member sends through the shared server throughout.
      let kAlive = true;
      const sends: { first: SendAttempt; retry?: SendAttempt }[] = [];
      const viaK = async (user: TestUser) => {
        for (let n = 0; !stopBurst; n++) {
          const key = `kill-${user.userId}-${n}`;
          const client = kAlive ? onK.messages : shared.messages;
          const first = await attemptSend(client, user, thread.threadId, key, `${user.userId} ${n}`, 5_000);
          const entry: { first: SendAttempt; retry?: SendAttempt } = { first };
          sends.push(entry);
          if (first.outcome.code !== status.OK) {
            entry.retry = await attemptSend(shared.messages, user, thread.threadId, key, first.body);
          }
        }
      };
      const familySends: SendAttempt[] = [];
      bursting = Promise.all([
        viaK(provider),
        viaK(patient),
        (async () => {
          for (let n = 0; !stopBurst; n++) {
            familySends.push(
              await attemptSend(shared.messages, family, thread.threadId, `kill-${family.userId}-${n}`, `family ${n}`),
            );
            await sleep(10);
          }
        })(),
      ]);
      await onKFeeds.patientThread.eventCount(30, 20_000);
      await onKFeeds.patientInbox.eventCount(10, 20_000);

      await k.kill();
      const killedAt = Date.now();
      kAlive = false;
      for (const [name, s] of Object.entries(onKFeeds)) {
        const err = await s.ended;
        // A process that died says nothing: the transport ends the stream, without details or a token.
        expect(err?.code, `${name} ended ${err?.code} ${err?.details}`).to.equal(status.UNAVAILABLE);
        expect(err?.metadata.get('grpc-status-details-bin'), name).to.deep.equal([]);
      }

      // S, the surviving replica, starts and works the queue.
      const s = await startReplica(DISPATCHING);
      replicas.push(s);
      const feedsS = feedClient(s.address);
      closers.push(feedsS);
      const resumed = {
        patientThread: watchThread(feedsS, patient.md, thread.threadId, onKFeeds.patientThread.lastToken),
        providerThread: watchThread(shared.feeds, provider.md, thread.threadId, onKFeeds.providerThread.lastToken),
        patientInbox: watchInbox(feedsS, patient.md, onKFeeds.patientInbox.lastToken),
      };
      streams.push(...Object.values(resumed));
      await Promise.all(Object.values(resumed).map((x) => x.caughtUp()));
      await sleep(500);
      stopBurst = true;
      await bursting;

      // Sends: every one OK at first or on its retry elsewhere, each key stored once.
      const failedFirst = sends.filter((x) => x.first.outcome.code !== status.OK);
      expect(failedFirst.length, 'sends cut by the kill (at least those in flight)').to.be.above(0);
      for (const x of failedFirst) {
        expect(x.first.startedAt, `${x.first.key} failed on K, so started before the kill`).to.be.below(killedAt);
        expect(label(x.retry!.outcome), `retry of ${x.first.key} (${label(x.first.outcome)})`).to.equal('OK');
      }
      expect(tally(familySends.map((x) => x.outcome)), 'sends on the shared server').to.have.keys('OK');
      const all = [...sends.map((x) => x.first), ...familySends];
      const { rows } = await db().query<{ key: string; n: number }>(
        `select client_mutation_id as key, count(*)::int as n from message
          where tenant_id = $1 and thread_id = $2 group by 1`,
        [tenant, thread.threadId],
      );
      expect(rows.length, 'one message per key sent').to.equal(all.length);
      expect(
        rows.filter((x) => x.n !== 1),
        'no key stored twice',
      ).to.deep.equal([]);
      const replayed = failedFirst.filter((x) => x.retry!.replayed).length;

      // Feeds: a barrier, then before-the-kill + resumed = the uninterrupted reference, in thread order.
      const barrier = await attemptSend(shared.messages, family, thread.threadId, 'kill-barrier', 'barrier');
      for (const x of [refThread, resumed.patientThread, resumed.providerThread]) {
        await x.waitFor(() => posted(x).includes(barrier.messageId!), 20_000, 'the barrier');
      }
      await settled([refThread, resumed.patientThread, resumed.providerThread]);
      await settled([refInbox, resumed.patientInbox]);
      const order = (
        await walkMessages(shared.messages, provider, thread.threadId, {
          direction: ListDirection.LIST_DIRECTION_FORWARD,
          pageSize: 200,
        })
      )
        .flat()
        .map((m) => m.messageId);
      expect(posted(refThread), 'the reference feed').to.deep.equal(order);
      for (const name of ['patientThread', 'providerThread', 'patientInbox'] as const) {
        const before = eventTokens(onKFeeds[name]);
        const after = eventTokens(resumed[name]);
        expect(before.length, `${name}: events before the kill`).to.be.above(0);
        expect(after.length, `${name}: events after resuming`).to.be.above(0);
        const ref = name === 'patientInbox' ? refInbox : refThread;
        expect([...before, ...after], `${name}: before + resumed = the uninterrupted feed`).to.deep.equal(
          eventTokens(ref),
        );
        if (name !== 'patientInbox') {
          expect([...posted(onKFeeds[name]), ...posted(resumed[name])], name).to.deep.equal(order);
        }
      }

      // The job K held: S takes it over once its heartbeat lapsed; the message already at the provider is
      // found (reconciliation), not sent again.
      const n = await waitForNotification(
        notifications,
        service,
        intent.notificationId,
        (x) => x.status === NotificationStatus.NOTIFICATION_STATUS_DELIVERED,
        40_000,
      );
      const settledAt = Date.now();
      expect(n.deliveryStatus).to.equal(DeliveryStatus.DELIVERY_STATUS_DELIVERED);
      const { rows: sandbox } = await db().query('select 1 from sandbox_message where tenant_id = $1', [nTenant]);
      expect(sandbox, 'sent once').to.have.length(1);
      const jobs = await jobsOf(intent.notificationId);
      const resumedJob = jobs.find((j) => j.id === heldJob!.id);
      expect(resumedJob, JSON.stringify(jobs)).to.include({ state: 'completed' });
      expect(resumedJob!.retry_count, 'retried after K died').to.be.at.least(1);
      const recoverySeconds = (settledAt - killedAt) / 1000;
      expect(recoverySeconds, 'recovered within heartbeat + supervise + slack').to.be.below(
        HEARTBEAT_SECONDS + SUPERVISE_SECONDS + 10,
      );
      expect(await s.stop(), s.output()).to.equal(0);
      report('replica kill', {
        sends: all.length,
        firstAttemptsOnK: tally(sends.filter((x) => x.first.startedAt < killedAt).map((x) => x.first.outcome)),
        cutByKill: failedFirst.map((x) => `${label(x.first.outcome)} "${x.first.outcome.message}"`),
        committedBeforeCut: replayed,
        eventsBefore: Object.fromEntries(Object.entries(onKFeeds).map(([k2, x]) => [k2, eventTokens(x).length])),
        eventsResumed: Object.fromEntries(Object.entries(resumed).map(([k2, x]) => [k2, eventTokens(x).length])),
        jobRecoveredAfterS: recoverySeconds,
        jobs,
      });
    } finally {
      stopBurst = true;
      await bursting.catch(() => undefined);
      for (const x of streams) x.cancel();
      for (const c of [...closers, ...Object.values(shared), notifications]) c.close();
      for (const r of replicas) await r.kill();
    }
  });
});
