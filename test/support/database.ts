import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { startEmbeddedPostgres } from '../../src/infra/db/embedded.js';
import { freePort } from './ports.js';

/** A database for one test run, and how to get rid of it. */
export interface TestDatabase {
  readonly url: string;
  /** Connection to the server's maintenance database (for tests that need an admin, e.g. to kill backends). */
  readonly adminUrl: string;
  drop(): Promise<void>;
}

/**
 * One real PostgreSQL per run. With DATABASE_URL (CI: the machine's PostgreSQL 15) a fresh database is
 * created on that server and dropped at the end; without it an embedded PostgreSQL is started in a
 * temporary folder, so `npm test` needs nothing but Node.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `comms_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const base = process.env.DATABASE_URL;
  if (base) {
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    await admin.query(`create database ${name}`);
    await admin.end();
    const url = new URL(base);
    url.pathname = `/${name}`;
    return {
      url: url.toString(),
      adminUrl: base,
      drop: async () => {
        const c = new pg.Client({ connectionString: base });
        await c.connect();
        await c.query(`drop database if exists ${name} with (force)`);
        await c.end();
      },
    };
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'comms-test-pg-'));
  const embedded = await startEmbeddedPostgres(path.join(dir, 'data'), await freePort(), () => {});
  return {
    url: embedded.url,
    adminUrl: embedded.url.replace(/\/comms$/, '/postgres'),
    drop: async () => {
      await embedded.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
