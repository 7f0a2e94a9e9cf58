import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  ListDirection,
  type Message,
  type MessageServiceClient,
  MessageServiceService,
  type SendMessageRequest,
} from '../../gen/comms/v1/message.js';
import { ParticipantRole, type ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import {
  call,
  expectError,
  messageClient,
  newTenant,
  newUser,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import {
  UUID_V7,
  addMember,
  expectAll,
  expectAscending,
  expectInvalid,
  listMessages,
  messageCount,
  newKey,
  reopen,
  seedMessages,
  send,
  sendMany,
  storedMessage,
  walkMessages,
} from '../support/messages.js';
import {
  archive,
  createThread,
  db,
  expectFieldViolations,
  expectWithin,
  participant,
  threadScene,
  type ThreadScene,
} from '../support/threads.js';

const { LIST_DIRECTION_BACKWARD, LIST_DIRECTION_FORWARD } = ListDirection;

/** A page token or cursor as a client could forge it: base64url of whatever it likes. */
const forge = (text: string) => Buffer.from(text, 'utf8').toString('base64url');

/** The millisecond timestamp a UUIDv7 carries. */
const uuidMillis = (id: string) => Number.parseInt(id.replace(/-/g, '').slice(0, 12), 16);

describe('MessageService over gRPC', () => {
  let threads: ThreadServiceClient;
  let messages: MessageServiceClient;
  before(() => {
    threads = threadClient();
    messages = messageClient();
  });
  after(() => {
    threads.close();
    messages.close();
  });

  const bodies = (list: readonly Message[]) => list.map((m) => m.body);
  const sendReq = (threadId: string, over: Partial<SendMessageRequest> = {}): SendMessageRequest => ({
    threadId,
    clientMutationId: newKey(),
    body: 'hello',
    clientSentAt: undefined,
    ...over,
  });
  const sendRaw = (user: TestUser, req: SendMessageRequest) => call(messages, messages.sendMessage, req, user.md);
  const getMessage = (user: TestUser, messageId: string) => call(messages, messages.getMessage, { messageId }, user.md);

  it('has no update or delete RPC: Send, Get, List, and RetractMessage (which appends a retraction)', () => {
    expect(Object.keys(MessageServiceService)).to.have.members([
      'sendMessage',
      'getMessage',
      'listMessages',
      'retractMessage',
    ]);
  });

  describe('SendMessage', () => {
    it('a participant sends; the server assigns a UUIDv7 message_id and sent_at and keeps client_sent_at', async () => {
      const s = await threadScene(threads);
      const composed = new Date('2020-02-29T12:34:56.789Z');
      const before = new Date();
      const byProvider = await send(messages, s.provider, s.thread.threadId, 'Your results are in', {
        key: 'compose-1',
        clientSentAt: composed,
      });
      const byPatient = await send(messages, s.patient, s.thread.threadId, 'Thanks!\nSee you');
      const after = new Date();

      expect(byProvider.replayed).to.equal(false);
      const m = byProvider.message!;
      expect(m.messageId).to.match(UUID_V7);
      expect(m).to.deep.include({
        threadId: s.thread.threadId,
        senderUserId: s.provider.userId,
        body: 'Your results are in',
        clientMutationId: 'compose-1',
      });
      expect(m.clientSentAt).to.deep.equal(composed);
      expectWithin(m.sentAt, before, after, 'sent_at');
      expect(uuidMillis(m.messageId), 'message_id carries sent_at').to.equal(m.sentAt!.getTime());
      expect(m.cursor).to.be.a('string').and.not.equal('');

      const p = byPatient.message!;
      expect(p.messageId).to.match(UUID_V7);
      expect(p.senderUserId).to.equal(s.patient.userId);
      expect(p.clientSentAt).to.equal(undefined);
      expectWithin(p.sentAt, m.sentAt!, after, 'second sent_at');
      expect(p.messageId > m.messageId, 'later message has the larger id').to.equal(true);

      const row = await storedMessage(s.tenantId, m.messageId);
      expect(row).to.include({
        thread_id: s.thread.threadId,
        sender_user_id: s.provider.userId,
        client_mutation_id: 'compose-1',
        body: 'Your results are in',
      });
      expect(row.client_sent_at).to.deep.equal(composed);
      expect(row.sent_at).to.deep.equal(m.sentAt);
      expect((await getMessage(s.patient, m.messageId)).message).to.deep.equal(m);
    });

    it('orders by send order, never by client_sent_at, however far in the past or future it lies', async () => {
      const s = await threadScene(threads);
      const claimed = [
        new Date('2099-12-31T23:59:59Z'),
        new Date('1971-01-01T00:00:00Z'),
        undefined,
        new Date(Date.now() + 3_600_000),
        new Date('2001-09-09T01:46:40Z'),
      ];
      const sent: Message[] = [];
      for (const [i, clientSentAt] of claimed.entries()) {
        const user = i % 2 === 0 ? s.provider : s.patient;
        sent.push((await send(messages, user, s.thread.threadId, `m${i}`, { clientSentAt })).message!);
      }
      const page = await listMessages(messages, s.patient, s.thread.threadId);
      expect(bodies(page.messages)).to.deep.equal(['m0', 'm1', 'm2', 'm3', 'm4']);
      expect(page.messages.map((m) => m.messageId)).to.deep.equal(sent.map((m) => m.messageId));
      expect(page.messages.map((m) => m.clientSentAt)).to.deep.equal(claimed);
      expectAscending(page.messages);
    });

    it('a retry with the same key, thread and body returns the original message with replayed = true', async () => {
      const s = await threadScene(threads);
      const first = await send(messages, s.patient, s.thread.threadId, 'offline note', {
        key: 'offline-1',
        clientSentAt: new Date('2026-01-01T08:00:00Z'),
      });
      // A later retry of the same queued message (even with another client_sent_at) is the same send.
      const retry = await send(messages, s.patient, s.thread.threadId, 'offline note', {
        key: 'offline-1',
        clientSentAt: new Date('2026-01-02T08:00:00Z'),
      });
      const again = await send(messages, s.patient, s.thread.threadId, 'offline note', { key: 'offline-1' });
      expect(first.replayed).to.equal(false);
      expect(retry.replayed).to.equal(true);
      expect(again.replayed).to.equal(true);
      expect(retry.message).to.deep.equal(first.message);
      expect(again.message).to.deep.equal(first.message);
      expect(await messageCount(s.tenantId)).to.equal(1);
      const page = await listMessages(messages, s.provider, s.thread.threadId);
      expect(page.messages).to.deep.equal([first.message]);
    });

    it('a retry after the thread was archived still returns the original message', async () => {
      const s = await threadScene(threads);
      const first = await send(messages, s.patient, s.thread.threadId, 'sent just in time', { key: 'late-ack' });
      await archive(threads, s.provider, s.thread.threadId);
      const retry = await send(messages, s.patient, s.thread.threadId, 'sent just in time', { key: 'late-ack' });
      expect(retry.replayed).to.equal(true);
      expect(retry.message).to.deep.equal(first.message);
      expect(await messageCount(s.tenantId)).to.equal(1);
    });

    it('the same key with another body or another thread is ALREADY_EXISTS IDEMPOTENCY_KEY_REUSED, nothing stored', async () => {
      const s = await threadScene(threads);
      const other = await createThread(threads, s.provider, {
        participants: [participant(s.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      const first = await send(messages, s.patient, s.thread.threadId, 'original', { key: 'reused' });

      const attempts: [string, string][] = [
        [s.thread.threadId, 'a different body'],
        [s.thread.threadId, 'original '],
        [other.threadId, 'original'],
        [other.threadId, 'different body, different thread'],
      ];
      for (const [threadId, body] of attempts) {
        const { info } = await expectError(
          send(messages, s.patient, threadId, body, { key: 'reused' }),
          status.ALREADY_EXISTS,
          'IDEMPOTENCY_KEY_REUSED',
        );
        expect(info!.metadata.client_mutation_id).to.equal('reused');
      }
      expect(await messageCount(s.tenantId)).to.equal(1);
      expect((await listMessages(messages, s.patient, other.threadId)).messages).to.deep.equal([]);
      // The original is still what a true retry gets.
      const retry = await send(messages, s.patient, s.thread.threadId, 'original', { key: 'reused' });
      expect(retry.message).to.deep.equal(first.message);
    });

    it('the same key used by another sender is a different message', async () => {
      const s = await threadScene(threads);
      const byPatient = await send(messages, s.patient, s.thread.threadId, 'same words', { key: 'shared-key' });
      const byProvider = await send(messages, s.provider, s.thread.threadId, 'same words', { key: 'shared-key' });
      expect(byProvider.replayed).to.equal(false);
      expect(byProvider.message!.messageId).to.not.equal(byPatient.message!.messageId);
      expect(byProvider.message!.senderUserId).to.equal(s.provider.userId);
      // Keys are per sender: the staff member's own message under the key may have another body.
      const thirdParty = await newUser(s.tenantId, 'staff');
      await addMember(
        threads,
        s.provider,
        s.thread.threadId,
        thirdParty.userId,
        ParticipantRole.PARTICIPANT_ROLE_CARE_STAFF,
      );
      const byStaff = await send(messages, thirdParty, s.thread.threadId, 'other words', { key: 'shared-key' });
      expect(byStaff.replayed).to.equal(false);
      expect(byStaff.message!.body).to.equal('other words');
      expect(await messageCount(s.tenantId)).to.equal(3);
      expect(await messageCount(s.tenantId, { key: 'shared-key' })).to.equal(3);
      const retry = await send(messages, s.patient, s.thread.threadId, 'same words', { key: 'shared-key' });
      expect(retry.message).to.deep.equal(byPatient.message);
    });

    it('an archived thread is FAILED_PRECONDITION THREAD_ARCHIVED naming the thread; after ReopenThread the same send succeeds', async () => {
      const s = await threadScene(threads);
      await send(messages, s.provider, s.thread.threadId, 'before archive');
      await archive(threads, s.provider, s.thread.threadId);
      const queued = { key: 'queued-offline', clientSentAt: new Date(Date.now() - 86_400_000) };

      const { info, err } = await expectError(
        send(messages, s.patient, s.thread.threadId, 'composed offline', queued),
        status.FAILED_PRECONDITION,
        'THREAD_ARCHIVED',
      );
      expect(info!.metadata.thread_id).to.equal(s.thread.threadId);
      expect(err.details).to.be.a('string').and.not.equal('');
      expect(await messageCount(s.tenantId)).to.equal(1);

      await reopen(threads, s.patient, s.thread.threadId);
      const before = new Date();
      const sent = await send(messages, s.patient, s.thread.threadId, 'composed offline', queued);
      expect(sent.replayed).to.equal(false);
      expectWithin(sent.message!.sentAt, before, new Date(), 'sent_at after reopen');
      expect(sent.message!.clientSentAt).to.deep.equal(queued.clientSentAt);
      const retry = await send(messages, s.patient, s.thread.threadId, 'composed offline', queued);
      expect(retry).to.deep.equal({ message: sent.message, replayed: true });
      expect(await messageCount(s.tenantId)).to.equal(2);
    });

    it('only participants send: staff and service of the tenant get PERMISSION_DENIED, others NOT_FOUND', async () => {
      const s = await threadScene(threads);
      for (const user of [s.staff, s.service]) {
        await expectError(
          send(messages, user, s.thread.threadId, 'hi'),
          status.PERMISSION_DENIED,
          'THREAD_PERMISSION_DENIED',
        );
      }
      for (const user of [s.outsiderProvider, s.outsiderPatient, s.foreignStaff, s.foreignService]) {
        const { info } = await expectError(
          send(messages, user, s.thread.threadId, 'hi'),
          status.NOT_FOUND,
          'THREAD_NOT_FOUND',
        );
        expect(info!.metadata.thread_id).to.equal(s.thread.threadId);
      }
      expect(await messageCount(s.tenantId)).to.equal(0);
      const { rows } = await db().query('select count(*)::int as n from message where thread_id = $1', [
        s.thread.threadId,
      ]);
      expect(rows[0].n, 'nothing stored under any tenant').to.equal(0);
    });

    it('an unknown thread is NOT_FOUND', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      await expectError(send(messages, provider, uuidv7(), 'hello?'), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      expect(await messageCount(tenant)).to.equal(0);
    });

    describe('bad input is INVALID_ARGUMENT naming the field, and nothing is stored', () => {
      let s: ThreadScene;
      before(async () => (s = await threadScene(threads)));

      const cases: [string, (threadId: string) => Partial<SendMessageRequest>, string[]][] = [
        ['an empty body', () => ({ body: '' }), ['body']],
        ['a whitespace-only body', () => ({ body: ' \t\n\r\n  \u00a0' }), ['body']],
        ['a body of 16385 ASCII bytes', () => ({ body: 'a'.repeat(16_385) }), ['body']],
        ['a body of 16386 bytes in 5462 characters', () => ({ body: '\u20ac'.repeat(5462) }), ['body']],
        ['a body of 16388 bytes in 4097 astral characters', () => ({ body: '\u{1F4AC}'.repeat(4097) }), ['body']],
        ['a body with NUL', () => ({ body: 'before\u0000after' }), ['body']],
        ['a body with BEL', () => ({ body: 'ding\u0007' }), ['body']],
        ['a body with an escape sequence', () => ({ body: '\u001b[31mred' }), ['body']],
        ['a body with DEL', () => ({ body: 'oops\u007f' }), ['body']],
        ['a body with a vertical tab', () => ({ body: 'a\u000bb' }), ['body']],
        ['a malformed thread_id', () => ({ threadId: 'thread-1' }), ['thread_id']],
        ['an empty thread_id', () => ({ threadId: '' }), ['thread_id']],
        ['a thread_id with trailing garbage', (t) => ({ threadId: `${t}x` }), ['thread_id']],
        ['an empty client_mutation_id', () => ({ clientMutationId: '' }), ['client_mutation_id']],
        ['a 129-character client_mutation_id', () => ({ clientMutationId: 'k'.repeat(129) }), ['client_mutation_id']],
        ['a client_mutation_id with a newline', () => ({ clientMutationId: 'key\n1' }), ['client_mutation_id']],
        [
          'several bad fields at once',
          () => ({ threadId: 'nope', clientMutationId: '', body: '' }),
          ['thread_id', 'client_mutation_id', 'body'],
        ],
      ];
      for (const [what, over, fields] of cases) {
        it(what, async () => {
          const before = await messageCount(s.tenantId);
          const req = sendReq(s.thread.threadId, over(s.thread.threadId));
          const { err } = await expectError(sendRaw(s.patient, req), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
          expectFieldViolations(err, fields);
          expect(await messageCount(s.tenantId), 'nothing stored').to.equal(before);
        });
      }
    });

    it('accepts the limits exactly: 16384 UTF-8 bytes of multi-byte characters, tab and newlines, a 128-character key', async () => {
      const s = await threadScene(threads);
      const accepted = [
        { body: 'a'.repeat(16_384), key: 'k'.repeat(128) },
        { body: `${'\u20ac'.repeat(5461)}a`, key: '\u{1F511}'.repeat(128) },
        { body: '\u{1F4AC}'.repeat(4096), key: newKey() },
        { body: 'line 1\nline 2\r\n\tindented', key: newKey() },
        { body: '\u00e9', key: 'k' },
      ];
      for (const { body, key } of accepted) {
        expect(Buffer.byteLength(body, 'utf8')).to.be.at.most(16_384);
        const res = await send(messages, s.patient, s.thread.threadId, body, { key });
        expect(res.message!.body, `body of ${Buffer.byteLength(body)} bytes`).to.equal(body);
        expect(res.message!.clientMutationId).to.equal(key);
        expect((await storedMessage(s.tenantId, res.message!.messageId)).body).to.equal(body);
      }
      expect(await messageCount(s.tenantId)).to.equal(accepted.length);
    });
  });

  describe('GetMessage', () => {
    it('participants and the staff and service of the tenant read a message', async () => {
      const s = await threadScene(threads);
      const sent = (await send(messages, s.provider, s.thread.threadId, 'readable')).message!;
      for (const user of [s.provider, s.patient, s.staff, s.service]) {
        expect((await getMessage(user, sent.messageId)).message, user.userId).to.deep.equal(sent);
      }
      // Ids are case-insensitive on the way in.
      expect((await getMessage(s.patient, sent.messageId.toUpperCase())).message).to.deep.equal(sent);
    });

    it('outsiders and other tenants get NOT_FOUND MESSAGE_NOT_FOUND, as for an unknown id', async () => {
      const s = await threadScene(threads);
      const sent = (await send(messages, s.provider, s.thread.threadId, 'private')).message!;
      for (const user of [s.outsiderProvider, s.outsiderPatient, s.foreignStaff, s.foreignService]) {
        const { info } = await expectError(getMessage(user, sent.messageId), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
        expect(info!.metadata.message_id).to.equal(sent.messageId);
      }
      await expectError(getMessage(s.patient, uuidv7()), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
    });

    it('a malformed message_id is INVALID_ARGUMENT', async () => {
      const s = await threadScene(threads);
      for (const id of ['', 'not-a-uuid', `${uuidv7()}0`]) {
        const { err } = await expectError(getMessage(s.patient, id), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
        expectFieldViolations(err, ['message_id']);
      }
    });
  });

  describe('ListMessages', () => {
    /** A thread with `count` messages by provider and patient in turn, sent in order. */
    async function threadWith(count: number) {
      const s = await threadScene(threads);
      const sent: Message[] = [];
      for (let i = 0; i < count; i++) {
        const user = i % 3 === 1 ? s.patient : s.provider;
        sent.push((await send(messages, user, s.thread.threadId, `m${i}`)).message!);
      }
      return { s, sent };
    }

    it('BACKWARD (the default): the newest page first, each page ascending, next_page_token walks older pages', async () => {
      const { s, sent } = await threadWith(7);
      for (const direction of [undefined, LIST_DIRECTION_BACKWARD]) {
        const pages = await walkMessages(messages, s.patient, s.thread.threadId, { pageSize: 3, direction });
        expect(pages.map(bodies)).to.deep.equal([['m4', 'm5', 'm6'], ['m1', 'm2', 'm3'], ['m0']]);
        pages.forEach((page) => expectAscending(page));
        expect(pages.flat().map((m) => m.messageId)).to.have.members(sent.map((m) => m.messageId));
      }
      const first = await listMessages(messages, s.patient, s.thread.threadId, { pageSize: 7 });
      expect(first.messages).to.deep.equal(sent);
      expect(first.nextPageToken, 'no older page').to.equal('');
    });

    it('FORWARD: from the oldest, or only what is newer than a cursor, and resumable from the last cursor', async () => {
      const { s, sent } = await threadWith(7);
      const forward = { direction: LIST_DIRECTION_FORWARD, pageSize: 3 };
      const pages = await walkMessages(messages, s.patient, s.thread.threadId, forward);
      expect(pages.map(bodies)).to.deep.equal([['m0', 'm1', 'm2'], ['m3', 'm4', 'm5'], ['m6']]);

      const after3 = await walkMessages(messages, s.patient, s.thread.threadId, {
        ...forward,
        cursor: sent[3]!.cursor,
      });
      expect(after3.map(bodies)).to.deep.equal([['m4', 'm5', 'm6']]);

      const caughtUp = await listMessages(messages, s.patient, s.thread.threadId, {
        ...forward,
        cursor: sent[6]!.cursor,
      });
      expect(caughtUp.messages).to.deep.equal([]);
      expect(caughtUp.nextPageToken).to.equal('');

      // Reconnect: what was sent since is exactly what follows the last cursor.
      const later = await sendMany(messages, s.provider, s.thread.threadId, 2, 'later');
      const resumed = await listMessages(messages, s.patient, s.thread.threadId, {
        ...forward,
        cursor: sent[6]!.cursor,
      });
      expect(resumed.messages).to.deep.equal(later);
      expect(resumed.latest?.messageId).to.equal(later[1]!.messageId);
    });

    it('BACKWARD from a cursor returns only older messages', async () => {
      const { s, sent } = await threadWith(6);
      const pages = await walkMessages(messages, s.patient, s.thread.threadId, {
        direction: LIST_DIRECTION_BACKWARD,
        cursor: sent[4]!.cursor,
        pageSize: 3,
      });
      expect(pages.map(bodies)).to.deep.equal([['m1', 'm2', 'm3'], ['m0']]);
      const none = await listMessages(messages, s.patient, s.thread.threadId, { cursor: sent[0]!.cursor });
      expect(none.messages).to.deep.equal([]);
      expect(none.nextPageToken).to.equal('');
    });

    it('carries the thread watermark: latest (the newest message position) and as_of; none for an empty thread', async () => {
      const s = await threadScene(threads);
      const before = new Date();
      const empty = await listMessages(messages, s.patient, s.thread.threadId);
      expect(empty.messages).to.deep.equal([]);
      expect(empty.latest).to.equal(undefined);
      expect(empty.nextPageToken).to.equal('');
      expectWithin(empty.asOf, before, new Date(), 'as_of');

      const sent = await sendMany(messages, s.provider, s.thread.threadId, 4);
      const newest = sent[3]!;
      // Every page carries the latest position, also an old page far from it.
      const start = new Date();
      const oldest = await listMessages(messages, s.patient, s.thread.threadId, {
        direction: LIST_DIRECTION_FORWARD,
        pageSize: 1,
      });
      expect(bodies(oldest.messages)).to.deep.equal(['message 0']);
      expect(oldest.latest).to.deep.equal({
        messageId: newest.messageId,
        sentAt: newest.sentAt,
        cursor: newest.cursor,
      });
      expectWithin(oldest.asOf, start, new Date(), 'as_of');
      expect(oldest.asOf!.getTime()).to.be.at.least(newest.sentAt!.getTime());
      // The latest cursor is a usable cursor.
      const after = await listMessages(messages, s.patient, s.thread.threadId, {
        direction: LIST_DIRECTION_FORWARD,
        cursor: oldest.latest!.cursor,
      });
      expect(after.messages).to.deep.equal([]);
    });

    it('page_size: 0 means 50, larger values are clamped to 200, negative values are INVALID_ARGUMENT', async () => {
      const s = await threadScene(threads);
      const start = Date.now() - 600_000;
      await seedMessages(
        s.tenantId,
        s.thread.threadId,
        s.provider.userId,
        Array.from({ length: 205 }, (_, i) => new Date(start + i)),
      );
      const byDefault = await listMessages(messages, s.patient, s.thread.threadId);
      expect(byDefault.messages).to.have.length(50);
      expect(byDefault.nextPageToken).to.not.equal('');
      for (const pageSize of [201, 1000, 2_147_483_647]) {
        const clamped = await listMessages(messages, s.patient, s.thread.threadId, { pageSize });
        expect(clamped.messages, `page_size ${pageSize}`).to.have.length(200);
        expectAscending(clamped.messages);
        const rest = await listMessages(messages, s.patient, s.thread.threadId, {
          pageSize,
          pageToken: clamped.nextPageToken,
        });
        expect(rest.messages).to.have.length(5);
        expect(rest.nextPageToken).to.equal('');
      }
      expect((await listMessages(messages, s.patient, s.thread.threadId, { pageSize: 200 })).messages).to.have.length(
        200,
      );
      for (const pageSize of [-1, -2_147_483_648]) {
        const { err } = await expectError(
          listMessages(messages, s.patient, s.thread.threadId, { pageSize }),
          status.INVALID_ARGUMENT,
          'INVALID_ARGUMENT',
        );
        expectFieldViolations(err, ['page_size']);
      }
    });

    it('a garbage or forged cursor is INVALID_ARGUMENT on cursor, never INTERNAL', async () => {
      const { s, sent } = await threadWith(2);
      const other = await threadWith(3);
      const t = s.thread.threadId;
      const { nextPageToken } = await listMessages(messages, other.s.patient, other.s.thread.threadId, { pageSize: 1 });
      const cursors = [
        'garbage!',
        '   ',
        'x'.repeat(300),
        forge('not a cursor'),
        forge(`m1:${t}:`),
        forge(`m1:${t}:-1`),
        forge(`m2:${t}:1`),
        other.sent[0]!.cursor, // a real cursor of another thread
        nextPageToken, // a page token, not a cursor
      ];
      await expectAll(
        cursors.flatMap((cursor) =>
          [LIST_DIRECTION_FORWARD, LIST_DIRECTION_BACKWARD].map((direction): [string, () => Promise<void>] => {
            const what = `${ListDirection[direction]} from ${JSON.stringify(Buffer.from(cursor, 'base64url').toString())}`;
            return [
              what,
              () => expectInvalid(listMessages(messages, s.patient, t, { cursor, direction }), ['cursor'], what),
            ];
          }),
        ),
      );
      // A real cursor still works.
      const ok = await listMessages(messages, s.patient, t, {
        cursor: sent[0]!.cursor,
        direction: LIST_DIRECTION_FORWARD,
      });
      expect(ok.messages).to.deep.equal([sent[1]]);
    });

    it('a garbage, forged or foreign page_token is INVALID_ARGUMENT on page_token, never INTERNAL', async () => {
      const { s, sent } = await threadWith(3);
      const other = await threadWith(3);
      const t = s.thread.threadId;
      const real = await listMessages(messages, s.patient, t, { pageSize: 1, direction: LIST_DIRECTION_FORWARD });
      const foreign = await listMessages(messages, other.s.patient, other.s.thread.threadId, { pageSize: 1 });
      const token = (body: Record<string, unknown>) =>
        forge(JSON.stringify({ k: 'messages', t, d: 'f', s: 1, c: '', ...body }));
      const cases: [string, { pageToken: string; direction?: ListDirection; cursor?: string }][] = [
        ['garbage', { pageToken: 'garbage!' }],
        ['base64 of nothing useful', { pageToken: forge('hello') }],
        ['an empty JSON object', { pageToken: forge('{}') }],
        ['JSON null', { pageToken: forge('null') }],
        ['a token of another thread', { pageToken: foreign.nextPageToken }],
        [
          'a FORWARD token with direction BACKWARD',
          { pageToken: real.nextPageToken, direction: LIST_DIRECTION_BACKWARD },
        ],
        ['a token with another cursor', { pageToken: real.nextPageToken, cursor: sent[2]!.cursor }],
        ['a forged token of another kind', { pageToken: token({ k: 'receipts' }) }],
        ['a forged token without a position', { pageToken: token({ s: undefined }) }],
        ['a forged token with a text position', { pageToken: token({ s: '1' }) }],
      ];
      await expectAll(
        cases.map(([what, req]) => [
          what,
          () => expectInvalid(listMessages(messages, s.patient, t, req), ['page_token'], what),
        ]),
      );
      // The real token continues its walk.
      const next = await listMessages(messages, s.patient, t, { pageSize: 1, pageToken: real.nextPageToken });
      expect(next.messages).to.deep.equal([sent[1]]);
    });

    // Cursors and page tokens are not signed; a position no message can have (a fractional seq, a seq past
    // the 32-bit range of the seq column) is still recognisably forged and must not be served as a page.
    it('a cursor or page_token naming a position no message can have is INVALID_ARGUMENT on that field', async () => {
      const { s } = await threadWith(3);
      const t = s.thread.threadId;
      const token = (body: Record<string, unknown>) =>
        forge(JSON.stringify({ k: 'messages', t, d: 'f', s: 1, c: '', ...body }));
      const checks: [string, () => Promise<void>][] = [];
      for (const direction of [LIST_DIRECTION_FORWARD, LIST_DIRECTION_BACKWARD]) {
        for (const seq of ['2147483648', '9999999999']) {
          const what = `${ListDirection[direction]} from a cursor at seq ${seq}`;
          const cursor = forge(`m1:${t}:${seq}`);
          checks.push([
            what,
            () => expectInvalid(listMessages(messages, s.patient, t, { cursor, direction }), ['cursor'], what),
          ]);
        }
      }
      for (const seq of [1.5, 1e10, 1e300, -1]) {
        const what = `a page token at seq ${seq}`;
        const pageToken = token({ s: seq });
        checks.push([
          what,
          () => expectInvalid(listMessages(messages, s.patient, t, { pageToken }), ['page_token'], what),
        ]);
      }
      await expectAll(checks);
    });

    it('participants and the staff and service of the tenant list; outsiders and other tenants get NOT_FOUND', async () => {
      const { s, sent } = await threadWith(2);
      for (const user of [s.provider, s.patient, s.staff, s.service]) {
        expect((await listMessages(messages, user, s.thread.threadId)).messages, user.userId).to.deep.equal(sent);
      }
      for (const user of [s.outsiderProvider, s.outsiderPatient, s.foreignStaff, s.foreignService]) {
        await expectError(listMessages(messages, user, s.thread.threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      }
      await expectError(listMessages(messages, s.patient, uuidv7()), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      const { err } = await expectError(
        listMessages(messages, s.patient, 'not-a-thread'),
        status.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
      expectFieldViolations(err, ['thread_id']);
    });

    it('an archived thread can still be read', async () => {
      const { s, sent } = await threadWith(2);
      await archive(threads, s.provider, s.thread.threadId);
      expect((await listMessages(messages, s.patient, s.thread.threadId)).messages).to.deep.equal(sent);
    });
  });

  describe('immutability in the database', () => {
    it('refuses UPDATE, DELETE and TRUNCATE of message rows; the row stays as it was', async () => {
      const s = await threadScene(threads);
      const sent = (await send(messages, s.provider, s.thread.threadId, 'immutable')).message!;
      const before = await storedMessage(s.tenantId, sent.messageId);
      const where = 'where tenant_id = $1 and message_id = $2';
      const key = [s.tenantId, sent.messageId];
      const attempts: [string, string, unknown[]][] = [
        ['UPDATE of the body', `update message set body = 'tampered' ${where}`, key],
        ['UPDATE of sent_at', `update message set sent_at = sent_at - interval '1 day' ${where}`, key],
        ['UPDATE to the same values', `update message set body = body ${where}`, key],
        ['DELETE', `delete from message ${where}`, key],
      ];
      for (const [what, sql, params] of attempts) {
        const err = await db()
          .query(sql, params)
          .then(
            () => undefined,
            (e: Error) => e,
          );
        expect(err, `${what} refused`).to.be.instanceOf(Error);
      }
      // TRUNCATE … CASCADE would not be stopped by foreign keys; run it in a transaction we roll back anyway.
      const client = await db().connect();
      try {
        await client.query('begin');
        const err = await client.query('truncate message cascade').then(
          () => undefined,
          (e: Error) => e,
        );
        await client.query('rollback');
        expect(err, 'TRUNCATE refused').to.be.instanceOf(Error);
      } finally {
        client.release();
      }
      expect(await storedMessage(s.tenantId, sent.messageId)).to.deep.equal(before);
      expect((await getMessage(s.patient, sent.messageId)).message).to.deep.equal(sent);
    });
  });
});
