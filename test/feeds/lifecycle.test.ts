import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { credentials, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { FeedServiceClient, type WatchInboxResponse, type WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import type { Message } from '../../gen/comms/v1/message.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import type { App } from '../../src/app.js';
import { errorDetails, newTenant, newUser, type TestUser } from '../support/clients.js';
import {
  expectUnique,
  feedClient,
  feedInstance,
  FeedStream,
  postedIds,
  twoPartyThread,
  useFeedClients,
  watchInbox,
  watchThread,
} from '../support/feeds.js';
import { startTestApp } from '../support/hooks.js';
import { send, sendMany } from '../support/messages.js';
import { expectListeners, listenerPids } from '../support/replicas.js';
import { createThread, participant } from '../support/threads.js';
import { waitFor } from '../support/wait.js';

/** global.gc, exposed at run time when node was not started with --expose-gc. */
function collector(): () => void {
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/** Heap in use after full collections. */
async function settledHeap(gc: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return process.memoryUsage().heapUsed;
}

describe('feed stream lifecycle', () => {
  const c = useFeedClients();

  async function scene() {
    const tenant = newTenant();
    const [provider, patient] = await Promise.all([newUser(tenant, 'provider'), newUser(tenant, 'patient')]);
    const newThread = () =>
      createThread(c.threads, provider, {
        participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
    return { provider, patient, newThread };
  }

  /** Sends `count` messages one after the other. */
  async function sendLoop(user: TestUser, threadId: string, count: number, prefix: string): Promise<Message[]> {
    const out: Message[] = [];
    for (let i = 0; i < count; i++) out.push((await send(c.messages, user, threadId, `${prefix} ${i}`)).message!);
    return out;
  }

  /** How a stream ended: its status code, ErrorInfo reason and resume_token metadata. */
  async function ending(stream: FeedStream<WatchThreadResponse | WatchInboxResponse>) {
    const err = await stream.ended;
    expect(err, 'the stream ended with an error status').to.not.equal(undefined);
    const info = errorDetails(err!).info;
    return { code: err!.code, reason: info?.reason, token: info?.metadata.resume_token };
  }

  it('graceful shutdown ends streams with UNAVAILABLE and the last token sent; another replica resumes from it with no gap or duplicate', async function () {
    this.timeout(90_000);
    const { provider, patient, newThread } = await scene();
    const [thread, quiet] = await Promise.all([newThread(), newThread()]);
    const replica = await startTestApp({ SHUTDOWN_DRAIN_DELAY_MS: '0' });
    const feedsR = feedClient(`127.0.0.1:${replica.port}`);
    const onReplica = watchThread(feedsR, patient.md, thread.threadId);
    const idle = watchThread(feedsR, patient.md, quiet.threadId);
    const inbox = watchInbox(feedsR, patient.md);
    let resumed: ReturnType<typeof watchThread> | undefined;
    let inboxResumed: ReturnType<typeof watchInbox> | undefined;
    try {
      await Promise.all([onReplica.caughtUp(), idle.caughtUp(), inbox.caughtUp()]);
      const before = await sendMany(c.messages, provider, thread.threadId, 5, 'before');
      await onReplica.eventCount(5);

      // Sends go on (through the shared server) while the replica shuts down.
      const during = sendLoop(provider, thread.threadId, 20, 'during');
      await onReplica.eventCount(7, 20_000);
      const stopping = replica.shutdown();

      for (const [name, stream] of [
        ['thread feed', onReplica],
        ['idle thread feed', idle],
        ['inbox feed', inbox],
      ] as const) {
        const end = await ending(stream);
        expect(end, name).to.deep.equal({
          code: status.UNAVAILABLE,
          reason: 'SERVER_SHUTTING_DOWN',
          token: stream.lastToken,
        });
      }
      expect(idle.cases, 'the idle feed only got its caught_up marker').to.deep.equal(['caughtUp']);
      await stopping;
      expect(replica.feeds.stats()).to.deep.equal({ streams: 0, subscribers: 0 });

      const duringSent = await during;
      const after = await sendMany(c.messages, provider, thread.threadId, 3, 'after');
      const sent = [...before, ...duringSent, ...after].map((m) => m.messageId);
      resumed = watchThread(c.feeds, patient.md, thread.threadId, onReplica.lastToken);
      await resumed.waitFor(() => postedIds(resumed!).includes(sent.at(-1)!), 20_000, 'the last message');
      // A barrier: any duplicate of an earlier event would have arrived before it.
      const barrier = (await send(c.messages, provider, thread.threadId, 'barrier')).message!.messageId;
      await resumed.waitFor(() => postedIds(resumed!).includes(barrier), 20_000, 'the barrier');
      const received = [...postedIds(onReplica), ...postedIds(resumed)];
      expect(received).to.deep.equal([...sent, barrier]);

      // The inbox resumes the same way: one thread_updated per message, none twice.
      inboxResumed = watchInbox(c.feeds, patient.md, inbox.lastToken);
      await inboxResumed.waitFor(
        () => inbox.events.length + inboxResumed!.events.length >= sent.length + 1,
        20_000,
        'every inbox event',
      );
      const inboxTokens = [...inbox.events, ...inboxResumed.events].map((e) => e.resumeToken);
      expectUnique(inboxTokens);
      expect(inboxTokens).to.have.length(sent.length + 1);
    } finally {
      onReplica.cancel();
      idle.cancel();
      inbox.cancel();
      resumed?.cancel();
      inboxResumed?.cancel();
      feedsR.close();
      await replica.shutdown();
    }
  });

  it('cancelling 1,000 open streams frees their subscriptions, tails and memory; one listener connection per replica', async function () {
    this.timeout(180_000);
    const gc = collector();
    const THREADS = 100;
    const PER_THREAD = 10;
    const CHANNELS = 4;
    const { provider, patient, newThread } = await scene();
    const list = await Promise.all(Array.from({ length: THREADS }, () => newThread()));
    let replica: App | undefined;
    const clients: FeedServiceClient[] = [];
    try {
      replica = await startTestApp();
      const address = `127.0.0.1:${replica.port}`;
      // Four connections: the server allows 1,000 concurrent streams per connection.
      for (let i = 0; i < CHANNELS; i++) {
        clients.push(
          new FeedServiceClient(address, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
        );
      }
      await expectListeners(2);
      const heapBefore = await settledHeap(gc);

      let streams: ReturnType<typeof watchThread>[] = [];
      for (let i = 0; i < THREADS * PER_THREAD; i++) {
        const user = i % 2 === 0 ? patient : provider;
        streams.push(watchThread(clients[i % CHANNELS]!, user.md, list[i % THREADS]!.threadId));
      }
      await Promise.all(streams.map((s) => s.caughtUp(60_000)));
      expect(replica.feeds.stats()).to.deep.equal({ streams: THREADS, subscribers: THREADS * PER_THREAD });
      expect(await listenerPids(), 'one listener per replica, not per stream').to.have.length(2);

      // Every stream is live: one message per thread reaches each of its subscribers.
      const posted = await Promise.all(list.map((t) => send(c.messages, provider, t.threadId, 'fan-out')));
      await Promise.all(streams.map((s) => s.eventCount(1, 60_000)));
      streams.forEach((s, i) => expect(postedIds(s)).to.deep.equal([posted[i % THREADS]!.message!.messageId]));

      const heapOpen = await settledHeap(gc);

      for (const s of streams) s.cancel();
      const ends = await Promise.all(streams.map((s) => s.ended));
      expect(new Set(ends.map((e) => e?.code))).to.deep.equal(new Set([status.CANCELLED]));
      await waitFor(async () => replica!.feeds.stats().subscribers === 0, 30_000);
      expect(replica.feeds.stats()).to.deep.equal({ streams: 0, subscribers: 0 });
      expect(await listenerPids()).to.have.length(2);

      streams = [];
      for (const c of clients.splice(0)) c.close();
      const heapAfter = await settledHeap(gc);
      const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1);
      const what = `heap ${mb(heapBefore)} MB before, ${mb(heapOpen)} MB with the streams open, ${mb(heapAfter)} MB after`;
      expect(heapAfter - heapBefore, what).to.be.below(30 * 1024 * 1024);
      // Most of what the open streams held is gone (about 10% stays: code and caches warmed up by them).
      expect(heapAfter - heapBefore, what).to.be.below((heapOpen - heapBefore) / 3);
    } finally {
      for (const c of clients) c.close();
      await replica?.shutdown();
    }
  });
  it("a stream's deadline ends it with DEADLINE_EXCEEDED and frees its subscription", async function () {
    this.timeout(30_000);
    const srv = await feedInstance({});
    try {
      const { patient, thread } = await twoPartyThread(srv.threads);
      const stream = srv.track(
        new FeedStream<WatchThreadResponse>(
          srv.feeds.watchThread({ threadId: thread.threadId, resumeToken: '' }, patient.md, {
            deadline: new Date(Date.now() + 1500),
          }),
        ),
      );
      await stream.caughtUp();
      expect(srv.app.feeds.stats()).to.deep.equal({ streams: 1, subscribers: 1 });
      const err = await stream.ended;
      expect(err?.code).to.equal(status.DEADLINE_EXCEEDED);
      await waitFor(async () => srv.app.feeds.stats().subscribers === 0);
      expect(srv.app.feeds.stats()).to.deep.equal({ streams: 0, subscribers: 0 });
    } finally {
      await srv.close();
    }
  });
});
