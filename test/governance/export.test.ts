import { credentials, type Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  type ExportedMessage,
  type ExportEnd,
  type ExportHeader,
  type ExportThreadResponse,
  GovernanceServiceClient,
} from '../../gen/comms/v1/governance.js';
import { ListDirection, type Message, type MessageServiceClient } from '../../gen/comms/v1/message.js';
import type { ReadReceipt, ReadReceiptServiceClient } from '../../gen/comms/v1/read_receipt.js';
import type { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import {
  call,
  expectError,
  messageClient,
  newUserWith,
  receiptClient,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  expectAscending,
  expectInvalid,
  listMessages,
  markRead,
  seedMessages,
  send,
  walkMessages,
  walkReceipts,
} from '../support/messages.js';
import { db, expectWithin, threadScene } from '../support/threads.js';
import { until } from '../support/wait.js';

/** An export taken apart: the header, the messages in stream order, the end marker. */
interface ParsedExport {
  readonly header: ExportHeader;
  readonly messages: ExportedMessage[];
  readonly end: ExportEnd;
}

/** Asserts the export's shape (header first, then messages only, end last) and takes it apart. */
function parseExport(items: readonly ExportThreadResponse[]): ParsedExport {
  expect(items.length, 'at least a header and an end').to.be.at.least(2);
  const first = items[0]!.item;
  const last = items.at(-1)!.item;
  expect(first?.$case, 'first item').to.equal('header');
  expect(last?.$case, 'last item').to.equal('end');
  const messages = items.slice(1, -1).map((it, i) => {
    expect(it.item?.$case, `item ${i + 1}`).to.equal('message');
    return (it.item as { $case: 'message'; value: ExportedMessage }).value;
  });
  return {
    header: (first as { $case: 'header'; value: ExportHeader }).value,
    messages,
    end: (last as { $case: 'end'; value: ExportEnd }).value,
  };
}

/** The message ids of a thread in thread order (seq), from the database; optionally up to one message. */
async function storedIds(tenantId: string, threadId: string, throughId?: string): Promise<string[]> {
  const { rows } = await db().query<{ message_id: string }>(
    `select message_id from message
      where tenant_id = $1 and thread_id = $2
        and ($3::uuid is null or seq <= (select seq from message where tenant_id = $1 and message_id = $3))
      order by seq`,
    [tenantId, threadId, throughId ?? null],
  );
  return rows.map((r) => r.message_id);
}

/** Receipts keyed by message id, each list sorted by reader. */
function receiptsByMessage(receipts: readonly ReadReceipt[]): Map<string, ReadReceipt[]> {
  const out = new Map<string, ReadReceipt[]>();
  for (const r of receipts) out.set(r.messageId, [...(out.get(r.messageId) ?? []), r]);
  for (const list of out.values()) list.sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
  return out;
}

describe('GovernanceService.ExportThread', () => {
  let threads: ThreadServiceClient;
  let messages: MessageServiceClient;
  let receipts: ReadReceiptServiceClient;
  let governance: GovernanceServiceClient;
  before(() => {
    threads = threadClient();
    messages = messageClient();
    receipts = receiptClient();
    governance = new GovernanceServiceClient(env.address, credentials.createInsecure());
  });
  after(() => {
    for (const client of [threads, messages, receipts, governance]) client.close();
  });

  /** Reads a whole export as the caller whose metadata is `md`; rejects with the stream's error. */
  function exportItems(md: Metadata, threadId: string): Promise<ExportThreadResponse[]> {
    return new Promise((resolve, reject) => {
      const items: ExportThreadResponse[] = [];
      const stream = governance.exportThread({ threadId }, md);
      stream.on('data', (item: ExportThreadResponse) => items.push(item));
      stream.on('error', reject);
      stream.on('end', () => resolve(items));
    });
  }

  /** RetractMessage as `user`; returns the retraction. */
  async function retract(user: TestUser, messageId: string) {
    const res = await call(messages, messages.retractMessage, { messageId, reason: 'mistake' }, user.md);
    expect(res.message?.retraction, 'retracted').to.not.equal(undefined);
    return res.message!.retraction;
  }

  const exporterOf = (tenantId: string) => newUserWith(tenantId, ['records.export'], 'staff');

  /** Asserts every exported message carries exactly the thread's receipts for it (as ListReadReceipts has them). */
  async function expectReceipts(reader: TestUser, threadId: string, exported: readonly ExportedMessage[]) {
    const all = (await walkReceipts(receipts, reader, threadId, { pageSize: 200 })).receipts;
    const expected = receiptsByMessage(all);
    for (const m of exported) {
      const got = receiptsByMessage(m.receipts).get(m.message!.messageId) ?? [];
      expect(m.receipts.length, `receipts of ${m.message!.messageId} all about it`).to.equal(got.length);
      expect(got, `receipts of ${m.message!.messageId}`).to.deep.equal(expected.get(m.message!.messageId) ?? []);
    }
    return all.length;
  }

  it('exports header, every message in order with receipts and retractions, and consistent end counts', async () => {
    const s = await threadScene(threads);
    const sent: Message[] = [];
    for (let i = 0; i < 6; i++) {
      const from = i % 2 === 0 ? s.provider : s.patient;
      sent.push((await send(messages, from, s.thread.threadId, `export ${i}`)).message!);
    }
    // Receipts on some messages, by both sides; one message retracted by its sender.
    await markRead(receipts, s.patient, [sent[0]!.messageId, sent[2]!.messageId]);
    await markRead(receipts, s.provider, [sent[1]!.messageId, sent[2]!.messageId]);
    const retracted = await retract(s.patient, sent[3]!.messageId);

    const exporter = await exporterOf(s.tenantId);
    const expectedMessages = (await listMessages(messages, s.patient, s.thread.threadId)).messages;
    expect(expectedMessages[3]).to.deep.include({ body: '', retraction: retracted });

    const exports: ParsedExport[] = [];
    for (const user of [exporter, s.service]) {
      const before = new Date();
      const ex = parseExport(await exportItems(user.md, s.thread.threadId));
      const after = new Date();
      exports.push(ex);
      const what = `export as ${user.roles.join(',')}`;

      expect(ex.header.thread?.threadId, what).to.equal(s.thread.threadId);
      expect(ex.header.messageCount, what).to.equal('6');
      expectWithin(ex.header.asOf, before, after, `${what}: as_of`);
      expect(ex.header.through, what).to.deep.include({ messageId: sent[5]!.messageId, sentAt: sent[5]!.sentAt });
      // The through cursor names the last position: nothing lies after it.
      const afterThrough = await listMessages(messages, s.patient, s.thread.threadId, {
        cursor: ex.header.through!.cursor,
        direction: ListDirection.LIST_DIRECTION_FORWARD,
      });
      expect(afterThrough.messages, `${what}: messages after through`).to.deep.equal([]);

      expect(
        ex.messages.map((m) => m.message),
        `${what}: messages as readers see them, in order`,
      ).to.deep.equal(expectedMessages);
      expect(ex.messages[3]!.message!.body).to.equal('');
      expect(ex.messages[3]!.message!.retraction).to.deep.equal(retracted);
      expect(JSON.stringify(ex)).to.not.include('export 3');

      const receiptCount = await expectReceipts(s.provider, s.thread.threadId, ex.messages);
      expect(receiptCount, 'the receipts marked').to.equal(4);
      expect(
        ex.messages.map((m) => m.receipts.map((r) => r.userId).sort()),
        what,
      ).to.deep.equal([
        [s.patient.userId],
        [s.provider.userId],
        [s.patient.userId, s.provider.userId].sort(),
        [],
        [],
        [],
      ]);
      expect(ex.end, what).to.deep.equal({ messageCount: '6', receiptCount: '4' });
      expect(Number(ex.end.messageCount)).to.equal(ex.messages.length);
      expect(Number(ex.end.receiptCount)).to.equal(ex.messages.reduce((n, m) => n + m.receipts.length, 0));
    }
    expect(exports[1]!.messages, 'staff and service exports agree').to.deep.equal(exports[0]!.messages);
  });

  it('a thread without messages exports a header without through, and an end of zeros', async () => {
    const s = await threadScene(threads);
    const ex = parseExport(await exportItems(s.service.md, s.thread.threadId));
    expect(ex.header.thread?.threadId).to.equal(s.thread.threadId);
    expect(ex.header.messageCount).to.equal('0');
    expect(ex.header.through).to.equal(undefined);
    expect(ex.messages).to.deep.equal([]);
    expect(ex.end).to.deep.equal({ messageCount: '0', receiptCount: '0' });
  });

  it('a thread of 3000+ messages is exported complete and in order', async function () {
    this.timeout(180_000);
    const s = await threadScene(threads);
    const base = Date.now() - 3_600_000;
    const seeded = await seedMessages(
      s.tenantId,
      s.thread.threadId,
      s.provider.userId,
      Array.from({ length: 3000 }, (_, i) => new Date(base + i * 3)),
    );
    const tail: Message[] = [];
    for (let b = 0; b < 2; b++) {
      const batch = await Promise.all(
        Array.from({ length: 25 }, (_, i) => send(messages, s.patient, s.thread.threadId, `tail ${b}-${i}`)),
      );
      tail.push(...batch.map((r) => r.message!));
    }
    const read = [...seeded.slice(0, 40).map((m) => m.messageId), seeded[2999]!.messageId];
    await markRead(receipts, s.patient, read);
    await retract(s.patient, tail[7]!.messageId);

    const exporter = await exporterOf(s.tenantId);
    const ex = parseExport(await exportItems(exporter.md, s.thread.threadId));
    const ids = ex.messages.map((m) => m.message!.messageId);
    const stored = await storedIds(s.tenantId, s.thread.threadId);
    expect(stored).to.have.length(3050);
    expect(ex.header.messageCount).to.equal('3050');
    expect(ex.messages).to.have.length(3050);
    expect(ids, 'every message, in thread order').to.deep.equal(stored);
    expect(ex.header.through?.messageId).to.equal(stored.at(-1));
    expectAscending(
      ex.messages.map((m) => m.message!),
      'exported',
    );
    for (let i = 1; i < ids.length; i++) {
      if (!(ids[i]! > ids[i - 1]!)) expect.fail(`message_id not increasing at position ${i}`);
    }
    expect(new Set(ids).size, 'no duplicates').to.equal(ids.length);
    // Same content as a participant's full listing.
    const listed = (
      await walkMessages(messages, s.patient, s.thread.threadId, {
        pageSize: 200,
        direction: ListDirection.LIST_DIRECTION_FORWARD,
      })
    ).flat();
    expect(ex.messages.map((m) => m.message)).to.deep.equal(listed);
    const receiptCount = await expectReceipts(s.provider, s.thread.threadId, ex.messages);
    expect(receiptCount).to.equal(41);
    expect(ex.end).to.deep.equal({ messageCount: '3050', receiptCount: '41' });
    // Batches of 500 are recorded as they go out; consecutive ones join: ranges covering 1..3050 once.
    await env.app.audit.flush();
    const { rows: audit } = await db().query<{ first_seq: number; last_seq: number; message_count: number }>(
      `select first_seq, last_seq, message_count from access_audit
        where tenant_id = $1 and thread_id = $2 and method like '%/ExportThread' order by first_seq`,
      [s.tenantId, s.thread.threadId],
    );
    expect(audit.length, 'audit rows of the export').to.be.within(1, 7);
    audit.forEach((r, i) => {
      expect(r.first_seq, `range ${i} starts where the last ended`).to.equal(i === 0 ? 1 : audit[i - 1]!.last_seq + 1);
      expect(r.message_count, `range ${i} count`).to.equal(r.last_seq - r.first_seq + 1);
    });
    expect(audit.at(-1)!.last_seq).to.equal(3050);
  });

  it('with writers sending during a slow export: exactly the messages up to header.through, in order', async function () {
    this.timeout(180_000);
    const s = await threadScene(threads);
    const base = Date.now() - 3_600_000;
    const seeded = await seedMessages(
      s.tenantId,
      s.thread.threadId,
      s.provider.userId,
      Array.from({ length: 2000 }, (_, i) => new Date(base + i * 5)),
    );
    const exporter = await exporterOf(s.tenantId);

    // Writers run from before the export starts until it ends; each remembers whether it started its
    // send only after the header arrived (such a message must not be in the export).
    let headerSeen = false;
    let stop = false;
    const written: { id: string; afterHeader: boolean }[] = [];
    const writer = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const afterHeader = headerSeen;
        const m = (await send(messages, s.patient, s.thread.threadId, `writer ${w} #${i}`)).message!;
        written.push({ id: m.messageId, afterHeader });
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    await until('the writers started', async () => written.length >= 4);

    let items: ExportThreadResponse[];
    try {
      items = await new Promise<ExportThreadResponse[]>((resolve, reject) => {
        const out: ExportThreadResponse[] = [];
        const stream = governance.exportThread({ threadId: s.thread.threadId }, exporter.md);
        stream.on('data', (item: ExportThreadResponse) => {
          out.push(item);
          if (item.item?.$case === 'header') {
            headerSeen = true;
            // Hold the stream until writers committed messages after the export started.
            stream.pause();
            until('writes during the export', async () => written.filter((x) => x.afterHeader).length >= 30).then(
              () => stream.resume(),
              reject,
            );
          } else if (out.length % 100 === 0) {
            // A slow reader: the server must wait (flow control) while the writers go on.
            stream.pause();
            setTimeout(() => stream.resume(), 20);
          }
        });
        stream.on('error', reject);
        stream.on('end', () => resolve(out));
      });
    } finally {
      stop = true;
      await Promise.all(writers);
    }

    const ex = parseExport(items);
    const ids = ex.messages.map((m) => m.message!.messageId);
    const through = ex.header.through!;
    expect(through, 'through set').to.not.equal(undefined);
    expect(Number(ex.header.messageCount)).to.equal(ids.length);
    expect(ex.end.messageCount).to.equal(ex.header.messageCount);
    expect(ids.at(-1), 'the last exported message is through').to.equal(through.messageId);
    expect(new Set(ids).size, 'no duplicates').to.equal(ids.length);
    expectAscending(
      ex.messages.map((m) => m.message!),
      'exported',
    );
    expect(ids.slice(0, 2000), 'every message present before the export, first').to.deep.equal(
      seeded.map((m) => m.messageId),
    );
    expect(ids, 'exactly the stored messages up to through').to.deep.equal(
      await storedIds(s.tenantId, s.thread.threadId, through.messageId),
    );
    const late = written.filter((x) => x.afterHeader).map((x) => x.id);
    expect(late.length, 'messages written during the export').to.be.at.least(30);
    const exported = new Set(ids);
    expect(
      late.filter((id) => exported.has(id)),
      'messages sent after the export started',
    ).to.deep.equal([]);
    const all = await storedIds(s.tenantId, s.thread.threadId);
    expect(all.length, 'messages stored after through').to.be.greaterThan(ids.length);
    expect(all.slice(0, ids.length)).to.deep.equal(ids);
  });

  it('refuses patients and providers, staff without records.export, other tenants and malformed ids', async () => {
    const s = await threadScene(threads);
    await send(messages, s.provider, s.thread.threadId, 'not for export');
    for (const user of [s.patient, s.provider, s.outsiderPatient]) {
      await expectError(exportItems(user.md, s.thread.threadId), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
    }
    const other = await newUserWith(s.tenantId, ['audit.read', 'messages.moderate', 'holds.manage'], 'staff');
    for (const user of [s.staff, other]) {
      const { info } = await expectError(
        exportItems(user.md, s.thread.threadId),
        status.PERMISSION_DENIED,
        'PERMISSION_REQUIRED',
      );
      expect(info!.metadata.permission).to.equal('records.export');
    }
    const foreignExporter = await exporterOf(s.foreignStaff.tenantId);
    for (const user of [foreignExporter, s.foreignService]) {
      await expectError(exportItems(user.md, s.thread.threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
    }
    const exporter = await exporterOf(s.tenantId);
    await expectError(exportItems(exporter.md, uuidv7()), status.NOT_FOUND, 'THREAD_NOT_FOUND');
    for (const id of ['', 'not-a-uuid', `${uuidv7()}0`]) {
      await expectInvalid(exportItems(exporter.md, id), ['thread_id'], `thread_id ${JSON.stringify(id)}`);
    }
  });

  it('is recorded in the access audit as one read of the range exported, without bodies', async () => {
    const s = await threadScene(threads);
    const sent: Message[] = [];
    for (let i = 0; i < 5; i++) {
      sent.push((await send(messages, s.provider, s.thread.threadId, `audited body ${i}`)).message!);
    }
    const exporter = await exporterOf(s.tenantId);
    const md = exporter.md.clone();
    md.set('x-request-id', `export-${s.tenantId}`);
    const ex = parseExport(await exportItems(md, s.thread.threadId));
    expect(ex.messages).to.have.length(5);

    await env.app.audit.flush();
    const { rows } = await db().query(
      `select * from access_audit
        where tenant_id = $1 and method like '%ExportThread' and thread_id = $2`,
      [s.tenantId, s.thread.threadId],
    );
    expect(rows, 'one audit record for the export').to.have.length(1);
    const row = rows[0] as Record<string, unknown>;
    expect(row).to.include({
      method: '/comms.v1.GovernanceService/ExportThread',
      action: 'read',
      actor_user_id: exporter.userId,
      request_id: `export-${s.tenantId}`,
      message_count: 5,
      first_message_id: sent[0]!.messageId,
      last_message_id: sent[4]!.messageId,
    });
    expect(row.actor_roles).to.deep.equal(['staff']);
    expect(row.message_count).to.equal(Number(ex.end.messageCount));
    const { rows: seqs } = await db().query<{ seq: number }>(
      'select seq from message where tenant_id = $1 and message_id = any($2::uuid[]) order by seq',
      [s.tenantId, [sent[0]!.messageId, sent[4]!.messageId]],
    );
    expect([row.first_seq, row.last_seq]).to.deep.equal(seqs.map((r) => r.seq));
    expect(JSON.stringify(row)).to.not.include('audited body');
  });
});
