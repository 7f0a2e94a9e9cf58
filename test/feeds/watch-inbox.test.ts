import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { WatchInboxResponse } from '../../gen/comms/v1/feed.js';
import { ParticipantRole, ThreadState } from '../../gen/comms/v1/thread.js';
import { call, newTenant, newUser } from '../support/clients.js';
import { expectEnd, type FeedStream, twoPartyThread, useFeedClients } from '../support/feeds.js';
import { addMember, markRead, markThreadRead, reopen, send, sendMany } from '../support/messages.js';
import {
  archive,
  createThread,
  escalate,
  expectFieldViolations,
  participant,
  sameSubjectIn,
  db,
} from '../support/threads.js';

/** One inbox event, reduced to what the tests compare. */
interface Summary {
  readonly kind: string;
  readonly threadId: string;
  readonly unread?: number;
  readonly latest?: string;
  readonly participants?: string[];
}

/** The inbox events received (no markers), as summaries. */
function summaries(stream: FeedStream<WatchInboxResponse>): Summary[] {
  return stream.events.map((r): Summary => {
    const e = r.event;
    if (e?.$case === 'threadUpdated') {
      return {
        kind: 'updated',
        threadId: e.value.threadId,
        unread: e.value.unreadCount,
        latest: e.value.latestMessage?.messageId,
        participants: e.value.participants.map((p) => p.userId).sort(),
      };
    }
    if (e?.$case === 'threadRemoved') return { kind: 'removed', threadId: e.value.threadId };
    return { kind: e?.$case ?? 'none', threadId: '' };
  });
}

/** True while the stream has not ended (checked after pending I/O callbacks ran). */
async function isOpen(stream: FeedStream<WatchInboxResponse>): Promise<boolean> {
  const settled = await Promise.race([
    stream.ended.then(() => 'ended'),
    new Promise<string>((resolve) => setImmediate(() => resolve('open'))),
  ]);
  return settled === 'open';
}

/** The (kind, thread, unread count) of each inbox event received. */
function brief(stream: FeedStream<WatchInboxResponse>): [string, string, number | undefined][] {
  return summaries(stream).map((s) => [s.kind, s.threadId, s.unread]);
}

