import { randomBytes } from 'node:crypto';
import { credentials, type Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg, { type DatabaseError } from 'pg';
import {
  AuditAction,
  type AuditRecord,
  type ExportThreadResponse,
  GovernanceServiceClient,
  type QueryAuditRequest,
  type QueryAuditResponse,
} from '../../gen/comms/v1/governance.js';
import { ListDirection, type Message } from '../../gen/comms/v1/message.js';
import { ParticipantRole, type Thread } from '../../gen/comms/v1/thread.js';
import {
  call,
  callError,
  expectError,
  messageClient,
  newTenant,
  newUser,
  newUserWith,
  type TestUser,
} from '../support/clients.js';
import { postedIds, useFeedClients } from '../support/feeds.js';
import { env, startTestApp } from '../support/hooks.js';
import { expectAll, expectInvalid, newKey, send, sendMany, sleep } from '../support/messages.js';
import { archive, createThread, participant, threadScene } from '../support/threads.js';

const { AUDIT_ACTION_READ, AUDIT_ACTION_WRITE } = AuditAction;

const LIST_MESSAGES = '/comms.v1.MessageService/ListMessages';
const GET_MESSAGE = '/comms.v1.MessageService/GetMessage';
const SEND_MESSAGE = '/comms.v1.MessageService/SendMessage';
const MARK_READ = '/comms.v1.ReadReceiptService/MarkRead';
const WATCH_THREAD = '/comms.v1.FeedService/WatchThread';
const EXPORT_THREAD = '/comms.v1.GovernanceService/ExportThread';

/** A fresh request id (the server accepts `[\w.:-]{1,128}`). */
const newRid = (what: string) => `rid-${what}-${randomBytes(6).toString('hex')}`;

/** The caller's metadata with `x-request-id: rid` added. */
function withRid(user: TestUser, rid: string): Metadata {
  const md = user.md.clone();
  md.set('x-request-id', rid);
  return md;
}

/** Writes every pending audit record of the shared server now. */
const flush = () => env.app.audit.flush();

/** A QueryAudit request with every filter empty unless given. */
function auditQuery(req: Partial<QueryAuditRequest> = {}): QueryAuditRequest {
  return {
    threadId: '',
    actorUserId: '',
    patientUserId: '',
    messageId: '',
    startTime: undefined,
    endTime: undefined,
    pageSize: 0,
    pageToken: '',
    ...req,
  };
}

/** Which of `threadOrder` (a thread's message ids in order) a record covers: listed, or its range. */
function covered(r: AuditRecord, threadOrder: readonly string[]): string[] {
  if (r.messageIds.length > 0) return r.messageIds;
  if (r.firstMessageId === '') return [];
  const from = threadOrder.indexOf(r.firstMessageId);
  const to = threadOrder.indexOf(r.lastMessageId);
  expect(from, `record ${r.auditId}: first_message_id is a message of the thread`).to.be.at.least(0);
  expect(to, `record ${r.auditId}: last_message_id at or after first_message_id`).to.be.at.least(from);
  const ids = threadOrder.slice(from, to + 1);
  expect(r.messageCount, `record ${r.auditId}: message_count of its range`).to.equal(ids.length);
  return ids;
}

/** True when the record covers `messageId`: listed, or within its range (by UUIDv7 order, one thread). */
function coversId(r: AuditRecord, threadId: string, messageId: string): boolean {
  if (r.messageIds.length > 0) return r.messageIds.includes(messageId);
  return (
    r.threadId === threadId && r.firstMessageId !== '' && r.firstMessageId <= messageId && messageId <= r.lastMessageId
  );
}

/** Asserts the record is about exactly `ids` (in any order), listed or as their range. */
function expectMessages(r: AuditRecord, threadOrder: readonly string[], ids: readonly string[], what: string): void {
  const got = covered(r, threadOrder);
  expect(got, `${what}: the messages recorded`).to.have.members([...ids]);
  if (r.messageCount !== 0) expect(r.messageCount, `${what}: message_count`).to.equal(ids.length);
  if (r.firstMessageId !== '') {
    const inOrder = threadOrder.filter((id) => ids.includes(id));
    expect([r.firstMessageId, r.lastMessageId], `${what}: first/last_message_id`).to.deep.equal([
      inOrder[0],
      inOrder.at(-1),
    ]);
  }
}

/** The request ids of records, in order. */
const rids = (records: readonly AuditRecord[]) => records.map((r) => r.requestId);

/** Compares decimal audit ids. */
/** Audit ids are UUIDv7: time-ordered, and their text sorts like the ids. */
const auditIdOf = (r: AuditRecord) => r.auditId;

describe('Access audit (GovernanceService.QueryAudit)', () => {
  const c = useFeedClients();
  let governance: GovernanceServiceClient;
  before(() => {
    governance = new GovernanceServiceClient(env.address, credentials.createInsecure());
  });
  after(() => governance.close());

  const query = (user: TestUser, req: Partial<QueryAuditRequest> = {}): Promise<QueryAuditResponse> =>
    call(governance, governance.queryAudit, auditQuery(req), user.md);

  /** Every record matching the filters, following next_page_token; checks newest first on the way. */
  async function queryAll(user: TestUser, req: Partial<QueryAuditRequest> = {}): Promise<AuditRecord[]> {
    const out: AuditRecord[] = [];
    let pageToken = '';
    for (let i = 0; i < 100; i++) {
      const res = await query(user, { ...req, pageToken });
      out.push(...res.records);
      pageToken = res.nextPageToken;
      if (pageToken === '') {
        for (let j = 1; j < out.length; j++) {
          expect(auditIdOf(out[j - 1]!) > auditIdOf(out[j]!), `newest first at ${j}`).to.equal(true);
        }
        return out;
      }
    }
    expect.fail('QueryAudit did not end');
  }

  /** The records carrying request id `rid`. */
  const byRid = (records: readonly AuditRecord[], rid: string) => records.filter((r) => r.requestId === rid);

  /** The one record carrying request id `rid`. */
  function oneByRid(records: readonly AuditRecord[], rid: string, what: string): AuditRecord {
    const found = byRid(records, rid);
    expect(found, `${what}: one record with request id ${rid}`).to.have.length(1);
    return found[0]!;
  }

  const sendAs = (user: TestUser, threadId: string, body: string, rid: string) =>
    call(
      c.messages,
      c.messages.sendMessage,
      { threadId, clientMutationId: newKey(), body, clientSentAt: undefined },
      withRid(user, rid),
    );
  const getAs = (user: TestUser, messageId: string, rid: string) =>
    call(c.messages, c.messages.getMessage, { messageId }, withRid(user, rid));
  const listAs = (user: TestUser, threadId: string, rid: string, pageSize: number, direction: ListDirection) =>
    call(
      c.messages,
      c.messages.listMessages,
      { threadId, pageSize, pageToken: '', direction, cursor: '' },
      withRid(user, rid),
    );

  /** Runs ExportThread to its end as `user`; returns the items. */
  function exportAll(user: TestUser, threadId: string, rid: string): Promise<ExportThreadResponse[]> {
    const stream = governance.exportThread({ threadId }, withRid(user, rid));
    const items: ExportThreadResponse[] = [];
    return new Promise((resolve, reject) => {
      stream.on('data', (item: ExportThreadResponse) => items.push(item));
      stream.on('error', reject);
      stream.on('end', () => resolve(items));
    });
  }

  describe('what is recorded', () => {
    it('ListMessages, GetMessage, SendMessage, MarkRead and WatchThread deliveries: method, action, actor, roles, request id, exact messages', async () => {
      const s = await threadScene(c.threads);
      const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
      const secret = `secret-body-${randomBytes(8).toString('hex')}`;
      const threadId = s.thread.threadId;
      const started = new Date();

      const sent = await sendMany(c.messages, s.provider, threadId, 4, secret);
      const rid = {
        send: newRid('send'),
        list: newRid('list'),
        get: newRid('get'),
        mark: newRid('mark'),
        watch: newRid('watch'),
      };
      const sentWithRid = (await sendAs(s.provider, threadId, `${secret} with rid`, rid.send)).message!;
      sent.push(sentWithRid);

      const page = await listAs(s.patient, threadId, rid.list, 3, ListDirection.LIST_DIRECTION_BACKWARD);
      const pageIds = page.messages.map((m) => m.messageId);
      expect(pageIds, 'the BACKWARD page is the newest three').to.deep.equal(sent.slice(2).map((m) => m.messageId));

      const got = (await getAs(s.patient, sent[1]!.messageId, rid.get)).message!;
      expect(got.messageId).to.equal(sent[1]!.messageId);

      const marked = [sent[0]!.messageId, sent[1]!.messageId];
      await call(
        c.receipts,
        c.receipts.markRead,
        { messageIds: marked, readAt: undefined },
        withRid(s.patient, rid.mark),
      );

      const stream = c.watchThread(withRid(s.patient, rid.watch), threadId);
      await stream.caughtUp();
      const watched = await sendMany(c.messages, s.provider, threadId, 2, `${secret} live`);
      await stream.eventCount(2);
      const delivered = postedIds(stream);
      expect(delivered, 'the stream delivered the two posted messages').to.deep.equal(watched.map((m) => m.messageId));
      const threadOrder = [...sent, ...watched].map((m) => m.messageId);

      await flush();
      const finished = new Date();
      const records = await queryAll(auditor, { threadId });
      // MarkRead names no thread in its request: also look for its record by actor, to say what is wrong.
      const ofPatient = await queryAll(auditor, { actorUserId: s.patient.userId });
      const ofProvider = await queryAll(auditor, { actorUserId: s.provider.userId });

      // Every check runs, and all failures are reported together.
      await expectAll([
        [
          'every record of the thread query is about the thread, at a time within the test',
          async () => {
            for (const r of records) {
              expect(r.threadId, `record ${r.auditId} is about the thread`).to.equal(threadId);
              expect(r.occurredAt, `record ${r.auditId} occurred_at`).to.be.instanceOf(Date);
              expect(r.occurredAt!.getTime(), `record ${r.auditId} occurred_at`).to.be.within(
                started.getTime() - 1000,
                finished.getTime(),
              );
            }
          },
        ],
        [
          'ListMessages',
          async () => {
            const list = oneByRid(records, rid.list, 'ListMessages');
            expect(list).to.deep.include({
              method: LIST_MESSAGES,
              action: AUDIT_ACTION_READ,
              actorUserId: s.patient.userId,
              actorRoles: ['patient'],
              threadId,
            });
            expectMessages(list, threadOrder, pageIds, 'ListMessages');
          },
        ],
        [
          'GetMessage',
          async () => {
            const get = oneByRid(records, rid.get, 'GetMessage');
            expect(get).to.deep.include({
              method: GET_MESSAGE,
              action: AUDIT_ACTION_READ,
              actorUserId: s.patient.userId,
              actorRoles: ['patient'],
            });
            expectMessages(get, threadOrder, [sent[1]!.messageId], 'GetMessage');
          },
        ],
        [
          'SendMessage',
          async () => {
            const sendRecord = oneByRid(records, rid.send, 'SendMessage');
            expect(sendRecord).to.deep.include({
              method: SEND_MESSAGE,
              action: AUDIT_ACTION_WRITE,
              actorUserId: s.provider.userId,
              actorRoles: ['provider'],
            });
            expectMessages(sendRecord, threadOrder, [sentWithRid.messageId], 'SendMessage');
            // Every other SendMessage is recorded too (with a server-generated request id).
            const sends = ofProvider.filter((r) => r.method === SEND_MESSAGE);
            expect(sends.flatMap((r) => covered(r, threadOrder))).to.have.members(threadOrder);
            for (const r of sends) expect(r.requestId, 'a generated request id').to.not.equal('');
          },
        ],
        [
          'MarkRead',
          async () => {
            const mark = oneByRid(ofPatient, rid.mark, 'MarkRead (by actor)');
            expect(mark).to.deep.include({
              method: MARK_READ,
              action: AUDIT_ACTION_WRITE,
              actorUserId: s.patient.userId,
              actorRoles: ['patient'],
            });
            expectMessages(mark, threadOrder, marked, 'MarkRead');
            expect(mark.threadId, 'MarkRead: the thread of the messages marked').to.equal(threadId);
            expect(byRid(records, rid.mark), 'MarkRead: found by the thread filter').to.have.length(1);
          },
        ],
        [
          'WatchThread',
          async () => {
            const deliveries = byRid(records, rid.watch);
            expect(deliveries, 'WatchThread deliveries recorded').to.not.have.length(0);
            for (const r of deliveries) {
              expect(r).to.deep.include({
                method: WATCH_THREAD,
                action: AUDIT_ACTION_READ,
                actorUserId: s.patient.userId,
                actorRoles: ['patient'],
              });
            }
            const watchedIds = deliveries.flatMap((r) => covered(r, threadOrder));
            expect(watchedIds, 'each delivered message recorded once').to.have.members(delivered);
          },
        ],
      ]);

      // No body anywhere in the audit table, whatever the column.
      const client = new pg.Client({ connectionString: env.db.url });
      await client.connect();
      try {
        const { rows } = await client.query<{ row: string }>(
          'select a::text as row from access_audit a where tenant_id = $1',
          [s.tenantId],
        );
        expect(rows.length, 'audit rows of the tenant').to.be.at.least(records.length);
        for (const { row } of rows) expect(row, 'an audit row').to.not.include(secret);
        const { rows: columns } = await client.query<{ column_name: string }>(
          "select column_name from information_schema.columns where table_name = 'access_audit'",
        );
        expect(
          columns.map((col) => col.column_name).filter((n) => /body/i.test(n)),
          'body columns',
        ).to.deep.equal([]);
      } finally {
        await client.end();
      }
    });

    it('a graceful shutdown writes every pending record before the process ends', async function () {
      this.timeout(60_000);
      const s = await threadScene(c.threads);
      const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
      const app = await startTestApp({ AUDIT_FLUSH_MS: '60000' });
      const messages = messageClient(`127.0.0.1:${app.port}`);
      const rid = newRid('shutdown');
      let sent: Message;
      try {
        sent = (
          await call(
            messages,
            messages.sendMessage,
            {
              threadId: s.thread.threadId,
              clientMutationId: newKey(),
              body: 'before shutdown',
              clientSentAt: undefined,
            },
            withRid(s.provider, rid),
          )
        ).message!;
      } finally {
        messages.close();
        await app.shutdown();
      }
      const records = await queryAll(auditor, { threadId: s.thread.threadId });
      const r = oneByRid(records, rid, 'SendMessage on the instance shut down');
      expect(r.method).to.equal(SEND_MESSAGE);
      expect(r.messageIds).to.deep.equal([sent.messageId]);
    });
  });

  describe('audit rows are append-only (even for a superuser)', () => {
    it('UPDATE, DELETE and TRUNCATE of access_audit are refused with 42501; the rows stay as they were', async () => {
      const s = await threadScene(c.threads);
      const sent = await send(c.messages, s.provider, s.thread.threadId, 'to be audited');
      await call(c.messages, c.messages.getMessage, { messageId: sent.message!.messageId }, s.patient.md);
      await flush();
      const client = new pg.Client({ connectionString: env.db.url });
      await client.connect();
      const rows = async () =>
        (await client.query('select * from access_audit where tenant_id = $1 order by audit_id', [s.tenantId])).rows;
      const refused = async (sql: string, params: unknown[]) => {
        const err = await client.query(sql, params).then(
          (res) => expect.fail(`expected "${sql}" to be refused; it affected ${res.rowCount} rows`),
          (e: DatabaseError) => e,
        );
        expect(err.code, `${sql}: ${err.message}`).to.equal('42501');
      };
      try {
        const { rows: su } = await client.query<{ super: boolean }>(
          'select rolsuper as super from pg_roles where rolname = current_user',
        );
        expect(su[0]!.super, 'the test connection is a superuser').to.equal(true);
        const before = await rows();
        expect(before.length, 'the tenant has audit rows').to.be.at.least(2);
        const first = before[0]!.audit_id as string;
        for (const set of [
          "request_id = 'forged'",
          "actor_user_id = 'someone-else'",
          "occurred_at = occurred_at - interval '1 day'",
          "action = 'read'",
          'message_ids = null',
          'actor_user_id = actor_user_id',
        ]) {
          await refused(`update access_audit set ${set} where tenant_id = $1 and audit_id = $2`, [s.tenantId, first]);
        }
        await refused("update access_audit set method = 'x' where tenant_id = $1", [s.tenantId]);
        await refused('delete from access_audit where tenant_id = $1 and audit_id = $2', [s.tenantId, first]);
        await refused('delete from access_audit where tenant_id = $1', [s.tenantId]);
        // In a transaction rolled back either way, so a missing guard cannot wipe the table.
        await client.query('begin');
        try {
          await refused('truncate access_audit', []);
        } finally {
          await client.query('rollback');
        }
        expect(await rows(), 'rows unchanged').to.deep.equal(before);
      } finally {
        await client.end();
      }
    });
  });

  describe('QueryAudit filters', () => {
    /**
     * One tenant: thread t1 (provider, patient p as PATIENT) with five messages, thread t2 (provider,
     * patient q as PATIENT, p as FAMILY) with two. p reads a BACKWARD page of t1 and one message of each
     * thread; q reads t2.
     */
    const f = {} as {
      tenantId: string;
      provider: TestUser;
      p: TestUser;
      q: TestUser;
      auditor: TestUser;
      service: TestUser;
      t1: Thread;
      t2: Thread;
      m1: Message[];
      m2: Message[];
      rid: { page: string; get0: string; pGetT2: string; qList: string };
      pageIds: string[];
    };

    before(async function () {
      this.timeout(30_000);
      f.tenantId = newTenant();
      [f.provider, f.p, f.q, f.service] = await Promise.all([
        newUser(f.tenantId, 'provider'),
        newUser(f.tenantId, 'patient'),
        newUser(f.tenantId, 'patient'),
        newUser(f.tenantId, 'service'),
      ]);
      f.auditor = await newUserWith(f.tenantId, ['audit.read'], 'staff');
      f.t1 = await createThread(c.threads, f.provider, {
        participants: [participant(f.p.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      f.t2 = await createThread(c.threads, f.provider, {
        participants: [
          participant(f.q.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          participant(f.p.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
        ],
      });
      f.m1 = await sendMany(c.messages, f.provider, f.t1.threadId, 5, 't1');
      f.m2 = await sendMany(c.messages, f.provider, f.t2.threadId, 2, 't2');
      f.rid = { page: newRid('page'), get0: newRid('get0'), pGetT2: newRid('pget2'), qList: newRid('qlist') };
      const page = await listAs(f.p, f.t1.threadId, f.rid.page, 3, ListDirection.LIST_DIRECTION_BACKWARD);
      f.pageIds = page.messages.map((m) => m.messageId);
      expect(f.pageIds).to.deep.equal(f.m1.slice(2).map((m) => m.messageId));
      await getAs(f.p, f.m1[0]!.messageId, f.rid.get0);
      await getAs(f.p, f.m2[0]!.messageId, f.rid.pGetT2);
      await listAs(f.q, f.t2.threadId, f.rid.qList, 0, ListDirection.LIST_DIRECTION_UNSPECIFIED);
      await flush();
    });

    it('by thread: only that thread’s records, reads and writes of every actor', async () => {
      const t1 = await queryAll(f.auditor, { threadId: f.t1.threadId });
      for (const r of t1) expect(r.threadId, `record ${r.auditId}`).to.equal(f.t1.threadId);
      expect(rids(t1)).to.include.members([f.rid.page, f.rid.get0]);
      expect(rids(t1)).to.not.include.members([f.rid.pGetT2]);
      expect(rids(t1)).to.not.include(f.rid.qList);
      expect(
        t1.filter((r) => r.method === SEND_MESSAGE),
        'the five sends',
      ).to.have.length(5);

      const t2 = await queryAll(f.auditor, { threadId: f.t2.threadId });
      for (const r of t2) expect(r.threadId, `record ${r.auditId}`).to.equal(f.t2.threadId);
      expect(rids(t2)).to.include.members([f.rid.pGetT2, f.rid.qList]);
      expect(rids(t2)).to.not.include(f.rid.page);
      const ids1 = new Set(t1.map((r) => r.auditId));
      expect(
        t2.filter((r) => ids1.has(r.auditId)),
        'no record in both',
      ).to.deep.equal([]);
    });

    it('by actor: that caller’s records in every thread, nobody else’s; combined with a thread, both apply', async () => {
      const ofP = await queryAll(f.auditor, { actorUserId: f.p.userId });
      for (const r of ofP) expect(r.actorUserId, `record ${r.auditId}`).to.equal(f.p.userId);
      expect(rids(ofP)).to.include.members([f.rid.page, f.rid.get0, f.rid.pGetT2]);
      expect(rids(ofP)).to.not.include(f.rid.qList);
      expect(
        ofP.filter((r) => r.method === SEND_MESSAGE),
        'p sent nothing',
      ).to.deep.equal([]);

      const ofProvider = await queryAll(f.auditor, { actorUserId: f.provider.userId });
      for (const r of ofProvider) expect(r.actorUserId).to.equal(f.provider.userId);
      expect(
        ofProvider.filter((r) => r.method === SEND_MESSAGE),
        'the provider’s seven sends',
      ).to.have.length(7);

      const pInT2 = await queryAll(f.auditor, { actorUserId: f.p.userId, threadId: f.t2.threadId });
      expect(rids(pInT2)).to.deep.equal([f.rid.pGetT2]);

      expect((await query(f.auditor, { actorUserId: 'u-nobody-at-all' })).records).to.deep.equal([]);
    });

    it('by patient: records about threads where the user takes part as PATIENT (any actor), not where FAMILY', async () => {
      const aboutP = await queryAll(f.auditor, { patientUserId: f.p.userId });
      expect(aboutP.length, 'records about t1').to.be.at.least(7);
      for (const r of aboutP) {
        expect(r.threadId, `record ${r.auditId} (${r.method} by ${r.actorUserId}) is about t1 only`).to.equal(
          f.t1.threadId,
        );
      }
      expect(rids(aboutP)).to.include.members([f.rid.page, f.rid.get0]);
      expect(rids(aboutP), 'p reading t2, where p is FAMILY').to.not.include(f.rid.pGetT2);
      expect(
        aboutP.filter((r) => r.method === SEND_MESSAGE && r.actorUserId === f.provider.userId),
        'the provider’s sends to t1',
      ).to.have.length(5);
      // Same set as the thread filter.
      const t1 = await queryAll(f.auditor, { threadId: f.t1.threadId });
      expect(aboutP.map((r) => r.auditId)).to.deep.equal(t1.map((r) => r.auditId));

      const aboutQ = await queryAll(f.auditor, { patientUserId: f.q.userId });
      for (const r of aboutQ) expect(r.threadId, `record ${r.auditId}`).to.equal(f.t2.threadId);
      expect(rids(aboutQ)).to.include.members([f.rid.pGetT2, f.rid.qList]);

      // The provider takes part in both threads, but not as a patient.
      expect((await query(f.auditor, { patientUserId: f.provider.userId })).records).to.deep.equal([]);
    });

    it('by message: the records that listed it or whose range covers it, an export range included', async () => {
      const rid = newRid('export');
      const items = await exportAll(f.service, f.t1.threadId, rid);
      expect(items.at(-1)?.item?.$case, 'the export ran to its end').to.equal('end');
      await flush();
      const order = f.m1.map((m) => m.messageId);
      const all = await queryAll(f.auditor, { threadId: f.t1.threadId });
      const exported = oneByRid(all, rid, 'ExportThread');
      expect(exported).to.deep.include({
        method: EXPORT_THREAD,
        action: AUDIT_ACTION_READ,
        actorUserId: f.service.userId,
        actorRoles: ['service'],
        threadId: f.t1.threadId,
      });
      expectMessages(exported, order, order, 'ExportThread');

      for (const [i, m] of f.m1.entries()) {
        const got = await queryAll(f.auditor, { messageId: m.messageId });
        const expected = all.filter((r) => coversId(r, f.t1.threadId, m.messageId)).map((r) => r.auditId);
        expect(
          got.map((r) => r.auditId),
          `message ${i}: exactly the records covering it`,
        ).to.deep.equal(expected);
        for (const r of got)
          expect(coversId(r, f.t1.threadId, m.messageId), `record ${r.auditId} covers ${i}`).to.equal(true);
        expect(rids(got), `message ${i}: the export`).to.include(rid);
        expect(
          got.some((r) => r.method === SEND_MESSAGE),
          `message ${i}: its send`,
        ).to.equal(true);
        if (i >= 2) expect(rids(got), `message ${i}: the page`).to.include(f.rid.page);
        else expect(rids(got), `message ${i}: not the page`).to.not.include(f.rid.page);
        if (i === 0) expect(rids(got)).to.include(f.rid.get0);
        else expect(rids(got)).to.not.include(f.rid.get0);
      }
      // A message of t2 is covered by t2's records only.
      const t2m = await queryAll(f.auditor, { messageId: f.m2[0]!.messageId });
      for (const r of t2m) expect(r.threadId).to.equal(f.t2.threadId);
      expect(rids(t2m)).to.include.members([f.rid.pGetT2, f.rid.qList]);
      // Range-only records (no listed ids), if any, are matched by range too.
      const rangeOnly = all.filter((r) => r.messageIds.length === 0 && r.firstMessageId !== '');
      for (const r of rangeOnly) {
        const inside = order.find((id) => id > r.firstMessageId && id < r.lastMessageId) ?? r.lastMessageId;
        const got = await queryAll(f.auditor, { messageId: inside });
        expect(
          got.map((x) => x.auditId),
          `range record ${r.auditId} (${r.method})`,
        ).to.include(r.auditId);
      }
    });

    it('by time range: start_time inclusive, end_time exclusive', async () => {
      const s = await threadScene(c.threads);
      const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
      const [m] = await sendMany(c.messages, s.provider, s.thread.threadId, 1, 'timed');
      const rid = { a: newRid('a'), b: newRid('b'), c: newRid('c') };
      await sleep(40);
      await getAs(s.patient, m!.messageId, rid.a);
      await sleep(40);
      await getAs(s.patient, m!.messageId, rid.b);
      await sleep(40);
      await getAs(s.patient, m!.messageId, rid.c);
      await flush();
      const threadId = s.thread.threadId;
      const all = await queryAll(auditor, { threadId });
      const [a, b, cc] = [rid.a, rid.b, rid.c].map((x) => oneByRid(all, x, x));
      const ridsIn = async (startTime?: Date, endTime?: Date) =>
        rids(await queryAll(auditor, { threadId, startTime, endTime }));

      expect(await ridsIn(b!.occurredAt, cc!.occurredAt), '[b, c)').to.deep.equal([rid.b]);
      expect(await ridsIn(a!.occurredAt, b!.occurredAt), '[a, b)').to.deep.equal([rid.a]);
      expect(await ridsIn(b!.occurredAt), '[b, …)').to.deep.equal([rid.c, rid.b]);
      expect(await ridsIn(undefined, a!.occurredAt), '[…, a): the create and the send only').to.not.include.members([
        rid.a,
        rid.b,
        rid.c,
      ]);
      expect((await ridsIn(undefined, a!.occurredAt)).length, '[…, a) holds the earlier writes').to.be.at.least(2);
      expect(await ridsIn(new Date(cc!.occurredAt!.getTime() + 1)), 'after c').to.deep.equal([]);
      expect(
        await ridsIn(new Date(Date.now() - 86_400_000), new Date(Date.now() - 3_600_000)),
        'long ago',
      ).to.deep.equal([]);
    });

    it('paginates newest first: page_size 2 walks every record exactly once, with tokens until the last page', async () => {
      const filter = { actorUserId: f.provider.userId };
      const whole = await query(f.auditor, filter);
      expect(whole.nextPageToken, 'one default page holds them all').to.equal('');
      expect(whole.records.length, 'at least five records').to.be.at.least(5);
      const pages: AuditRecord[][] = [];
      let pageToken = '';
      for (let i = 0; i < 50; i++) {
        const res = await query(f.auditor, { ...filter, pageSize: 2, pageToken });
        pages.push(res.records);
        pageToken = res.nextPageToken;
        if (pageToken === '') break;
        expect(res.records, `page ${i} is full when a token follows`).to.have.length(2);
      }
      expect(pageToken, 'the walk ended').to.equal('');
      const walked = pages.flat();
      expect(
        walked.map((r) => r.auditId),
        'every record exactly once, in the same order',
      ).to.deep.equal(whole.records.map((r) => r.auditId));
      expect(pages.length).to.equal(Math.ceil(whole.records.length / 2));
      for (let i = 1; i < walked.length; i++) {
        expect(auditIdOf(walked[i - 1]!) > auditIdOf(walked[i]!), `newest first at ${i}`).to.equal(true);
      }
      expect(walked).to.deep.equal(whole.records);
      // Over 200 is clamped, not refused.
      expect((await query(f.auditor, { ...filter, pageSize: 10_000 })).records).to.deep.equal(whole.records);
    });

    it('refuses a negative page_size, malformed ids and a forged page token with INVALID_ARGUMENT', async () => {
      await expectInvalid(query(f.auditor, { pageSize: -1 }), ['page_size'], 'page_size -1');
      await expectInvalid(query(f.auditor, { threadId: 'not-a-thread' }), ['thread_id'], 'bad thread_id');
      await expectInvalid(query(f.auditor, { messageId: 'not-a-message' }), ['message_id'], 'bad message_id');
      await expectError(
        query(f.auditor, { threadId: f.t1.threadId, pageToken: Buffer.from('forged').toString('base64url') }),
        status.INVALID_ARGUMENT,
        'INVALID_ARGUMENT',
      );
    });
  });

  describe('access', () => {
    it('patients and providers are refused ROLE_NOT_ALLOWED (even with audit.read); staff needs audit.read', async () => {
      const s = await threadScene(c.threads);
      const req = { threadId: s.thread.threadId };
      await expectError(query(s.patient, req), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      await expectError(query(s.provider, req), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      for (const role of ['patient', 'provider'] as const) {
        const withPermission = await newUserWith(s.tenantId, ['audit.read'], role);
        await expectError(query(withPermission, req), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      }
      const plain = await expectError(query(s.staff, req), status.PERMISSION_DENIED, 'PERMISSION_REQUIRED');
      expect(plain.info!.metadata.permission).to.equal('audit.read');
      const otherPermissions = await newUserWith(
        s.tenantId,
        ['holds.manage', 'records.export', 'messages.moderate', 'retention.manage'],
        'staff',
      );
      const other = await expectError(query(otherPermissions, req), status.PERMISSION_DENIED, 'PERMISSION_REQUIRED');
      expect(other.info!.metadata.permission).to.equal('audit.read');
    });

    it('staff with audit.read and service callers read the tenant’s records', async () => {
      const s = await threadScene(c.threads);
      const rid = newRid('svc');
      const sent = (await sendAs(s.provider, s.thread.threadId, 'for the service', rid)).message!;
      await flush();
      const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
      for (const who of [s.service, auditor]) {
        const records = await queryAll(who, { threadId: s.thread.threadId });
        const r = oneByRid(records, rid, who.roles.join());
        expect(r.messageIds).to.deep.equal([sent.messageId]);
      }
    });

    it('tenant isolation: another tenant’s auditors and services never see this tenant’s records', async () => {
      const a = await threadScene(c.threads);
      const [sentA] = await sendMany(c.messages, a.provider, a.thread.threadId, 1, 'tenant a');
      await getAs(a.patient, sentA!.messageId, newRid('a-get'));
      const tenantB = newTenant();
      const [providerB, serviceB] = await Promise.all([newUser(tenantB, 'provider'), newUser(tenantB, 'service')]);
      const auditorB = await newUserWith(tenantB, ['audit.read'], 'staff');
      const threadB = await createThread(c.threads, providerB, {});
      await sendMany(c.messages, providerB, threadB.threadId, 2, 'tenant b');
      await flush();
      const auditorA = await newUserWith(a.tenantId, ['audit.read'], 'staff');
      expect((await queryAll(auditorA, { threadId: a.thread.threadId })).length, 'A has records').to.be.at.least(3);

      for (const who of [auditorB, serviceB]) {
        const label = `tenant B ${who.roles.join()}`;
        expect((await query(who, { threadId: a.thread.threadId })).records, `${label}: A's thread`).to.deep.equal([]);
        expect((await query(who, { actorUserId: a.provider.userId })).records, `${label}: A's actor`).to.deep.equal([]);
        expect((await query(who, { patientUserId: a.patient.userId })).records, `${label}: A's patient`).to.deep.equal(
          [],
        );
        expect((await query(who, { messageId: sentA!.messageId })).records, `${label}: A's message`).to.deep.equal([]);
        const everything = await queryAll(who);
        expect(everything.length, `${label}: B's own records`).to.be.at.least(3);
        for (const r of everything) {
          expect([threadB.threadId, ''], `${label}: record ${r.auditId} thread`).to.include(r.threadId);
          expect(r.actorUserId, `${label}: record ${r.auditId} actor`).to.not.be.oneOf([
            a.provider.userId,
            a.patient.userId,
          ]);
        }
      }
    });
  });

  describe('failed calls', () => {
    it('a refused or invalid write records nothing; the successful one is recorded', async () => {
      const s = await threadScene(c.threads);
      const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
      const threadId = s.thread.threadId;
      const ok = newRid('ok');
      const okMessage = (await sendAs(s.patient, threadId, 'fine', ok)).message!;
      const failed = {
        staff: newRid('staff'),
        outsider: newRid('outsider'),
        empty: newRid('empty'),
        foreign: newRid('foreign'),
        markOutsider: newRid('mark-outsider'),
        archived: newRid('archived'),
      };
      await expectError(
        sendAs(s.outsiderProvider, threadId, 'let me in', failed.outsider),
        status.NOT_FOUND,
        'THREAD_NOT_FOUND',
      );
      await expectError(sendAs(s.patient, threadId, '', failed.empty), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
      await expectError(
        sendAs(s.foreignStaff, threadId, 'other tenant', failed.foreign),
        status.NOT_FOUND,
        'THREAD_NOT_FOUND',
      );
      const markErr = await callError(
        call(
          c.receipts,
          c.receipts.markRead,
          { messageIds: [okMessage.messageId], readAt: undefined },
          withRid(s.outsiderPatient, failed.markOutsider),
        ),
      );
      expect(markErr.code, 'an outsider’s MarkRead is refused').to.not.equal(status.OK);
      await archive(c.threads, s.provider, threadId);
      await expectError(
        sendAs(s.patient, threadId, 'too late', failed.archived),
        status.FAILED_PRECONDITION,
        'THREAD_ARCHIVED',
      );
      await flush();

      const records = await queryAll(auditor, { threadId });
      const r = oneByRid(records, ok, 'the successful send');
      expect(r.action).to.equal(AUDIT_ACTION_WRITE);
      for (const [what, rid] of Object.entries(failed)) {
        expect(byRid(records, rid), `${what}: no record about the thread`).to.deep.equal([]);
      }
      for (const who of [s.staff, s.outsiderProvider, s.outsiderPatient, s.foreignStaff]) {
        const own = await queryAll(auditor, { actorUserId: who.userId });
        expect(
          own.filter((x) => x.action === AUDIT_ACTION_WRITE),
          `${who.userId}: no WRITE record`,
        ).to.deep.equal([]);
      }
      const ofPatient = await queryAll(auditor, { actorUserId: s.patient.userId });
      expect(rids(ofPatient)).to.include(ok);
      expect(rids(ofPatient)).to.not.include.members([failed.empty]);
      expect(rids(ofPatient)).to.not.include(failed.archived);
    });
  });
});
