import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import {
  call,
  expectError,
  messageClient,
  newTenant,
  newUser,
  receiptClient,
  threadClient,
} from '../support/clients.js';
import { feedClient, postedIds, watchThread } from '../support/feeds.js';
import { send, sendMany } from '../support/messages.js';
import { createThread, participant } from '../support/threads.js';

describe('FeedService.WatchThread', () => {
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  let receipts: ReturnType<typeof receiptClient>;
  let feeds: ReturnType<typeof feedClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    receipts = receiptClient();
    feeds = feedClient();
  });
  after(() => {
    threads.close();
    messages.close();
    receipts.close();
    feeds.close();
  });

  async function scene() {
    const tenant = newTenant();
    const provider = await newUser(tenant, 'provider');
    const patient = await newUser(tenant, 'patient');
    const thread = await createThread(threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    return { tenant, provider, patient, thread };
  }

  it('starts live with a caught_up marker, then delivers messages, receipts and thread changes', async () => {
    const { provider, patient, thread } = await scene();
    const stream = watchThread(feeds, patient.md, thread.threadId);
    try {
      await stream.caughtUp();
      expect(stream.cases).to.deep.equal(['caughtUp']);
      const sent = await send(messages, provider, thread.threadId, 'hello');
      await stream.eventCount(1);
      expect(postedIds(stream)).to.deep.equal([sent.message!.messageId]);
      const posted = stream.events[0]!.event;
      expect(posted?.$case === 'messagePosted' && posted.value.body).to.equal('hello');

      await call(receipts, receipts.markRead, { messageIds: [sent.message!.messageId], readAt: undefined }, patient.md);
      await stream.eventCount(2);
      const marked = stream.events[1]!.event;
      expect(marked?.$case).to.equal('receiptsUpdated');
      if (marked?.$case === 'receiptsUpdated') {
        expect(marked.value.receipts.map((r) => r.messageId)).to.deep.equal([sent.message!.messageId]);
        expect(marked.value.watermark?.userId).to.equal(patient.userId);
      }

      await call(threads, threads.archiveThread, { threadId: thread.threadId, etag: '' }, provider.md);
      await stream.eventCount(3);
      const changed = stream.events[2]!.event;
      expect(changed?.$case === 'threadChanged' && changed.value.state).to.equal(2);
      // Tokens are distinct and increasing positions.
      expect(new Set(stream.events.map((e) => e.resumeToken)).size).to.equal(3);
    } finally {
      stream.cancel();
    }
  });

  it('resumes after a token with exactly the missed events, then caught_up, then live', async () => {
    const { provider, patient, thread } = await scene();
    const first = watchThread(feeds, patient.md, thread.threadId);
    await first.caughtUp();
    const before = await sendMany(messages, provider, thread.threadId, 3, 'before');
    await first.eventCount(3);
    const token = first.events[0]!.resumeToken;
    first.cancel();
    const missed = await sendMany(messages, provider, thread.threadId, 2, 'missed');

    const second = watchThread(feeds, patient.md, thread.threadId, token);
    try {
      await second.caughtUp();
      expect(postedIds(second)).to.deep.equal([...before.slice(1), ...missed].map((m) => m.messageId));
      expect(second.cases.at(-1)).to.equal('caughtUp');
      const live = await send(messages, provider, thread.threadId, 'live');
      await second.eventCount(5);
      expect(postedIds(second).at(-1)).to.equal(live.message!.messageId);
    } finally {
      second.cancel();
    }
  });

  it('replays each thread change as it was after that change, with the etag the change answered', async () => {
    const { provider, patient, thread } = await scene();
    const live = watchThread(feeds, patient.md, thread.threadId);
    await live.caughtUp();
    const start = live.lastToken;
    live.cancel();
    const escalated = await call(
      threads,
      threads.escalateThread,
      { threadId: thread.threadId, level: 2, assigneeUserId: 'nurse-1', reason: 'fever', etag: '' },
      provider.md,
    );
    const archived = await call(threads, threads.archiveThread, { threadId: thread.threadId, etag: '' }, provider.md);
    const replay = watchThread(feeds, patient.md, thread.threadId, start);
    try {
      await replay.caughtUp();
      const changes = replay.events.flatMap((e) => (e.event?.$case === 'threadChanged' ? [e.event.value] : []));
      expect(changes.map((t) => t.etag)).to.deep.equal([escalated.thread!.etag, archived.thread!.etag]);
      expect(changes.map((t) => t.state)).to.deep.equal([1, 2]);
      expect(changes[0]!.escalation?.assigneeUserId).to.equal('nurse-1');
      expect(changes[0]!.participants.map((p) => p.userId)).to.include('nurse-1');
    } finally {
      replay.cancel();
    }
  });

  it('refuses a malformed token, a token of another thread, a token from the future, and outsiders', async () => {
    const { tenant, provider, patient, thread } = await scene();
    const other = await createThread(threads, provider, {});
    const s = watchThread(feeds, patient.md, thread.threadId);
    await s.caughtUp();
    const token = s.lastToken;
    s.cancel();
    const outsider = await newUser(tenant, 'patient');
    const expectEnd = async (stream: ReturnType<typeof watchThread>, code: number, reason: string) =>
      expectError(
        stream.ended.then((e) => Promise.reject(e ?? new Error('ended OK'))),
        code,
        reason,
      );
    await expectEnd(
      watchThread(feeds, patient.md, thread.threadId, 'garbage!'),
      status.INVALID_ARGUMENT,
      'INVALID_ARGUMENT',
    );
    await expectEnd(
      watchThread(feeds, provider.md, other.threadId, token),
      status.INVALID_ARGUMENT,
      'INVALID_ARGUMENT',
    );
    const future = Buffer.from(`f1|t:${thread.threadId}|999`).toString('base64url');
    await expectEnd(
      watchThread(feeds, patient.md, thread.threadId, future),
      status.FAILED_PRECONDITION,
      'RESYNC_REQUIRED',
    );
    await expectEnd(watchThread(feeds, outsider.md, thread.threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
  });
});
