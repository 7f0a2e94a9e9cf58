/**
 * `npm run bench:notify`: end-to-end notification dispatch throughput. For every scenario (how the
 * intents are created), replica count and NOTIFY_CONCURRENCY, one run on a fresh database: the real
 * service (node dist/src/main.js, its pg-boss dispatcher and the sandbox channel provider) in its own
 * process(es), NOTIFY_BENCH_INTENTS intents created over gRPC as fast as it answers, then the wait until
 * every one is DELIVERED (its ATTEMPT accepted by the sandbox, which stored the message in
 * sandbox_message, and the sandbox's DELIVERED report recorded). The figures come from the database's
 * own timestamps: intents/s = N ÷ (last delivered − first created), and the latency of each intent from
 * creation to its attempt and to its delivery. Each run is checked: one attempt and exactly one
 * sandbox_message row per intent, every intent DELIVERED (derived by the domain's own code), nothing
 * FAILED, no creating-call error, no failed or retried dispatch job, no warning in the service's log.
 * Prints the markdown report and writes bench/results/notify-latest.md and .json. Everything it starts,
 * it stops, also on error and Ctrl-C. Exit code 1 when a run is invalid.
 */
import pg from 'pg';
import { intEnv, listEnv, runInfo, writeReport } from '../common.js';
import {
  type BenchDatabase,
  createDatabase,
  isStopping,
  onCleanup,
  runMain,
  type RunningProcess,
  settle,
  startService,
} from '../environment.js';
import { analyse, CpuTiles, latency, logWarnings, waitDelivered } from './check.js';
import {
  isValid,
  json,
  label,
  markdown,
  type NotifyConfig,
  problems,
  type RunInfo,
  type RunOutcome,
} from './report.js';
import { createIntents, epochNow, NOTIFY_SCENARIOS, NotifyScene, type NotifyScenario, sleep } from './scene.js';

function log(line: string): void {
  process.stderr.write(`bench:notify: ${line}\n`);
}

/** A comma-separated list of whole numbers within [min, max] from the environment. */
function intListEnv(name: string, fallback: readonly number[], min: number, max: number): number[] {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return [...fallback];
  return raw.split(',').map((part) => {
    const s = part.trim();
    if (!/^\d+$/.test(s)) throw new Error(`${name}: must be whole numbers separated by commas, got "${raw}"`);
    const n = Number(s);
    if (n < min || n > max) throw new Error(`${name}: each must be between ${min} and ${max}, got ${n}`);
    return n;
  });
}

function readConfig(): NotifyConfig {
  return {
    scenarios: listEnv('NOTIFY_BENCH_SCENARIOS', Object.keys(NOTIFY_SCENARIOS) as NotifyScenario[]),
    intents: intEnv('NOTIFY_BENCH_INTENTS', 2000, 1, 1_000_000),
    concurrencies: intListEnv('NOTIFY_BENCH_CONCURRENCY', [8, 32], 1, 256),
    replicas: intListEnv('NOTIFY_BENCH_REPLICAS', [1], 1, 8),
    clients: intEnv('NOTIFY_BENCH_CLIENTS', 32, 1, 10_000),
    threads: intEnv('NOTIFY_BENCH_THREADS', 256, 1, 100_000),
    senders: intEnv('NOTIFY_BENCH_SENDERS', 32, 1, 10_000),
    recipients: intEnv('NOTIFY_BENCH_RECIPIENTS', 1000, 1, 1_000_000),
    drainSeconds: intEnv('NOTIFY_BENCH_DRAIN_SECONDS', 120, 1, 3600),
    deadlineMs: intEnv('NOTIFY_BENCH_DEADLINE_MS', 10_000, 100, 120_000),
  };
}

/** The knobs the command line of the report shows (the service's NOTIFY_* too, e.g. NOTIFY_POLL_MS). */
const isKnob = (k: string) => /^(NOTIFY_|DB_POOL_MAX$)/.test(k);

