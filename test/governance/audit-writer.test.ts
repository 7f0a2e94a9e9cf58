import { credentials, Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { MessageServiceClient } from '../../gen/comms/v1/message.js';
import type { App } from '../../src/app.js';
import { call, callError, errorDetails, messageClient, threadClient } from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { env, startTestApp } from '../support/hooks.js';
import { send } from '../support/messages.js';
import { db } from '../support/threads.js';

/** Audit rows of the calls made with `x-request-id` starting with `prefix`. */
async function auditedRequests(prefix: string): Promise<number> {
  const { rows } = await db().query<{ n: string }>(
    `select count(*) as n from access_audit where request_id like $1 || '%'`,
    [prefix],
  );
  return Number(rows[0]!.n);
}

function withRequestId(md: Metadata, id: string): Metadata {
  const copy = md.clone();
  copy.set('x-request-id', id);
  return copy;
}

// The access audit's writer (src/domain/audit/audit.log.ts): records are buffered and written in
// batches; while the database does not take them they are kept, and past AUDIT_BUFFER_MAX content reads
// are refused rather than served unaudited.
describe('Access audit writer: no record lost, no read unaudited', () => {
  let threads: ReturnType<typeof threadClient>;
  let messages: ReturnType<typeof messageClient>;
  before(() => {
    threads = threadClient();
    messages = messageClient();
  });
  after(() => {
    threads.close();
    messages.close();
  });

  it('keeps records the database refused and writes them once it takes them again', async () => {
    const { provider, thread } = await twoPartyThread(threads);
    const sent = await send(messages, provider, thread.threadId, 'kept while the audit table refuses writes');
    await env.app.audit.flush();
    const prefix = `kept-${Date.now()}-`;
    await db().query('revoke insert on access_audit from comms_app');
    try {
      for (let i = 0; i < 3; i++) {
        const md = withRequestId(provider.md, `${prefix}${i}`);
        await call(messages, messages.getMessage, { messageId: sent.message!.messageId }, md);
      }
      await env.app.audit.flush();
      expect(env.app.audit.pending, 'records kept after the failed write').to.be.at.least(3);
      expect(await auditedRequests(prefix), 'nothing written yet').to.equal(0);
    } finally {
      await db().query('grant insert on access_audit to comms_app');
    }
    await env.app.audit.flush();
    expect(env.app.audit.pending).to.equal(0);
    expect(await auditedRequests(prefix), 'each kept record written once').to.equal(3);
  });

  describe('with a full buffer', () => {
    let app: App;
    let client: MessageServiceClient;
    before(async () => {
      // Records wait a minute before they are written; 100 fill the buffer.
      app = await startTestApp({ AUDIT_FLUSH_MS: '60000', AUDIT_BUFFER_MAX: '100' });
      client = new MessageServiceClient(`127.0.0.1:${app.port}`, credentials.createInsecure());
    });
    after(async () => {
      client.close();
      await app.shutdown();
    });

    it('refuses content reads UNAVAILABLE (AUDIT_UNAVAILABLE) but still records writes; all written after', async () => {
      const { provider, thread } = await twoPartyThread(threads);
      const sent = await send(messages, provider, thread.threadId, 'read until the audit is full');
      const prefix = `full-${Date.now()}-`;
      let ok = 0;
      let refused: Awaited<ReturnType<typeof callError>> | undefined;
      for (let i = 0; i < 150 && !refused; i++) {
        const md = withRequestId(provider.md, `${prefix}${i}`);
        try {
          await call(client, client.getMessage, { messageId: sent.message!.messageId }, md);
          ok++;
        } catch (err) {
          refused = err as Awaited<ReturnType<typeof callError>>;
        }
      }
      expect(refused, 'a read was refused once the buffer was full').to.not.equal(undefined);
      expect(refused!.code).to.equal(status.UNAVAILABLE);
      expect(errorDetails(refused!).info?.reason).to.equal('AUDIT_UNAVAILABLE');
      expect(ok, 'reads served before the buffer was full').to.equal(100);
      // A write has happened by then: it is recorded, not refused.
      const md = withRequestId(provider.md, `${prefix}write`);
      await call(
        client,
        client.sendMessage,
        { threadId: thread.threadId, clientMutationId: `${prefix}w`, body: 'still accepted', clientSentAt: undefined },
        md,
      );
      await app.audit.flush();
      expect(await auditedRequests(prefix), 'every served read and the write').to.equal(101);
      await call(client, client.getMessage, { messageId: sent.message!.messageId }, provider.md);
    });
  });
});
