import { Writable } from 'node:stream';
import { Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { App } from '../../src/app.js';
import { startApp } from '../../src/app.js';
import { createLogger } from '../../src/infra/log/logger.js';
import { call, callError, messageClient, newTenant, newUser, threadClient } from '../support/clients.js';
import { testConfig } from '../support/hooks.js';

describe('logs: one structured line per call, never a body or a token', () => {
  const lines: string[] = [];
  let app: App;
  before(async function () {
    this.timeout(30_000);
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    app = await startApp(testConfig({ LOG_LEVEL: 'info' }), { log: createLogger('info', sink) });
  });
  after(async function () {
    this.timeout(30_000);
    await app?.shutdown();
  });

  it('logs method, code, latency and the request id as JSON, for OK and refused calls alike', async () => {
    const address = `127.0.0.1:${app.port}`;
    const threads = threadClient(address);
    const messages = messageClient(address);
    try {
      const user = await newUser(newTenant(), 'provider');
      const md = (id: string) => {
        const m = user.md.clone();
        m.set('x-request-id', id);
        return m;
      };
      const body = 'SECRET-BODY-7f3a: the biopsy came back positive';
      const { thread } = await call(
        threads,
        threads.createThread,
        { subject: 'Results', participants: [], requestId: '' },
        md('req-create-1'),
      );
      await call(
        messages,
        messages.sendMessage,
        { threadId: thread!.threadId, clientMutationId: 'c-1', body, clientSentAt: new Date() },
        md('req-send-1'),
      );
      const err = await callError(
        call(threads, threads.getThread, { threadId: 'not-a-uuid' }, md('req-bad-1') as Metadata),
      );
      expect(err.code).to.equal(status.INVALID_ARGUMENT);
      const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      const byRequest = (id: string) => entries.find((e) => e.requestId === id && e.msg === 'rpc');
      expect(byRequest('req-send-1')).to.include({
        method: '/comms.v1.MessageService/SendMessage',
        code: 'OK',
        service: 'comms',
        level: 30,
      });
      expect(byRequest('req-send-1')!.ms).to.be.a('number');
      expect(byRequest('req-bad-1')).to.include({
        method: '/comms.v1.ThreadService/GetThread',
        code: 'INVALID_ARGUMENT',
      });
      const all = lines.join('\n');
      expect(all).to.not.contain('SECRET-BODY');
      expect(all).to.not.contain(user.token);
      expect(all).to.not.contain(user.token.split('.')[2]!);
    } finally {
      threads.close();
      messages.close();
    }
  });
});
