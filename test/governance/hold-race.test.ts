import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import type { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { threadClient } from '../support/clients.js';
import { twoPartyThread } from '../support/feeds.js';
import { env } from '../support/hooks.js';
import { seedMessages, sleep } from '../support/messages.js';
import { db } from '../support/threads.js';

const DAY_MS = 86_400_000;

/** Bodies of a thread's messages still present (not purged). */
async function unpurged(tenantId: string, threadId: string): Promise<number> {
  const { rows } = await db().query<{ n: string }>(
    'select count(*) as n from message where tenant_id = $1 and thread_id = $2 and purged_at is null',
    [tenantId, threadId],
  );
  return Number(rows[0]!.n);
}

// Placing a legal hold and a purge batch exclude each other (migration 20261202000000: the hold's insert
// trigger takes the tenant's advisory lock shared, the purge takes it exclusive). Without that, a purge that
// started before a hold committed would not see it and purge what the hold covers.
describe('Legal holds against a running purge', () => {
  let threads: ThreadServiceClient;

  before(() => {
    threads = threadClient();
  });
  after(() => threads.close());

  async function oldThread() {
    const scene = await twoPartyThread(threads);
    const old = Date.now() - 10 * DAY_MS;
    await seedMessages(scene.tenant, scene.thread.threadId, scene.provider.userId, [
      new Date(old),
      new Date(old + 1000),
      new Date(old + 2000),
    ]);
    await db().query(
      `insert into retention_policy (tenant_id, body_retention_days, version, updated_by, updated_at)
       values ($1, 1, 1, 'test', now())`,
      [scene.tenant],
    );
    return scene;
  }

  it('a purge waits for a hold being placed, then keeps what it holds', async () => {
    const { tenant, thread } = await oldThread();
    const holder = await db().connect();
    try {
      await holder.query('begin');
      await holder.query(
        `insert into legal_hold (tenant_id, hold_id, thread_id, reason, placed_by, placed_at)
         values ($1, $2, $3, 'litigation', 'counsel', now())`,
        [tenant, randomUUID(), thread.threadId],
      );
      let purgeDone = false;
      const purge = env.app.retention.purge().finally(() => (purgeDone = true));
      await sleep(500);
      expect(purgeDone, 'the purge waits while the hold is being placed').to.equal(false);
      await holder.query('commit');
      await purge;
    } finally {
      holder.release();
    }
    expect(await unpurged(tenant, thread.threadId), 'every held body kept').to.equal(3);
  });

  it('a hold placed while a purge batch runs waits for the batch; the unheld thread is purged', async () => {
    const { tenant, thread } = await oldThread();
    // The purge's lock, held by a transaction of our own, stands in for a batch in progress.
    const batch = await db().connect();
    try {
      await batch.query('begin');
      await batch.query('select pg_advisory_xact_lock(7300, hashtext($1))', [tenant]);
      let placed = false;
      const hold = db()
        .query(
          `insert into legal_hold (tenant_id, hold_id, thread_id, reason, placed_by, placed_at)
           values ($1, $2, $3, 'litigation', 'counsel', now())`,
          [tenant, randomUUID(), thread.threadId],
        )
        .finally(() => (placed = true));
      await sleep(500);
      expect(placed, 'the hold waits for the batch').to.equal(false);
      await batch.query('commit');
      await hold;
    } finally {
      batch.release();
    }
    await env.app.retention.purge();
    expect(await unpurged(tenant, thread.threadId), 'held after the batch: kept').to.equal(3);
    const other = await oldThread();
    await env.app.retention.purge();
    expect(await unpurged(other.tenant, other.thread.threadId), 'no hold: purged').to.equal(0);
  });

  it('two purges at once both succeed and purge each body once (a second clear would be refused)', async () => {
    const { tenant, thread } = await oldThread();
    const [a, b] = await Promise.all([env.app.retention.purge(), env.app.retention.purge()]);
    expect(a + b, 'purged in total').to.be.at.least(3);
    expect(await unpurged(tenant, thread.threadId)).to.equal(0);
  });
});
