/**
 * `npm run bench`: sets up a fresh database, the real service and the raw baseline server, prepares
 * data over gRPC, runs the selected scenarios one after the other, prints the markdown table and writes
 * bench/results/latest.md and latest.json (or `BENCH_RESULTS_NAME`.md and .json). With `list-50-noaudit`
 * selected, a second service process with the access audit off serves that scenario, and the audit rows
 * each scenario wrote are counted. Everything it starts, it stops: also on error and Ctrl-C.
 * Exit code 1 when a scenario is invalid (any non-OK answer, its setup failed, or the audit rows are not
 * what the audit switch says); a missed target alone is reported, not an exit code.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { intEnv, listEnv, runInfo, writeReport } from './common.js';
import { CpuSampler } from './cpu.js';
import { createDatabase, runMain, settle, startBaseline, startService } from './environment.js';
import { killWorkers, runLoad } from './loadgen.js';
import { type AuditCount, isValid, json, markdown, type RunInfo, type ScenarioOutcome } from './report.js';
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

/** The report's file name in bench/results/ (without .md/.json): a partial run need not replace latest. */
function resultsName(): string {
  const name = process.env.BENCH_RESULTS_NAME?.trim() || 'latest';
  if (!/^[\w.-]{1,100}$/.test(name)) throw new Error(`BENCH_RESULTS_NAME: letters, digits, . _ - only, got "${name}"`);
  return name;
}

/** Rows in access_audit, and the message ids (listed or in ranges) they record. */
async function auditTotals(url: string): Promise<{ rows: number; messageIds: number }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ rows: string; ids: string }>(
      'select count(*) as rows, coalesce(sum(message_count), 0) as ids from access_audit',
    );
    return { rows: Number(r.rows[0]!.rows), messageIds: Number(r.rows[0]!.ids) };
  } finally {
    await c.end();
  }
}

/**
 * The audit totals once the services have written what they hold: records wait at most AUDIT_FLUSH_MS
 * (100 ms by default) in memory, so the totals must stay the same for a second (at most 15 s of waiting).
 */
async function settledAuditTotals(url: string): Promise<{ rows: number; messageIds: number }> {
  const until = Date.now() + 15_000;
  let last = await auditTotals(url);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const now = await auditTotals(url);
    if ((now.rows === last.rows && now.messageIds === last.messageIds) || Date.now() > until) return now;
    last = now;
  }
}

/**
 * What is wrong with the audit rows a scenario wrote, if anything: with the audit on, every ListMessages
 * page of `list-50` must be recorded (one row per call, its 50 message ids); with it off, nothing.
 */
function auditProblem(name: ScenarioName, audit: AuditCount, batch: number): string | undefined {
  if (name === 'list-50') {
    if (audit.rows === 0) return `no access_audit row was written for ${audit.calls} ListMessages calls`;
    if (audit.messageIds !== audit.calls * batch) {
      return `${audit.calls} ListMessages calls of ${batch} messages, but the ${audit.rows} access_audit rows written record ${audit.messageIds} message ids`;
    }
  }
  if (name === 'list-50-noaudit' && audit.rows !== 0) {
    return `AUDIT_ENABLED=false, yet ${audit.rows} access_audit rows were written`;
  }
  return undefined;
}

/** Stops a process this run started (SIGTERM, SIGKILL after 10 s); cleanup() finds it gone. */
async function stopProcess(pid: number | undefined): Promise<void> {
  const alive = () => {
    try {
      process.kill(pid!, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (pid === undefined || !alive()) return;
  process.kill(pid, 'SIGTERM');
  const until = Date.now() + 10_000;
  while (alive() && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 100));
  if (alive()) process.kill(pid, 'SIGKILL');
}

/** The knobs the command line of the report shows. */
const isKnob = (k: string) => k.startsWith('BENCH_') && k !== 'BENCH_SERVICE_LOG_LEVEL';

async function main(): Promise<number> {
  const config = readConfig();
  const reportName = resultsName();
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
    // next; dispatch capacity is `npm run bench:notify`. The access audit on, as by default.
    needsService ? startService(db.url, log, { env: { NOTIFY_DISPATCH: 'false', AUDIT_ENABLED: 'true' } }) : undefined,
  ]);
  const scene = await Scene.create(config, service?.address);
  // The CPU table's service column is the process the scenario loads.
  let loaded = service;
  const sampler = new CpuSampler(() => ({ service: loaded?.pid, baseline: baseline?.pid }));
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
      // The same service with the access audit off, for `list-50-noaudit`: started just before it (after
      // the first service migrated the database) and stopped after it, so no other scenario shares the
      // machine with it.
      const noAudit =
        plan.target === 'service-noaudit'
          ? await startService(db.url, log, {
              name: 'service (audit off)',
              logName: 'service-noaudit.log',
              env: { NOTIFY_DISPATCH: 'false', AUDIT_ENABLED: 'false' },
            })
          : undefined;
      await settle(db.url);
      log(`${name}: running`);
      loaded = noAudit ?? service;
      const target = plan.target === 'baseline' ? baseline!.address : loaded!.address;
      const auditBefore = plan.target === 'baseline' ? undefined : await auditTotals(db.url);
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
      const cpu = sampler.usage();
      let audit: AuditCount | undefined;
      if (auditBefore) {
        const after = await settledAuditTotals(db.url);
        audit = {
          rows: after.rows - auditBefore.rows,
          messageIds: after.messageIds - auditBefore.messageIds,
          calls: load.callsStarted - load.errorCount,
        };
        log(
          `${name}: ${audit.rows} access_audit rows written (${audit.messageIds} message ids, ${audit.calls} OK calls)`,
        );
      }
      if (noAudit) await stopProcess(noAudit.pid);
      const problem = audit && auditProblem(name, audit, config.batch);
      if (problem) log(`${name}: AUDIT CHECK FAILED: ${problem}`);
      const outcome: ScenarioOutcome = { name, load, cpu, audit, auditProblem: problem };
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
  writeReport(reportName, markdown(full, outcomes), json(full, outcomes), log);
  const invalid = outcomes.filter((o) => !isValid(o)).map((o) => o.name);
  if (invalid.length > 0) {
    log(`INVALID (errors, failed setup or audit check): ${invalid.join(', ')}`);
    return 1;
  }
  return 0;
}

runMain(main, log, killWorkers);