async function adminQuery(adminUrl: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/**
 * The database of run `run`: the one createDatabase made for the first run, a new one on the same server
 * for every later run; each is dropped right after its run (and at cleanup, should the run fail).
 */
async function runDatabase(first: BenchDatabase, run: number): Promise<{ url: string; drop: () => Promise<void> }> {
  let name = decodeURIComponent(new URL(first.url).pathname.slice(1));
  if (run > 0) {
    name = `${name}_${run}`;
    await adminQuery(first.adminUrl, `create database ${name}`);
  }
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await adminQuery(first.adminUrl, `drop database if exists ${name} with (force)`);
  };
  if (run > 0) onCleanup(`database ${name}`, drop);
  const url = new URL(first.adminUrl);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM to a service this bench started, SIGKILL after 10 s. */
async function stopService(pid: number | undefined): Promise<void> {
  if (pid === undefined) return;
  const alive = () => isAlive(pid);
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const until = Date.now() + 10_000;
  while (alive() && Date.now() < until) await sleep(100);
  if (alive()) process.kill(pid, 'SIGKILL');
}

async function oneRun(
  config: NotifyConfig,
  dbUrl: string,
  key: { scenario: NotifyScenario; replicas: number; concurrency: number },
): Promise<RunOutcome> {
  const { scenario, replicas, concurrency } = key;
  const tag = `${scenario}-r${replicas}-c${concurrency}`;
  // The service reads its configuration from the environment startService passes on.
  process.env.NOTIFY_CONCURRENCY = String(concurrency);
  process.env.NOTIFY_DISPATCH = 'true';
  const services: RunningProcess[] = [];
  try {
    // One after the other: each replica migrates the database at start.
    for (let r = 0; r < replicas; r++) {
      const letter = String.fromCharCode(97 + r);
      services.push(
        await startService(dbUrl, log, { name: `service ${tag} ${letter}`, logName: `notify-${tag}-${letter}.log` }),
      );
    }
    const addresses = services.map((s) => s.address);
    const scene = new NotifyScene(scenario);
    await scene.prepare(addresses[0]!, config);
    await settle(dbUrl);

    const db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
    const cpu = new CpuTiles(services.map((s) => s.pid));
    try {
      cpu.start();
      log(`${label(key)}: creating ${config.intents} intents, ${config.clients} calls in flight`);
      const created = await createIntents(scene, {
        addresses,
        count: config.intents,
        inFlight: config.clients,
        deadlineMs: config.deadlineMs,
      });
      const createSeconds = (created.lastAnsweredMs - created.firstIssuedMs) / 1000;
      const intents = await db.query<{ n: number }>(
        'select count(*)::int as n from notification_intent where tenant_id = $1',
        [scene.tenant],
      );
      const expected = intents.rows[0]!.n;
      log(
        `${label(key)}: ${created.ok}/${created.calls} calls OK in ${createSeconds.toFixed(1)} s ` +
          `(${(created.ok / createSeconds).toFixed(0)}/s), ${expected} intents; waiting for delivery`,
      );
      const { complete, seenMs } = await waitDelivered(
        db,
        scene.tenant,
        () => {
          services.forEach((s, r) => {
            if (s.pid !== undefined && !isAlive(s.pid)) {
              const logName = `notify-${tag}-${String.fromCharCode(97 + r)}.log`;
              throw new Error(`the service on ${s.address} exited during the run; see bench/results/${logName}`);
            }
          });
          return expected;
        },
        () => created.lastAnsweredMs + config.drainSeconds * 1000,
        (attempts, delivered) => log(`${label(key)}: ${attempts} attempts, ${delivered} delivered of ${expected}`),
      );
      const usage = await cpu.stop();
      // A second for anything late (a duplicate send, a job failing after its attempt) to show.
      await sleep(1000);
      const warnings = services
        .map((_, r) => logWarnings(`notify-${tag}-${String.fromCharCode(97 + r)}.log`))
        .reduce(
          (acc, w) => {
            for (const [m, n] of Object.entries(w.counts)) acc.counts[m] = (acc.counts[m] ?? 0) + n;
            acc.samples.push(...w.samples);
            return acc;
          },
          { counts: {} as Record<string, number>, samples: [] as string[] },
        );
      const analysis = await analyse(db, scene.tenant);
      const span =
        analysis.lastDeliveredMs !== undefined && analysis.firstCreatedMs !== undefined
          ? (analysis.lastDeliveredMs - analysis.firstCreatedMs) / 1000
          : undefined;
      const outcome: RunOutcome = {
        kind: 'run',
        ...key,
        create: {
          calls: created.calls,
          ok: created.ok,
          seconds: createSeconds,
          callsPerSecond: createSeconds > 0 ? created.ok / createSeconds : 0,
          callMs: latency([...created.callMs]),
          errors: created.errors,
          errorSamples: created.errorSamples,
        },
        complete,
        wallSeconds: (seenMs - created.firstIssuedMs) / 1000,
        intentsPerSecond: complete && span && span > 0 ? analysis.intents / span : undefined,
        analysis,
        cpu: usage,
        warnings,
      };
      const a = analysis;
      log(
        `${label(key)}: ${outcome.intentsPerSecond?.toFixed(0) ?? '—'} intents/s; created → delivered p50 ` +
          `${a.toDelivered.p50?.toFixed(0) ?? '—'} ms, p99 ${a.toDelivered.p99?.toFixed(0) ?? '—'} ms; ` +
          `${a.delivered}/${a.intents} delivered, ${a.sandboxRows} sandbox rows` +
          (isValid(outcome) ? '' : `; INVALID: ${problems(outcome).join('; ')}`),
      );
      return outcome;
    } finally {
      cpu.cancel();
      await db.end();
    }
  } finally {
    for (const s of services) await stopService(s.pid);
    delete process.env.NOTIFY_CONCURRENCY;
  }
}

async function main(): Promise<number> {
  const config = readConfig();
  const info = runInfo(config, isKnob, 'npm run bench:notify');
  const runs = config.replicas.flatMap((replicas) =>
    config.scenarios.flatMap((scenario) =>
      config.concurrencies.map((concurrency) => ({ scenario, replicas, concurrency })),
    ),
  );
  log(
    `${runs.length} runs (scenarios ${config.scenarios.join(', ')}; replicas ${config.replicas.join(', ')}; ` +
      `NOTIFY_CONCURRENCY ${config.concurrencies.join(', ')}), ${config.intents} intents each`,
  );
  const first = await createDatabase(log);
  log(`fresh database on ${first.description}`);
  const outcomes: RunOutcome[] = [];
  for (const [i, key] of runs.entries()) {
    if (isStopping()) break;
    const t0 = epochNow();
    let db: { url: string; drop: () => Promise<void> } | undefined;
    try {
      db = await runDatabase(first, i);
      outcomes.push(await oneRun(config, db.url, key));
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      log(`${label(key)} failed: ${message}`);
      outcomes.push({ kind: 'failed', ...key, error: message });
    } finally {
      await db?.drop().catch((err: unknown) => log(`dropping the run's database failed: ${String(err)}`));
    }
    log(`${label(key)}: run took ${((epochNow() - t0) / 1000).toFixed(1)} s`);
  }

  if (isStopping()) return 130; // interrupted: no report (the signal handler cleans up and exits)
  const full: RunInfo = { ...info, database: first.description };
  writeReport('notify-latest', markdown(full, outcomes), json(full, outcomes), log);
  const invalid = outcomes.filter((o) => !isValid(o)).map(label);
  if (invalid.length > 0) {
    log(`INVALID: ${invalid.join('; ')}`);
    return 1;
  }
  return 0;
}

runMain(main, log, () => {});
