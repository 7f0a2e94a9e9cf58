import { expect } from 'chai';
import {
  AttemptOutcome,
  Channel,
  ChannelPlanCondition,
  type ChannelPlanStep,
  DeliveryStatus,
  type DispatchRecord,
  DispatchRecordKind,
  type Notification,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import { call, newTenant, newUser, type TestUser } from '../support/clients.js';
import { getNotification, notificationClient, sandboxBehavior, useDispatcher } from '../support/notifications.js';
import { db, newUserId } from '../support/threads.js';
import { until } from '../support/wait.js';

// ---- helpers (local to this file) ----

type Client = ReturnType<typeof notificationClient>;

const {
  DISPATCH_RECORD_KIND_ATTEMPT: ATTEMPT,
  DISPATCH_RECORD_KIND_DELIVERY_REPORT: REPORT,
  DISPATCH_RECORD_KIND_RECONCILIATION: RECONCILIATION,
} = DispatchRecordKind;
const D = DeliveryStatus;
const S = NotificationStatus;
const O = AttemptOutcome;
const { CHANNEL_PLAN_CONDITION_ALWAYS: ALWAYS, CHANNEL_PLAN_CONDITION_IF_NOT_DELIVERED: IF_NOT_DELIVERED } =
  ChannelPlanCondition;
const HOUR = 3_600_000;

function step(channel: Channel, delayMs = 0, condition = ALWAYS): ChannelPlanStep {
  return { channel, delay: { seconds: String(Math.floor(delayMs / 1000)), nanos: (delayMs % 1000) * 1e6 }, condition };
}

const PUSH_ONLY = [step(Channel.CHANNEL_PUSH)];
/** Push at once, SMS after an hour unless delivered: an SMS within seconds can only be a fallback. */
const PUSH_THEN_SMS = [step(Channel.CHANNEL_PUSH), step(Channel.CHANNEL_SMS, HOUR, IF_NOT_DELIVERED)];

const attemptsOf = (n: Notification) => n.dispatchRecords.filter((r) => r.kind === ATTEMPT);
const linkedTo = (n: Notification, a: DispatchRecord, kind: DispatchRecordKind) =>
  n.dispatchRecords.filter((r) => r.kind === kind && r.attemptRecordId === a.recordId);
const ms = (d: Date | undefined) => d!.getTime();

/** A compact picture of an intent for failure messages. */
function describeIntent(n: Notification): string {
  return JSON.stringify({
    status: S[n.status],
    reason: n.statusReason,
    delivery: D[n.deliveryStatus],
    records: n.dispatchRecords.map((r) => ({
      kind: DispatchRecordKind[r.kind],
      n: r.attemptNumber,
      step: r.planStepIndex,
      ch: Channel[r.channel],
      outcome: O[r.outcome],
      status: D[r.status],
      derived: D[r.derivedStatus],
      code: r.errorCode,
      linked: r.attemptRecordId.slice(-6),
    })),
  });
}

/** The sandbox's stored sends for one recipient, in order. */
async function sends(tenantId: string, recipient: string) {
  const { rows } = await db().query<{ pmid: string; channel: string; reference: string }>(
    `select provider_message_id::text as pmid, channel, reference::text as reference from sandbox_message
      where tenant_id = $1 and recipient_user_id = $2 order by accepted_at`,
    [tenantId, recipient],
  );
  return rows;
}

/** The dispatcher's stored state of an intent. */
async function storedState(tenantId: string, notificationId: string) {
  const { rows } = await db().query<{ state: string; next_step: number; claim_reference: string | null }>(
    'select state, next_step, claim_reference from notification_intent where tenant_id = $1 and notification_id = $2',
    [tenantId, notificationId],
  );
  return rows[0]!;
}

interface Scene {
  readonly client: Client;
  readonly tenant: string;
  readonly service: TestUser;
  /** RequestNotification for a fresh recipient after setting its sandbox behaviour per channel. */
  notify(
    plan: ChannelPlanStep[],
    behavior: Record<string, Parameters<typeof sandboxBehavior>[2]>,
  ): Promise<{ id: string; recipient: string }>;
  /** Polls GetNotification until `done`; the failure message shows the records. */
  waitFor(id: string, what: string, done: (n: Notification) => boolean, timeoutMs?: number): Promise<Notification>;
}

function useScene(): Scene {
  const scene = {} as { -readonly [K in keyof Scene]: Scene[K] };
  before(async () => {
    scene.client = notificationClient();
    scene.tenant = newTenant();
    scene.service = await newUser(scene.tenant, 'service');
    scene.notify = async (plan, behavior) => {
      const recipient = newUserId('r');
      for (const [channel, b] of Object.entries(behavior))
        await sandboxBehavior(scene.tenant, recipient, { ...b, channel });
      const res = await call(
        scene.client,
        scene.client.requestNotification,
        {
          recipientUserId: recipient,
          dedupeKey: newUserId('key'),
          templateKey: 'generic',
          threadId: '',
          messageId: '',
          sessionId: '',
          urgent: false,
          channelPlan: plan,
        },
        scene.service.md,
      );
      return { id: res.notification!.notificationId, recipient };
    };
    scene.waitFor = async (id, what, done, timeoutMs = 15_000) => {
      let last: Notification | undefined;
      try {
        return await until(
          what,
          async () => {
            last = await getNotification(scene.client, scene.service, id);
            return done(last) && last;
          },
          timeoutMs,
        );
      } catch (err) {
        throw new Error(`${(err as Error).message}; last: ${last ? describeIntent(last) : 'none'}`);
      }
    };
  });
  after(() => scene.client?.close());
  return scene;
}

// ---- tests ----

describe('notification dispatch: fallback along the channel plan', () => {
  // Default deadlines (confirmation 10 min): a fallback within seconds can only come from a report or an answer.
  useDispatcher();
  const s = useScene();

  it('a push reported FAILED makes the IF_NOT_DELIVERED SMS step run at once, which delivers', async () => {
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, { push: { reports: ['failed'] } });
    const started = Date.now();
    const n = await s.waitFor(id, 'delivered via SMS', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED);
    expect(Date.now() - started).to.be.below(15_000);
    const [push, sms, ...more] = attemptsOf(n);
    expect(more, describeIntent(n)).to.have.length(0);
    expect(push!.channel).to.equal(Channel.CHANNEL_PUSH);
    expect(push!.planStepIndex).to.equal(0);
    expect(push!.attemptNumber).to.equal(1);
    expect(push!.outcome).to.equal(O.ATTEMPT_OUTCOME_ACCEPTED);
    expect(push!.status).to.equal(D.DELIVERY_STATUS_QUEUED);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_FAILED);
    const [failed] = linkedTo(n, push!, REPORT);
    expect(failed!.status).to.equal(D.DELIVERY_STATUS_FAILED);
    expect(failed!.errorCode).to.equal('SANDBOX_FAILED');
    expect(sms!.channel).to.equal(Channel.CHANNEL_SMS);
    expect(sms!.planStepIndex).to.equal(1);
    expect(sms!.attemptNumber).to.equal(2);
    expect(sms!.outcome).to.equal(O.ATTEMPT_OUTCOME_ACCEPTED);
    expect(sms!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    // The SMS went out when the failure arrived, not after its one-hour delay.
    expect(ms(sms!.recordedAt) - ms(push!.recordedAt)).to.be.below(10_000);
    expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    expect(n.statusReason).to.equal('');
    expect((await sends(s.tenant, recipient)).map((r) => r.channel)).to.deep.equal(['push', 'sms']);
  });

  it('IF_UNREAD behaves as IF_NOT_DELIVERED for a kind without a message: an UNDELIVERED push falls back at once', async () => {
    const plan = [
      step(Channel.CHANNEL_PUSH),
      step(Channel.CHANNEL_EMAIL, HOUR, ChannelPlanCondition.CHANNEL_PLAN_CONDITION_IF_UNREAD),
    ];
    const { id } = await s.notify(plan, { push: { reports: ['sent', 'undelivered'] } });
    const n = await s.waitFor(id, 'delivered via email', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED);
    const [push, email] = attemptsOf(n);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_UNDELIVERED);
    expect(email!.channel).to.equal(Channel.CHANNEL_EMAIL);
    expect(email!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
  });

  it('a push the provider rejects is followed by the SMS step at once', async () => {
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, { push: { outcome: 'reject' } });
    const n = await s.waitFor(id, 'delivered via SMS', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED);
    const [push, sms, ...more] = attemptsOf(n);
    expect(more, describeIntent(n)).to.have.length(0);
    expect(push!.outcome).to.equal(O.ATTEMPT_OUTCOME_REJECTED);
    expect(push!.status).to.equal(D.DELIVERY_STATUS_FAILED);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_FAILED);
    expect(push!.providerMessageId).to.equal('');
    expect(push!.errorCode).to.equal('SANDBOX_REJECTED');
    expect(sms!.channel).to.equal(Channel.CHANNEL_SMS);
    expect(sms!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    // A rejected request stores nothing at the provider.
    expect((await sends(s.tenant, recipient)).map((r) => r.channel)).to.deep.equal(['sms']);
  });

  it('every step failing ends FAILED (PLAN_EXHAUSTED), delivery status the best of UNDELIVERED and FAILED', async () => {
    const { id } = await s.notify(PUSH_THEN_SMS, { push: { outcome: 'reject' }, sms: { reports: ['undelivered'] } });
    const n = await s.waitFor(id, 'failed', (x) => x.status === S.NOTIFICATION_STATUS_FAILED);
    expect(n.statusReason).to.equal('PLAN_EXHAUSTED');
    const [push, sms, ...more] = attemptsOf(n);
    expect(more).to.have.length(0);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_FAILED);
    expect(sms!.derivedStatus).to.equal(D.DELIVERY_STATUS_UNDELIVERED);
    // READ > DELIVERED > SENT > QUEUED > UNDELIVERED > FAILED
    expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_UNDELIVERED);
    expect(n.nextDispatchAt, 'no step is pending').to.equal(undefined);
    expect((await storedState(s.tenant, id)).state).to.equal('settled');
  });

  it('a delivered intent with no step left has no next_dispatch_at', async () => {
    const { id } = await s.notify(PUSH_ONLY, {});
    const n = await s.waitFor(id, 'delivered', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED);
    expect(
      n.nextDispatchAt,
      `next_dispatch_at of a DELIVERED intent whose plan is done: ${describeIntent(n)}`,
    ).to.equal(undefined);
  });
});

