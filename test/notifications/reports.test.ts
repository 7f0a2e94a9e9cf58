import { status as grpcStatus } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  Channel,
  ChannelPlanCondition,
  type ChannelPlanStep,
  DeliveryStatus,
  DispatchRecordKind,
  type Notification,
  NotificationStatus,
  type ReportDeliveryRequest,
  type ReportDeliveryResponse,
} from '../../gen/comms/v1/notification.js';
import { call, callError, expectError, newTenant, newUser, type TestUser } from '../support/clients.js';
import {
  getNotification,
  notificationClient,
  sandboxBehavior,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';
import { db, expectFieldViolations, newUserId } from '../support/threads.js';
import { until } from '../support/wait.js';

// ---- helpers (local to this file) ----

type Client = ReturnType<typeof notificationClient>;

const { DISPATCH_RECORD_KIND_ATTEMPT: ATTEMPT, DISPATCH_RECORD_KIND_DELIVERY_REPORT: REPORT } = DispatchRecordKind;
const D = DeliveryStatus;

function step(channel: Channel, delayMs = 0, condition = ChannelPlanCondition.CHANNEL_PLAN_CONDITION_ALWAYS) {
  return {
    channel,
    delay: { seconds: String(Math.floor(delayMs / 1000)), nanos: (delayMs % 1000) * 1e6 },
    condition,
  } satisfies ChannelPlanStep;
}

const PUSH_ONLY = [step(Channel.CHANNEL_PUSH)];
const PUSH_THEN_SMS = [
  step(Channel.CHANNEL_PUSH),
  step(Channel.CHANNEL_SMS, 3_600_000, ChannelPlanCondition.CHANNEL_PLAN_CONDITION_IF_NOT_DELIVERED),
];

async function requestNotification(
  client: Client,
  service: TestUser,
  recipientUserId: string,
  dedupeKey: string,
  channelPlan: ChannelPlanStep[] = PUSH_ONLY,
): Promise<Notification> {
  const res = await call(
    client,
    client.requestNotification,
    {
      recipientUserId,
      dedupeKey,
      templateKey: 'generic',
      threadId: '',
      messageId: '',
      sessionId: '',
      urgent: false,
      channelPlan,
    },
    service.md,
  );
  return res.notification!;
}

function reportRequest(r: Partial<ReportDeliveryRequest>): ReportDeliveryRequest {
  return {
    provider: 'sandbox',
    providerMessageId: '',
    providerEventId: '',
    status: D.DELIVERY_STATUS_DELIVERED,
    providerTimestamp: new Date(),
    errorCode: '',
    errorMessage: '',
    ...r,
  };
}

function reportDelivery(client: Client, service: TestUser, r: Partial<ReportDeliveryRequest>) {
  return call(client, client.reportDelivery, reportRequest(r), service.md);
}

const attemptsOf = (n: Notification) => n.dispatchRecords.filter((r) => r.kind === ATTEMPT);
const reportsOf = (n: Notification) => n.dispatchRecords.filter((r) => r.kind === REPORT);

/** The accepted attempts' provider message ids of these intents, once each has one. */
async function acceptedAttempts(tenantId: string, ids: readonly string[]): Promise<Map<string, string>> {
  return until(`an accepted attempt for each of ${ids.length} intents`, async () => {
    const { rows } = await db().query<{ id: string; pmid: string }>(
      `select notification_id::text as id, provider_message_id as pmid from dispatch_record
        where tenant_id = $1 and kind = 'attempt' and outcome = 'accepted' and notification_id = any ($2::uuid[])`,
      [tenantId, ids],
    );
    return rows.length === ids.length && new Map(rows.map((r) => [r.id, r.pmid]));
  });
}

/** pg-boss jobs ever created for an intent (each enqueue adds one). */
async function jobCount(notificationId: string): Promise<number> {
  const { rows } = await db().query<{ n: number }>(
    'select count(*)::int as n from pgboss.job where singleton_key = $1',
    [notificationId],
  );
  return rows[0]!.n;
}

function permutations<T>(items: readonly T[]): T[][] {
  if (items.length <= 1) return [items.slice()];
  return items.flatMap((x, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((p) => [x, ...p]));
}

/** Runs `fn` over `items` with at most `width` in flight. */
async function inBatches<T, R>(items: readonly T[], width: number, fn: (item: T, i: number) => Promise<R>) {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

// ---- tests ----

describe('NotificationService.ReportDelivery', () => {
  useDispatcher();
  let client: Client;
  let tenant: string;
  let service: TestUser;
  before(async () => {
    client = notificationClient();
    tenant = newTenant();
    service = await newUser(tenant, 'service');
  });
  after(() => client.close());

  /** An intent for a fresh recipient whose sandbox reports nothing, with its accepted attempt. */
  async function dispatched(plan: ChannelPlanStep[] = PUSH_ONLY, recipient = newUserId('r')) {
    await sandboxBehavior(tenant, recipient, { reports: [] });
    const created = await requestNotification(client, service, recipient, newUserId('key'), plan);
    const pmid = (await acceptedAttempts(tenant, [created.notificationId])).get(created.notificationId)!;
    return { id: created.notificationId, recipient, pmid };
  }

  describe('the derived status does not depend on arrival order', () => {
    interface Spec {
      readonly label: string;
      /** Index into the event ids of this intent (two specs with one index are one report sent twice). */
      readonly event: number;
      readonly status: DeliveryStatus;
      readonly at: number;
    }

    async function runOrderings(set: readonly Spec[], reportsStored: number) {
      const orders = permutations(set);
      const base = Date.now() + 60_000;
      const recipient = newUserId('perm');
      await sandboxBehavior(tenant, recipient, { reports: [] });
      const intents = await inBatches(orders, 8, (_o, i) =>
        requestNotification(client, service, recipient, `perm-${newUserId()}-${i}`),
      );
      const pmids = await acceptedAttempts(
        tenant,
        intents.map((n) => n.notificationId),
      );
      const results = await inBatches(orders, 8, async (order, i) => {
        const id = intents[i]!.notificationId;
        const pmid = pmids.get(id)!;
        const responses: { spec: Spec; res: ReportDeliveryResponse }[] = [];
        for (const spec of order) {
          const res = await reportDelivery(client, service, {
            providerMessageId: pmid,
            providerEventId: `${pmid}:${spec.event}`,
            status: spec.status,
            providerTimestamp: new Date(base + spec.at),
          });
          responses.push({ spec, res });
        }
        return { id, pmid, order, responses, n: await getNotification(client, service, id) };
      });
      const outcomes = new Set<string>();
      for (const { id, pmid, order, responses, n } of results) {
        const what = `ordering ${order.map((s) => s.label).join(', ')}`;
        const [attempt, ...more] = attemptsOf(n);
        expect(more, `${what}: one attempt`).to.have.length(0);
        const reports = reportsOf(n);
        expect(reports, `${what}: reports stored`).to.have.length(reportsStored);
        for (const r of reports) {
          expect(r.attemptRecordId, `${what}: report linked`).to.equal(attempt!.recordId);
          expect(r.notificationId).to.equal(id);
          expect(r.attemptNumber).to.equal(1);
          expect(r.channel).to.equal(Channel.CHANNEL_PUSH);
          expect(r.providerMessageId).to.equal(pmid);
        }
        // Every response names the record stored for its event id, linked to the attempt (it exists).
        const byEvent = new Map(reports.map((r) => [r.providerEventId, r]));
        for (const { spec, res } of responses) {
          const stored = byEvent.get(`${pmid}:${spec.event}`);
          expect(stored, `${what}: a record for event ${spec.event}`).to.not.equal(undefined);
          expect(res.record!.recordId, `${what}: ${spec.label} answers the first record of its event`).to.equal(
            stored!.recordId,
          );
          expect(res.record!.status, `${what}: ${spec.label} answers the stored status`).to.equal(stored!.status);
          expect(res.record!.attemptRecordId).to.equal(attempt!.recordId);
          expect(res.record!.notificationId).to.equal(id);
          expect(res.record!.kind).to.equal(REPORT);
        }
        outcomes.add(
          JSON.stringify({
            status: NotificationStatus[n.status],
            deliveryStatus: D[n.deliveryStatus],
            derived: D[attempt!.derivedStatus],
            reports: reports.map((r) => `${r.providerEventId.slice(pmid.length)}=${D[r.status]}`).sort(),
          }),
        );
      }
      return [...outcomes];
    }

    it('{SENT@t1, DELIVERED@t2, SENT@t1 again (same event id), QUEUED@t0}: DELIVERED for all 24 orders, the repeat stored once', async function () {
      this.timeout(60_000);
      const outcomes = await runOrderings(
        [
          { label: 'SENT@t1', event: 1, status: D.DELIVERY_STATUS_SENT, at: 1_000 },
          { label: 'DELIVERED@t2', event: 2, status: D.DELIVERY_STATUS_DELIVERED, at: 2_000 },
          { label: 'SENT@t1 (repeat)', event: 1, status: D.DELIVERY_STATUS_SENT, at: 1_000 },
          { label: 'QUEUED@t0', event: 3, status: D.DELIVERY_STATUS_QUEUED, at: 0 },
        ],
        3,
      );
      expect(outcomes).to.deep.equal([
        JSON.stringify({
          status: 'NOTIFICATION_STATUS_DELIVERED',
          deliveryStatus: 'DELIVERY_STATUS_DELIVERED',
          derived: 'DELIVERY_STATUS_DELIVERED',
          reports: [':1=DELIVERY_STATUS_SENT', ':2=DELIVERY_STATUS_DELIVERED', ':3=DELIVERY_STATUS_QUEUED'],
        }),
      ]);
    });

    it('{QUEUED@t0, FAILED@t2, DELIVERED@t2, SENT@t3}: conflicting terminals at one timestamp give DELIVERED (tie order) for all 24 orders; a later intermediate never beats a terminal', async function () {
      this.timeout(60_000);
      const outcomes = await runOrderings(
        [
          { label: 'QUEUED@t0', event: 1, status: D.DELIVERY_STATUS_QUEUED, at: 0 },
          { label: 'FAILED@t2', event: 2, status: D.DELIVERY_STATUS_FAILED, at: 2_000 },
          { label: 'DELIVERED@t2', event: 3, status: D.DELIVERY_STATUS_DELIVERED, at: 2_000 },
          { label: 'SENT@t3', event: 4, status: D.DELIVERY_STATUS_SENT, at: 3_000 },
        ],
        4,
      );
      expect(outcomes).to.deep.equal([
        JSON.stringify({
          status: 'NOTIFICATION_STATUS_DELIVERED',
          deliveryStatus: 'DELIVERY_STATUS_DELIVERED',
          derived: 'DELIVERY_STATUS_DELIVERED',
          reports: [
            ':1=DELIVERY_STATUS_QUEUED',
            ':2=DELIVERY_STATUS_FAILED',
            ':3=DELIVERY_STATUS_DELIVERED',
            ':4=DELIVERY_STATUS_SENT',
          ],
        }),
      ]);
    });
  });

  describe('idempotency', () => {
    it('a repeated event id with different fields returns the first record, appends nothing and triggers nothing', async () => {
      const { id, pmid } = await dispatched();
      const at = new Date(Date.now() + 5_000);
      const first = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:x`,
        status: D.DELIVERY_STATUS_DELIVERED,
        providerTimestamp: at,
      });
      expect(first.record!.notificationId).to.equal(id);
      expect(first.record!.status).to.equal(D.DELIVERY_STATUS_DELIVERED);
      const jobsBefore = await jobCount(id);
      const repeat = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:x`,
        status: D.DELIVERY_STATUS_FAILED,
        providerTimestamp: new Date(at.getTime() + 60_000),
        errorCode: '30003',
        errorMessage: 'unreachable',
      });
      expect(repeat.record).to.deep.equal(first.record);
      // A repeat whose message id differs is still the same event: the first record, nothing new.
      const other = await reportDelivery(client, service, {
        providerMessageId: `${pmid}-other`,
        providerEventId: `${pmid}:x`,
        status: D.DELIVERY_STATUS_UNDELIVERED,
      });
      expect(other.record).to.deep.equal(first.record);
      expect(await jobCount(id), 'a repeated FAILED report enqueues no fallback').to.equal(jobsBefore);
      const n = await getNotification(client, service, id);
      expect(reportsOf(n).map((r) => r.recordId)).to.deep.equal([first.record!.recordId]);
      expect(attemptsOf(n)[0]!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
      expect(n.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
      const { rows } = await db().query(
        `select count(*)::int as n from dispatch_record where tenant_id = $1 and provider_event_id = $2`,
        [tenant, `${pmid}:x`],
      );
      expect(rows[0].n).to.equal(1);
    });

    it('the same report sent 12 times at once is stored once; every call answers the one record', async () => {
      const { id, pmid } = await dispatched();
      const responses = await Promise.all(
        Array.from({ length: 12 }, () =>
          reportDelivery(client, service, {
            providerMessageId: pmid,
            providerEventId: `${pmid}:burst`,
            status: D.DELIVERY_STATUS_SENT,
          }),
        ),
      );
      const ids = new Set(responses.map((r) => r.record!.recordId));
      expect(ids.size).to.equal(1);
      const n = await getNotification(client, service, id);
      expect(reportsOf(n).map((r) => r.recordId)).to.deep.equal([...ids]);
      expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_SENT);
    });
  });

  describe('a report that arrives before its attempt is recorded', () => {
    /** An intent whose sandbox stores the message at once but answers after `delayMs`. */
    async function inFlight(plan: ChannelPlanStep[], delayMs = 1_500) {
      const recipient = newUserId('early');
      await sandboxBehavior(tenant, recipient, { channel: 'push', delayMs, reports: [] });
      const created = await requestNotification(client, service, recipient, newUserId('key'), plan);
      const row = await until('the sandbox stores the push message', async () => {
        const { rows } = await db().query<{ pmid: string }>(
          `select provider_message_id::text as pmid from sandbox_message where tenant_id = $1 and recipient_user_id = $2`,
          [tenant, recipient],
        );
        return rows[0];
      });
      return { id: created.notificationId, recipient, pmid: row.pmid };
    }

    it('is stored unlinked, then linked to the attempt once it exists and counts (DELIVERED)', async () => {
      const { id, pmid } = await inFlight(PUSH_ONLY);
      const early = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:early`,
        status: D.DELIVERY_STATUS_DELIVERED,
      });
      const before = await getNotification(client, service, id);
      // The provider has not answered yet: no attempt, so the report cannot be linked.
      expect(attemptsOf(before), 'no attempt yet (sandbox delay too short for this machine?)').to.have.length(0);
      expect(early.record!.kind).to.equal(REPORT);
      expect(early.record!.notificationId).to.equal('');
      expect(early.record!.attemptNumber).to.equal(0);
      expect(early.record!.attemptRecordId).to.equal('');
      expect(early.record!.channel).to.equal(Channel.CHANNEL_UNSPECIFIED);
      expect(early.record!.status).to.equal(D.DELIVERY_STATUS_DELIVERED);
      expect(reportsOf(before)).to.have.length(0);

      const after = await waitForNotification(client, service, id, (n) => attemptsOf(n).length > 0);
      const [attempt] = attemptsOf(after);
      expect(attempt!.providerMessageId).to.equal(pmid);
      expect(attempt!.derivedStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
      expect(after.deliveryStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
      expect(after.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
      const [linked, ...more] = reportsOf(after);
      expect(more).to.have.length(0);
      expect(linked!.recordId).to.equal(early.record!.recordId);
      expect(linked!.attemptRecordId).to.equal(attempt!.recordId);
      expect(linked!.notificationId).to.equal(id);
      expect(linked!.attemptNumber).to.equal(1);
      // The record itself was never rewritten: still no notification id in the row.
      const { rows } = await db().query(
        'select notification_id from dispatch_record where tenant_id = $1 and record_id = $2',
        [tenant, early.record!.recordId],
      );
      expect(rows[0].notification_id).to.equal(null);
      // Repeating it now answers the same record, linked this time.
      const again = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:early`,
        status: D.DELIVERY_STATUS_DELIVERED,
      });
      expect(again.record!.recordId).to.equal(early.record!.recordId);
      expect(again.record!.notificationId).to.equal(id);
      expect(again.record!.attemptRecordId).to.equal(attempt!.recordId);
    });

    it('an early FAILED report still triggers the fallback step once the attempt is recorded', async function () {
      this.timeout(30_000);
      const { id, pmid } = await inFlight(PUSH_THEN_SMS);
      const early = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:failed`,
        status: D.DELIVERY_STATUS_FAILED,
        errorCode: '30003',
      });
      expect(early.record!.notificationId).to.equal('');
      const started = Date.now();
      const done = await waitForNotification(
        client,
        service,
        id,
        (n) => n.status === NotificationStatus.NOTIFICATION_STATUS_DELIVERED,
        15_000,
      );
      expect(Date.now() - started, 'fallback within seconds, not after the 1 h delay').to.be.below(15_000);
      const [push, sms, ...more] = attemptsOf(done);
      expect(more).to.have.length(0);
      expect(push!.channel).to.equal(Channel.CHANNEL_PUSH);
      expect(push!.derivedStatus).to.equal(D.DELIVERY_STATUS_FAILED);
      expect(sms!.channel).to.equal(Channel.CHANNEL_SMS);
      expect(sms!.planStepIndex).to.equal(1);
      expect(done.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_DELIVERED);
      expect(done.deliveryStatus).to.equal(D.DELIVERY_STATUS_DELIVERED);
    });
  });

  describe('refusals and tenant isolation', () => {
    it('an unknown provider is refused with INVALID_ARGUMENT (UNKNOWN_PROVIDER)', async () => {
      await expectError(
        reportDelivery(client, service, { provider: 'twilio', providerMessageId: 'm-1', providerEventId: 'e-1' }),
        grpcStatus.INVALID_ARGUMENT,
        'UNKNOWN_PROVIDER',
      );
    });

    it('UNSPECIFIED status and a missing provider_timestamp are refused with INVALID_ARGUMENT naming the fields', async () => {
      const { id, pmid } = await dispatched();
      const noStatus = await expectError(
        reportDelivery(client, service, {
          providerMessageId: pmid,
          providerEventId: `${pmid}:bad1`,
          status: D.DELIVERY_STATUS_UNSPECIFIED,
        }),
        grpcStatus.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
      expectFieldViolations(noStatus.err, ['status']);
      const noTime = await expectError(
        reportDelivery(client, service, {
          providerMessageId: pmid,
          providerEventId: `${pmid}:bad2`,
          providerTimestamp: undefined,
        }),
        grpcStatus.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
      expectFieldViolations(noTime.err, ['provider_timestamp']);
      const empty = await expectError(
        reportDelivery(client, service, { providerMessageId: '', providerEventId: '' }),
        grpcStatus.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
      expectFieldViolations(empty.err, ['provider_message_id', 'provider_event_id']);
      const n = await getNotification(client, service, id);
      expect(reportsOf(n), 'nothing stored by refused reports').to.have.length(0);
    });

    it('only the service role may report (PERMISSION_DENIED, ROLE_NOT_ALLOWED)', async () => {
      for (const role of ['staff', 'provider', 'patient'] as const) {
        const user = await newUser(tenant, role);
        await expectError(
          reportDelivery(client, user, { providerMessageId: 'm', providerEventId: `e-${role}` }),
          grpcStatus.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
      }
    });

    it("another tenant's report never links to this tenant's attempt, nor shares its idempotency key", async () => {
      const { id, pmid } = await dispatched(PUSH_THEN_SMS);
      const mine = await reportDelivery(client, service, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:1`,
        status: D.DELIVERY_STATUS_SENT,
      });
      const jobsBefore = await jobCount(id);
      const intruder = await newUser(newTenant(), 'service');
      // Same provider, message id and event id, from another tenant: a new record of that tenant, unlinked.
      const theirs = await reportDelivery(client, intruder, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:1`,
        status: D.DELIVERY_STATUS_FAILED,
        errorCode: '30003',
      });
      expect(theirs.record!.recordId).to.not.equal(mine.record!.recordId);
      expect(theirs.record!.notificationId).to.equal('');
      expect(theirs.record!.attemptRecordId).to.equal('');
      expect(theirs.record!.status).to.equal(D.DELIVERY_STATUS_FAILED);
      const fresh = await reportDelivery(client, intruder, {
        providerMessageId: pmid,
        providerEventId: `${pmid}:2`,
        status: D.DELIVERY_STATUS_UNDELIVERED,
      });
      expect(fresh.record!.notificationId).to.equal('');
      expect(fresh.record!.attemptRecordId).to.equal('');
      expect(await jobCount(id), "another tenant's FAILED report triggers no fallback here").to.equal(jobsBefore);
      const n = await getNotification(client, service, id);
      expect(reportsOf(n).map((r) => r.recordId)).to.deep.equal([mine.record!.recordId]);
      expect(attemptsOf(n)[0]!.derivedStatus).to.equal(D.DELIVERY_STATUS_SENT);
      expect(n.deliveryStatus).to.equal(D.DELIVERY_STATUS_SENT);
      expect(n.status).to.equal(NotificationStatus.NOTIFICATION_STATUS_SENT);
      // The intruder cannot read the intent either.
      const err = await callError(call(client, client.getNotification, { notificationId: id }, intruder.md));
      expect(err.code).to.equal(grpcStatus.NOT_FOUND);
    });
  });
});
