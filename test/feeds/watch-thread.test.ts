import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { call, newUser } from '../support/clients.js';
import { expectEnd, postedIds, twoPartyThread, useFeedClients } from '../support/feeds.js';
import { send, sendMany } from '../support/messages.js';
import { createThread } from '../support/threads.js';

describe('FeedService.WatchThread', () => {
  const c = useFeedClients();

  it('starts live with a caught_up marker, then delivers messages, receipts and thread changes', async () => {
    const { provider, patient, thread } = await twoPartyThread(c.threads);
    const stream = c.watchThread(patient.md, thread.threadId);
    await stream.caughtUp();
    expect(stream.cases).to.deep.equal(['caughtUp']);
    const sent = await send(c.messages, provider, thread.threadId, 'hello');
    await stream.eventCount(1);
    expect(postedIds(stream)).to.deep.equal([sent.message!.messageId]);
    const posted = stream.events[0]!.event;
    expect(posted?.$case === 'messagePosted' && posted.value.body).to.equal('hello');

    await call(
      c.receipts,
      c.receipts.markRead,
      { messageIds: [sent.message!.messageId], readAt: undefined },
      patient.md,
    );
    await stream.eventCount(2);
    const marked = stream.events[1]!.event;
    expect(marked?.$case).to.equal('receiptsUpdated');
    if (marked?.$case === 'receiptsUpdated') {
      expect(marked.value.receipts.map((r) => r.messageId)).to.deep.equal([sent.message!.messageId]);
      expect(marked.value.watermark?.userId).to.equal(patient.userId);
    }

    await call(c.threads, c.threads.archiveThread, { threadId: thread.threadId, etag: '' }, provider.md);
    await stream.eventCount(3);
    const changed = stream.events[2]!.event;
    expect(changed?.$case === 'threadChanged' && changed.value.state).to.equal(2);
    // Tokens are distinct and increasing positions.
    expect(new Set(stream.events.map((e) => e.resumeToken)).size).to.equal(3);
  });

  it('resumes after a token with exactly the missed events, then caught_up, then live', async () => {
    const { provider, patient, thread } = await twoPartyThread(c.threads);
    const first = c.watchThread(patient.md, thread.threadId);
    await first.caughtUp();
    const before = await sendMany(c.messages, provider, thread.threadId, 3, 'before');
    await first.eventCount(3);
    const token = first.events[0]!.resumeToken;
    first.cancel();
    const missed = await sendMany(c.messages, provider, thread.threadId, 2, 'missed');

    const second = c.watchThread(patient.md, thread.threadId, token);
    await second.caughtUp();
    expect(postedIds(second)).to.deep.equal([...before.slice(1), ...missed].map((m) => m.messageId));
    expect(second.cases.at(-1)).to.equal('caughtUp');
    const live = await send(c.messages, provider, thread.threadId, 'live');
    await second.eventCount(5);
    expect(postedIds(second).at(-1)).to.equal(live.message!.messageId);
  });

  it('replays each thread change as it was after that change, with the etag the change answered', async () => {
    const { provider, patient, thread } = await twoPartyThread(c.threads);
    const live = c.watchThread(patient.md, thread.threadId);
    await live.caughtUp();
    const start = live.lastToken;
    live.cancel();
    const escalated = await call(
      c.threads,
      c.threads.escalateThread,
      { threadId: thread.threadId, level: 2, assigneeUserId: 'nurse-1', reason: 'fever', etag: '' },
      provider.md,
    );
    const archived = await call(
      c.threads,
      c.threads.archiveThread,
      { threadId: thread.threadId, etag: '' },
      provider.md,
    );
    const replay = c.watchThread(patient.md, thread.threadId, start);
    await replay.caughtUp();
    const changes = replay.events.flatMap((e) => (e.event?.$case === 'threadChanged' ? [e.event.value] : []));
    expect(changes.map((t) => t.etag)).to.deep.equal([escalated.thread!.etag, archived.thread!.etag]);
    expect(changes.map((t) => t.state)).to.deep.equal([1, 2]);
    expect(changes[0]!.escalation?.assigneeUserId).to.equal('nurse-1');
    expect(changes[0]!.participants.map((p) => p.userId)).to.include('nurse-1');
  });

  it('refuses a malformed token, a token of another thread, a token from the future, and outsiders', async () => {
    const { tenant, provider, patient, thread } = await twoPartyThread(c.threads);
    const other = await createThread(c.threads, provider, {});
    const s = c.watchThread(patient.md, thread.threadId);
    await s.caughtUp();
    const token = s.lastToken;
    s.cancel();
    const outsider = await newUser(tenant, 'patient');
    await expectEnd(
      c.watchThread(patient.md, thread.threadId, 'garbage!'),
      status.INVALID_ARGUMENT,
      'INVALID_ARGUMENT',
    );
    await expectEnd(c.watchThread(provider.md, other.threadId, token), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
    const future = Buffer.from(`f1|t:${thread.threadId}|999`).toString('base64url');
    await expectEnd(c.watchThread(patient.md, thread.threadId, future), status.FAILED_PRECONDITION, 'RESYNC_REQUIRED');
    await expectEnd(c.watchThread(outsider.md, thread.threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
  });
});
