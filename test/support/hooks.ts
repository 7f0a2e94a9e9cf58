import { type App, startApp } from '../../src/app.js';
import { KINDS } from '../../src/domain/notification/notification.policy.js';
import { loadConfig, type Config } from '../../src/infra/config/config.js';
import { createTestDatabase, type TestDatabase } from './database.js';

/** The state shared by every test file: one database, one running server on an ephemeral port. */
export const env = {} as { db: TestDatabase; app: App; config: Config; address: string };

/** The configuration tests run with, pointing at the test database. */
export function testConfig(overrides: Record<string, string> = {}): Config {
  return loadConfig({
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_URL: env.db.url,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    SHUTDOWN_GRACE_MS: '5000',
    SHUTDOWN_DRAIN_DELAY_MS: '0',
    // Tenants send nothing unless a test gives its tenant plans (test/support/notifications.ts): the
    // other suites' messages do not fill the job queue the notification tests wait on.
    NOTIFY_DEFAULT_PLANS: JSON.stringify(Object.fromEntries(KINDS.map((k) => [k, []]))),
    // The shared server is an API replica: a notification test that needs jobs run starts a dispatcher
    // (useDispatcher), so each suite knows which instances take its jobs.
    NOTIFY_DISPATCH: 'false',
    // Session timers likewise: a test of the server's clock starts its own instance (test/support/sessions.ts).
    SESSION_TIMERS: 'false',
    // Suites load one caller hard (races, bursts, many streams): the limits have their own tests
    // (test/rpc/limits.test.ts) on instances that turn them on. Metrics on any free port.
    RATE_LIMIT_WRITES: '0',
    MAX_STREAMS_PER_CALLER: '0',
    METRICS_PORT: '0',
    // The retention purge runs when a test calls app.retention.purge() (test/governance).
    RETENTION_PURGE: 'false',
    ...overrides,
  });
}

/** Starts another server instance on the test database (for shutdown tests and replicas). */
export function startTestApp(overrides: Record<string, string> = {}): Promise<App> {
  return startApp(testConfig(overrides));
}

/** Mocha root hooks: the database and the server live for the whole run. */
export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(120_000);
    env.db = await createTestDatabase();
    env.config = testConfig();
    env.app = await startApp(env.config);
    env.address = `127.0.0.1:${env.app.port}`;
  },
  async afterAll(this: Mocha.Context) {
    this.timeout(60_000);
    await env.app?.shutdown();
    await env.db?.drop();
  },
};
