import { credentials, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg, { type DatabaseError } from 'pg';
import { v7 as uuidv7 } from 'uuid';
import { GovernanceServiceClient } from '../../gen/comms/v1/governance.js';
import type { Message, MessageServiceClient, RetractMessageResponse } from '../../gen/comms/v1/message.js';
import type { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import type { App } from '../../src/app.js';
import {
  call,
  callError,
  errorDetails,
  expectError,
  messageClient,
  newUserWith,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { twoPartyThread, useFeedClients } from '../support/feeds.js';
import { env, startTestApp } from '../support/hooks.js';
import { expectInvalid, listMessages, send, sleep, storedMessage } from '../support/messages.js';
import { db, expectWithin, sameSubjectIn, threadScene } from '../support/threads.js';

/** RetractMessage as `user`. */
function retract(
  client: MessageServiceClient,
  user: TestUser,
  messageId: string,
  reason = '',
): Promise<RetractMessageResponse> {
  return call(client, client.retractMessage, { messageId, reason }, user.md);
}

/** GetMessage as `user`. */
async function getMessage(client: MessageServiceClient, user: TestUser, messageId: string): Promise<Message> {
  return (await call(client, client.getMessage, { messageId }, user.md)).message!;
}

/** The message_retraction rows of a tenant (optionally of one message). */
async function retractionRows(tenantId: string, messageId?: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query(
    `select * from message_retraction where tenant_id = $1 and ($2::uuid is null or message_id = $2)
      order by retracted_at`,
    [tenantId, messageId ?? null],
  );
  return rows as Record<string, unknown>[];
}

/** How many message_retraction rows a tenant has. */
async function retractionCount(tenantId: string): Promise<number> {
  const { rows } = await db().query<{ n: number }>(
    'select count(*)::int as n from message_retraction where tenant_id = $1',
    [tenantId],
  );
  return rows[0]!.n;
}

/** The message as readers see it once retracted: the same id, position, sender and sent_at, no body. */
function retractedView(sent: Message, retraction: Message['retraction']): Message {
  return { ...sent, body: '', retraction, bodyPurgedAt: undefined };
}

describe('MessageService.RetractMessage', () => {
  const c = useFeedClients();
  let governance: GovernanceServiceClient;
  before(() => {
    governance = new GovernanceServiceClient(env.address, credentials.createInsecure());
  });
  after(() => governance.close());

  it('the sender retracts within the window: empty body, retraction set, position kept; a repeat replays', async () => {
    const s = await threadScene(c.threads);
    const sent = (await send(c.messages, s.provider, s.thread.threadId, 'results for the wrong patient')).message!;
    const before = new Date();
    const res = await retract(c.messages, s.provider, sent.messageId, 'sent to the wrong thread');
    const after = new Date();

    expect(res.replayed).to.equal(false);
    const retraction = res.message!.retraction;
    expect(retraction, 'retraction set').to.not.equal(undefined);
    expect(retraction!.retractedByUserId).to.equal(s.provider.userId);
    expect(retraction!.byModerator).to.equal(false);
    expectWithin(retraction!.retractedAt, before, after, 'retracted_at');
    const view = retractedView(sent, retraction);
    expect(res.message).to.deep.equal(view);
    // Id, thread, sender, sent_at and cursor are the original message's.
    expect(res.message).to.deep.include({
      messageId: sent.messageId,
      threadId: sent.threadId,
      senderUserId: s.provider.userId,
      cursor: sent.cursor,
      body: '',
    });
    expect(res.message!.sentAt).to.deep.equal(sent.sentAt);

    // Every reader sees the same retracted view; a later message is untouched.
    const later = (await send(c.messages, s.patient, s.thread.threadId, 'still here')).message!;
    for (const reader of [s.patient, s.provider, s.staff, s.service]) {
      expect(await getMessage(c.messages, reader, sent.messageId), `GetMessage as ${reader.userId}`).to.deep.equal(
        view,
      );
      expect(
        (await listMessages(c.messages, reader, s.thread.threadId)).messages,
        `ListMessages as ${reader.userId}`,
      ).to.deep.equal([view, later]);
    }

    // Idempotent: the same retraction again, replayed, with the same retracted_at.
    const again = await retract(c.messages, s.provider, sent.messageId, 'another reason');
    expect(again.replayed).to.equal(true);
    expect(again.message).to.deep.equal(view);
    expect(await retractionRows(s.tenantId)).to.have.length(1);
  });

  describe('the retraction window', () => {
    let app: App;
    let threads: ThreadServiceClient;
    let messages: MessageServiceClient;
    before(async () => {
      app = await startTestApp({ RETRACT_WINDOW_MS: '1' });
      threads = threadClient(`127.0.0.1:${app.port}`);
      messages = messageClient(`127.0.0.1:${app.port}`);
    });
    after(async () => {
      threads?.close();
      messages?.close();
      await app?.shutdown();
    });

    it('after the window the sender is refused; a moderator still retracts; the sender then gets a replay', async () => {
      const s = await threadScene(threads);
      const sent = (await send(messages, s.patient, s.thread.threadId, 'I meant to send this elsewhere')).message!;
      await sleep(20);
      await expectError(
        retract(messages, s.patient, sent.messageId, 'too late'),
        status.FAILED_PRECONDITION,
        'RETRACTION_WINDOW_PASSED',
      );
      expect(await retractionCount(s.tenantId), 'nothing stored').to.equal(0);
      expect((await getMessage(messages, s.provider, sent.messageId)).body).to.equal('I meant to send this elsewhere');

      const moderator = await newUserWith(s.tenantId, ['messages.moderate'], 'staff');
      const before = new Date();
      const moderated = await retract(messages, moderator, sent.messageId, 'contains another patient’s data');
      const after = new Date();
      expect(moderated.replayed).to.equal(false);
      const retraction = moderated.message!.retraction!;
      expect(retraction).to.deep.include({ retractedByUserId: moderator.userId, byModerator: true });
      expectWithin(retraction.retractedAt, before, after, 'retracted_at');
      expect(moderated.message).to.deep.equal(retractedView(sent, retraction));

      // The sender, past the window, now finds the message retracted: a replay, not a refusal.
      const retry = await retract(messages, s.patient, sent.messageId);
      expect(retry.replayed).to.equal(true);
      expect(retry.message).to.deep.equal(retractedView(sent, retraction));
      expect(await getMessage(messages, s.provider, sent.messageId)).to.deep.equal(retractedView(sent, retraction));
      expect(await retractionRows(s.tenantId)).to.have.length(1);
    });
  });

  it('refuses other participants, staff without the permission, outsiders, other tenants and bad requests', async () => {
    const s = await threadScene(c.threads);
    const body = 'do not retract me';
    const sent = (await send(c.messages, s.provider, s.thread.threadId, body)).message!;

    await expectError(retract(c.messages, s.patient, sent.messageId), status.PERMISSION_DENIED, 'NOT_SENDER');
    const auditor = await newUserWith(s.tenantId, ['audit.read', 'records.export'], 'staff');
    for (const user of [s.staff, auditor, s.service]) {
      const err = await callError(retract(c.messages, user, sent.messageId));
      expect(err.code, `${user.userId}: code (message: ${err.details})`).to.equal(status.PERMISSION_DENIED);
      expect(errorDetails(err).info?.reason, user.userId).to.be.oneOf([
        'NOT_SENDER',
        'PERMISSION_REQUIRED',
        'ROLE_NOT_ALLOWED',
      ]);
    }

    // Invisible: outsiders of the tenant, and other tenants (even a moderator, even the same subject).
    const foreignModerator = await newUserWith(s.foreignStaff.tenantId, ['messages.moderate'], 'staff');
    const senderElsewhere = await sameSubjectIn(s.foreignStaff.tenantId, s.provider);
    for (const user of [s.outsiderPatient, s.outsiderProvider, foreignModerator, senderElsewhere, s.foreignService]) {
      await expectError(retract(c.messages, user, sent.messageId), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
    }
    await expectError(retract(c.messages, s.provider, uuidv7()), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');

    for (const id of ['', 'not-a-uuid', `${uuidv7()}0`]) {
      await expectInvalid(retract(c.messages, s.provider, id), ['message_id'], `message_id ${JSON.stringify(id)}`);
    }
    await expectInvalid(retract(c.messages, s.provider, sent.messageId, 'x'.repeat(501)), ['reason'], 'reason of 501');

    expect(await retractionCount(s.tenantId), 'nothing stored').to.equal(0);
    expect(await getMessage(c.messages, s.patient, sent.messageId)).to.deep.equal(sent);

    // A reason of exactly 500 characters is accepted.
    const ok = await retract(c.messages, s.provider, sent.messageId, 'y'.repeat(500));
    expect(ok.replayed).to.equal(false);
    expect(await retractionCount(s.tenantId)).to.equal(1);
  });

  it('appends a record: the message row is unchanged, and the record can be neither changed nor deleted', async () => {
    const s = await threadScene(c.threads);
    const body = 'original text';
    const sent = (await send(c.messages, s.provider, s.thread.threadId, body)).message!;
    const before = await storedMessage(s.tenantId, sent.messageId);
    const res = await retract(c.messages, s.provider, sent.messageId, 'typo');

    const afterRow = await storedMessage(s.tenantId, sent.messageId);
    expect(afterRow, 'message row unchanged').to.deep.equal(before);
    expect(afterRow.body).to.equal(body);
    const rows = await retractionRows(s.tenantId);
    expect(rows).to.have.length(1);
    expect(rows[0]).to.include({
      message_id: sent.messageId,
      thread_id: s.thread.threadId,
      retracted_by: s.provider.userId,
      by_moderator: false,
      reason: 'typo',
    });
    expect(rows[0]!.retracted_at).to.deep.equal(res.message!.retraction!.retractedAt);

    // Even the superuser cannot rewrite or remove the record.
    const admin = new pg.Client({ connectionString: env.db.url });
    await admin.connect();
    try {
      for (const sql of [
        `update message_retraction set reason = 'rewritten' where tenant_id = $1`,
        `update message_retraction set by_moderator = true where tenant_id = $1`,
        'delete from message_retraction where tenant_id = $1',
      ]) {
        const err = await admin.query(sql, [s.tenantId]).then(
          (r) => expect.fail(`"${sql}" was allowed; it affected ${r.rowCount} rows`),
          (e: DatabaseError) => e,
        );
        expect(err.code, `${sql}: ${err.message}`).to.equal('42501');
      }
      const truncate = await admin.query('truncate message_retraction').then(
        () => expect.fail('truncate was allowed'),
        (e: DatabaseError) => e,
      );
      expect(truncate.code, truncate.message).to.equal('42501');
    } finally {
      await admin.end();
    }
    expect(await retractionRows(s.tenantId)).to.deep.equal(rows);
  });

  it('GetAuditedMessage gives auditors the original body and the reason; participants are refused', async () => {
    const s = await threadScene(c.threads);
    const sent = (await send(c.messages, s.provider, s.thread.threadId, 'the audited original')).message!;
    const kept = (await send(c.messages, s.patient, s.thread.threadId, 'never retracted')).message!;
    const res = await retract(c.messages, s.provider, sent.messageId, 'wrong dosage');
    const retraction = res.message!.retraction;

    const auditor = await newUserWith(s.tenantId, ['audit.read'], 'staff');
    const audited = (user: TestUser, messageId: string) =>
      call(governance, governance.getAuditedMessage, { messageId }, user.md);
    for (const user of [auditor, s.service]) {
      const got = await audited(user, sent.messageId);
      expect(got.message, `as ${user.userId}`).to.deep.equal({ ...sent, retraction, bodyPurgedAt: undefined });
      expect(got.message!.body).to.equal('the audited original');
      expect(got.retractionReason).to.equal('wrong dosage');
      const plain = await audited(user, kept.messageId);
      expect(plain.message).to.deep.equal(kept);
      expect(plain.retractionReason).to.equal('');
    }

    for (const user of [s.patient, s.provider]) {
      await expectError(audited(user, sent.messageId), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
    }
    const moderator = await newUserWith(s.tenantId, ['messages.moderate'], 'staff');
    for (const user of [s.staff, moderator]) {
      const { info } = await expectError(
        audited(user, sent.messageId),
        status.PERMISSION_DENIED,
        'PERMISSION_REQUIRED',
      );
      expect(info!.metadata.permission).to.equal('audit.read');
    }
    const foreignAuditor = await newUserWith(s.foreignStaff.tenantId, ['audit.read'], 'staff');
    for (const user of [foreignAuditor, s.foreignService]) {
      await expectError(audited(user, sent.messageId), status.NOT_FOUND, 'MESSAGE_NOT_FOUND');
    }
  });

  it('10 concurrent retractions of one message: exactly one retracts, nine replay, one record', async () => {
    const s = await threadScene(c.threads);
    const sent = (await send(c.messages, s.patient, s.thread.threadId, 'race me')).message!;
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => retract(c.messages, s.patient, sent.messageId, `attempt ${i}`)),
    );
    expect(
      results.filter((r) => !r.replayed),
      'one original',
    ).to.have.length(1);
    expect(
      results.filter((r) => r.replayed),
      'nine replays',
    ).to.have.length(9);
    const retraction = results.find((r) => !r.replayed)!.message!.retraction;
    for (const r of results) expect(r.message).to.deep.equal(retractedView(sent, retraction));
    const rows = await retractionRows(s.tenantId);
    expect(rows).to.have.length(1);
    expect(rows[0]!.reason).to.be.oneOf(Array.from({ length: 10 }, (_, i) => `attempt ${i}`));
  });

  it('WatchThread: live subscribers get message_retracted; a replay shows the post already retracted', async () => {
    const { provider, patient, thread } = await twoPartyThread(c.threads);
    const live = c.watchThread(patient.md, thread.threadId);
    await live.caughtUp();
    const start = live.lastToken;

    const sent = (await send(c.messages, provider, thread.threadId, 'please ignore')).message!;
    await live.eventCount(1);
    const posted = live.events[0]!.event;
    expect(posted?.$case).to.equal('messagePosted');
    expect(posted?.$case === 'messagePosted' && posted.value).to.deep.equal(sent);

    const res = await retract(c.messages, provider, sent.messageId);
    const view = retractedView(sent, res.message!.retraction);
    await live.eventCount(2);
    const retracted = live.events[1]!.event;
    expect(retracted?.$case).to.equal('messageRetracted');
    expect(retracted?.$case === 'messageRetracted' && retracted.value).to.deep.equal(view);
    expect(live.events[1]!.resumeToken).to.not.equal(live.events[0]!.resumeToken);

    // A subscriber resuming from before the post never sees the body.
    const replay = c.watchThread(patient.md, thread.threadId, start);
    await replay.caughtUp();
    expect(replay.events.map((e) => e.event?.$case)).to.deep.equal(['messagePosted', 'messageRetracted']);
    const replayed = replay.events[0]!.event;
    expect(replayed?.$case === 'messagePosted' && replayed.value).to.deep.equal(view);
    const replayedRetraction = replay.events[1]!.event;
    expect(replayedRetraction?.$case === 'messageRetracted' && replayedRetraction.value).to.deep.equal(view);
    expect(JSON.stringify(replay.responses)).to.not.include('please ignore');
  });
});
