import { credentials, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import type { Message, MessageServiceClient } from '../../gen/comms/v1/message.js';
import { type ReadReceipt, ReadReceiptServiceClient, type ReadWatermark } from '../../gen/comms/v1/read_receipt.js';
import { ParticipantRole, type ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import {
  call,
  expectError,
  messageClient,
  newUser,
  receiptClient,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  addMember,
  expectAll,
  expectInvalid,
  listReceipts,
  markRead,
  markThreadRead,
  seedMessages,
  send,
  sendMany,
  storedReceipts,
  storedWatermarks,
  walkReceipts,
} from '../support/messages.js';
import {
  archive,
  createThread,
  db,
  expectFieldViolations,
  expectWithin,
  getThread,
  participant,
  threadScene,
  type ThreadScene,
} from '../support/threads.js';

const MINUTE = 60_000;

/** A page token as a client could forge it. */
const forge = (text: string) => Buffer.from(text, 'utf8').toString('base64url');

/** Receipts as comparable tuples: [message id, user id, read_at ms]. */
const tuples = (receipts: readonly ReadReceipt[]) =>
  receipts.map((r) => [r.messageId, r.userId, r.readAt!.getTime()] as const);

describe('ReadReceiptService over gRPC', () => {
  let threads: ThreadServiceClient;
  let messages: MessageServiceClient;
  let receipts: ReadReceiptServiceClient;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    receipts = receiptClient();
  });
  after(() => {
    threads.close();
    messages.close();
    receipts.close();
  });

  /** A thread (see threadScene) with `count` messages by the provider sent an hour ago, a second apart. */
  async function pastScene(count = 3) {
    const s = await threadScene(threads);
    const base = Date.now() - 60 * MINUTE;
    const sentAts = Array.from({ length: count }, (_, i) => new Date(base + i * 1000));
    const msgs = await seedMessages(s.tenantId, s.thread.threadId, s.provider.userId, sentAts);
    return { s, msgs, ids: msgs.map((m) => m.messageId), last: sentAts.at(-1)!.getTime() };
  }

  /** The caller's unread count and watermark as GetThread and ListThreads report them. */
  async function readState(user: TestUser, threadId: string) {
    const viaGet = await getThread(threads, user, threadId);
    const listed = await call(threads, threads.listThreads, { pageSize: 0, pageToken: '', state: 0 }, user.md);
    const viaList = listed.threads.find((t) => t.threadId === threadId);
    expect(viaList, 'thread listed').to.not.equal(undefined);
    expect(viaList!.unreadCount, 'ListThreads and GetThread agree on unread_count').to.equal(viaGet.unreadCount);
    expect(viaList!.readUpTo, 'ListThreads and GetThread agree on read_up_to').to.deep.equal(viaGet.readUpTo);
    return { unread: viaGet.unreadCount, upTo: viaGet.readUpTo?.messageId };
  }

  const watermarkOf = (marks: readonly ReadWatermark[], threadId: string) => {
    const found = marks.find((w) => w.threadId === threadId);
    expect(found, `watermark of ${threadId}`).to.not.equal(undefined);
    return found!;
  };

  describe("the contract's example: two devices of one user", () => {
    // Each device has its own channel.
    let deviceA: ReadReceiptServiceClient;
    let deviceB: ReadReceiptServiceClient;
    before(() => {
      deviceA = new ReadReceiptServiceClient(env.address, credentials.createInsecure(), {
        'grpc.use_local_subchannel_pool': 1,
      });
      deviceB = new ReadReceiptServiceClient(env.address, credentials.createInsecure(), {
        'grpc.use_local_subchannel_pool': 1,
      });
    });
    after(() => {
      deviceA.close();
      deviceB.close();
    });

    /** m1..m3 sent an hour ago; "10:00" and "10:05" are a minute and six minutes after the last. */
    async function example() {
      const { s, ids, last } = await pastScene(3);
      const [m1, m2, m3] = ids as [string, string, string];
      const at1000 = new Date(last + MINUTE);
      const at1005 = new Date(last + 6 * MINUTE);
      const a = () => markRead(deviceA, s.patient, [m1, m2], at1000);
      const b = () => markRead(deviceB, s.patient, [m2, m3], at1005);
      const expected = [
        [m1, s.patient.userId, at1000.getTime()],
        [m2, s.patient.userId, at1005.getTime()],
        [m3, s.patient.userId, at1005.getTime()],
      ];
      const check = async () => {
        const stored = await storedReceipts(s.tenantId);
        expect(
          stored.map((r) => [r.message_id, r.user_id, r.read_at.getTime()]),
          'one row per (message, user)',
        ).to.have.deep.members(expected);
        const listed = await listReceipts(receipts, s.provider, s.thread.threadId);
        expect(tuples(listed.receipts)).to.deep.equal(expected);
      };
      return { s, m1, m2, m3, at1000, at1005, a, b, check };
    }

    it('A {[m1, m2], 10:00} then B {[m2, m3], 10:05} → m1 = 10:00, m2 = 10:05, m3 = 10:05', async () => {
      const e = await example();
      const ra = await e.a();
      expect(tuples(ra.receipts)).to.deep.equal([
        [e.m1, e.s.patient.userId, e.at1000.getTime()],
        [e.m2, e.s.patient.userId, e.at1000.getTime()],
      ]);
      const rb = await e.b();
      expect(tuples(rb.receipts)).to.deep.equal([
        [e.m2, e.s.patient.userId, e.at1005.getTime()],
        [e.m3, e.s.patient.userId, e.at1005.getTime()],
      ]);
      await e.check();
    });

    it('B {[m2, m3], 10:05} then A {[m1, m2], 10:00} → the same; A is answered with m2 = 10:05', async () => {
      const e = await example();
      await e.b();
      const ra = await e.a();
      expect(tuples(ra.receipts), 'A learns the converged m2').to.deep.equal([
        [e.m1, e.s.patient.userId, e.at1000.getTime()],
        [e.m2, e.s.patient.userId, e.at1005.getTime()],
      ]);
      await e.check();
    });

    it('A and B concurrently, several rounds → always m1 = 10:00, m2 = 10:05, m3 = 10:05', async () => {
      for (let round = 0; round < 5; round++) {
        const e = await example();
        const [ra, rb] = await Promise.all([e.a(), e.b()]);
        expect(tuples(rb.receipts), `round ${round}: B`).to.deep.equal([
          [e.m2, e.s.patient.userId, e.at1005.getTime()],
          [e.m3, e.s.patient.userId, e.at1005.getTime()],
        ]);
        const [r1, r2] = ra.receipts;
        expect(tuples([r1!]), `round ${round}: A's m1`).to.deep.equal([[e.m1, e.s.patient.userId, e.at1000.getTime()]]);
        // A's m2 is whichever time was stored when A's statement ran: its own, or B's later one.
        expect(r2!.messageId).to.equal(e.m2);
        expect([e.at1000.getTime(), e.at1005.getTime()]).to.include(r2!.readAt!.getTime());
        await e.check();
      }
    });
  });

  describe('MarkRead', () => {
    it('last write wins: an older read_at never moves a receipt earlier; the reply carries the converged time', async () => {
      const { s, ids, last } = await pastScene(2);
      const [m1, m2] = ids as [string, string];
      const at = (minutes: number) => new Date(last + minutes * MINUTE);
      const first = await markRead(receipts, s.patient, [m1], at(5));
      expect(tuples(first.receipts)).to.deep.equal([[m1, s.patient.userId, at(5).getTime()]]);

      const older = await markRead(receipts, s.patient, [m1, m2], at(1));
      expect(tuples(older.receipts), 'm1 keeps 5 minutes, m2 is inserted at 1 minute').to.deep.equal([
        [m1, s.patient.userId, at(5).getTime()],
        [m2, s.patient.userId, at(1).getTime()],
      ]);
      const later = await markRead(receipts, s.patient, [m2, m1], at(9));
      expect(tuples(later.receipts), 'both move later, in request order').to.deep.equal([
        [m2, s.patient.userId, at(9).getTime()],
        [m1, s.patient.userId, at(9).getTime()],
      ]);
      const again = await markRead(receipts, s.patient, [m1], at(9));
      expect(tuples(again.receipts)).to.deep.equal([[m1, s.patient.userId, at(9).getTime()]]);
      const stored = await storedReceipts(s.tenantId);
      expect(stored.map((r) => r.read_at.getTime())).to.deep.equal([at(9).getTime(), at(9).getTime()]);
    });

    it('a read_at in the future is clamped to server time, and unset read_at means now', async () => {
      const { s, ids } = await pastScene(2);
      const [m1, m2] = ids as [string, string];
      let before = new Date();
      const future = await markRead(receipts, s.patient, [m1], new Date(Date.now() + 24 * 60 * MINUTE));
      expectWithin(future.receipts[0]!.readAt, before, new Date(), 'clamped read_at');
      before = new Date();
      const unset = await markRead(receipts, s.patient, [m2]);
      expectWithin(unset.receipts[0]!.readAt, before, new Date(), 'read_at of an unset request');
      const stored = await storedReceipts(s.tenantId);
      for (const r of stored) expect(r.read_at.getTime()).to.be.at.most(Date.now());
    });

    it('a read_at before the message was sent is raised to its sent_at', async () => {
      const { s, msgs } = await pastScene(2);
      const [m1, m2] = msgs;
      const res = await markRead(receipts, s.patient, [m1!.messageId, m2!.messageId], new Date('2000-01-01T00:00:00Z'));
      expect(tuples(res.receipts)).to.deep.equal([
        [m1!.messageId, s.patient.userId, m1!.sentAt.getTime()],
        [m2!.messageId, s.patient.userId, m2!.sentAt.getTime()],
      ]);
      // Between the two send times: raised for the later message only.
      const between = new Date(m1!.sentAt.getTime() + 500);
      const other = await newUser(s.tenantId, 'patient');
      await addMember(threads, s.provider, s.thread.threadId, other.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
      const mixed = await markRead(receipts, other, [m1!.messageId, m2!.messageId], between);
      expect(tuples(mixed.receipts)).to.deep.equal([
        [m1!.messageId, other.userId, between.getTime()],
        [m2!.messageId, other.userId, m2!.sentAt.getTime()],
      ]);
    });

    it('duplicate ids are ignored: one receipt per distinct message, 500 ids accepted', async () => {
      const { s, ids } = await pastScene(2);
      const [m1, m2] = ids as [string, string];
      const res = await markRead(receipts, s.patient, [m1, m2, m1, m1.toUpperCase()]);
      expect(res.receipts.map((r) => r.messageId)).to.deep.equal([m1, m2]);
      const many = await markRead(
        receipts,
        s.patient,
        Array.from({ length: 500 }, (_, i) => (i % 2 ? m1 : m2)),
      );
      expect(many.receipts.map((r) => r.messageId)).to.have.members([m1, m2]);
      expect(await storedReceipts(s.tenantId)).to.have.length(2);
    });

    it('the watermark never moves backwards: m3 then m1 leaves read_up_to at m3', async () => {
      const s = await threadScene(threads);
      const [m1, m2, m3] = (await sendMany(messages, s.provider, s.thread.threadId, 3)) as [Message, Message, Message];
      const third = await markRead(receipts, s.patient, [m3.messageId]);
      expect(third.watermarks).to.have.length(1);
      expect(third.watermarks[0]).to.deep.equal({
        threadId: s.thread.threadId,
        userId: s.patient.userId,
        readUpTo: { messageId: m3.messageId, sentAt: m3.sentAt, cursor: m3.cursor },
        unreadCount: 0,
      });
      const first = await markRead(receipts, s.patient, [m1.messageId]);
      expect(first.watermarks[0]!.readUpTo?.messageId, 'a late, older receipt does not rewind').to.equal(m3.messageId);
      expect(first.watermarks[0]!.unreadCount).to.equal(0);
      expect(await readState(s.patient, s.thread.threadId)).to.deep.equal({ unread: 0, upTo: m3.messageId });
      const [mark] = await storedWatermarks(s.tenantId);
      expect(mark).to.include({ user_id: s.patient.userId, message_id: m3.messageId, seq: 3 });
      // Marking m2 afterwards changes nothing either.
      const second = await markRead(receipts, s.patient, [m2.messageId]);
      expect(second.watermarks[0]!.readUpTo?.messageId).to.equal(m3.messageId);
    });

    it("unread counts: messages by others after the watermark; one's own messages never count", async () => {
      const s = await threadScene(threads);
      const t = s.thread.threadId;
      const p1 = (await send(messages, s.provider, t, 'p1')).message!;
      const q1 = (await send(messages, s.patient, t, 'q1')).message!;
      const p2 = (await send(messages, s.provider, t, 'p2')).message!;
      const p3 = (await send(messages, s.provider, t, 'p3')).message!;
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 3, upTo: undefined });
      expect(await readState(s.provider, t)).to.deep.equal({ unread: 1, upTo: undefined });

      const r1 = await markRead(receipts, s.patient, [p1.messageId]);
      expect(watermarkOf(r1.watermarks, t)).to.include({ unreadCount: 2 });
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 2, upTo: p1.messageId });

      // A receipt for one's own message is accepted; the count is still the others' messages after it.
      const own = await markRead(receipts, s.patient, [q1.messageId]);
      expect(own.receipts.map((r) => r.messageId)).to.deep.equal([q1.messageId]);
      expect(watermarkOf(own.watermarks, t)).to.include({ unreadCount: 2 });
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 2, upTo: q1.messageId });

      // The sender marks its own first message: q1 by the patient still counts for it.
      const senders = await markRead(receipts, s.provider, [p1.messageId]);
      expect(watermarkOf(senders.watermarks, t)).to.include({ unreadCount: 1 });
      expect(await readState(s.provider, t)).to.deep.equal({ unread: 1, upTo: p1.messageId });

      const r2 = await markRead(receipts, s.patient, [p2.messageId]);
      expect(watermarkOf(r2.watermarks, t)).to.include({ unreadCount: 1 });
      // New messages by others count, one's own do not.
      await send(messages, s.patient, t, 'q2');
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 1, upTo: p2.messageId });
      await send(messages, s.provider, t, 'p4');
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 2, upTo: p2.messageId });
      expect(await readState(s.provider, t), 'q2 is unread for the provider').to.deep.equal({
        unread: 2,
        upTo: p1.messageId,
      });
      const r3 = await markRead(receipts, s.patient, [p3.messageId]);
      expect(watermarkOf(r3.watermarks, t)).to.include({ unreadCount: 1 });
    });

    it('messages of several threads in one call: a watermark per thread touched', async () => {
      const s = await threadScene(threads);
      const other = await createThread(threads, s.provider, {
        participants: [participant(s.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      const a = await sendMany(messages, s.provider, s.thread.threadId, 3, 'a');
      const b = await sendMany(messages, s.provider, other.threadId, 2, 'b');
      const res = await markRead(receipts, s.patient, [b[0]!.messageId, a[1]!.messageId, a[0]!.messageId]);
      expect(res.receipts.map((r) => [r.messageId, r.threadId])).to.deep.equal([
        [b[0]!.messageId, other.threadId],
        [a[1]!.messageId, s.thread.threadId],
        [a[0]!.messageId, s.thread.threadId],
      ]);
      expect(res.watermarks).to.have.length(2);
      expect(watermarkOf(res.watermarks, s.thread.threadId)).to.deep.include({ unreadCount: 1 });
      expect(watermarkOf(res.watermarks, s.thread.threadId).readUpTo?.messageId).to.equal(a[1]!.messageId);
      expect(watermarkOf(res.watermarks, other.threadId)).to.deep.include({ unreadCount: 1 });
      expect(watermarkOf(res.watermarks, other.threadId).readUpTo?.messageId).to.equal(b[0]!.messageId);
    });

    it('marks messages of an archived thread (reading is not posting)', async () => {
      const s = await threadScene(threads);
      const [m1] = await sendMany(messages, s.provider, s.thread.threadId, 1);
      await archive(threads, s.provider, s.thread.threadId);
      const res = await markRead(receipts, s.patient, [m1!.messageId]);
      expect(res.receipts.map((r) => r.messageId)).to.deep.equal([m1!.messageId]);
    });

    describe('refusals change nothing', () => {
      let s: ThreadScene;
      let mine: Message;
      let theirs: Message;
      before(async () => {
        s = await threadScene(threads);
        mine = (await send(messages, s.provider, s.thread.threadId, 'in the thread')).message!;
        const elsewhere = await createThread(threads, s.outsiderProvider, {
          participants: [participant(s.outsiderPatient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
        });
        theirs = (await send(messages, s.outsiderProvider, elsewhere.threadId, 'not yours')).message!;
      });
      afterEach(async () => {
        expect(await storedReceipts(s.tenantId), 'no receipt stored').to.deep.equal([]);
        expect(await storedWatermarks(s.tenantId), 'no watermark stored').to.deep.equal([]);
      });

      it('a message of a thread the caller is not in is NOT_FOUND, also next to one it may mark', async () => {
        for (const ids of [[theirs.messageId], [mine.messageId, theirs.messageId]]) {
          const { info } = await expectError(markRead(receipts, s.patient, ids), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
          expect(info!.metadata.message_id).to.equal(theirs.messageId);
        }
      });

      it('staff and service who can see the thread but do not take part get PERMISSION_DENIED', async () => {
        for (const user of [s.staff, s.service]) {
          await expectError(
            markRead(receipts, user, [mine.messageId]),
            status.PERMISSION_DENIED,
            'THREAD_PERMISSION_DENIED',
          );
        }
      });

      it('callers of another tenant and unknown ids get NOT_FOUND', async () => {
        for (const user of [s.foreignStaff, s.foreignService]) {
          await expectError(markRead(receipts, user, [mine.messageId]), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
        }
        await expectError(markRead(receipts, s.patient, [uuidv7()]), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
        await expectError(
          markRead(receipts, s.patient, [mine.messageId, uuidv7()]),
          status.NOT_FOUND,
          'MESSAGE_NOT_FOUND',
        );
      });

      it('bad message_ids are INVALID_ARGUMENT naming the field', async () => {
        const valid = mine.messageId;
        await expectAll([
          ['an empty list', () => expectInvalid(markRead(receipts, s.patient, []), ['message_ids'], 'empty')],
          [
            '501 ids',
            () =>
              expectInvalid(
                markRead(
                  receipts,
                  s.patient,
                  Array.from({ length: 501 }, () => valid),
                ),
                ['message_ids'],
                '501 ids',
              ),
          ],
          [
            'a malformed id',
            () =>
              expectInvalid(
                markRead(receipts, s.patient, [valid, 'not-a-uuid', valid, '']),
                ['message_ids[1]', 'message_ids[3]'],
                'malformed',
              ),
          ],
        ]);
      });
    });
  });

  describe('MarkThreadRead', () => {
    it('up_to_message_id, then up_to_cursor, then neither (everything now): receipts_changed, watermark, unread', async () => {
      const s = await threadScene(threads);
      const t = s.thread.threadId;
      const m = await sendMany(messages, s.provider, t, 5, 'p');
      const own = (await send(messages, s.patient, t, 'own')).message!;
      const m6 = (await send(messages, s.provider, t, 'p6')).message!;
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 6, upTo: undefined });

      const byId = await markThreadRead(receipts, s.patient, t, { upToMessageId: m[1]!.messageId });
      expect(byId.receiptsChanged).to.equal(2);
      expect(byId.watermark).to.deep.equal({
        threadId: t,
        userId: s.patient.userId,
        readUpTo: { messageId: m[1]!.messageId, sentAt: m[1]!.sentAt, cursor: m[1]!.cursor },
        unreadCount: 4,
      });
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 4, upTo: m[1]!.messageId });

      const byCursor = await markThreadRead(receipts, s.patient, t, { upToCursor: m[3]!.cursor });
      expect(byCursor.receiptsChanged).to.equal(2);
      expect(byCursor.watermark!.readUpTo?.messageId).to.equal(m[3]!.messageId);
      expect(byCursor.watermark!.unreadCount).to.equal(2);

      const before = new Date();
      const all = await markThreadRead(receipts, s.patient, t);
      const after = new Date();
      expect(all.receiptsChanged, "m4 and m6; the patient's own message is not counted").to.equal(2);
      expect(all.watermark!.readUpTo?.messageId).to.equal(m6.messageId);
      expect(all.watermark!.unreadCount).to.equal(0);
      expect(await readState(s.patient, t)).to.deep.equal({ unread: 0, upTo: m6.messageId });

      const listed = await listReceipts(receipts, s.patient, t);
      const read = new Map(listed.receipts.map((r) => [r.messageId, r]));
      for (const x of [...m, m6]) expect(read.has(x.messageId), `receipt for ${x.body}`).to.equal(true);
      expect(read.has(own.messageId), 'no receipt made for the caller’s own message').to.equal(false);
      for (const x of [m[4]!, m6]) expectWithin(read.get(x.messageId)!.readAt, before, after, `read_at of ${x.body}`);

      const again = await markThreadRead(receipts, s.patient, t);
      expect(again.receiptsChanged, 'nothing left to mark').to.equal(0);
      expect(again.watermark!.readUpTo?.messageId).to.equal(m6.messageId);
      // Marking up to an earlier message afterwards does not move the watermark back.
      const earlier = await markThreadRead(receipts, s.patient, t, { upToMessageId: m[0]!.messageId });
      expect(earlier.receiptsChanged).to.equal(0);
      expect(earlier.watermark!.readUpTo?.messageId).to.equal(m6.messageId);
      expect(earlier.watermark!.unreadCount).to.equal(0);
    });

    // MarkRead moves the watermark to the furthest message marked without receipts for the ones before it,
    // so "everything after the watermark" is not "everything not yet marked".
    it('marks every earlier message too when a MarkRead of a later one moved the watermark first', async () => {
      const s = await threadScene(threads);
      const t = s.thread.threadId;
      const m = await sendMany(messages, s.provider, t, 4);
      // The patient opens the newest message from a notification, then opens the thread.
      await markRead(receipts, s.patient, [m[2]!.messageId]);
      // Read at m3's send time, earlier than the MarkRead above, so LWW leaves m3's receipt alone.
      const res = await markThreadRead(receipts, s.patient, t, {
        upToMessageId: m[2]!.messageId,
        readAt: m[2]!.sentAt,
      });
      expect(res.watermark!.readUpTo?.messageId).to.equal(m[2]!.messageId);
      expect(res.watermark!.unreadCount).to.equal(1);
      const listed = await listReceipts(receipts, s.provider, t);
      expect(
        listed.receipts.filter((r) => r.userId === s.patient.userId).map((r) => r.messageId),
        'a receipt for every message up to the position',
      ).to.deep.equal([m[0]!.messageId, m[1]!.messageId, m[2]!.messageId]);
      expect(res.receiptsChanged, 'm1 and m2 were marked by this call').to.equal(2);
    });

    it('uses read_at like MarkRead: kept when in the past, raised to sent_at, clamped to now', async () => {
      const { s, msgs, last } = await pastScene(3);
      const t = s.thread.threadId;
      const readAt = new Date(last + 5 * MINUTE);
      const res = await markThreadRead(receipts, s.patient, t, { upToMessageId: msgs[1]!.messageId, readAt });
      expect(res.receiptsChanged).to.equal(2);
      const listed = await listReceipts(receipts, s.patient, t);
      expect(tuples(listed.receipts)).to.deep.equal([
        [msgs[0]!.messageId, s.patient.userId, readAt.getTime()],
        [msgs[1]!.messageId, s.patient.userId, readAt.getTime()],
      ]);
      const before = new Date();
      await markThreadRead(receipts, s.patient, t, { readAt: new Date(Date.now() + 60 * MINUTE) });
      const [, , third] = (await listReceipts(receipts, s.patient, t)).receipts;
      expectWithin(third!.readAt, before, new Date(), 'clamped read_at');
      const other = await newUser(s.tenantId, 'provider');
      await addMember(threads, s.provider, t, other.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER);
      await markThreadRead(receipts, other, t, { readAt: new Date('1999-01-01T00:00:00Z') });
      const raised = await listReceipts(receipts, other, t, { messageIds: msgs.map((m) => m.messageId) });
      expect(tuples(raised.receipts.filter((r) => r.userId === other.userId))).to.deep.equal(
        msgs.map((m) => [m.messageId, other.userId, m.sentAt.getTime()]),
      );
    });

    it('an empty thread: nothing to mark and no watermark', async () => {
      const s = await threadScene(threads);
      const res = await markThreadRead(receipts, s.patient, s.thread.threadId);
      expect(res.receiptsChanged).to.equal(0);
      expect(res.watermark).to.deep.equal({
        threadId: s.thread.threadId,
        userId: s.patient.userId,
        readUpTo: undefined,
        unreadCount: 0,
      });
    });

    it('refuses a message of another thread, both positions, a foreign cursor and callers who may not mark', async () => {
      const s = await threadScene(threads);
      const t = s.thread.threadId;
      const [m1] = await sendMany(messages, s.provider, t, 1);
      const other = await createThread(threads, s.provider, {
        participants: [participant(s.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      const [o1] = await sendMany(messages, s.provider, other.threadId, 1);

      await expectError(
        markThreadRead(receipts, s.patient, t, { upToMessageId: o1!.messageId }),
        status.NOT_FOUND,
        'MESSAGE_NOT_FOUND',
      );
      await expectError(
        markThreadRead(receipts, s.patient, t, { upToMessageId: uuidv7() }),
        status.NOT_FOUND,
        'MESSAGE_NOT_FOUND',
      );
      await expectAll([
        [
          'both positions',
          () =>
            expectInvalid(
              markThreadRead(receipts, s.patient, t, { upToMessageId: m1!.messageId, upToCursor: m1!.cursor }),
              ['up_to_cursor'],
              'both positions',
            ),
        ],
        [
          'a cursor of another thread',
          () =>
            expectInvalid(
              markThreadRead(receipts, s.patient, t, { upToCursor: o1!.cursor }),
              ['up_to_cursor'],
              'foreign cursor',
            ),
        ],
        [
          'a garbage cursor',
          () =>
            expectInvalid(
              markThreadRead(receipts, s.patient, t, { upToCursor: 'garbage!' }),
              ['up_to_cursor'],
              'garbage cursor',
            ),
        ],
        [
          'a malformed up_to_message_id',
          () =>
            expectInvalid(
              markThreadRead(receipts, s.patient, t, { upToMessageId: 'nope' }),
              ['up_to_message_id'],
              'malformed id',
            ),
        ],
        [
          'a malformed thread_id',
          () => expectInvalid(markThreadRead(receipts, s.patient, 'nope'), ['thread_id'], 'malformed thread'),
        ],
      ]);
      for (const user of [s.staff, s.service]) {
        await expectError(markThreadRead(receipts, user, t), status.PERMISSION_DENIED, 'THREAD_PERMISSION_DENIED');
      }
      for (const user of [s.outsiderPatient, s.outsiderProvider, s.foreignStaff, s.foreignService]) {
        await expectError(markThreadRead(receipts, user, t), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      }
      await expectError(markThreadRead(receipts, s.patient, uuidv7()), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      expect(await storedReceipts(s.tenantId), 'nothing stored').to.deep.equal([]);
      expect(await storedWatermarks(s.tenantId)).to.deep.equal([]);
    });
  });

  describe('ListReadReceipts', () => {
    /** A thread with `count` provider messages and three readers who marked them at distinct times. */
    async function readScene(count: number) {
      const { s, msgs, last } = await pastScene(count);
      const t = s.thread.threadId;
      const readers = [s.patient, await newUser(s.tenantId, 'patient'), await newUser(s.tenantId, 'provider')];
      for (const r of readers.slice(1)) {
        await addMember(threads, s.provider, t, r.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY);
      }
      const expected: [string, string, number][] = [];
      for (const [i, r] of readers.entries()) {
        const readAt = new Date(last + (i + 1) * MINUTE);
        await markRead(
          receipts,
          r,
          msgs.map((m) => m.messageId),
          readAt,
        );
        for (const m of msgs) expected.push([m.messageId, r.userId, readAt.getTime()]);
      }
      // Ordered by message position, then user id.
      const seqOf = new Map(msgs.map((m) => [m.messageId, m.seq]));
      expected.sort((a, b) => seqOf.get(a[0])! - seqOf.get(b[0])! || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
      return { s, t, msgs, readers, expected };
    }

    it('who read what, when: for a thread and for a subset of its messages', async () => {
      const { s, t, msgs, expected } = await readScene(3);
      for (const user of [s.provider, s.patient, s.staff, s.service]) {
        const res = await listReceipts(receipts, user, t);
        expect(tuples(res.receipts), user.userId).to.deep.equal(expected);
        expect(res.nextPageToken).to.equal('');
        for (const r of res.receipts) expect(r.threadId).to.equal(t);
      }
      const subset = [msgs[2]!.messageId, msgs[0]!.messageId];
      const some = await listReceipts(receipts, s.patient, t, { messageIds: subset });
      expect(tuples(some.receipts)).to.deep.equal(expected.filter((e) => subset.includes(e[0])));
      // Ids of another thread or unknown ids select nothing.
      const none = await listReceipts(receipts, s.patient, t, { messageIds: [uuidv7()] });
      expect(none.receipts).to.deep.equal([]);
    });

    it('pages through every receipt exactly once, in order, with page tokens', async () => {
      const { s, t, msgs, expected } = await readScene(5);
      expect(expected).to.have.length(15);
      for (const pageSize of [1, 4, 7, 15, 16]) {
        const { receipts: all, sizes } = await walkReceipts(receipts, s.patient, t, { pageSize });
        expect(tuples(all), `page size ${pageSize}`).to.deep.equal(expected);
        expect(
          sizes.slice(0, -1).every((n) => n === pageSize),
          `full pages of ${pageSize}`,
        ).to.equal(true);
      }
      const subset = msgs.slice(1, 3).map((m) => m.messageId);
      const { receipts: some, sizes } = await walkReceipts(receipts, s.patient, t, { messageIds: subset, pageSize: 2 });
      expect(tuples(some)).to.deep.equal(expected.filter((e) => subset.includes(e[0])));
      expect(sizes).to.deep.equal([2, 2, 2]);
    });

    it('a token continues only its own listing; bad page_size, token and ids are INVALID_ARGUMENT', async () => {
      const { s, t, msgs } = await readScene(2);
      const other = await readScene(2);
      const first = await listReceipts(receipts, s.patient, t, { pageSize: 1 });
      const filtered = await listReceipts(receipts, s.patient, t, { pageSize: 1, messageIds: [msgs[0]!.messageId] });
      const foreign = await listReceipts(receipts, other.s.patient, other.t, { pageSize: 1 });
      const token = (body: Record<string, unknown>) =>
        forge(JSON.stringify({ k: 'receipts', t, f: '', s: 1, u: s.patient.userId, ...body }));
      const list = (
        req: { messageIds?: string[]; pageSize?: number; pageToken?: string },
        field: string,
        what: string,
      ) =>
        [what, () => expectInvalid(listReceipts(receipts, s.patient, t, req), [field], what)] as [
          string,
          () => Promise<void>,
        ];
      await expectAll([
        list({ pageSize: -1 }, 'page_size', 'a negative page size'),
        list({ pageToken: 'garbage!' }, 'page_token', 'a garbage token'),
        list({ pageToken: forge('{}') }, 'page_token', 'an empty JSON token'),
        list({ pageToken: foreign.nextPageToken }, 'page_token', 'a token of another thread'),
        list({ pageToken: filtered.nextPageToken }, 'page_token', 'a token of another filter'),
        list({ pageToken: first.nextPageToken, messageIds: [msgs[1]!.messageId] }, 'page_token', 'a filter added'),
        list({ pageToken: token({ k: 'messages' }) }, 'page_token', 'a token of another kind'),
        list({ messageIds: ['nope'] }, 'message_ids[0]', 'a malformed id'),
        list({ messageIds: Array.from({ length: 501 }, () => uuidv7()) }, 'message_ids', '501 ids'),
      ]);
      const next = await listReceipts(receipts, s.patient, t, { pageSize: 1, pageToken: first.nextPageToken });
      expect(next.receipts).to.have.length(1);
      expect(next.receipts[0]).to.not.deep.equal(first.receipts[0]);
    });

    it('a page_token naming a position no receipt can have is INVALID_ARGUMENT on page_token', async () => {
      const { s, t } = await readScene(2);
      const token = (seq: number) => forge(JSON.stringify({ k: 'receipts', t, f: '', s: seq, u: s.patient.userId }));
      await expectAll(
        [1.5, 1e10, -1].map((seq): [string, () => Promise<void>] => {
          const what = `a page token at seq ${seq}`;
          return [
            what,
            () => expectInvalid(listReceipts(receipts, s.patient, t, { pageToken: token(seq) }), ['page_token'], what),
          ];
        }),
      );
    });

    it('outsiders and other tenants get NOT_FOUND', async () => {
      const { s, t } = await readScene(1);
      for (const user of [s.outsiderPatient, s.outsiderProvider, s.foreignStaff, s.foreignService]) {
        await expectError(listReceipts(receipts, user, t), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      }
      await expectError(listReceipts(receipts, s.patient, uuidv7()), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      const { err } = await expectError(
        listReceipts(receipts, s.patient, 'nope'),
        status.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
      expectFieldViolations(err, ['thread_id']);
    });
  });

  describe('database guards', () => {
    it("refuses an UPDATE that moves a receipt's read_at earlier (later is allowed)", async () => {
      const { s, ids, last } = await pastScene(1);
      const readAt = new Date(last + 5 * MINUTE);
      await markRead(receipts, s.patient, ids, readAt);
      const where = 'where tenant_id = $1 and message_id = $2 and user_id = $3';
      const key = [s.tenantId, ids[0], s.patient.userId];
      const err = await db()
        .query(`update read_receipt set read_at = read_at - interval '1 minute' ${where}`, key)
        .then(
          () => undefined,
          (e: Error) => e,
        );
      expect(err, 'moving read_at earlier is refused').to.be.instanceOf(Error);
      expect((await storedReceipts(s.tenantId))[0]!.read_at.getTime()).to.equal(readAt.getTime());
      // The guard is about direction, not a blanket refusal.
      await db().query(`update read_receipt set read_at = read_at + interval '1 minute' ${where}`, key);
      expect((await storedReceipts(s.tenantId))[0]!.read_at.getTime()).to.equal(readAt.getTime() + MINUTE);
    });

    it('refuses an UPDATE that moves a read watermark backwards', async () => {
      const { s, msgs } = await pastScene(3);
      await markRead(receipts, s.patient, [msgs[2]!.messageId]);
      const err = await db()
        .query(
          `update read_watermark set seq = $4, message_id = $5, sent_at = $6
            where tenant_id = $1 and thread_id = $2 and user_id = $3`,
          [s.tenantId, s.thread.threadId, s.patient.userId, msgs[0]!.seq, msgs[0]!.messageId, msgs[0]!.sentAt],
        )
        .then(
          () => undefined,
          (e: Error) => e,
        );
      expect(err, 'moving the watermark back is refused').to.be.instanceOf(Error);
      const [mark] = await storedWatermarks(s.tenantId);
      expect(mark).to.include({ seq: 3, message_id: msgs[2]!.messageId });
      expect(await readState(s.patient, s.thread.threadId)).to.deep.equal({ unread: 0, upTo: msgs[2]!.messageId });
    });
  });
});
