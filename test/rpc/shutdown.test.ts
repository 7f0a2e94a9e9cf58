import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { waitFor } from '../support/wait.js';
import pg from 'pg';
import { EscalationLevel, ParticipantRole } from '../../gen/comms/v1/thread.js';
import { call, newTenant, newUser, threadClient } from '../support/clients.js';
import { env, startTestApp } from '../support/hooks.js';
import { checkHealth, healthClient } from '../support/health.js';

describe('server: graceful shutdown', () => {
  it('goes NOT_SERVING, finishes the call in flight, then refuses new calls', async function () {
    this.timeout(30_000);
    const app = await startTestApp({ SHUTDOWN_GRACE_MS: '20000', SHUTDOWN_DRAIN_DELAY_MS: '1500' });
    const address = `127.0.0.1:${app.port}`;
    const client = threadClient(address);
    const health = healthClient(address);
    const locker = new pg.Client({ connectionString: env.db.url });
    await locker.connect();
    try {
      const staff = await newUser(newTenant(), 'staff');
      const { thread } = await call(
        client,
        client.createThread,
        {
          subject: 'in flight',
          participants: [
            { userId: 'p1', role: ParticipantRole.PARTICIPANT_ROLE_PATIENT, addedAt: undefined, addedBy: '' },
          ],
          requestId: '',
        },
        staff.md,
      );
      // Hold the thread's row lock so the escalation below stays in flight until we let go.
      await locker.query('begin');
      await locker.query('select 1 from thread where tenant_id = $1 and thread_id = $2 for update', [
        staff.tenantId,
        thread!.threadId,
      ]);
      const inFlight = call(
        client,
        client.escalateThread,
        {
          threadId: thread!.threadId,
          level: EscalationLevel.ESCALATION_LEVEL_URGENT,
          assigneeUserId: 'nurse-1',
          reason: 'fever',
          etag: '',
        },
        staff.md,
      );
      await waitFor(async () => {
        const { rows } = await locker.query(
          "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
        );
        return rows[0].n > 0;
      });

      expect(await checkHealth(health)).to.equal('SERVING');
      const stopped = app.shutdown();
      // During the drain delay the server still answers, and tells probes it is going away.
      expect(await checkHealth(health)).to.equal('NOT_SERVING');
      await new Promise((r) => setTimeout(r, 1700));
      // The server no longer accepts calls, but the escalation in flight is still waiting on the lock.
      await locker.query('commit');

      const res = await inFlight;
      expect(res.thread?.escalation?.assigneeUserId).to.equal('nurse-1');
      await stopped;
      const err = await call(client, client.getThread, { threadId: thread!.threadId }, staff.md, {
        deadline: new Date(Date.now() + 2000),
      }).then(
        () => expect.fail('the stopped server answered'),
        (e: { code: number }) => e,
      );
      expect([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]).to.include(err.code);
    } finally {
      client.close();
      health.close();
      await locker.end();
      await app.shutdown();
    }
  });
});