describe('FeedService.WatchInbox', () => {
  const c = useFeedClients();

  /** A two-party thread, and another patient of the tenant who does not take part. */
  async function scene() {
    const base = await twoPartyThread(c.threads);
    return { ...base, other: await newUser(base.tenant, 'patient') };
  }

  it('shows a created thread in each participant inbox, and in no one else', async () => {
    const tenant = newTenant();
    const [provider, patient, outsider] = await Promise.all([
      newUser(tenant, 'provider'),
      newUser(tenant, 'patient'),
      newUser(tenant, 'patient'),
    ]);
    const streams = [c.watchInbox(provider.md), c.watchInbox(patient.md), c.watchInbox(outsider.md)];
    await Promise.all(streams.map((s) => s.caughtUp()));
    const [ofProvider, ofPatient, ofOutsider] = streams as [
      FeedStream<WatchInboxResponse>,
      FeedStream<WatchInboxResponse>,
      FeedStream<WatchInboxResponse>,
    ];

    const thread = await createThread(c.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    const members = [provider.userId, patient.userId].sort();
    for (const s of [ofProvider, ofPatient]) {
      await s.eventCount(1);
      expect(summaries(s)).to.deep.equal([
        { kind: 'updated', threadId: thread.threadId, unread: 0, latest: undefined, participants: members },
      ]);
    }

    // The outsider's first event is the thread it is added to, not the earlier one.
    const second = await createThread(c.threads, provider, {
      participants: [participant(outsider.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    await ofOutsider.eventCount(1);
    expect(brief(ofOutsider)).to.deep.equal([['updated', second.threadId, 0]]);
    await ofProvider.eventCount(2);
    expect(brief(ofProvider)).to.deep.equal([
      ['updated', thread.threadId, 0],
      ['updated', second.threadId, 0],
    ]);
    expect(brief(ofPatient)).to.deep.equal([['updated', thread.threadId, 0]]);
  });

  it('updates the summary on a new message: unread for the recipient, not for the sender', async () => {
    const { provider, patient, thread } = await scene();
    const ofProvider = c.watchInbox(provider.md);
    const ofPatient = c.watchInbox(patient.md);
    await Promise.all([ofProvider.caughtUp(), ofPatient.caughtUp()]);

    const first = (await send(c.messages, provider, thread.threadId, 'first')).message!;
    await Promise.all([ofProvider.eventCount(1), ofPatient.eventCount(1)]);
    expect(summaries(ofPatient)[0]).to.include({ kind: 'updated', threadId: thread.threadId, unread: 1 });
    expect(summaries(ofPatient)[0]!.latest).to.equal(first.messageId);
    expect(summaries(ofProvider)[0]).to.include({ kind: 'updated', threadId: thread.threadId, unread: 0 });
    expect(summaries(ofProvider)[0]!.latest).to.equal(first.messageId);

    const second = (await send(c.messages, provider, thread.threadId, 'second')).message!;
    await Promise.all([ofProvider.eventCount(2), ofPatient.eventCount(2)]);
    expect(summaries(ofPatient)[1]).to.include({ unread: 2, latest: second.messageId });
    expect(summaries(ofProvider)[1]).to.include({ unread: 0, latest: second.messageId });

    // The patient's reply: unread for the provider now, and the patient's own message does not count.
    const reply = (await send(c.messages, patient, thread.threadId, 'reply')).message!;
    await Promise.all([ofProvider.eventCount(3), ofPatient.eventCount(3)]);
    expect(summaries(ofProvider)[2]).to.include({ unread: 1, latest: reply.messageId });
    expect(summaries(ofPatient)[2]).to.include({ unread: 2, latest: reply.messageId });
    const tokens = ofPatient.events.map((e) => e.resumeToken);
    expect(new Set(tokens).size, 'distinct tokens').to.equal(3);
  });

  it('brings the unread count down with MarkRead and MarkThreadRead, on the reader inbox only', async () => {
    const { provider, patient, thread } = await scene();
    const [m1, , m3] = await sendMany(c.messages, provider, thread.threadId, 3);
    const ofProvider = c.watchInbox(provider.md);
    const ofPatient = c.watchInbox(patient.md);
    await Promise.all([ofProvider.caughtUp(), ofPatient.caughtUp()]);

    await markRead(c.receipts, patient, [m1!.messageId]);
    await ofPatient.eventCount(1);
    expect(brief(ofPatient)).to.deep.equal([['updated', thread.threadId, 2]]);

    await markRead(c.receipts, patient, [m3!.messageId]);
    await ofPatient.eventCount(2);
    expect(brief(ofPatient)[1]).to.deep.equal(['updated', thread.threadId, 0]);

    const m4 = (await send(c.messages, provider, thread.threadId, 'fourth')).message!;
    await ofPatient.eventCount(3);
    expect(summaries(ofPatient)[2]).to.include({ unread: 1, latest: m4.messageId });

    await markThreadRead(c.receipts, patient, thread.threadId);
    await ofPatient.eventCount(4);
    expect(brief(ofPatient)[3]).to.deep.equal(['updated', thread.threadId, 0]);

    // Marking again changes nothing, so it appends nothing: the next event is the next message.
    await markThreadRead(c.receipts, patient, thread.threadId);
    const m5 = (await send(c.messages, provider, thread.threadId, 'fifth')).message!;
    await ofPatient.eventCount(5);
    expect(summaries(ofPatient)[4]).to.include({ unread: 1, latest: m5.messageId });
    expect(ofPatient.events).to.have.length(5);

    // The provider's inbox saw the two messages sent while it watched, none of the patient's marks.
    await ofProvider.eventCount(2);
    expect(summaries(ofProvider).map((s) => s.latest)).to.deep.equal([m4.messageId, m5.messageId]);
  });

  it('tells an added participant and the others with thread_updated', async () => {
    const { provider, patient, other, thread } = await scene();
    const streams = [c.watchInbox(provider.md), c.watchInbox(patient.md), c.watchInbox(other.md)];
    await Promise.all(streams.map((s) => s.caughtUp()));

    await addMember(c.threads, provider, thread.threadId, other.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
    const members = [provider.userId, patient.userId, other.userId].sort();
    for (const s of streams) {
      await s.eventCount(1);
      expect(summaries(s)).to.deep.equal([
        { kind: 'updated', threadId: thread.threadId, unread: 0, latest: undefined, participants: members },
      ]);
    }

    // The added participant now follows the thread's messages.
    const sent = (await send(c.messages, provider, thread.threadId, 'welcome')).message!;
    await streams[2]!.eventCount(2);
    expect(summaries(streams[2]!)[1]).to.include({ kind: 'updated', unread: 1, latest: sent.messageId });
  });

  it('sends thread_removed to a removed participant, then nothing more of that thread', async () => {
    const { provider, patient, thread } = await scene();
    const elsewhere = await createThread(c.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    const ofPatient = c.watchInbox(patient.md);
    const ofProvider = c.watchInbox(provider.md);
    await Promise.all([ofPatient.caughtUp(), ofProvider.caughtUp()]);

    await call(
      c.threads,
      c.threads.removeParticipant,
      { threadId: thread.threadId, userId: patient.userId, etag: '' },
      provider.md,
    );
    await ofPatient.eventCount(1);
    expect(summaries(ofPatient)).to.deep.equal([{ kind: 'removed', threadId: thread.threadId }]);
    await ofProvider.eventCount(1);
    expect(summaries(ofProvider)[0]).to.deep.include({ kind: 'updated', participants: [provider.userId] });

    // Activity in the thread it left reaches only the provider; the patient's next event is the other
    // thread's message (both go through the same ordered inbox stream, so a leak would come first).
    await send(c.messages, provider, thread.threadId, 'after removal');
    await escalate(c.threads, provider, thread.threadId, { assigneeUserId: provider.userId });
    const other = (await send(c.messages, provider, elsewhere.threadId, 'still here')).message!;
    await ofPatient.eventCount(2);
    expect(summaries(ofPatient)).to.deep.equal([
      { kind: 'removed', threadId: thread.threadId },
      {
        kind: 'updated',
        threadId: elsewhere.threadId,
        unread: 1,
        latest: other.messageId,
        participants: [provider.userId, patient.userId].sort(),
      },
    ]);
    await ofProvider.eventCount(4);
    expect(await isOpen(ofPatient), 'patient stream still open').to.equal(true);
  });

  it('resumes after a token with exactly the missed events, rendered as the inbox is now', async () => {
    const { provider, patient, thread } = await scene();
    const first = c.watchInbox(patient.md);
    await first.caughtUp();
    await send(c.messages, provider, thread.threadId, 'seen');
    await first.eventCount(1);
    const token = first.lastToken;
    first.cancel();

    await send(c.messages, provider, thread.threadId, 'missed');
    const added = await createThread(c.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    await send(c.messages, provider, thread.threadId, 'missed too');

    const second = c.watchInbox(patient.md, token);
    await second.caughtUp();
    // Each replayed event shows the thread as it is when delivered: three unread in the first thread.
    expect(brief(second)).to.deep.equal([
      ['updated', thread.threadId, 3],
      ['updated', added.threadId, 0],
      ['updated', thread.threadId, 3],
    ]);
    expect(second.cases.at(-1)).to.equal('caughtUp');
    expect(second.events.map((e) => e.resumeToken)).to.not.include(token);
    expect(second.responses.at(-1)!.resumeToken, 'caught_up at the last replayed event').to.equal(
      second.events.at(-1)!.resumeToken,
    );

    const live = (await send(c.messages, provider, added.threadId, 'live')).message!;
    await second.eventCount(4);
    expect(summaries(second)[3]).to.include({ threadId: added.threadId, unread: 1, latest: live.messageId });

    // Resuming from the caught-up marker of a stream replays nothing.
    const third = c.watchInbox(patient.md, second.lastToken);
    await third.caughtUp();
    expect(third.cases).to.deep.equal(['caughtUp']);
  });

  it('keeps tenants apart: the same user id in another tenant sees none of it', async () => {
    const { provider, patient, thread } = await scene();
    const foreignTenant = newTenant();
    const twin = await sameSubjectIn(foreignTenant, patient);
    const foreignProvider = await newUser(foreignTenant, 'provider');
    const ofPatient = c.watchInbox(patient.md);
    const ofTwin = c.watchInbox(twin.md);
    await Promise.all([ofPatient.caughtUp(), ofTwin.caughtUp()]);
    const twinStart = ofTwin.lastToken;

    await send(c.messages, provider, thread.threadId, 'for the patient in the first tenant');
    await createThread(c.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    await ofPatient.eventCount(2);

    const foreign = await createThread(c.threads, foreignProvider, {
      participants: [participant(twin.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    await ofTwin.eventCount(1);
    expect(brief(ofTwin)).to.deep.equal([['updated', foreign.threadId, 0]]);

    // A replay of the twin's whole inbox holds only its own tenant's thread.
    const replay = c.watchInbox(twin.md, twinStart);
    await replay.caughtUp();
    expect(brief(replay)).to.deep.equal([['updated', foreign.threadId, 0]]);
    expect(brief(ofPatient).map(([, id]) => id)).to.not.include(foreign.threadId);
  });

  it('tells every participant when the thread is archived and reopened', async () => {
    const { provider, patient, thread } = await scene();
    const streams = [c.watchInbox(provider.md), c.watchInbox(patient.md)];
    await Promise.all(streams.map((s) => s.caughtUp()));
    const states = (s: FeedStream<WatchInboxResponse>) =>
      s.events.map((r) => (r.event?.$case === 'threadUpdated' ? r.event.value.state : r.event?.$case));
    await archive(c.threads, provider, thread.threadId);
    for (const s of streams) {
      await s.eventCount(1);
      expect(states(s)).to.deep.equal([ThreadState.THREAD_STATE_ARCHIVED]);
    }
    await reopen(c.threads, patient, thread.threadId);
    for (const s of streams) {
      await s.eventCount(2);
      expect(states(s)).to.deep.equal([ThreadState.THREAD_STATE_ARCHIVED, ThreadState.THREAD_STATE_ACTIVE]);
    }
  });

  it('refuses a malformed token, and a token of another user or of a thread feed, with INVALID_ARGUMENT', async () => {
    const { provider, patient, thread } = await scene();
    const ofProvider = c.watchInbox(provider.md);
    const ofThread = c.watchThread(patient.md, thread.threadId);
    await Promise.all([ofProvider.caughtUp(), ofThread.caughtUp()]);
    const cases: [string, string][] = [
      ['garbage', 'garbage!'],
      ['not base64 of a token', Buffer.from('hello').toString('base64url')],
      ["another user's inbox", ofProvider.lastToken],
      ['a thread feed', ofThread.lastToken],
    ];
    for (const [what, token] of cases) {
      const s = c.watchInbox(patient.md, token);
      const { err } = await expectEnd(s, status.INVALID_ARGUMENT, 'INVALID_ARGUMENT').catch((e: Error) =>
        expect.fail(`${what}: ${e.message}`),
      );
      expectFieldViolations(err, ['resume_token']);
      expect(s.responses, `${what}: nothing streamed`).to.deep.equal([]);
    }
  });
  it('never skips an inbox event whose transaction commits late: it waits for it, then delivers both', async () => {
    const { provider, patient, thread } = await twoPartyThread(c.threads);
    const other = await createThread(c.threads, provider, {
      participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    const inbox = c.watchInbox(patient.md);
    await inbox.caughtUp();
    // A writer that appends to the patient's inbox and stays open (its transaction id is the older one).
    const late = await db().connect();
    try {
      await late.query('begin');
      await late.query(`select comms_feed_append($1, $2::jsonb, now())`, [
        provider.tenantId,
        JSON.stringify([{ stream: `u:${patient.userId}`, kind: 'thread_updated', aggregate_id: other.threadId }]),
      ]);
      // A later transaction commits first.
      await send(c.messages, provider, thread.threadId, 'committed first');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(inbox.events, 'held back while an older transaction runs').to.have.length(0);
      await late.query('commit');
    } finally {
      late.release();
    }
    await inbox.eventCount(2);
    // Both arrive, in transaction order: the late one first.
    expect(summaries(inbox).map((x) => x.threadId)).to.deep.equal([other.threadId, thread.threadId]);
    const resumed = c.watchInbox(patient.md, inbox.events[0]!.resumeToken);
    await resumed.caughtUp();
    expect(summaries(resumed).map((x) => x.threadId)).to.deep.equal([thread.threadId]);
  });
});
