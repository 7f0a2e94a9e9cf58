import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import pg from 'pg';
import { LISTENER_APPLICATION_NAME } from '../../src/feeds/listener.js';
import { env } from './hooks.js';
import { freePort } from './ports.js';
import { waitFor } from './wait.js';

const MAIN = path.resolve(import.meta.dirname, '../../src/main.js');

/** Children still running when the test process exits are killed, so a failed run leaves none behind. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A second replica of the service as a real process (`node dist/src/main.js`) on the test database. */
export interface Replica {
  readonly address: string;
  readonly pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** SIGTERM (graceful shutdown); resolves with the exit code, fails if it did not exit in `timeoutMs`. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL if it still runs; for `finally`. */
  kill(): Promise<void>;
}

/**
 * Starts `node dist/src/main.js` on the test database with the JWT settings the test tokens are signed
 * with, and resolves once it logged "serving". LOG_LEVEL defaults to info because that line is an info
 * line (the service logs nothing per call above debug).
 */
export async function startReplica(overrides: Record<string, string> = {}): Promise<Replica> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnReplica(overrides);
    } catch (err) {
      // The free port may have been taken between freePort() and bind; try another one.
      if (attempt >= 3 || !(err instanceof ReplicaExited)) throw err;
    }
  }
}

class ReplicaExited extends Error {}

async function spawnReplica(overrides: Record<string, string>): Promise<Replica> {
  const port = await freePort();
  const childEnv: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: String(port),
    DATABASE_URL: env.db.url,
    LOG_LEVEL: 'info',
    JWT_SECRET: env.config.jwt.secret,
    JWT_ISSUER: env.config.jwt.issuer,
    JWT_AUDIENCE: env.config.jwt.audience,
    SHUTDOWN_DRAIN_DELAY_MS: '0',
    SHUTDOWN_GRACE_MS: '5000',
    NOTIFY_DEFAULT_PLANS: JSON.stringify(env.config.notify.defaultPlans),
    // As the shared server (test/support/hooks.ts): no per-caller limits, metrics on any free port.
    RATE_LIMIT_WRITES: '0',
    MAX_STREAMS_PER_CALLER: '0',
    METRICS_PORT: '0',
    ...overrides,
  };
  const child = spawn(process.execPath, [MAIN], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let output = '';
  child.stdout.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  const isRunning = () => child.exitCode === null && child.signalCode === null;
  const kill = async () => {
    if (isRunning()) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  try {
    await waitFor(async () => {
      if (!isRunning()) throw new ReplicaExited(`replica exited with ${child.exitCode} before serving:\n${output}`);
      return /"msg":"serving"/.test(output);
    }, 60_000);
  } catch (err) {
    await kill();
    throw err instanceof ReplicaExited ? err : new Error(`replica not serving in time:\n${output}`);
  }
  return {
    address: `127.0.0.1:${port}`,
    pid: child.pid!,
    output: () => output,
    async stop(timeoutMs = 30_000) {
      if (!isRunning()) return child.exitCode;
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`replica did not exit ${timeoutMs} ms after SIGTERM:\n${output}`)),
          timeoutMs,
        );
      });
      try {
        return await Promise.race([exited, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    kill,
  };
}

/**
 * Runs `fn` with a replica process, then stops it with SIGTERM and asserts it exited 0 after logging
 * "stopped"; SIGKILLs it if anything failed on the way.
 */
export async function withReplica<T>(
  fn: (replica: Replica) => Promise<T>,
  overrides?: Record<string, string>,
): Promise<T> {
  const replica = await startReplica(overrides);
  try {
    const result = await fn(replica);
    const code = await replica.stop();
    expect(code, `replica exit code; output:\n${replica.output()}`).to.equal(0);
    expect(replica.output()).to.match(/"msg":"stopped"/);
    return result;
  } finally {
    await replica.kill();
  }
}

// ---- the feed listeners' database connections ----

/** The test database's name (other runs share the PostgreSQL server: never touch their backends). */
export function testDatabaseName(): string {
  return decodeURIComponent(new URL(env.db.url).pathname.slice(1));
}

/** Runs `fn` with a connection to the server's maintenance database. */
export async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: env.db.adminUrl });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** The feed listeners connected to the test database: backend pid and when the connection started. */
export function listenerBackends(): Promise<{ pid: number; backendStart: Date }[]> {
  return withAdmin(async (c) => {
    const { rows } = await c.query<{ pid: number; backend_start: Date }>(
      `select pid, backend_start from pg_stat_activity
        where application_name = $1 and datname = $2 order by pid`,
      [LISTENER_APPLICATION_NAME, testDatabaseName()],
    );
    return rows.map((r) => ({ pid: r.pid, backendStart: r.backend_start }));
  });
}

/** The backend pids of the feed listeners connected to the test database. */
export async function listenerPids(): Promise<number[]> {
  return (await listenerBackends()).map((l) => l.pid);
}

/**
 * Waits until exactly `count` feed listeners are connected to the test database (one per running
 * replica; a replica stopped just before may still be leaving pg_stat_activity) and returns them.
 */
export async function expectListeners(
  count: number,
  timeoutMs = 10_000,
): Promise<{ pid: number; backendStart: Date }[]> {
  let found: { pid: number; backendStart: Date }[] = [];
  try {
    await waitFor(async () => (found = await listenerBackends()).length === count, timeoutMs);
  } catch {
    expect.fail(`expected ${count} feed listener connections to ${testDatabaseName()}, found ${found.length}`);
  }
  return found;
}

/** Terminates the feed listeners' backends of the test database (only); returns the pids terminated. */
export async function terminateListeners(): Promise<number[]> {
  const pids = await listenerPids();
  // Selected first, terminated by pid: the filter must never be evaluated after the termination.
  return withAdmin(async (c) => {
    const { rows } = await c.query<{ pid: number; done: boolean }>(
      'select pid, pg_terminate_backend(pid) as done from unnest($1::int[]) as pid',
      [pids],
    );
    return rows.filter((r) => r.done).map((r) => r.pid);
  });
}
