import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg from 'pg';
import { EscalationLevel, ParticipantRole } from '../../gen/comms/v1/thread.js';
import { call, newTenant, newUser, threadClient } from '../support/clients.js';
import { env } from '../support/hooks.js';
import { waitFor } from '../support/wait.js';

describe('deadlines', () => {
  it('a mutation whose deadline passes while it waits for a lock never commits', async function () {
    this.timeout(20_000);
    const client = threadClient();
    const locker = new pg.Client({ connectionString: env.db.url });
    await locker.connect();
    try {
      const staff = await newUser(newTenant(), 'staff');
      const { thread } = await call(
        client,
        client.createThread,
        {
          subject: 'deadline',
          participants: [
            { userId: 'p1', role: ParticipantRole.PARTICIPANT_ROLE_PATIENT, addedAt: undefined, addedBy: '' },
          ],
          requestId: '',
        },
        staff.md,
      );
      await locker.query('begin');
      await locker.query('select 1 from thread where tenant_id = $1 and thread_id = $2 for update', [
        staff.tenantId,
        thread!.threadId,
      ]);
      const err = await call(
        client,
        client.escalateThread,
        {
          threadId: thread!.threadId,
          level: EscalationLevel.ESCALATION_LEVEL_URGENT,
          assigneeUserId: 'nurse-late',
          reason: 'too late',
          etag: '',
        },
        staff.md,
        { deadline: new Date(Date.now() + 400) },
      ).then(
        () => expect.fail('expected DEADLINE_EXCEEDED'),
        (e: { code: number }) => e,
      );
      expect(err.code).to.equal(status.DEADLINE_EXCEEDED);
      // Give the server's statement time to hit its own timeout, then let go of the lock.
      await waitFor(async () => {
        const { rows } = await locker.query(
          "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
        );
        return rows[0].n === 0;
      });
      await locker.query('commit');
      const after = await call(client, client.getThread, { threadId: thread!.threadId }, staff.md);
      expect(after.thread?.escalation?.level).to.equal(EscalationLevel.ESCALATION_LEVEL_NONE);
      expect(after.thread?.etag).to.equal(thread!.etag);
      expect(after.thread?.participants.map((p) => p.userId)).to.not.include('nurse-late');
    } finally {
      client.close();
      await locker.end();
    }
  });
});
