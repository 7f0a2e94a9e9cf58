import { credentials } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ListDirection, type Message, MessageServiceClient } from '../../gen/comms/v1/message.js';
import { ReadReceiptServiceClient } from '../../gen/comms/v1/read_receipt.js';
import { ParticipantRole, ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { call, newTenant, newUser, type TestUser } from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  comparePosition,
  expectAscending,
  listMessages,
  markRead,
  markThreadRead,
  messageCount,
  newKey,
  send,
  sleep,
  walkMessages,
  walkReceipts,
} from '../support/messages.js';
import { createThread, getThread, participant } from '../support/threads.js';

const { LIST_DIRECTION_FORWARD } = ListDirection;
const CHANNELS = 4;

/** `n` clients of one service, each on its own channel, so calls really arrive side by side. */
function channels<T>(
  Ctor: new (address: string, creds: ReturnType<typeof credentials.createInsecure>, opts: object) => T,
) {
  return Array.from(
    { length: CHANNELS },
    () => new Ctor(env.address, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
  );
}

describe('MessageService and ReadReceiptService under concurrency (real PostgreSQL)', () => {
  let threads: ThreadServiceClient[];
  let messages: MessageServiceClient[];
  let receipts: ReadReceiptServiceClient[];
  before(() => {
    threads = channels(ThreadServiceClient);
    messages = channels(MessageServiceClient);
    receipts = channels(ReadReceiptServiceClient);
  });
  after(() => [...threads, ...messages, ...receipts].forEach((c) => c.close()));

  /** A tenant and one thread created by a provider, with `others` more providers and a patient taking part. */
  async function scene(others: number) {
    const tenantId = newTenant();
    const provider = await newUser(tenantId, 'provider');
    const patient = await newUser(tenantId, 'patient');
    const more = await Promise.all(Array.from({ length: others }, () => newUser(tenantId, 'provider')));
    const thread = await createThread(threads[0]!, provider, {
      participants: [
        participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        ...more.map((u) => participant(u.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER)),
      ],
    });
    return { tenantId, provider, patient, more, threadId: thread.threadId };
  }

  it('50 identical concurrent SendMessage retries store exactly one message and all answer with it', async () => {
    for (let round = 0; round < 3; round++) {
      const s = await scene(0);
      const key = newKey('storm');
      const composed = new Date(Date.now() - 3_600_000);
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          send(messages[i % CHANNELS]!, s.patient, s.threadId, 'sent from a flaky network', {
            key,
            clientSentAt: composed,
          }),
        ),
      );
      expect(await messageCount(s.tenantId, { key }), `round ${round}: rows for the key`).to.equal(1);
      expect(await messageCount(s.tenantId), `round ${round}: rows in the tenant`).to.equal(1);
      const first = results[0]!.message!;
      for (const r of results) {
        expect(r.message!.messageId).to.equal(first.messageId);
        expect(r.message!.sentAt).to.deep.equal(first.sentAt);
        expect(r.message).to.deep.equal(first);
      }
      expect(
        results.filter((r) => !r.replayed),
        'exactly one call stored it',
      ).to.have.length(1);
      const listed = await listMessages(messages[0]!, s.provider, s.threadId);
      expect(listed.messages).to.deep.equal([first]);
    }
  });

  it('order equals commit order: 8 writers × 40 messages while a reader pages FORWARD from its last cursor', async () => {
    const WRITERS = 8;
    const PER_WRITER = 40;
    const PAGE = 7;
    const s = await scene(WRITERS - 2);
    const writers: TestUser[] = [s.provider, s.patient, ...s.more];
    const sentBy = new Map<string, string[]>();

    let writing = true;
    const writes = Promise.all(
      writers.map(async (user, w) => {
        const ids: string[] = [];
        for (let i = 0; i < PER_WRITER; i++) {
          const res = await send(messages[w % CHANNELS]!, user, s.threadId, `w${w} #${i}`, {
            // Claimed compose times run backwards: they must not influence the order.
            clientSentAt: new Date(Date.UTC(2030, 0, 1) - (w * PER_WRITER + i) * 60_000),
          });
          ids.push(res.message!.messageId);
        }
        sentBy.set(user.userId, ids);
      }),
    ).finally(() => (writing = false));

    const seen: Message[] = [];
    const seenIds = new Set<string>();
    let cursor = '';
    let calls = 0;
    let passes = 0;
    let pagesWhileWriting = 0;
    const consume = (page: Message[]) => {
      expectAscending(page, `page ${calls}`);
      for (const m of page) {
        const last = seen.at(-1);
        if (last) {
          expect(
            comparePosition(last, m),
            `page ${calls}: ${m.body} (${m.messageId}) sorts after ${last.body} seen earlier`,
          ).to.be.lessThan(0);
        }
        expect(seenIds.has(m.messageId), `${m.body} seen once`).to.equal(false);
        seen.push(m);
        seenIds.add(m.messageId);
      }
    };
    const reader = messages[CHANNELS - 1]!;
    for (;;) {
      // Decided before reading: when the writers were done, this pass reads to the end.
      const finalPass = !writing;
      let res = await listMessages(reader, s.patient, s.threadId, {
        direction: LIST_DIRECTION_FORWARD,
        cursor,
        pageSize: PAGE,
      });
      calls++;
      consume(res.messages);
      while (res.nextPageToken !== '') {
        res = await listMessages(reader, s.patient, s.threadId, { pageToken: res.nextPageToken, pageSize: PAGE });
        calls++;
        consume(res.messages);
      }
      if (seen.length > 0) cursor = seen.at(-1)!.cursor;
      passes++;
      if (writing) pagesWhileWriting++;
      if (finalPass) break;
      if (calls > 10_000) expect.fail('the reader did not catch up');
    }
    await writes;

    expect(seen, 'every message, exactly once').to.have.length(WRITERS * PER_WRITER);
    expect(pagesWhileWriting, 'the reader caught up many times while the writers wrote').to.be.greaterThan(10);
    expect(calls).to.be.at.least(passes);
    const all = [...sentBy.values()].flat();
    expect([...seenIds]).to.have.members(all);
    expectAscending(seen, 'reader');
    // Each writer's messages appear in the order it sent them.
    for (const [userId, ids] of sentBy) {
      expect(
        seen.filter((m) => m.senderUserId === userId).map((m) => m.messageId),
        `order of ${userId}`,
      ).to.deep.equal(ids);
    }
    // A fresh walk of the whole thread, either direction, agrees with what the reader assembled.
    const forward = (
      await walkMessages(messages[0]!, s.provider, s.threadId, { direction: LIST_DIRECTION_FORWARD, pageSize: 50 })
    ).flat();
    expect(forward.map((m) => m.messageId)).to.deep.equal(seen.map((m) => m.messageId));
    const backward = (await walkMessages(messages[0]!, s.provider, s.threadId, { pageSize: 50 })).reverse().flat();
    expect(backward.map((m) => m.messageId)).to.deep.equal(seen.map((m) => m.messageId));
    const latest = await listMessages(messages[0]!, s.provider, s.threadId, { pageSize: 1 });
    expect(latest.latest?.messageId).to.equal(seen.at(-1)!.messageId);
  });

  // `latest` and `as_of` describe the thread when the page was read, so they can never lag the page itself;
  // reading them in another statement (another snapshot) than the page lets a send commit in between.
  it('under concurrent sends every page carries a latest at or after each message of the page', async () => {
    const s = await scene(2);
    const writers: TestUser[] = [s.provider, s.patient, ...s.more];
    let writing = true;
    const writes = Promise.all(
      writers.map(async (user, w) => {
        for (let i = 0; i < 30; i++) await send(messages[w % CHANNELS]!, user, s.threadId, `w${w} #${i}`);
      }),
    ).finally(() => (writing = false));
    const stale: string[] = [];
    let pages = 0;
    while (writing) {
      const res = await listMessages(messages[pages % CHANNELS]!, s.patient, s.threadId, { pageSize: 5 });
      pages++;
      const newest = res.messages.at(-1);
      if (newest && (!res.latest || comparePosition(res.latest, newest) < 0)) {
        stale.push(`page ${pages}: latest ${res.latest?.messageId} before ${newest.messageId} on the page`);
      }
      if (newest && res.asOf!.getTime() < newest.sentAt!.getTime()) {
        stale.push(`page ${pages}: as_of ${res.asOf!.toISOString()} before ${newest.sentAt!.toISOString()}`);
      }
    }
    await writes;
    expect(pages, 'pages read while writing').to.be.greaterThan(10);
    expect(stale, 'pages whose latest or as_of lag their own messages').to.deep.equal([]);
  });

  it('unread counts stay exact under concurrent sends and marks', async () => {
    const s = await scene(0);
    const a = s.provider;
    const b = s.patient;
    const t = s.threadId;
    let writing = true;
    // A sends 60 messages over three channels; B sends a few of its own meanwhile.
    const writes = Promise.all([
      ...[0, 1, 2].map(async (w) => {
        for (let i = 0; i < 20; i++) await send(messages[w]!, a, t, `a${w}.${i}`);
      }),
      (async () => {
        for (let i = 0; i < 6; i++) await send(messages[3]!, b, t, `b${i}`);
      })(),
    ]).finally(() => (writing = false));

    // B marks as it reads: sometimes a message from the newest page, sometimes the whole thread.
    let furthest: { sentAt: Date | undefined; messageId: string } | undefined;
    const reached = (p: { sentAt: Date | undefined; messageId: string } | undefined) => {
      if (p && (!furthest || comparePosition(furthest, p) < 0)) furthest = p;
    };
    let marks = 0;
    while (writing || marks < 4) {
      const page = await listMessages(messages[marks % CHANNELS]!, b, t, { pageSize: 10 });
      const pick = page.messages[Math.floor(page.messages.length / 2)];
      if (marks % 3 === 2) {
        const res = await markThreadRead(receipts[marks % CHANNELS]!, b, t);
        reached(res.watermark!.readUpTo);
        expect(res.watermark!.unreadCount, 'unread is never negative').to.be.at.least(0);
      } else if (pick) {
        const res = await markRead(receipts[marks % CHANNELS]!, b, [pick.messageId]);
        reached(pick);
        expect(res.watermarks[0]!.unreadCount).to.be.at.least(0);
      }
      marks++;
      await sleep(1);
    }
    await writes;
    // A late mark of an old message does not rewind the watermark.
    const oldest = (await listMessages(messages[0]!, b, t, { direction: LIST_DIRECTION_FORWARD, pageSize: 1 }))
      .messages[0]!;
    await markRead(receipts[0]!, b, [oldest.messageId]);
    reached(oldest);

    const all = (await walkMessages(messages[0]!, b, t, { direction: LIST_DIRECTION_FORWARD, pageSize: 200 })).flat();
    expect(all).to.have.length(66);
    const thread = await getThread(threads[0]!, b, t);
    expect(thread.readUpTo?.messageId, "B's watermark is the furthest position B marked").to.equal(furthest!.messageId);
    const after = all.filter((m) => comparePosition(m, furthest!) > 0);
    const expected = after.filter((m) => m.senderUserId !== b.userId).length;
    expect(thread.unreadCount, 'messages by others after the watermark').to.equal(expected);
    const listed = await call(threads[1]!, threads[1]!.listThreads, { pageSize: 0, pageToken: '', state: 0 }, b.md);
    expect(listed.threads.find((x) => x.threadId === t)?.unreadCount).to.equal(expected);
    // A never marked anything: all of B's messages are unread for A, none of its own.
    expect((await getThread(threads[0]!, a, t)).unreadCount).to.equal(6);

    const final = await markThreadRead(receipts[0]!, b, t);
    // At least the unread ones; also any earlier one MarkRead skipped over (see the next check).
    expect(final.receiptsChanged).to.be.at.least(expected);
    const readByB = new Set(
      (await walkReceipts(receipts[1]!, b, t)).receipts.filter((r) => r.userId === b.userId).map((r) => r.messageId),
    );
    const othersMessages = all.filter((m) => m.senderUserId !== b.userId).map((m) => m.messageId);
    expect(
      othersMessages.filter((id) => !readByB.has(id)),
      'a receipt for every message by others',
    ).to.deep.equal([]);
    expect(final.watermark!.unreadCount).to.equal(0);
    expect(final.watermark!.readUpTo?.messageId).to.equal(all.at(-1)!.messageId);
  });
});
