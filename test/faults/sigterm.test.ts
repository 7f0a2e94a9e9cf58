import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg from 'pg';
import { ListDirection, type SendMessageResponse } from '../../gen/comms/v1/message.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import {
  call,
  errorDetails,
  messageClient,
  newTenant,
  newUser,
  receiptClient,
  threadClient,
  type TestUser,
} from '../support/clients.js';
import { type AnyFeedStream, feedClient, watchInbox, watchThread } from '../support/feeds.js';
import { listMessages, markThreadRead, send, sleep, walkMessages } from '../support/messages.js';
import { type Replica, startReplica } from '../support/replicas.js';
import { createThread, db, participant } from '../support/threads.js';
import { env } from '../support/hooks.js';
import { waitFor } from '../support/wait.js';
import { type CallRecord, eventTokens, HealthWatch, label, posted, record, report, settled, tally } from './load.js';

const GRACE_MS = 5_000;
const DRAIN_MS = 500;
/** Slack for "started before the drain ended": the client's clock reads before the call reaches the server. */
const EDGE_MS = 100;

/**
 * Holds a thread's row lock in an open transaction; `waiters()` counts the backends blocked by this one
 * only (not by the load's own contention on other rows).
 */
async function holdRowLock(tenantId: string, threadId: string) {
  const locker = new pg.Client({ connectionString: env.db.url });
  await locker.connect();
  await locker.query('begin');
  await locker.query('select 1 from thread where tenant_id = $1 and thread_id = $2 for update', [tenantId, threadId]);
  const { rows } = await locker.query<{ pid: number }>('select pg_backend_pid() as pid');
  const pid = rows[0]!.pid;
  return {
    async waiters(): Promise<number> {
      const res = await db().query<{ n: number }>(
        'select count(*)::int as n from pg_stat_activity where $1 = any(pg_blocking_pids(pid))',
        [pid],
      );
      return res.rows[0]!.n;
    },
    async release(): Promise<void> {
      await locker.query('commit');
      await locker.end();
    },
  };
}