describe('notification dispatch: errors, timeouts and reconciliation', () => {
  useDispatcher({
    NOTIFY_PROVIDER_TIMEOUT_MS: '300',
    NOTIFY_CONFIRM_DEADLINE_MS: '1000',
    NOTIFY_MAX_ERRORS_PER_STEP: '2',
  });
  const s = useScene();

  it('transient errors are retried as new ERROR attempts; after NOTIFY_MAX_ERRORS_PER_STEP the step is given up and the next runs', async function () {
    this.timeout(30_000);
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, { push: { outcome: 'error' } });
    const n = await s.waitFor(id, 'delivered via SMS', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED, 20_000);
    const attempts = attemptsOf(n);
    expect(
      attempts.map((a) => [a.attemptNumber, a.planStepIndex, Channel[a.channel], O[a.outcome]]),
      describeIntent(n),
    ).to.deep.equal([
      [1, 0, 'CHANNEL_PUSH', 'ATTEMPT_OUTCOME_ERROR'],
      [2, 0, 'CHANNEL_PUSH', 'ATTEMPT_OUTCOME_ERROR'],
      [3, 1, 'CHANNEL_SMS', 'ATTEMPT_OUTCOME_ACCEPTED'],
    ]);
    for (const a of attempts.slice(0, 2)) {
      expect(a.status).to.equal(D.DELIVERY_STATUS_UNSPECIFIED);
      expect(a.derivedStatus).to.equal(D.DELIVERY_STATUS_UNSPECIFIED);
      expect(a.errorCode).to.equal('SANDBOX_UNAVAILABLE');
      expect(a.providerMessageId).to.equal('');
    }
    // The retry waits (backoff): the second error is not immediately after the first.
    expect(ms(attempts[1]!.recordedAt) - ms(attempts[0]!.recordedAt)).to.be.at.least(500);
    expect(attempts[2]!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    expect((await sends(s.tenant, recipient)).map((r) => r.channel)).to.deep.equal(['sms']);
  });

  it('no answer within NOTIFY_PROVIDER_TIMEOUT_MS: a TIMEOUT attempt, settled by a RECONCILIATION lookup, sent exactly once', async () => {
    const { id, recipient } = await s.notify(PUSH_ONLY, { push: { outcome: 'timeout', reports: [] } });
    const n = await s.waitFor(id, 'reconciled', (x) => x.dispatchRecords.some((r) => r.kind === RECONCILIATION));
    await until('the intent settles', async () => (await storedState(s.tenant, id)).state === 'settled');
    const final = await getNotification(s.client, s.service, id);
    const [attempt, ...more] = attemptsOf(final);
    expect(more, `sent once: ${describeIntent(final)}`).to.have.length(0);
    expect(attempt!.outcome).to.equal(O.ATTEMPT_OUTCOME_TIMEOUT);
    expect(attempt!.status).to.equal(D.DELIVERY_STATUS_UNSPECIFIED);
    expect(attempt!.errorCode).to.equal('TIMEOUT');
    expect(attempt!.providerMessageId).to.equal('');
    const stored = await sends(s.tenant, recipient);
    expect(stored, 'one sandbox message').to.have.length(1);
    const [rec, ...moreRec] = linkedTo(final, attempt!, RECONCILIATION);
    expect(moreRec).to.have.length(0);
    expect(rec!.providerMessageId).to.equal(stored[0]!.pmid);
    expect(rec!.status).to.equal(D.DELIVERY_STATUS_SENT);
    expect(rec!.notificationId).to.equal(id);
    expect(rec!.attemptNumber).to.equal(1);
    expect(ms(rec!.recordedAt)).to.be.at.least(ms(attempt!.recordedAt));
    expect(attempt!.derivedStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(final.deliveryStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(final.status).to.equal(S.NOTIFICATION_STATUS_SENT);
    expect(n.dispatchRecords.filter((r) => r.kind === ATTEMPT)).to.have.length(1);
  });

  it('a provider answering after the request deadline: its later delivery report links to the TIMEOUT attempt through the reconciliation', async () => {
    const { id, recipient } = await s.notify(PUSH_ONLY, { push: { delayMs: 800 } });
    const n = await s.waitFor(id, 'a report linked', (x) => x.dispatchRecords.some((r) => r.kind === REPORT));
    const [attempt, ...more] = attemptsOf(n);
    expect(more, describeIntent(n)).to.have.length(0);
    expect(attempt!.outcome).to.equal(O.ATTEMPT_OUTCOME_TIMEOUT);
    const [rec] = linkedTo(n, attempt!, RECONCILIATION);
    const [report] = linkedTo(n, attempt!, REPORT);
    expect(report, describeIntent(n)).to.not.equal(undefined);
    expect(report!.providerMessageId).to.equal(rec!.providerMessageId);
    expect(report!.status).to.equal(D.DELIVERY_STATUS_DELIVERED);
    expect(attempt!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    expect(n.status).to.equal(S.NOTIFICATION_STATUS_DELIVERED);
    expect(await sends(s.tenant, recipient)).to.have.length(1);
  });

  it('an accepted push with no report past NOTIFY_CONFIRM_DEADLINE_MS is looked up: a RECONCILIATION record (SENT) linked to it', async () => {
    const { id, recipient } = await s.notify(PUSH_ONLY, { push: { reports: [] } });
    const n = await s.waitFor(id, 'reconciled', (x) => x.dispatchRecords.some((r) => r.kind === RECONCILIATION));
    const [attempt, ...more] = attemptsOf(n);
    expect(more).to.have.length(0);
    expect(attempt!.outcome).to.equal(O.ATTEMPT_OUTCOME_ACCEPTED);
    const [rec, ...moreRec] = linkedTo(n, attempt!, RECONCILIATION);
    expect(moreRec).to.have.length(0);
    expect(rec!.kind).to.equal(RECONCILIATION);
    expect(rec!.providerMessageId).to.equal(attempt!.providerMessageId);
    expect(rec!.status).to.equal(D.DELIVERY_STATUS_SENT);
    expect(rec!.attemptNumber).to.equal(1);
    expect(rec!.channel).to.equal(Channel.CHANNEL_PUSH);
    // Not before the deadline (1 s after the attempt).
    expect(ms(rec!.recordedAt) - ms(attempt!.recordedAt)).to.be.at.least(990);
    expect(attempt!.derivedStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(n.status).to.equal(S.NOTIFICATION_STATUS_SENT);
    await until('the intent settles', async () => (await storedState(s.tenant, id)).state === 'settled');
    const final = await getNotification(s.client, s.service, id);
    expect(linkedTo(final, attempt!, RECONCILIATION), 'looked up once').to.have.length(1);
    expect(attemptsOf(final)).to.have.length(1);
    expect(await sends(s.tenant, recipient)).to.have.length(1);
  });

  it('a push that stays SENT past the confirmation deadline makes the IF_NOT_DELIVERED step run then', async () => {
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, { push: { reports: ['sent'] } });
    const n = await s.waitFor(id, 'delivered via SMS', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED);
    const [push, sms, ...more] = attemptsOf(n);
    expect(more, describeIntent(n)).to.have.length(0);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(linkedTo(n, push!, RECONCILIATION)).to.have.length(1);
    expect(sms!.channel).to.equal(Channel.CHANNEL_SMS);
    expect(sms!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    const gap = ms(sms!.recordedAt) - ms(push!.recordedAt);
    expect(gap, 'SMS after the confirmation deadline').to.be.at.least(990);
    expect(gap, 'SMS long before its one-hour delay').to.be.below(10_000);
    expect((await sends(s.tenant, recipient)).map((r) => r.channel)).to.deep.equal(['push', 'sms']);
  });

  it('a push delivered before the deadline never triggers the IF_NOT_DELIVERED step', async () => {
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, {});
    await until('the intent settles', async () => (await storedState(s.tenant, id)).state === 'settled');
    const n = await getNotification(s.client, s.service, id);
    expect(attemptsOf(n), describeIntent(n)).to.have.length(1);
    expect(n.status).to.equal(S.NOTIFICATION_STATUS_DELIVERED);
    expect(n.nextDispatchAt).to.equal(undefined);
    expect(await sends(s.tenant, recipient)).to.have.length(1);
  });

  it('a TIMEOUT push found at the provider but unconfirmed past the deadline makes the IF_NOT_DELIVERED step run', async () => {
    // The reconciliation answers SENT (found, never confirmed): like an accepted push that stays SENT.
    const { id, recipient } = await s.notify(PUSH_THEN_SMS, { push: { outcome: 'timeout', reports: [] } });
    const n = await s.waitFor(id, 'delivered via SMS', (x) => x.status === S.NOTIFICATION_STATUS_DELIVERED, 10_000);
    const [push, sms, ...more] = attemptsOf(n);
    expect(more, describeIntent(n)).to.have.length(0);
    expect(push!.outcome).to.equal(O.ATTEMPT_OUTCOME_TIMEOUT);
    expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_SENT);
    expect(sms!.channel).to.equal(Channel.CHANNEL_SMS);
    expect((await sends(s.tenant, recipient)).map((r) => r.channel)).to.deep.equal(['push', 'sms']);
  });
});
