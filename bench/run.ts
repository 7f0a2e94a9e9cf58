/**
 * `npm run bench`: sets up a fresh database, the real service and the raw baseline server, prepares
 * data over gRPC, runs the selected scenarios one after the other, prints the markdown table and writes
 * bench/results/latest.md and latest.json. Everything it starts, it stops: also on error and Ctrl-C.
 * Exit code 1 when a scenario is invalid (any non-OK answer, or its setup failed); a missed target alone
 * is reported, not an exit code.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { CpuSampler } from './cpu.js';
import { cleanup, createDatabase, startBaseline, startService } from './environment.js';
import { killWorkers, runLoad } from './loadgen.js';
import { isValid, json, markdown, type RunInfo, type ScenarioOutcome } from './report.js';
import { type BenchConfig, SCENARIOS, type ScenarioName, Scene, SetupError } from './scenarios.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const RESULTS = path.join(ROOT, 'bench/results');

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

/** An integer knob from the environment, within [min, max]. */
function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new Error(`${name}: must be a whole number, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new Error(`${name}: must be between ${min} and ${max}, got ${n}`);
  return n;
}

function readConfig(): BenchConfig {
  const all = Object.keys(SCENARIOS) as ScenarioName[];
  const raw = process.env.BENCH_SCENARIOS;
  const wanted = raw ? raw.split(',').map((s) => s.trim()) : all;
  const unknown = wanted.filter((s) => !all.includes(s as ScenarioName));
  if (unknown.length > 0) throw new Error(`BENCH_SCENARIOS: unknown ${unknown.join(', ')}; known: ${all.join(', ')}`);
  const concurrency = intEnv('BENCH_CONCURRENCY', 64, 1, 4096);
  const batch = 50;
  return {
    concurrency,
    // Each process is one sender taking part in every send thread: at most 49 besides the creator.
    processes: Math.min(intEnv('BENCH_PROCESSES', 2, 1, 48), concurrency),
    channels: intEnv('BENCH_CHANNELS', 4, 1, 64),
    seconds: intEnv('BENCH_SECONDS', 20, 1, 3600),
    warmupSeconds: intEnv('BENCH_WARMUP_SECONDS', 5, 0, 600),
    deadlineMs: intEnv('BENCH_DEADLINE_MS', 10_000, 100, 120_000),
    bodyBytes: intEnv('BENCH_BODY_BYTES', 256, 1, 16_384),
    threads: intEnv('BENCH_THREADS', 256, 1, 100_000),
    replayKeys: intEnv('BENCH_REPLAY_KEYS', 1024, 1, 1_000_000),
    readMessages: intEnv('BENCH_READ_MESSAGES', 200, batch, 100_000),
    batch,
    // Canonical order: the baseline first, whatever order they were named in.
    scenarios: all.filter((s) => wanted.includes(s)),
  };
}

function commitOf(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const status = ['status', '--porcelain', '--untracked-files=no', '--', '.', ':!bench/results'];
    const dirty = execFileSync('git', status, { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha} (with uncommitted changes)` : sha;
  } catch {
    return 'unknown';
  }
}

function commandOf(): string {
  const knobs = Object.entries(process.env)
    .filter(([k]) => k.startsWith('BENCH_') && k !== 'BENCH_SERVICE_LOG_LEVEL')
    .map(([k, v]) => `${k}=${v}`)
    .sort();
  const db = process.env.DATABASE_URL ? ['DATABASE_URL=…'] : [];
  return [...db, ...knobs, 'npm run bench'].join(' ');
}

/** CHECKPOINT and ANALYZE between scenarios, so each starts from a similar state. */
async function settle(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('analyze');
    await c.query('checkpoint');
  } finally {
    await c.end();
  }
}

async function main(): Promise<number> {
  const config = readConfig();
  if (process.env.BENCH_PROFILE === '1') rmSync(path.join(RESULTS, 'profiles'), { recursive: true, force: true });
  const cpus = os.cpus();
  const info: Omit<RunInfo, 'database'> = {
    startedAt: new Date().toISOString(),
    command: commandOf(),
    machine: `${cpus.length} cores (${cpus[0]?.model.trim() ?? 'unknown CPU'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ${os.type()} ${os.release()}`,
    cores: cpus.length,
    node: process.version,
    commit: commitOf(),
    config,
  };
  log(
    `scenarios ${config.scenarios.join(', ')}; concurrency ${config.concurrency} over ${config.processes} processes; ` +
      `${config.warmupSeconds} s warm-up + ${config.seconds} s each`,
  );

  const db = await createDatabase(log);
  log(`fresh database on ${db.description}`);
  const needsService = config.scenarios.some((s) => s !== 'baseline');
  const [baseline, service] = await Promise.all([
    config.scenarios.includes('baseline') ? startBaseline(db.url, log) : undefined,
    needsService ? startService(db.url, log) : undefined,
  ]);
  const scene = await Scene.create(config, service?.address);
  const sampler = new CpuSampler(() => ({ service: service?.pid, baseline: baseline?.pid }));
  const outcomes: ScenarioOutcome[] = [];
  try {
    for (const name of config.scenarios) {
      log(`${name}: preparing`);
      let plan;
      try {
        plan = await scene.plan(name);
      } catch (err) {
        if (!(err instanceof SetupError)) throw err;
        log(`${name}: ${err.message}; not run`);
        outcomes.push({ name, setupError: err.message });
        continue;
      }
      await settle(db.url);
      log(`${name}: running`);
      const target = plan.target === 'baseline' ? baseline!.address : service!.address;
      const load = await runLoad(
        {
          scenario: name,
          kind: plan.kind,
          target,
          channels: config.channels,
          warmupMs: config.warmupSeconds * 1000,
          durationMs: config.seconds * 1000,
          deadlineMs: config.deadlineMs,
          bodyBytes: config.bodyBytes,
          batch: config.batch,
          runTag: scene.runTag,
          threads: plan.threads,
          messageSets: plan.messageSets,
        },
        plan.slots,
        (window) => sampler.schedule(window),
      );
      const outcome: ScenarioOutcome = { name, load, cpu: sampler.usage() };
      outcomes.push(outcome);
      const errors = load.errorCount === 0 ? 'no errors' : `${load.errorCount} ERRORS ${JSON.stringify(load.errors)}`;
      log(
        `${name}: ${load.callsPerSecond.toFixed(0)} calls/s, p50 ${load.p50Ms?.toFixed(2) ?? '—'} ms, ` +
          `p99 ${load.p99Ms?.toFixed(2) ?? '—'} ms, ${errors}`,
      );
    }
  } finally {
    scene.close();
  }

  const full: RunInfo = { ...info, database: db.description };
  const md = markdown(full, outcomes);
  process.stdout.write(`\n${md}`);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(path.join(RESULTS, 'latest.md'), md);
  writeFileSync(path.join(RESULTS, 'latest.json'), `${JSON.stringify(json(full, outcomes), null, 2)}\n`);
  log('wrote bench/results/latest.md and bench/results/latest.json');
  const invalid = outcomes.filter((o) => !isValid(o)).map((o) => o.name);
  if (invalid.length > 0) {
    log(`INVALID (errors or failed setup): ${invalid.join(', ')}`);
    return 1;
  }
  return 0;
}

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping everything`);
    killWorkers();
    void cleanup().finally(() => process.exit(130));
  });
}

main().then(
  async (code) => {
    if (stopping) return;
    killWorkers();
    await cleanup();
    process.exit(code);
  },
  async (err: unknown) => {
    if (stopping) return; // interrupted: the signal handler cleans up and exits
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    killWorkers();
    await cleanup();
    process.exit(2);
  },
);