describe('fault: SIGTERM under mixed load', () => {
  it('in-flight calls finish OK, calls after the drain are UNAVAILABLE, feeds end SERVER_SHUTTING_DOWN with a token that resumes elsewhere without a gap, exit 0 within the grace period', async function () {
    this.timeout(60_000);
    const shared = { threads: threadClient(), messages: messageClient(), feeds: feedClient() };
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
    // A second thread, whose row lock this test holds: a send to it stays in flight until released.
    const held = await createThread(shared.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });

    let replica: Replica | undefined;
    let health: HealthWatch | undefined;
    let lock: Awaited<ReturnType<typeof holdRowLock>> | undefined;
    let onR:
      | {
          threads: ReturnType<typeof threadClient>;
          messages: ReturnType<typeof messageClient>;
          receipts: ReturnType<typeof receiptClient>;
          feeds: ReturnType<typeof feedClient>;
        }
      | undefined;
    const streams: AnyFeedStream[] = [];
    let stopLoad = false;
    let loading: Promise<unknown> = Promise.resolve();
    try {
      replica = await startReplica({
        SHUTDOWN_GRACE_MS: String(GRACE_MS),
        SHUTDOWN_DRAIN_DELAY_MS: String(DRAIN_MS),
      });
      const r = (onR = {
        threads: threadClient(replica.address),
        messages: messageClient(replica.address),
        receipts: receiptClient(replica.address),
        feeds: feedClient(replica.address),
      });
      health = new HealthWatch(replica.address);
      await health.reach('SERVING');

      // The reference: the patient's thread feed and inbox on the shared server, connected throughout.
      const refThread = watchThread(shared.feeds, patient.md, thread.threadId);
      const refInbox = watchInbox(shared.feeds, patient.md);
      streams.push(refThread, refInbox);
      await Promise.all([refThread.caughtUp(), refInbox.caughtUp()]);
      // The feeds on the replica that SIGTERM ends.
      const onReplica = {
        patientThread: watchThread(r.feeds, patient.md, thread.threadId),
        providerThread: watchThread(r.feeds, provider.md, thread.threadId),
        patientInbox: watchInbox(r.feeds, patient.md),
      };
      streams.push(...Object.values(onReplica));
      await Promise.all(Object.values(onReplica).map((s) => s.caughtUp()));
      const endedAt = new Map<AnyFeedStream, number>();
      for (const s of Object.values(onReplica)) void s.ended.then(() => endedAt.set(s, Date.now()));

      // Mixed load on the replica (sends, reads, read marks), and a sender on the shared server that
      // keeps the thread busy while the replica's feeds are down.
      const records: CallRecord[] = [];
      const sends: { user: TestUser; key: string; body: string; rec: CallRecord<SendMessageResponse> }[] = [];
      const sharedSends: CallRecord<SendMessageResponse>[] = [];
      const loop = async (fn: (n: number) => Promise<CallRecord>) => {
        for (let n = 0; !stopLoad; n++) {
          const rec = await fn(n);
          records.push(rec);
          if (rec.outcome.code !== status.OK) await sleep(50);
        }
      };
      const sendLoop = (user: TestUser) =>
        loop(async (n) => {
          const key = `sigterm-${user.userId}-${n}`;
          const body = `${user.userId} ${n}`;
          const rec = await record('SendMessage', () =>
            send(r.messages, user, thread.threadId, body, { key, deadline: new Date(Date.now() + 5_000) }),
          );
          sends.push({ user, key, body, rec });
          return rec;
        });
      loading = Promise.all([
        sendLoop(provider),
        sendLoop(patient),
        loop(() =>
          record('ListMessages', () =>
            listMessages(r.messages, patient, thread.threadId, {
              pageSize: 20,
              direction: ListDirection.LIST_DIRECTION_BACKWARD,
            }),
          ),
        ),
        loop(() =>
          record('GetThread', () => call(r.threads, r.threads.getThread, { threadId: thread.threadId }, patient.md)),
        ),
        loop(() => record('MarkThreadRead', () => markThreadRead(r.receipts, patient, thread.threadId))),
        (async () => {
          for (let n = 0; !stopLoad; n++) {
            sharedSends.push(
              await record('SendMessage', () => send(shared.messages, family, thread.threadId, `family ${n}`)),
            );
            await sleep(20);
          }
        })(),
      ]);
      await onReplica.patientThread.eventCount(30, 20_000);
      await onReplica.patientInbox.eventCount(10, 20_000);

      // A send that waits on a row lock this test holds: in flight through the drain and past
      // tryShutdown. Taken only now: the open transaction holds inbox feeds back until it ends.
      lock = await holdRowLock(tenant, held.threadId);
      const inFlight = record('SendMessage (held)', () =>
        send(r.messages, provider, held.threadId, 'held through the shutdown', { key: 'held-1' }),
      );
      await waitFor(async () => (await lock!.waiters()) > 0);

      const sigtermAt = Date.now();
      const drainEnd = sigtermAt + DRAIN_MS;
      const exiting = replica.stop(GRACE_MS * 3).then((code) => ({ code, at: Date.now() }));
      // The held send stays in flight for a second past the drain, then may go on.
      await sleep(DRAIN_MS + 1000);
      expect(await lock.waiters(), 'the held send is still in flight after the drain').to.be.above(0);
      await lock.release();
      lock = undefined;
      const heldCall = await inFlight;
      const exit = await exiting;
      await sleep(300);
      stopLoad = true;
      await loading;

      // The process: exit 0, after the held call was answered, well within the grace period.
      const exitMs = exit.at - sigtermAt;
      expect(exit.code, replica.output()).to.equal(0);
      expect(replica.output()).to.match(/"msg":"stopped"/);
      expect(replica.output(), 'nothing was cut off at the end of the grace period').to.not.match(/grace period over/);
      expect(exitMs, `exit ${exitMs} ms after SIGTERM`).to.be.below(GRACE_MS + 2_000);
      expect(label(heldCall.outcome), 'the send in flight through the shutdown').to.equal('OK');
      expect(heldCall.endedAt, 'answered before the process exited').to.be.at.most(exit.at);
      expect(heldCall.endedAt - drainEnd, 'it was answered after the server stopped accepting').to.be.above(500);
      // During the drain, probes were told NOT_SERVING.
      const notServingAt = health.firstAt('NOT_SERVING', sigtermAt);
      expect(notServingAt, health.describe(sigtermAt)).to.be.a('number').and.to.be.below(drainEnd);

      // Unary calls: every call started before the drain ended is OK (also those in the drain); those
      // started after it are refused UNAVAILABLE.
      const beforeDrain = records.filter((c) => c.startedAt < drainEnd - EDGE_MS);
      const afterDrain = records.filter((c) => c.startedAt >= drainEnd - EDGE_MS);
      const duringDrain = beforeDrain.filter((c) => c.startedAt >= sigtermAt);
      expect(tally(beforeDrain.map((c) => c.outcome)), 'calls started before the drain ended').to.have.keys('OK');
      expect(duringDrain.length, 'calls started during the drain').to.be.above(0);
      const failed = records.filter((c) => c.outcome.code !== status.OK);
      expect(failed.length, 'calls started after the drain').to.be.above(0);
      for (const c of failed) {
        expect(c.startedAt, `${c.kind} ${label(c.outcome)} started after the drain`).to.be.at.least(drainEnd - EDGE_MS);
        expect(c.outcome.code, `${c.kind}: ${label(c.outcome)} "${c.outcome.message}"`).to.equal(status.UNAVAILABLE);
      }
      expect(tally(sharedSends.map((c) => c.outcome)), 'sends on the shared server').to.have.keys('OK');

      // Sends: the acknowledged ones are stored once; the refused ones never reached a handler (nothing
      // stored), and go through on the shared server with their keys.
      const { rows } = await db().query<{ sender: string; key: string; id: string }>(
        `select sender_user_id as sender, client_mutation_id as key, message_id::text as id from message
          where tenant_id = $1 and client_mutation_id like 'sigterm-%'`,
        [tenant],
      );
      const stored = new Map(rows.map((x) => [`${x.sender} ${x.key}`, x.id]));
      expect(rows.length, 'one row per key').to.equal(stored.size);
      for (const s of sends) {
        const id = stored.get(`${s.user.userId} ${s.key}`);
        if (s.rec.outcome.code === status.OK) expect(id, s.key).to.equal(s.rec.result!.message!.messageId);
        else expect(id, `refused send ${s.key} stored nothing`).to.equal(undefined);
      }
      for (const s of sends.filter((x) => x.rec.outcome.code !== status.OK)) {
        const res = await send(shared.messages, s.user, thread.threadId, s.body, { key: s.key });
        expect(res.replayed, `${s.key} retried elsewhere`).to.equal(false);
      }
      const { rows: counted } = await db().query<{ n: number; keys: number }>(
        `select count(*)::int as n, count(distinct (sender_user_id, client_mutation_id))::int as keys from message
          where tenant_id = $1 and client_mutation_id like 'sigterm-%'`,
        [tenant],
      );
      expect(counted[0], 'every key sent stored once').to.deep.equal({ n: sends.length, keys: sends.length });

      // Feeds: each replica feed ended UNAVAILABLE SERVER_SHUTTING_DOWN after the drain, with the token of
      // the last event it delivered; resumed on the shared server with it, nothing is missing or repeated.
      const tokens: Record<string, string> = {};
      for (const [name, s] of Object.entries(onReplica)) {
        const err = await s.ended;
        expect(err?.code, `${name} ended ${err?.code} ${err?.details}`).to.equal(status.UNAVAILABLE);
        const info = errorDetails(err!).info;
        expect(info?.reason, name).to.equal('SERVER_SHUTTING_DOWN');
        expect(info?.metadata.resume_token, `${name}: the token of the last response`).to.equal(s.lastToken);
        tokens[name] = info!.metadata.resume_token!;
        expect(endedAt.get(s), `${name} ended after the drain`).to.be.at.least(drainEnd - 20);
      }
      const resumed = {
        patientThread: watchThread(shared.feeds, patient.md, thread.threadId, tokens.patientThread),
        providerThread: watchThread(shared.feeds, provider.md, thread.threadId, tokens.providerThread),
        patientInbox: watchInbox(shared.feeds, patient.md, tokens.patientInbox),
      };
      streams.push(...Object.values(resumed));
      const barrier = (await send(shared.messages, family, thread.threadId, 'barrier')).message!.messageId;
      for (const s of [refThread, resumed.patientThread, resumed.providerThread]) {
        await s.waitFor(() => posted(s).includes(barrier), 20_000, 'the barrier');
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
      expect(posted(refThread), 'the reference feed has every message in order').to.deep.equal(order);
      for (const name of ['patientThread', 'providerThread', 'patientInbox'] as const) {
        const before = eventTokens(onReplica[name]);
        const after = eventTokens(resumed[name]);
        const ref = name === 'patientInbox' ? refInbox : refThread;
        expect(before.length, `${name}: events before the shutdown`).to.be.above(0);
        expect(after.length, `${name}: events after resuming`).to.be.above(0);
        expect([...before, ...after], `${name}: before + resumed = the uninterrupted feed`).to.deep.equal(
          eventTokens(ref),
        );
        if (name !== 'patientInbox') {
          expect([...posted(onReplica[name]), ...posted(resumed[name])], name).to.deep.equal(order);
        }
      }
      report('sigterm', {
        exitMs,
        heldCallAnsweredMs: heldCall.endedAt - sigtermAt,
        notServingAfterMs: notServingAt! - sigtermAt,
        calls: records.length,
        duringDrain: duringDrain.length,
        afterDrain: tally(afterDrain.map((c) => c.outcome)),
        failedMessages: [...new Set(failed.map((c) => c.outcome.message))],
        feedsEndedAfterSigtermMs: Object.fromEntries(
          Object.entries(onReplica).map(([n, s]) => [n, endedAt.get(s)! - sigtermAt]),
        ),
        eventsBefore: Object.fromEntries(Object.entries(onReplica).map(([n, s]) => [n, eventTokens(s).length])),
        eventsResumed: Object.fromEntries(Object.entries(resumed).map(([n, s]) => [n, eventTokens(s).length])),
      });
    } finally {
      stopLoad = true;
      await loading.catch(() => undefined);
      for (const s of streams) s.cancel();
      await lock?.release();
      await health?.stop();
      for (const c of [...Object.values(shared), ...Object.values(onR ?? {})]) c.close();
      await replica?.kill();
    }
  });
});
