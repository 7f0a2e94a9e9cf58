/**
 * `npm run bench`: sets up a fresh database, the real service and the raw baseline server, prepares
 * data over gRPC, runs the selected scenarios one after the other, prints the markdown table and writes
 * bench/results/latest.md and latest.json. Everything it starts, it stops: also on error and Ctrl-C.
 * Exit code 1 when a scenario is invalid (any non-OK answer, or its setup failed); a missed target alone
 * is reported, not an exit code.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { intEnv, listEnv, runInfo, writeReport } from './common.js';
import { CpuSampler } from './cpu.js';
import { createDatabase, runMain, settle, startBaseline, startService } from './environment.js';
import { killWorkers, runLoad } from './loadgen.js';
import { isValid, json, markdown, type RunInfo, type ScenarioOutcome } from './report.js';
import { type BenchConfig, SCENARIOS, type ScenarioName, Scene, SetupError } from './scenarios.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const RESULTS = path.join(ROOT, 'bench/results');

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

function readConfig(): BenchConfig {
  // Canonical order: the baseline first, whatever order they were named in.
  const scenarios = listEnv('BENCH_SCENARIOS', Object.keys(SCENARIOS) as ScenarioName[]);
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
    scenarios,
  };
}

/** The knobs the command line of the report shows. */
const isKnob = (k: string) => k.startsWith('BENCH_') && k !== 'BENCH_SERVICE_LOG_LEVEL';

async function main(): Promise<number> {
  const config = readConfig();
  if (process.env.BENCH_PROFILE === '1') rmSync(path.join(RESULTS, 'profiles'), { recursive: true, force: true });
  const info = runInfo(config, isKnob, 'npm run bench');
  log(
    `scenarios ${config.scenarios.join(', ')}; concurrency ${config.concurrency} over ${config.processes} processes; ` +
      `${config.warmupSeconds} s warm-up + ${config.seconds} s each`,
  );

  const db = await createDatabase(log);
  log(`fresh database on ${db.description}`);
  const needsService = config.scenarios.some((s) => s !== 'baseline');
  const [baseline, service] = await Promise.all([
    config.scenarios.includes('baseline') ? startBaseline(db.url, log) : undefined,
    // An API replica: every send still creates its notification intent and job in its transaction, but
    // no dispatcher runs here (NOTIFY_DISPATCH=false), so one scenario's pushes cannot run into the
    // next; dispatch capacity is `npm run bench:notify`.
    needsService ? startService(db.url, log, { env: { NOTIFY_DISPATCH: 'false' } }) : undefined,
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
  writeReport('latest', markdown(full, outcomes), json(full, outcomes), log);
  const invalid = outcomes.filter((o) => !isValid(o)).map((o) => o.name);
  if (invalid.length > 0) {
    log(`INVALID (errors or failed setup): ${invalid.join(', ')}`);
    return 1;
  }
  return 0;
}

runMain(main, log, killWorkers);
