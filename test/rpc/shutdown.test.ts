import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { waitFor } from '../support/wait.js';
import { EscalationLevel } from '../../gen/comms/v1/thread.js';
import { type holdThreadLock, threadWithHeldLock } from '../support/threads.js';
import { call, callError, newTenant, newUser, threadClient } from '../support/clients.js';
import { startTestApp } from '../support/hooks.js';
import { checkHealth, healthClient } from '../support/health.js';

describe('server: graceful shutdown', () => {
  it('goes NOT_SERVING, finishes the call in flight, then refuses new calls', async function () {
    this.timeout(30_000);
    const app = await startTestApp({ SHUTDOWN_GRACE_MS: '20000', SHUTDOWN_DRAIN_DELAY_MS: '1500' });
    const address = `127.0.0.1:${app.port}`;
    const client = threadClient(address);
    const health = healthClient(address);
    let lock: Awaited<ReturnType<typeof holdThreadLock>> | undefined;
    try {
      const staff = await newUser(newTenant(), 'staff');
      // Hold the thread's row lock so the escalation below stays in flight until we let go.
      const held = await threadWithHeldLock(client, staff);
      const { thread } = held;
      lock = held.lock;
      const inFlight = call(
        client,
        client.escalateThread,
        {
          threadId: thread.threadId,
          level: EscalationLevel.ESCALATION_LEVEL_URGENT,
          assigneeUserId: 'nurse-1',
          reason: 'fever',
          etag: '',
        },
        staff.md,
      );
      await waitFor(async () => (await lock!.lockWaiters()) > 0);

      expect(await checkHealth(health)).to.equal('SERVING');
      const stopped = app.shutdown();
      // During the drain delay the server still answers, and tells probes it is going away.
      expect(await checkHealth(health)).to.equal('NOT_SERVING');
      await new Promise((r) => setTimeout(r, 1700));
      // The server no longer accepts calls, but the escalation in flight is still waiting on the lock.
      await lock.release();
      lock = undefined;

      const res = await inFlight;
      expect(res.thread?.escalation?.assigneeUserId).to.equal('nurse-1');
      await stopped;
      const err = await callError(
        call(client, client.getThread, { threadId: thread.threadId }, staff.md, {
          deadline: new Date(Date.now() + 2000),
        }),
      );
      expect([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]).to.include(err.code);
    } finally {
      client.close();
      health.close();
      await lock?.release();
      await app.shutdown();
    }
  });
});
