import { expect } from 'chai';
import {
  AttemptOutcome,
  DeliveryStatus,
  DispatchRecordKind,
  type Notification,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import { call, newTenant, newUser, type TestUser } from '../support/clients.js';
import { getNotification, notificationClient, sandboxBehavior, tenantPlans } from '../support/notifications.js';
import { type Replica, startReplica } from '../support/replicas.js';
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
const O = AttemptOutcome;

/** Crash recovery relies on pg-boss heartbeats: the smallest heartbeat and supervise intervals allowed. */
const HEARTBEAT_SECONDS = 10;
const SUPERVISE_SECONDS = 1;
const DISPATCHING = {
  NOTIFY_DISPATCH: 'true',
  NOTIFY_JOB_HEARTBEAT_SECONDS: String(HEARTBEAT_SECONDS),
  NOTIFY_SUPERVISE_SECONDS: String(SUPERVISE_SECONDS),
  NOTIFY_POLL_MS: '500',
  // Reports and lookups answer DELIVERED, so every intent ends DELIVERED wherever it was sent from.
  NOTIFY_SANDBOX_REPORTS: 'delivered',
};
const SEND_DELAY_MS = 4_000;
const INTENTS = 30;

interface Batch {
  readonly client: Client;
  readonly tenant: string;
  readonly service: TestUser;
  /** notification_id → recipient (one recipient per intent, so sandbox rows map to intents). */
  readonly intents: ReadonlyMap<string, string>;
}

/** A tenant whose SERVICE_EVENT plan is one push, and `INTENTS` intents to recipients the sandbox answers slowly. */
async function batch(client: Client): Promise<Batch> {
  const tenant = newTenant();
  const service = await newUser(tenant, 'service');
  await tenantPlans(tenant, { service_event: [{ channel: 'push', delay_ms: 0, condition: 'always' }] });
  const recipients = Array.from({ length: INTENTS }, () => newUserId('r'));
  await Promise.all(recipients.map((r) => sandboxBehavior(tenant, r, { delayMs: SEND_DELAY_MS })));
  const intents = new Map<string, string>();
  // All at once, so the replica's first batch starts while the window for catching it in flight is open.
  await Promise.all(
    recipients.map(async (recipient, i) => {
      const res = await call(
        client,
        client.requestNotification,
        {
          recipientUserId: recipient,
          dedupeKey: `restart-${i}`,
          templateKey: 'generic',
          threadId: '',
          messageId: '',
          sessionId: '',
          urgent: false,
          channelPlan: [],
        },
        service.md,
      );
      intents.set(res.notification!.notificationId, recipient);
    }),
  );
  return { client, tenant, service, intents };
}

async function counts(tenant: string) {
  const { rows } = await db().query<{ sends: number; attempts: number; claims: number }>(
    `select (select count(*)::int from sandbox_message where tenant_id = $1) as sends,
            (select count(*)::int from dispatch_record where tenant_id = $1 and kind = 'attempt') as attempts,
            (select count(*)::int from notification_intent where tenant_id = $1 and claim_reference is not null) as claims`,
    [tenant],
  );
  return rows[0]!;
}

/**
 * Waits until the replica has stored messages at the sandbox (its first batch is at the provider, whose
 * answer takes SEND_DELAY_MS), then half a second more so a second worker's batch gets there too. Fails
 * if an attempt is recorded meanwhile: then nothing would be in flight at the `what`.
 */
async function messagesInFlight(tenant: string, what: string): Promise<void> {
  let firstSeen = 0;
  await until(
    'the replica has messages in flight',
    async () => {
      const c = await counts(tenant);
      expect(c.attempts, `no attempt may be recorded before the ${what} (machine too slow?)`).to.equal(0);
      if (firstSeen === 0 && c.sends > 0) firstSeen = Date.now();
      return firstSeen > 0 && Date.now() - firstSeen >= 500;
    },
    15_000,
  );
}

/** Intents with a claim (an attempt in flight) and the sandbox rows, straight from the tables. */
async function snapshot(tenant: string) {
  const { rows: claims } = await db().query<{ id: string; reference: string }>(
    `select notification_id::text as id, claim_reference::text as reference from notification_intent
      where tenant_id = $1 and claim_reference is not null`,
    [tenant],
  );
  const { rows: sends } = await db().query<{ recipient: string; pmid: string; reference: string }>(
    `select recipient_user_id as recipient, provider_message_id::text as pmid, reference::text as reference
       from sandbox_message where tenant_id = $1`,
    [tenant],
  );
  return { claims: new Map(claims.map((c) => [c.id, c.reference])), sends };
}

/**
 * True once every intent's push step is done: no claim left, and an ACCEPTED attempt or a reconciliation
 * that found the message at the provider.
 */
async function allSettled(tenant: string): Promise<boolean> {
  const { rows } = await db().query<{ n: number }>(
    `select count(*)::int as n from notification_intent i
      where i.tenant_id = $1 and i.claim_reference is null
        and exists (select 1 from dispatch_record r
                     where r.tenant_id = i.tenant_id and r.notification_id = i.notification_id
                       and ((r.kind = 'attempt' and r.outcome = 'accepted')
                            or (r.kind = 'reconciliation' and r.provider_message_id <> '')))`,
    [tenant],
  );
  return rows[0]!.n === INTENTS;
}

function describeIntent(n: Notification): string {
  return JSON.stringify({
    status: NotificationStatus[n.status],
    delivery: D[n.deliveryStatus],
    records: n.dispatchRecords.map((r) => [DispatchRecordKind[r.kind], r.attemptNumber, O[r.outcome], D[r.status]]),
  });
}

/**
 * Every intent was sent exactly once (one sandbox row for its recipient), is DELIVERED (or SENT), and has
 * exactly one effective attempt for its push step: an ACCEPTED attempt, or a TIMEOUT attempt whose
 * reconciliation found the message. Returns the intents as read.
 */
async function expectSentOnce(b: Batch): Promise<Map<string, Notification>> {
  const { sends } = await snapshot(b.tenant);
  const byRecipient = new Map<string, typeof sends>();
  for (const s of sends) byRecipient.set(s.recipient, [...(byRecipient.get(s.recipient) ?? []), s]);
  const out = new Map<string, Notification>();
  for (const [id, recipient] of b.intents) {
    const n = await getNotification(b.client, b.service, id);
    out.set(id, n);
    const rows = byRecipient.get(recipient) ?? [];
    expect(rows, `sandbox rows of intent ${id}: ${describeIntent(n)}`).to.have.length(1);
    expect([D.DELIVERY_STATUS_DELIVERED, D.DELIVERY_STATUS_SENT], describeIntent(n)).to.include(n.deliveryStatus);
    expect(
      [NotificationStatus.NOTIFICATION_STATUS_DELIVERED, NotificationStatus.NOTIFICATION_STATUS_SENT],
      describeIntent(n),
    ).to.include(n.status);
    const attempts = n.dispatchRecords.filter((r) => r.kind === ATTEMPT);
    for (const a of attempts) expect(a.planStepIndex).to.equal(0);
    const effective = attempts.filter(
      (a) =>
        a.outcome === O.ATTEMPT_OUTCOME_ACCEPTED ||
        (a.outcome === O.ATTEMPT_OUTCOME_TIMEOUT &&
          n.dispatchRecords.some(
            (r) => r.kind === RECONCILIATION && r.attemptRecordId === a.recordId && r.providerMessageId !== '',
          )),
    );
    expect(effective, `one effective attempt: ${describeIntent(n)}`).to.have.length(1);
    const pmid = effective[0]!.providerMessageId || rowFor(n, effective[0]!.recordId);
    expect(pmid, 'the effective attempt names the one stored message').to.equal(rows[0]!.pmid);
    // Only the reports of that message, all linked.
    for (const r of n.dispatchRecords.filter((x) => x.kind === REPORT)) expect(r.providerMessageId).to.equal(pmid);
  }
  return out;
}

/** The provider message id a reconciliation of this attempt learned. */
function rowFor(n: Notification, attemptRecordId: string): string {
  return n.dispatchRecords.find((r) => r.kind === RECONCILIATION && r.attemptRecordId === attemptRecordId)!
    .providerMessageId;
}

// ---- tests ----

describe('notification dispatch across a replica restart', () => {
  let client: Client;
  const replicas: Replica[] = [];
  before(() => {
    client = notificationClient();
  });
  afterEach(async () => {
    for (const r of replicas.splice(0)) await r.kill();
  });
  after(() => client.close());

  it('SIGKILL mid-batch: the next replica records TIMEOUT for the claims, reconciles them, and nothing is sent twice', async function () {
    this.timeout(150_000);
    // A first: its settings apply to the queue, and jobs take the heartbeat the queue has when created.
    const a = await startReplica(DISPATCHING);
    replicas.push(a);
    const b0 = await batch(client);
    // Wait until A has stored some messages at the sandbox but recorded no attempt (they answer after 4 s).
    await messagesInFlight(b0.tenant, 'kill');
    await a.kill();
    const killedAt = Date.now();
    // The server may still be ending the dead process's sessions: let a commit sent just before the kill land.
    await new Promise((r) => setTimeout(r, 200));
    const atKill = await snapshot(b0.tenant);
    const c = await counts(b0.tenant);
    expect(c.attempts, 'killed before any provider answered').to.equal(0);
    expect(atKill.claims.size, 'claims in flight at the kill').to.be.at.least(atKill.sends.length);
    expect(atKill.claims.size, 'not every intent was taken (mid-batch)').to.be.below(INTENTS);
    for (const s of atKill.sends) {
      expect([...atKill.claims.values()], 'each stored message belongs to a claim').to.include(s.reference);
    }
    // The jobs A died in carry the heartbeat it configured (so recovery below is bounded by it).
    const { rows: jobs } = await db().query<{ heartbeat_seconds: number }>(
      `select distinct heartbeat_seconds from pgboss.job where singleton_key = any ($1::text[]) and state = 'active'`,
      [[...atKill.claims.keys()]],
    );
    expect(jobs.map((j) => j.heartbeat_seconds)).to.deep.equal([HEARTBEAT_SECONDS]);

    const b = await startReplica({ ...DISPATCHING, NOTIFY_CONCURRENCY: '32' });
    replicas.push(b);
    // The intents A had not taken go out from B at once; A's claims wait for their jobs' heartbeat to lapse.
    let recoveredAt = 0;
    await until(
      'every intent settled after the restart',
      async () => {
        const { claims } = await snapshot(b0.tenant);
        if (recoveredAt === 0 && [...atKill.claims.keys()].every((id) => !claims.has(id))) recoveredAt = Date.now();
        return allSettled(b0.tenant);
      },
      120_000,
    );
    const recoverySeconds = (recoveredAt - killedAt) / 1000;

    const read = await expectSentOnce(b0);
    expect((await snapshot(b0.tenant)).sends).to.have.length(INTENTS);
    for (const [id, n] of read) {
      const attempts = n.dispatchRecords.filter((r) => r.kind === ATTEMPT);
      const reference = atKill.claims.get(id);
      if (reference === undefined) {
        // Taken only by B: one ACCEPTED attempt.
        expect(
          attempts.map((x) => O[x.outcome]),
          describeIntent(n),
        ).to.deep.equal(['ATTEMPT_OUTCOME_ACCEPTED']);
        continue;
      }
      // In flight at the kill: a TIMEOUT attempt for the claim, then a RECONCILIATION of it.
      const [timeout] = attempts;
      expect(timeout!.outcome, describeIntent(n)).to.equal(O.ATTEMPT_OUTCOME_TIMEOUT);
      expect(timeout!.attemptNumber).to.equal(1);
      const recIndex = n.dispatchRecords.findIndex(
        (r) => r.kind === RECONCILIATION && r.attemptRecordId === timeout!.recordId,
      );
      expect(recIndex, `a reconciliation of the TIMEOUT attempt: ${describeIntent(n)}`).to.be.greaterThan(
        n.dispatchRecords.indexOf(timeout!),
      );
      const rec = n.dispatchRecords[recIndex]!;
      const stored = atKill.sends.find((s) => s.reference === reference);
      if (stored) {
        // The provider had it: found by the claim's reference, never sent again.
        expect(rec.providerMessageId).to.equal(stored.pmid);
        expect(rec.status).to.equal(D.DELIVERY_STATUS_DELIVERED);
        expect(attempts, describeIntent(n)).to.have.length(1);
        expect(n.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
      } else {
        // Claimed but not yet at the provider: the lookup finds nothing, so it is sent (once) again.
        expect(rec.providerMessageId).to.equal('');
        expect(attempts.map((x) => O[x.outcome])).to.deep.equal([
          'ATTEMPT_OUTCOME_TIMEOUT',
          'ATTEMPT_OUTCOME_ACCEPTED',
        ]);
      }
    }
    // Recovery is bounded by the heartbeat and supervise intervals (plus the retry backoff and a poll),
    // not by anything longer.
    expect(
      recoverySeconds,
      `claims of the killed replica recovered ${recoverySeconds.toFixed(1)} s after the kill ` +
        `(NOTIFY_JOB_HEARTBEAT_SECONDS=${HEARTBEAT_SECONDS}, NOTIFY_SUPERVISE_SECONDS=${SUPERVISE_SECONDS})`,
    ).to.be.below(HEARTBEAT_SECONDS + SUPERVISE_SECONDS + 10);
    expect(await b.stop()).to.equal(0);
  });

  it('SIGTERM mid-batch: running sends finish on the stopping replica, the rest go out from the next, no TIMEOUT, nothing sent twice', async function () {
    this.timeout(90_000);
    // A first: its settings apply to the queue, and jobs take the heartbeat the queue has when created.
    const a = await startReplica(DISPATCHING);
    replicas.push(a);
    const b0 = await batch(client);
    await messagesInFlight(b0.tenant, 'stop');
    const inFlight = (await snapshot(b0.tenant)).claims;
    const code = await a.stop(30_000);
    expect(code, a.output()).to.equal(0);
    const afterStop = await snapshot(b0.tenant);
    expect(afterStop.claims.size, 'a graceful stop leaves no claim behind').to.equal(0);
    expect(afterStop.sends.length).to.be.below(INTENTS);
    const b = await startReplica({ ...DISPATCHING, NOTIFY_CONCURRENCY: '32' });
    replicas.push(b);
    await until('every intent settled after the restart', () => allSettled(b0.tenant), 30_000);
    const read = await expectSentOnce(b0);
    for (const [id, n] of read) {
      const attempts = n.dispatchRecords.filter((r) => r.kind === ATTEMPT);
      expect(
        attempts.map((x) => O[x.outcome]),
        `${inFlight.has(id) ? 'in flight at the stop' : 'sent by B'}: ${describeIntent(n)}`,
      ).to.deep.equal(['ATTEMPT_OUTCOME_ACCEPTED']);
    }
    expect(await b.stop()).to.equal(0);
  });
});
