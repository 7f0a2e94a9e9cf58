import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { startApp } from '../../src/app.js';
import { startEmbeddedPostgres } from '../../src/infra/db/embedded.js';
import { call, expectError, newTenant, newUser, threadClient } from '../support/clients.js';
import { checkHealth, healthClient } from '../support/health.js';
import { testConfig } from '../support/hooks.js';
import { freePort } from '../support/ports.js';
import { waitFor } from '../support/wait.js';

describe('health follows the database', () => {
  it('goes NOT_SERVING while PostgreSQL is down, answers UNAVAILABLE, and recovers by itself', async function () {
    this.timeout(60_000);
    // A PostgreSQL server of its own, so stopping it does not disturb the shared one.
    const dir = await mkdtemp(path.join(tmpdir(), 'comms-health-pg-'));
    const pg = await startEmbeddedPostgres(path.join(dir, 'data'), await freePort(), () => {});
    const app = await startApp(testConfig({ DATABASE_URL: pg.url, HEALTH_PROBE_MS: '100' }));
    const health = healthClient(`127.0.0.1:${app.port}`);
    const client = threadClient(`127.0.0.1:${app.port}`);
    const user = await newUser(newTenant(), 'patient');
    const list = () => call(client, client.listThreads, { pageSize: 0, pageToken: '', state: 0 }, user.md);
    try {
      expect(await checkHealth(health)).to.equal('SERVING');
      await pg.stop();
      await waitFor(async () => (await checkHealth(health)) === 'NOT_SERVING');
      // Calls fail as retryable UNAVAILABLE with RetryInfo, not as INTERNAL.
      const { status: details } = await expectError(list(), status.UNAVAILABLE, 'DATABASE_UNAVAILABLE');
      expect(details.details.map((d) => d.typeUrl)).to.include('type.googleapis.com/google.rpc.RetryInfo');

      await pg.restart();
      await waitFor(async () => (await checkHealth(health)) === 'SERVING');
      expect((await list()).threads).to.deep.equal([]);
    } finally {
      health.close();
      client.close();
      await app.shutdown();
      await pg.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
