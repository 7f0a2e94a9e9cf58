import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { WatchInboxResponse, WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { FeedRepository } from '../../src/domain/feed/feed.repository.js';
import {
  expectEnd,
  feedInstance,
  type FeedStream,
  postedIds,
  twoPartyThread,
  useFeedClients,
  watchInbox,
  watchThread,
} from '../support/feeds.js';
import { env } from '../support/hooks.js';
import { send, sendMany } from '../support/messages.js';
import { createThread, db, newUserId, participant } from '../support/threads.js';
import { waitFor } from '../support/wait.js';

/** A tenant's feed events left in the logs (thread and inbox), and its thread streams' heads and prune marks. */
async function stored(tenantId: string) {
  const events = await db().query<{ n: number }>(
    `select (select count(*) from feed_event where tenant_id = $1)
          + (select count(*) from inbox_event where tenant_id = $1) as n`,
    [tenantId],
  );
  const streams = await db().query<{ stream: string; head: string; pruned_through: string }>(
    'select stream, head, pruned_through from feed_stream where tenant_id = $1 order by stream',
    [tenantId],
  );
  return {
    events: Number(events.rows[0]!.n),
    streams: streams.rows.map((r) => ({
      stream: r.stream,
      head: Number(r.head),
      prunedThrough: Number(r.pruned_through),
    })),
  };
}

/** Prunes every event of `tenantId` that occurred before `before` (default: all of them). */
function prune(tenantId: string, before = new Date(Date.now() + 1000)): Promise<number> {
  return new FeedRepository(env.app.orm.em.fork() as EntityManager).prune(before, 100_000, tenantId);
}

describe('FeedService retention', () => {
  const c = useFeedClients();

  it('refuses tokens before the pruned events with RESYNC_REQUIRED; the newest token and a fresh subscribe work', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(c.threads);
    const first = c.watchThread(patient.md, thread.threadId);
    const firstInbox = c.watchInbox(patient.md);
    await Promise.all([first.caughtUp(), firstInbox.caughtUp()]);
    await sendMany(c.messages, provider, thread.threadId, 3);
    await Promise.all([first.eventCount(3), firstInbox.eventCount(3)]);
    first.cancel();
    firstInbox.cancel();

    const before = await stored(tenant);
    expect(before.events, 'thread creation and sends appended events').to.be.above(0);
    expect(await prune(tenant)).to.equal(before.events);
    const after = await stored(tenant);
    expect(after.events).to.equal(0);
    expect(after.streams.map((s) => s.prunedThrough)).to.deep.equal(after.streams.map((s) => s.head));

    for (const r of first.responses.slice(0, -1)) {
      await expectEnd(
        c.watchThread(patient.md, thread.threadId, r.resumeToken),
        status.FAILED_PRECONDITION,
        'RESYNC_REQUIRED',
      );
    }
    for (const r of firstInbox.responses.slice(0, -1)) {
      await expectEnd(c.watchInbox(patient.md, r.resumeToken), status.FAILED_PRECONDITION, 'RESYNC_REQUIRED');
    }

    // The newest position lost nothing: it resumes with an empty backlog and goes live.
    const resumed = c.watchThread(patient.md, thread.threadId, first.lastToken);
    const resumedInbox = c.watchInbox(patient.md, firstInbox.lastToken);
    const fresh = c.watchThread(patient.md, thread.threadId);
    const freshInbox = c.watchInbox(patient.md);
    await Promise.all([resumed, resumedInbox, fresh, freshInbox].map((s) => s.caughtUp()));
    for (const s of [resumed, resumedInbox, fresh, freshInbox]) expect(s.cases).to.deep.equal(['caughtUp']);

    const live = (await send(c.messages, provider, thread.threadId, 'after the prune')).message!;
    await Promise.all([resumed, resumedInbox, fresh, freshInbox].map((s) => s.eventCount(1)));
    expect(postedIds(resumed)).to.deep.equal([live.messageId]);
    expect(postedIds(fresh)).to.deep.equal([live.messageId]);
    for (const s of [resumedInbox, freshInbox]) {
      const e = s.events[0]!.event;
      expect(e?.$case === 'threadUpdated' && e.value.latestMessage?.messageId).to.equal(live.messageId);
    }
    // The token of the event after the prune is the head's next position, on both new streams.
    expect(resumed.lastToken).to.equal(fresh.lastToken);
  });

  it('prunes by time: a token at the last pruned position still replays the events kept', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(c.threads);
    const stream = c.watchThread(patient.md, thread.threadId);
    await stream.caughtUp();
    const [m1, m2] = await sendMany(c.messages, provider, thread.threadId, 2, 'old');
    await waitFor(async () => Date.now() > m2!.sentAt!.getTime() + 5);
    const m3 = (await send(c.messages, provider, thread.threadId, 'kept')).message!;
    expect(m3.sentAt!.getTime()).to.be.above(m2!.sentAt!.getTime());
    await stream.eventCount(3);
    stream.cancel();
    const [t1, t2] = stream.events.map((e) => e.resumeToken);

    // Everything before the third message goes; the third (and later) stays.
    expect(await prune(tenant, m3.sentAt!)).to.be.above(0);
    const threadStream = (await stored(tenant)).streams.find((s) => s.stream === `t:${thread.threadId}`)!;
    expect(threadStream).to.deep.equal({ stream: `t:${thread.threadId}`, head: 3, prunedThrough: 2 });

    await expectEnd(c.watchThread(patient.md, thread.threadId, t1!), status.FAILED_PRECONDITION, 'RESYNC_REQUIRED');
    const resumed = c.watchThread(patient.md, thread.threadId, t2!);
    await resumed.caughtUp();
    expect(postedIds(resumed)).to.deep.equal([m3.messageId]);
    expect(resumed.cases).to.deep.equal(['messagePosted', 'caughtUp']);
    expect([m1, m2].map((m) => m!.messageId)).to.not.include.members(postedIds(resumed));
  });

  // Pruning can overtake a subscriber that is replaying a long backlog: the subscribe-time check passed,
  // then the events after the page it holds are deleted before it reads them. It must not skip them
  // silently (the proto: "No event is ever dropped silently"); ending with RESYNC_REQUIRED is the way out.
  it('does not skip events pruned while a subscriber replays its backlog', async function () {
    this.timeout(120_000);
    // A stall limit longer than the test, so the server waits for the paused client.
    const srv = await feedInstance({ FEED_STALL_MS: '60000' });
    const { threads: t, messages: m, feeds: f } = srv;
    let replay: FeedStream<WatchThreadResponse> | undefined;
    try {
      const { tenant, provider, patient, thread } = await twoPartyThread(t);
      const start = watchThread(f, patient.md, thread.threadId);
      await start.caughtUp();
      start.cancel();
      // More than one page of backlog (the feeds read 200 events per query), large enough that the first
      // page does not fit in the client's buffers and the HTTP/2 window.
      const body = 'y'.repeat(2_000);
      const sent: string[] = [];
      for (let i = 0; i < 210; i++) {
        sent.push((await send(m, provider, thread.threadId, `${i} ${body}`)).message!.messageId);
      }

      replay = watchThread(f, patient.md, thread.threadId, start.lastToken);
      const paused = replay;
      // Stop reading right after the first response: by then the server holds the first page.
      paused.call.once('data', () => paused.call.pause());
      await paused.waitFor((rs) => rs.length >= 1);
      expect(await prune(tenant)).to.be.above(200);
      sent.push((await send(m, provider, thread.threadId, 'after the prune')).message!.messageId);
      paused.call.resume();

      await paused
        .waitFor(() => postedIds(paused).includes(sent.at(-1)!), 30_000, 'the last message')
        .catch(() => undefined);
      const received = postedIds(paused);
      expect(received.length, 'the first page was delivered').to.be.at.least(200);
      const positions = received.map((id) => sent.indexOf(id));
      const gap = positions.findIndex((p, i) => p !== i);
      expect(
        gap === -1 ? 'none' : `message #${positions[gap]} came right after #${positions[gap - 1]}`,
        'gap in the messages received',
      ).to.equal('none');
      if (received.length < sent.length) await expectEnd(paused, status.FAILED_PRECONDITION, 'RESYNC_REQUIRED');
    } finally {
      replay?.cancel();
      await srv.close();
    }
  });
  it('does not skip inbox events pruned while a subscriber replays its backlog', async function () {
    this.timeout(120_000);
    const srv = await feedInstance({ FEED_STALL_MS: '60000' });
    const { threads: t, messages: m, feeds: f } = srv;
    let replay: FeedStream<WatchInboxResponse> | undefined;
    try {
      const { tenant, provider, patient } = await twoPartyThread(t);
      // Many participants make each inbox event (a Thread) large, so the first page fills the buffers.
      const thread = await createThread(t, provider, {
        subject: 's'.repeat(200),
        participants: [
          participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          ...Array.from({ length: 47 }, () => participant(newUserId('fam'), ParticipantRole.PARTICIPANT_ROLE_FAMILY)),
        ],
      });
      const start = watchInbox(f, patient.md);
      await start.caughtUp();
      start.cancel();
      const sends = 210;
      for (let i = 0; i < sends; i++) await send(m, provider, thread.threadId, `${i}`);

      replay = watchInbox(f, patient.md, start.lastToken);
      const paused = replay;
      paused.call.once('data', () => paused.call.pause());
      await paused.waitFor((rs) => rs.length >= 1);
      expect(await prune(tenant)).to.be.above(200);
      await send(m, provider, thread.threadId, 'after the prune');
      paused.call.resume();

      await paused.waitFor(() => paused.events.length > sends, 30_000, 'every event').catch(() => undefined);
      // Either every event arrived (one per send), or the stream said it cannot go on: never a silent gap.
      if (paused.events.length <= sends) await expectEnd(paused, status.FAILED_PRECONDITION, 'RESYNC_REQUIRED');
      else expect(paused.events).to.have.length(sends + 1);
    } finally {
      replay?.cancel();
      await srv.close();
    }
  });
});
