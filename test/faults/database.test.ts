import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { call, messageClient, newTenant, newUser, threadClient, type TestUser } from '../support/clients.js';
import { sleep } from '../support/messages.js';
import { type Replica, startReplica } from '../support/replicas.js';
import { createThread, db, participant } from '../support/threads.js';
import {
  allowConnections,
  attemptSend,
  HealthWatch,
  label,
  report,
  type SendAttempt,
  SendLoad,
  tally,
  terminateTestDatabaseBackends,
} from './load.js';

/** Four threads, each with a provider and a patient: eight senders in a fresh tenant. */
async function senders(threads: ReturnType<typeof threadClient>) {
  const tenant = newTenant();
  const out: { user: TestUser; threadId: string }[] = [];
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      const [provider, patient] = await Promise.all([newUser(tenant, 'provider'), newUser(tenant, 'patient')]);
      const thread = await createThread(threads, provider, {
        participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      out.push({ user: provider, threadId: thread.threadId }, { user: patient, threadId: thread.threadId });
    }),
  );
  return { tenant, senders: out };
}

/** The tenant's stored messages by (sender, client_mutation_id): how many rows and the (first) id. */
async function storedByKey(tenant: string): Promise<Map<string, { n: number; messageId: string }>> {
  const { rows } = await db().query<{ sender: string; key: string; n: number; id: string }>(
    `select sender_user_id as sender, client_mutation_id as key, count(*)::int as n, min(message_id::text) as id
       from message where tenant_id = $1 group by 1, 2`,
    [tenant],
  );
  return new Map(rows.map((r) => [`${r.sender} ${r.key}`, { n: r.n, messageId: r.id }]));
}

/** What the server logged for the first call it failed other than UNAVAILABLE (type, SQLSTATE, message). */
function serverReason(replica: Replica): string {
  for (const line of replica.output().split('\n')) {
    if (!line.includes('"msg":"rpc failed"') || line.includes('"code":"UNAVAILABLE"')) continue;
    const { code, err } = JSON.parse(line) as {
      code: string;
      err?: { type?: string; code?: string; message?: string };
    };
    return `server logged ${code}: ${err?.type} ${err?.code} "${err?.message}"`;
  }
  return 'no failed call in the server log';
}

const keyOf = (a: SendAttempt) => `${a.sender.userId} ${a.key}`;

/**
 * What every fault below must leave behind: no call ended INTERNAL or UNKNOWN; every failure is the
 * retryable UNAVAILABLE (reason DATABASE_UNAVAILABLE) with a RetryInfo; every acknowledged send is stored
 * once under its key with the id it was answered with; every failed send retried with the same key
 * succeeds (replayed exactly when its first attempt had committed after all) and is then stored once;
 * nothing else is stored. Returns figures.
 */
async function expectNothingLostNothingDoubled(
  tenant: string,
  attempts: readonly SendAttempt[],
  retryClient: ReturnType<typeof messageClient>,
  replica: Replica,
) {
  const codes = tally(attempts.map((a) => a.outcome));
  const failed = attempts.filter((a) => a.outcome.code !== status.OK);
  const what = `outcomes ${JSON.stringify(codes)}; ${serverReason(replica)}`;
  const internal = failed.filter((a) => a.outcome.code === status.INTERNAL || a.outcome.code === status.UNKNOWN);
  expect(internal.length, `no INTERNAL or UNKNOWN: ${what}`).to.equal(0);
  expect(
    Object.keys(codes).filter((k) => k !== 'OK'),
    `every failure retryable: ${what}`,
  ).to.deep.equal(['UNAVAILABLE/DATABASE_UNAVAILABLE+RetryInfo']);
  for (const a of failed) expect(a.outcome.retryDelayMs, `RetryInfo of ${a.key}`).to.be.above(0);
  expect(new Set(attempts.map(keyOf)).size, 'the load used each key once').to.equal(attempts.length);

  const before = await storedByKey(tenant);
  for (const a of attempts.filter((x) => x.outcome.code === status.OK)) {
    expect(a.replayed, `${a.key} was a first attempt`).to.equal(false);
    expect(before.get(keyOf(a)), `acknowledged send ${a.key} stored once`).to.deep.equal({
      n: 1,
      messageId: a.messageId,
    });
  }
  // The failed sends, retried with their keys (as a client following RetryInfo would).
  let committedAnyway = 0;
  for (const a of failed) {
    const earlier = before.get(keyOf(a));
    const retry = await attemptSend(retryClient, a.sender, a.threadId, a.key, a.body);
    expect(label(retry.outcome), `retry of ${a.key} (first: ${label(a.outcome)})`).to.equal('OK');
    expect(retry.replayed, `retry of ${a.key} replays iff the first attempt committed`).to.equal(earlier !== undefined);
    if (earlier) {
      committedAnyway++;
      expect(retry.messageId).to.equal(earlier.messageId);
    }
  }
  const after = await storedByKey(tenant);
  for (const a of attempts) expect(after.get(keyOf(a))?.n, `rows for ${a.key}`).to.equal(1);
  expect(after.size, 'nothing stored but the keys sent').to.equal(attempts.length);
  return { sends: attempts.length, codes, failedButCommitted: committedAnyway };
}

