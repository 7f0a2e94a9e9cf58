import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { EscalationLevel } from '../../gen/comms/v1/thread.js';
import { call, callError, messageClient, newTenant, newUser, threadClient } from '../support/clients.js';
import { env } from '../support/hooks.js';
import { type holdThreadLock, threadWithHeldLock } from '../support/threads.js';
import { waitFor } from '../support/wait.js';

describe('deadlines', () => {
  it('every pooled connection caps its statements at DB_STATEMENT_TIMEOUT_MS', async () => {
    const rows: { ms: number }[] = await env.app.orm.em
      .fork()
      .execute(`select setting::int as ms from pg_settings where name = 'statement_timeout'`);
    expect(rows[0]?.ms).to.equal(env.config.dbStatementTimeoutMs);
  });

  it('a mutation whose deadline passes while it waits for a lock never commits', async function () {
    this.timeout(20_000);
    const client = threadClient();
    let lock: Awaited<ReturnType<typeof holdThreadLock>> | undefined;
    try {
      const staff = await newUser(newTenant(), 'staff');
      const held = await threadWithHeldLock(client, staff);
      const { thread } = held;
      lock = held.lock;
      const err = await callError(
        call(
          client,
          client.escalateThread,
          {
            threadId: thread.threadId,
            level: EscalationLevel.ESCALATION_LEVEL_URGENT,
            assigneeUserId: 'nurse-late',
            reason: 'too late',
            etag: '',
          },
          staff.md,
          { deadline: new Date(Date.now() + 400) },
        ),
      );
      expect(err.code).to.equal(status.DEADLINE_EXCEEDED);
      // Give the server's statement time to hit its own timeout, then let go of the lock.
      await waitFor(async () => (await lock!.lockWaiters()) === 0);
      await lock.release();
      lock = undefined;
      const after = await call(client, client.getThread, { threadId: thread.threadId }, staff.md);
      expect(after.thread?.escalation?.level).to.equal(EscalationLevel.ESCALATION_LEVEL_NONE);
      expect(after.thread?.etag).to.equal(thread.etag);
      expect(after.thread?.participants.map((p) => p.userId)).to.not.include('nurse-late');
    } finally {
      client.close();
      await lock?.release();
    }
  });

  it('a send whose deadline passes while it waits for the thread lock never stores the message', async function () {
    this.timeout(20_000);
    const threads = threadClient();
    const messages = messageClient();
    let lock: Awaited<ReturnType<typeof holdThreadLock>> | undefined;
    try {
      const provider = await newUser(newTenant(), 'provider');
      const held = await threadWithHeldLock(threads, provider);
      const { thread } = held;
      lock = held.lock;
      const send = { threadId: thread.threadId, clientMutationId: 'late-1', body: 'too late', clientSentAt: undefined };
      const err = await callError(
        call(messages, messages.sendMessage, send, provider.md, { deadline: new Date(Date.now() + 400) }),
      );
      expect(err.code).to.equal(status.DEADLINE_EXCEEDED);
      await waitFor(async () => (await lock!.lockWaiters()) === 0);
      await lock.release();
      lock = undefined;
      const page = await call(
        messages,
        messages.listMessages,
        { threadId: thread.threadId, pageSize: 0, pageToken: '', direction: 0, cursor: '' },
        provider.md,
      );
      expect(page.messages).to.deep.equal([]);
      // The retry the client makes next is a first send, not a replay.
      const retry = await call(messages, messages.sendMessage, send, provider.md);
      expect(retry.replayed).to.equal(false);
    } finally {
      threads.close();
      messages.close();
      await lock?.release();
    }
  });
});
