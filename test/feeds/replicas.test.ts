import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ListDirection, type Message } from '../../gen/comms/v1/message.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { errorDetails, newTenant, newUser, type TestUser } from '../support/clients.js';
import { expectUnique, feedClient, postedIds, useFeedClients, watchInbox, watchThread } from '../support/feeds.js';
import { send, sendMany, walkMessages } from '../support/messages.js';
import { expectListeners, listenerBackends, terminateListeners, withReplica } from '../support/replicas.js';
import { createThread, db, participant } from '../support/threads.js';
import { waitFor } from '../support/wait.js';

describe('feeds across replicas', () => {
  // c.feeds is on the shared test server (replica A); the tests start replica B.
  const c = useFeedClients();

  /** A thread with four members who all send: two providers, a patient, a family member. */
  async function scene() {
    const tenant = newTenant();
    const [provider, provider2, patient, family] = await Promise.all([
      newUser(tenant, 'provider'),
      newUser(tenant, 'provider'),
      newUser(tenant, 'patient'),
      newUser(tenant, 'patient'),
    ]);
    const thread = await createThread(c.threads, provider, {
      participants: [
        participant(provider2.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
        participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        participant(family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
      ],
    });
    return { provider, patient, senders: [provider, provider2, patient, family], thread };
  }

  /** `count` sends by `user`, one after the other; each waits for `gate` (if any) after `pauseAfter` sends. */
  async function sendLoop(
    user: TestUser,
    threadId: string,
    count: number,
    opts: { pauseAfter?: number; gate?: Promise<void> } = {},
  ): Promise<Message[]> {
    const out: Message[] = [];
    for (let i = 0; i < count; i++) {
      if (i === opts.pauseAfter) await opts.gate;
      out.push((await send(c.messages, user, threadId, `${user.userId} ${i}`)).message!);
    }
    return out;
  }

  /** The thread's message ids in its order (ListMessages, forward). */
  async function threadOrder(user: TestUser, threadId: string): Promise<string[]> {
    const pages = await walkMessages(c.messages, user, threadId, {
      direction: ListDirection.LIST_DIRECTION_FORWARD,
      pageSize: 100,
    });
    return pages.flat().map((m) => m.messageId);
  }

  it('delivers on a replica process every message written through another replica, in order; SIGTERM ends its streams with a resume token', async function () {
    this.timeout(90_000);
    const { provider, patient, thread } = await scene();
    await withReplica(async (b) => {
      const feedsB = feedClient(b.address);
      const onB = watchThread(feedsB, patient.md, thread.threadId);
      const inboxOnB = watchInbox(feedsB, patient.md);
      const onA = watchThread(c.feeds, patient.md, thread.threadId);
      try {
        await Promise.all([onB.caughtUp(), inboxOnB.caughtUp(), onA.caughtUp()]);
        const sent = await sendMany(c.messages, provider, thread.threadId, 40, 'cross-replica');
        await onB.eventCount(40, 20_000);
        await inboxOnB.eventCount(40, 20_000);
        await onA.eventCount(40, 20_000);

        expect(postedIds(onB)).to.deep.equal(sent.map((m) => m.messageId));
        expect(onB.cases).to.deep.equal(['caughtUp', ...sent.map(() => 'messagePosted')]);
        const bodies = onB.events.map((e) => (e.event?.$case === 'messagePosted' ? e.event.value.body : ''));
        expect(bodies).to.deep.equal(sent.map((m) => m.body));
        // Both replicas hand out the same positions: a token from one resumes on the other.
        expect(onB.events.map((e) => e.resumeToken)).to.deep.equal(onA.events.map((e) => e.resumeToken));
        expectUnique(onB.events.map((e) => e.resumeToken));

        const updated = inboxOnB.events.map((e) =>
          e.event?.$case === 'threadUpdated' ? e.event.value.threadId : e.event?.$case,
        );
        expect(updated).to.deep.equal(sent.map(() => thread.threadId));

        // The process exits 0 on SIGTERM with streams still open (withReplica checks the code), ending
        // each with UNAVAILABLE and the token of the last event it sent.
        await b.stop();
        for (const stream of [onB, inboxOnB]) {
          const err = await stream.ended;
          expect(err?.code, `ended with ${err?.code} ${err?.details}`).to.equal(status.UNAVAILABLE);
          const info = errorDetails(err!).info;
          expect(info?.reason).to.equal('SERVER_SHUTTING_DOWN');
          expect(info?.metadata.resume_token).to.equal(stream.lastToken);
        }
      } finally {
        onB.cancel();
        inboxOnB.cancel();
        onA.cancel();
        feedsB.close();
      }
    });
  });

  it('a subscriber that disconnects mid-burst and resumes on either replica gets every message once, in order', async function () {
    this.timeout(120_000);
    const { provider, patient, senders, thread } = await scene();
    // A tiny tail cache on B: during the burst its subscribers (the one that stays connected too) fall
    // behind it and read from the log as well as from the cache.
    await withReplica(
      async (b) => {
        const feedsB = feedClient(b.address);
        const observer = watchThread(feedsB, provider.md, thread.threadId);
        const first = watchThread(feedsB, patient.md, thread.threadId);
        const resumed: ReturnType<typeof watchThread>[] = [];
        try {
          await Promise.all([observer.caughtUp(), first.caughtUp()]);
          // Each sender sends 25, waits for the gate, then 25 more: the disconnect happens while the first
          // half is being sent, and the resubscribes race the second half.
          let open!: () => void;
          const gate = new Promise<void>((resolve) => (open = resolve));
          const sending = Promise.all(senders.map((u) => sendLoop(u, thread.threadId, 50, { pauseAfter: 25, gate })));
          await first.eventCount(40, 30_000);
          first.cancel();
          await first.ended;
          const firstIds = postedIds(first);
          expect(firstIds.length, 'the first subscription saw part of the burst').to.be.within(40, 100);

          open();
          resumed.push(
            watchThread(c.feeds, patient.md, thread.threadId, first.lastToken),
            watchThread(feedsB, patient.md, thread.threadId, first.lastToken),
          );
          const sent = (await sending).flat();
          expect(sent).to.have.length(200);
          // A last message as a barrier: once it arrived, everything before it (and any duplicate) has too.
          const barrier = (await send(c.messages, provider, thread.threadId, 'barrier')).message!.messageId;
          const order = await threadOrder(provider, thread.threadId);
          expect([...order].sort()).to.deep.equal([...sent.map((m) => m.messageId), barrier].sort());
          expect(order.at(-1)).to.equal(barrier);

          for (const [name, second] of [
            ['on replica A', resumed[0]!],
            ['on replica B', resumed[1]!],
          ] as const) {
            await second.waitFor(() => postedIds(second).includes(barrier), 30_000, `the barrier ${name}`);
            const received = [...firstIds, ...postedIds(second)];
            expect(received, `resumed ${name}`).to.deep.equal(order);
            expect(
              second.cases.filter((c) => c === 'caughtUp'),
              name,
            ).to.have.length(1);
          }
          await observer.waitFor(() => postedIds(observer).includes(barrier), 30_000, 'the barrier (observer)');
          expect(postedIds(observer), 'the subscriber that stayed').to.deep.equal(order);
        } finally {
          observer.cancel();
          first.cancel();
          for (const s of resumed) s.cancel();
          feedsB.close();
        }
      },
      { FEED_CACHE_EVENTS: '2' },
    );
  });

  it('when the listener connections are terminated during a burst, subscribers on both replicas still get every event once, in order, and the listeners reconnect', async function () {
    this.timeout(120_000);
    const { provider, patient, senders, thread } = await scene();
    await withReplica(async (b) => {
      const feedsB = feedClient(b.address);
      // One listener per replica: this process's and the child's.
      const before = await expectListeners(2);
      const killed: number[] = [];
      /** Terminates both listeners; resolves once both are back, with when the first came back. */
      const terminateAndAwaitReconnect = async (whileDown: () => Promise<void> = async () => {}) => {
        const pids = await terminateListeners();
        expect(pids, 'the listeners of both replicas').to.have.length(2);
        killed.push(...pids);
        await whileDown();
        let back: { pid: number; backendStart: Date }[] = [];
        await waitFor(async () => {
          back = await listenerBackends();
          return back.length === 2 && back.every((l) => !killed.includes(l.pid));
        }, 30_000);
        return new Date(Math.min(...back.map((l) => l.backendStart.getTime())));
      };
      const onA = watchThread(c.feeds, patient.md, thread.threadId);
      const onB = watchThread(feedsB, patient.md, thread.threadId);
      const inboxOnB = watchInbox(feedsB, provider.md);
      try {
        await Promise.all([onA.caughtUp(), onB.caughtUp(), inboxOnB.caughtUp()]);
        // During a burst: every sender sends until told to stop (at least 20 each). Terminate until some
        // messages were committed while no listener was connected (usually the first time).
        let stop = false;
        const sending = Promise.all(
          senders.map(async (u) => {
            for (let i = 0; i < 20 || !stop; i++) await send(c.messages, u, thread.threadId, `${u.userId} ${i}`);
          }),
        );
        await onB.eventCount(10, 30_000);
        let missed = 0;
        for (let round = 0; round < 5 && missed === 0; round++) {
          const from = new Date();
          const listening = await terminateAndAwaitReconnect();
          const { rows } = await db().query<{ n: number }>(
            `select count(*)::int as n from message
              where tenant_id = $1 and thread_id = $2 and sent_at > $3 and sent_at < $4`,
            [provider.tenantId, thread.threadId, from, listening],
          );
          missed = rows[0]!.n;
        }
        expect(missed, 'messages committed while no listener was connected').to.be.above(0);
        expect(killed).to.include.members(before.map((l) => l.pid));
        stop = true;
        await sending;

        // At rest: the last writes commit while no listener is connected and nothing is written after
        // them, so only the catch-up on reconnecting can deliver them.
        let quiet = false;
        for (let round = 0; round < 10 && !quiet; round++) {
          let committed = new Date(8.64e15);
          const listening = await terminateAndAwaitReconnect(async () => {
            await sendMany(c.messages, provider, thread.threadId, 2, `while down ${round}`);
            committed = new Date();
          });
          quiet = committed < listening;
        }
        expect(quiet, 'the last messages were committed before a listener was back').to.equal(true);
        const expected = await threadOrder(provider, thread.threadId);
        for (const [name, s] of [
          ['replica A', onA],
          ['replica B', onB],
        ] as const) {
          await s.waitFor(() => postedIds(s).length >= expected.length, 20_000, `every message on ${name}`);
        }
        await inboxOnB.eventCount(expected.length, 20_000);

        // Nothing lost, nothing repeated: a last message as a barrier, any duplicate would come before it.
        const barrier = (await send(c.messages, provider, thread.threadId, 'barrier')).message!.messageId;
        for (const [name, s] of [
          ['replica A', onA],
          ['replica B', onB],
        ] as const) {
          await s.waitFor(() => postedIds(s).includes(barrier), 20_000, `the barrier on ${name}`);
          expect(postedIds(s), name).to.deep.equal([...expected, barrier]);
          expectUnique(s.events.map((e) => e.resumeToken));
        }
        await inboxOnB.eventCount(expected.length + 1, 20_000);
        expect(inboxOnB.events, 'one inbox event per message').to.have.length(expected.length + 1);
        expectUnique(inboxOnB.events.map((e) => e.resumeToken));
      } finally {
        onA.cancel();
        onB.cancel();
        inboxOnB.cancel();
        feedsB.close();
      }
    });
  });
});