describe('fault: the database connections cut under SendMessage load', () => {
  let threads: ReturnType<typeof threadClient>;
  let replica: Replica | undefined;
  let messages: ReturnType<typeof messageClient> | undefined;
  let health: HealthWatch | undefined;
  let load: SendLoad | undefined;

  before(() => {
    threads = threadClient();
  });
  afterEach(async function () {
    this.timeout(30_000);
    try {
      await allowConnections(true);
    } finally {
      await load?.stop();
      await health?.stop();
      messages?.close();
      await replica?.kill();
      load = health = messages = replica = undefined;
    }
  });
  after(() => threads.close());

  /** A replica process probing the database every 100 ms, eight senders on it, health sampled. */
  async function underLoad() {
    const scene = await senders(threads);
    replica = await startReplica({ HEALTH_PROBE_MS: '100' });
    messages = messageClient(replica.address);
    health = new HealthWatch(replica.address);
    await health.reach('SERVING');
    const m = messages;
    load = new SendLoad(() => m, scene.senders);
    await load.okAfter(0, 40);
    return { ...scene, replica, messages: m, health, load };
  }

  it('pg_terminate_backend on every backend mid-load: failures are UNAVAILABLE with RetryInfo, retries succeed, nothing is lost or doubled', async function () {
    this.timeout(60_000);
    const t = await underLoad();
    // Terminate until some send was cut (usually the first round: eight senders keep calls in flight).
    const rounds: Record<string, number>[] = [];
    const firstCut = Date.now();
    let lastCut = 0;
    for (let round = 0; round < 5 && t.load.failed.length === 0; round++) {
      lastCut = Date.now();
      rounds.push(await terminateTestDatabaseBackends());
      await sleep(300);
    }
    expect(t.load.failed.length, 'sends cut by the terminations').to.be.above(0);
    expect(rounds[0]!['comms-feed-listener'], "the replicas' listeners were among the backends").to.be.at.least(2);
    // Recovers by itself: sends succeed again without anybody restarting anything.
    await t.load.okAfter(lastCut, 40);
    const firstOkAfter = Math.min(...t.load.ok.filter((a) => a.startedAt > lastCut).map((a) => a.endedAt));
    const attempts = await t.load.stop();
    // Health: SERVING again (and steadily, over several probes); NOT_SERVING in between if a probe
    // caught the cut (it is brief: a figure, not an assertion).
    await t.health.steady('SERVING', 500);
    const notServingSeen = t.health.firstAt('NOT_SERVING', firstCut) !== undefined;

    const figures = await expectNothingLostNothingDoubled(t.tenant, attempts, t.messages, t.replica);
    // The shared server (in this process) lost its connections too, and serves again.
    const shared = messageClient();
    try {
      const probe = await attemptSend(shared, t.senders[0]!.user, t.senders[0]!.threadId, 'after-cut', 'x');
      expect(label(probe.outcome), 'the shared server after the cut').to.equal('OK');
    } finally {
      shared.close();
    }
    await t.health.stop();
    expect(await t.replica.stop(), t.replica.output()).to.equal(0);
    report('terminate backends', {
      ...figures,
      rounds: rounds.length,
      terminated: rounds,
      recoveredAfterMs: firstOkAfter - lastCut,
      notServingSeen,
      probeFailures: t.replica
        .output()
        .split('\n')
        .filter((l) => l.includes('database probe failed'))
        .map((l) => (JSON.parse(l) as { err: string }).err),
      health: t.health.describe(firstCut),
    });
  });

  it('connections refused (ALLOW_CONNECTIONS false) and backends terminated: NOT_SERVING and UNAVAILABLE with RetryInfo, SERVING again and every send stored once after', async function () {
    this.timeout(60_000);
    const t = await underLoad();
    const cutAt = Date.now();
    let restoredAt = 0;
    let notServingAt: number;
    try {
      await allowConnections(false);
      const terminated = await terminateTestDatabaseBackends();
      expect(Object.values(terminated).reduce((a, b) => a + b, 0)).to.be.above(0);
      notServingAt = await t.health.reach('NOT_SERVING', cutAt, 5_000);
      // Stay down a little while the senders keep trying (and backing off).
      await sleep(Math.max(0, cutAt + 1500 - Date.now()));
    } finally {
      await allowConnections(true);
      restoredAt = Date.now();
    }
    const failedWhileDown = t.load.failed.filter((a) => a.startedAt >= cutAt && a.startedAt < restoredAt).length;
    expect(failedWhileDown, 'sends refused while the database was unreachable').to.be.above(0);
    const servingAt = await t.health.reach('SERVING', restoredAt, 10_000);
    await t.health.steady('SERVING', 500);
    await t.load.okAfter(restoredAt, 40);
    const firstOkAfter = Math.min(...t.load.ok.filter((a) => a.startedAt > restoredAt).map((a) => a.endedAt));
    const attempts = await t.load.stop();
    const figures = await expectNothingLostNothingDoubled(t.tenant, attempts, t.messages, t.replica);
    const probe = await call(threads, threads.getThread, { threadId: t.senders[0]!.threadId }, t.senders[0]!.user.md);
    expect(probe.thread?.threadId, 'the shared server after the outage').to.equal(t.senders[0]!.threadId);
    await t.health.stop();
    expect(await t.replica.stop(), t.replica.output()).to.equal(0);
    report('connections refused', {
      ...figures,
      failedWhileDown,
      notServingAfterMs: notServingAt - cutAt,
      downForMs: restoredAt - cutAt,
      servingAfterRestoreMs: servingAt - restoredAt,
      firstOkAfterRestoreMs: firstOkAfter - restoredAt,
      health: t.health.describe(cutAt),
    });
  });
});
