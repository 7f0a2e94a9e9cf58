/**
 * The notification benchmark's report: per run (scenario × replicas × NOTIFY_CONCURRENCY) the end-to-end
 * throughput and the latency from creation to attempt and to delivery; the correctness checks; the CPU;
 * and what went wrong. Plus the same as JSON.
 */
import type { RunInfo as CommonRunInfo } from '../common.js';
import type { Analysis, Latency, RunCpu } from './check.js';
import { NOTIFY_SCENARIOS, type NotifyScenario } from './scene.js';

export interface NotifyConfig {
  readonly scenarios: readonly NotifyScenario[];
  readonly intents: number;
  readonly concurrencies: readonly number[];
  readonly replicas: readonly number[];
  readonly clients: number;
  readonly threads: number;
  readonly senders: number;
  readonly recipients: number;
  readonly drainSeconds: number;
  readonly deadlineMs: number;
}

export type RunInfo = CommonRunInfo<NotifyConfig>;

interface RunKey {
  readonly scenario: NotifyScenario;
  readonly replicas: number;
  /** NOTIFY_CONCURRENCY of every replica. */
  readonly concurrency: number;
}

export interface MeasuredRun extends RunKey {
  readonly kind: 'run';
  readonly create: {
    readonly calls: number;
    readonly ok: number;
    readonly seconds: number;
    readonly callsPerSecond: number;
    readonly callMs: Latency;
    readonly errors: Record<string, number>;
    readonly errorSamples: Record<string, string>;
  };
  /** Every intent delivered before the drain limit. */
  readonly complete: boolean;
  /** From the first call issued until the poll saw every intent delivered (or gave up), s. */
  readonly wallSeconds: number;
  /** N / (last delivered − first created), from the database's timestamps. */
  readonly intentsPerSecond: number | undefined;
  readonly analysis: Analysis;
  readonly cpu: RunCpu;
  readonly warnings: { readonly counts: Record<string, number>; readonly samples: readonly string[] };
}

export interface FailedRun extends RunKey {
  readonly kind: 'failed';
  readonly error: string;
}

export type RunOutcome = MeasuredRun | FailedRun;

/** Why a run is invalid (empty: valid). */
export function problems(o: RunOutcome): string[] {
  if (o.kind === 'failed') return [`failed: ${o.error.trim().replace(/\s*\n\s*/g, ' ⏎ ')}`];
  const a = o.analysis;
  const out: string[] = [];
  const errors = Object.entries(o.create.errors);
  if (errors.length > 0) out.push(`creation errors: ${errors.map(([k, n]) => `${n} ${k}`).join(', ')}`);
  if (a.intents !== o.create.ok) out.push(`${a.intents} intents for ${o.create.ok} OK creating calls`);
  if (!o.complete) out.push(`not every intent delivered within ${o.wallSeconds.toFixed(0)} s`);
  if (a.delivered !== a.intents) out.push(`${a.intents - a.delivered} of ${a.intents} intents not DELIVERED`);
  if (a.failed > 0) out.push(`${a.failed} FAILED`);
  if (a.sandboxExactlyOnce !== a.intents) {
    out.push(`sandbox rows: ${a.sandboxMissing} intents with none, ${a.sandboxDuplicated} with more than one`);
  }
  if (a.sandboxOrphans > 0) out.push(`${a.sandboxOrphans} sandbox rows of no attempt`);
  const bad = Object.entries(a.attemptOutcomes).filter(([k]) => k !== 'accepted');
  if (bad.length > 0) out.push(`attempts not accepted: ${bad.map(([k, n]) => `${n} ${k}`).join(', ')}`);
  if (a.multiAttempt > 0) out.push(`${a.multiAttempt} intents with more than one attempt`);
  if (a.reconciliations > 0) out.push(`${a.reconciliations} reconciliation records`);
  const badJobs = (a.jobs.failed ?? 0) + (a.jobs.retry ?? 0);
  if (badJobs > 0 || a.jobsRetried > 0)
    out.push(`dispatch jobs: ${badJobs} failed or to retry, ${a.jobsRetried} retried`);
  const warnings = Object.entries(o.warnings.counts);
  if (warnings.length > 0) {
    out.push(`service warnings/errors: ${warnings.map(([m, n]) => `${n}× "${m}"`).join(', ')}`);
  }
  return out;
}

export const isValid = (o: RunOutcome) => problems(o).length === 0;

const num = (v: number | undefined, digits = 1) => (v === undefined || Number.isNaN(v) ? '—' : v.toFixed(digits));
const lat = (l: Latency) => `${num(l.p50, 0)} / ${num(l.p95, 0)} / ${num(l.p99, 0)}`;
const counts = (r: Record<string, number>) =>
  Object.keys(r).length === 0
    ? '0'
    : Object.entries(r)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ');

export const label = (o: RunKey) =>
  `${o.scenario}, ${o.replicas} replica${o.replicas > 1 ? 's' : ''}, c=${o.concurrency}`;

function sum(values: readonly (number | undefined)[]): number | undefined {
  return values.some((v) => v === undefined) ? undefined : values.reduce((s: number, v) => s + v!, 0);
}

/** CPU ms per intent of a % of one core averaged over the run. */
function perIntent(o: MeasuredRun, pct: number | undefined): number | undefined {
  if (pct === undefined || o.analysis.intents === 0) return undefined;
  return ((pct / 100) * o.wallSeconds * 1000) / o.analysis.intents;
}

function others(o: MeasuredRun): number | undefined {
  const c = o.cpu;
  const service = sum(c.replicas);
  if (c.machine === undefined || service === undefined || c.postgres === undefined) return undefined;
  return Math.max(0, c.machine - service - c.postgres - c.bench);
}

/** The markdown report. */
export function markdown(info: RunInfo, outcomes: readonly RunOutcome[]): string {
  const c = info.config;
  const lines: string[] = [];
  lines.push(`## Notification dispatch benchmark run ${info.startedAt}`, '');
  lines.push(
    `- Machine: ${info.machine}; the bench (creating the intents), the service and PostgreSQL share it, all on loopback.`,
    `- Node ${info.node}; ${info.database}; commit ${info.commit}.`,
    `- Per run: a fresh database, ${c.intents} intents created by ${c.clients} calls in flight (closed loop), the ` +
      `service's own dispatcher and sandbox provider (default delivery report: delivered).`,
    `- Command: \`${info.command}\``,
    '',
  );
  const measured = outcomes.filter((o): o is MeasuredRun => o.kind === 'run');
  lines.push(
    '| scenario | replicas | NOTIFY_CONCURRENCY | intents | intents/s end to end | delivered/s after creation | creating calls/s | created → attempt p50 / p95 / p99 ms | created → delivered p50 / p95 / p99 ms | valid |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  );
  for (const o of outcomes) {
    if (o.kind === 'failed') {
      lines.push(`| ${o.scenario} | ${o.replicas} | ${o.concurrency} | — | — | — | — | — | — | failed |`);
      continue;
    }
    const a = o.analysis;
    lines.push(
      `| ${o.scenario} | ${o.replicas} | ${o.concurrency} | ${a.intents} | ${num(o.intentsPerSecond, 0)} | ` +
        `${num(a.drainPerSecond, 0)} | ${num(o.create.callsPerSecond, 0)} | ${lat(a.toAttempt)} | ${lat(a.toDelivered)} | ${isValid(o) ? 'yes' : '**INVALID**'} |`,
    );
  }
  if (measured.length > 0) {
    lines.push(
      '',
      'Correctness (each intent: one attempt, accepted; exactly one sandbox_message row; DELIVERED as GetNotification derives it):',
      '',
      '| run | DELIVERED | FAILED | statuses | sandbox rows: total / exactly one per intent / none / more than one / of no attempt | attempts by outcome | reconciliations | reports | dispatch jobs by state (retried) | creating-call errors | service warnings |',
      '|---|---:|---:|---|---|---|---:|---|---|---|---:|',
    );
    for (const o of measured) {
      const a = o.analysis;
      const warnings = Object.values(o.warnings.counts).reduce((n, v) => n + v, 0);
      lines.push(
        `| ${label(o)} | ${a.delivered}/${a.intents} | ${a.failed} | ${counts(a.statuses)} | ` +
          `${a.sandboxRows} / ${a.sandboxExactlyOnce} / ${a.sandboxMissing} / ${a.sandboxDuplicated} / ${a.sandboxOrphans} | ` +
          `${counts(a.attemptOutcomes)} | ${a.reconciliations} | ${counts(a.reports)} | ${counts(a.jobs)} (${a.jobsRetried}) | ` +
          `${counts(o.create.errors)} | ${warnings} |`,
      );
    }
    lines.push(
      '',
      'Timing (s from the first intent created, database timestamps), the creating calls, and the wall clock:',
      '',
      '| run | last created | last attempt | last delivered | creating call p50 / p95 / p99 ms | wall s (first call → poll saw all delivered) |',
      '|---|---:|---:|---:|---:|---:|',
    );
    for (const o of measured) {
      const a = o.analysis;
      const rel = (t: number | undefined) =>
        t === undefined || a.firstCreatedMs === undefined ? undefined : (t - a.firstCreatedMs) / 1000;
      lines.push(
        `| ${label(o)} | ${num(rel(a.lastCreatedMs), 2)} | ${num(rel(a.lastAttemptMs), 2)} | ${num(rel(a.lastDeliveredMs), 2)} | ` +
          `${lat(o.create.callMs)} | ${num(o.wallSeconds, 2)} |`,
      );
    }
    let disturbed = false;
    const maxReplicas = Math.max(...measured.map((o) => o.replicas));
    lines.push(
      '',
      `CPU from the first call until all were delivered, % of one core (${info.cores} cores = ${100 * info.cores} %; ` +
        'sampled in one-second tiles), and CPU per intent (that average × the wall time ÷ intents):',
      '',
      `| run | s sampled | ${Array.from({ length: maxReplicas }, (_, i) => `service ${String.fromCharCode(65 + i)}`).join(' | ')} | postgres | bench | whole machine | anything else | service ms/intent | postgres ms/intent |`,
      `|---|---:|${'---:|'.repeat(maxReplicas)}---:|---:|---:|---:|---:|---:|`,
    );
    for (const o of measured) {
      const u = o.cpu;
      const rest = others(o);
      if (rest !== undefined && rest > 20) disturbed = true;
      const replicas = Array.from({ length: maxReplicas }, (_, i) => num(u.replicas[i], 0));
      lines.push(
        `| ${label(o)} | ${num(u.seconds, 0)} | ${replicas.join(' | ')} | ${num(u.postgres, 0)} | ${num(u.bench, 0)} | ` +
          `${num(u.machine, 0)} | ${num(rest, 0)} | ${num(perIntent(o, sum(u.replicas)), 2)} | ${num(perIntent(o, u.postgres), 2)} |`,
      );
    }
    if (disturbed) {
      lines.push(
        '',
        '**Warning:** other processes used more than 20 % of a core during a run; it is disturbed, rerun it on a ' +
          'quiet machine before comparing figures.',
      );
    }
  }
  const invalid = outcomes.filter((o) => !isValid(o));
  if (invalid.length > 0) {
    lines.push('', 'Invalid runs:', '');
    for (const o of invalid) lines.push(`- ${label(o)}: ${problems(o).join('; ')}`);
    for (const o of measured) {
      for (const [code, m] of Object.entries(o.create.errorSamples)) lines.push(`  - ${label(o)}, ${code}: ${m}`);
      for (const s of o.warnings.samples) lines.push(`  - ${label(o)}, service log: \`${s.replace(/`/g, "'")}\``);
    }
  }
  lines.push('', 'Scenarios:', '');
  for (const s of c.scenarios) lines.push(`- ${s}: ${NOTIFY_SCENARIOS[s]}`);
  lines.push(
    '',
    'Intents/s = intents ÷ (last delivered − first created); delivered/s after creation = intents delivered after the ' +
      'last one was created ÷ (last delivered − last created), the dispatcher alone on the backlog. Created = `notification_intent.created_at`; attempt = ' +
      "the intent's ATTEMPT record's `recorded_at`; delivered = the later of that and the `recorded_at` of the first " +
      'DELIVERED report linked to it.',
  );
  return lines.join('\n') + '\n';
}

const round = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? null : Math.round(v * 100) / 100);
const roundLatency = (l: Latency) => ({
  count: l.count,
  p50: round(l.p50),
  p95: round(l.p95),
  p99: round(l.p99),
  max: round(l.max),
});

/** The same report as plain data. */
export function json(info: RunInfo, outcomes: readonly RunOutcome[]): unknown {
  return {
    ...info,
    // Lists as strings and series as objects: JSON.stringify's layout is then the one prettier keeps.
    config: {
      ...info.config,
      scenarios: info.config.scenarios.join(','),
      concurrencies: info.config.concurrencies.join(','),
      replicas: info.config.replicas.join(','),
    },
    runs: outcomes.map((o) => {
      if (o.kind === 'failed') return { ...o, valid: false };
      const a = o.analysis;
      const rel = (t: number | undefined) =>
        t === undefined || a.firstCreatedMs === undefined ? null : round((t - a.firstCreatedMs) / 1000);
      return {
        scenario: o.scenario,
        replicas: o.replicas,
        concurrency: o.concurrency,
        valid: isValid(o),
        problems: problems(o).join('; ') || null,
        intents: a.intents,
        intentsPerSecond: round(o.intentsPerSecond),
        drainPerSecond: round(a.drainPerSecond),
        complete: o.complete,
        wallSeconds: round(o.wallSeconds),
        create: {
          calls: o.create.calls,
          ok: o.create.ok,
          seconds: round(o.create.seconds),
          callsPerSecond: round(o.create.callsPerSecond),
          callMs: roundLatency(o.create.callMs),
          errors: o.create.errors,
          errorSamples: o.create.errorSamples,
        },
        latencyMs: { createdToAttempt: roundLatency(a.toAttempt), createdToDelivered: roundLatency(a.toDelivered) },
        secondsFromFirstCreated: {
          lastCreated: rel(a.lastCreatedMs),
          lastAttempt: rel(a.lastAttemptMs),
          lastDelivered: rel(a.lastDeliveredMs),
        },
        checks: {
          statuses: a.statuses,
          delivered: a.delivered,
          failed: a.failed,
          attemptOutcomes: a.attemptOutcomes,
          multiAttempt: a.multiAttempt,
          reconciliations: a.reconciliations,
          reports: a.reports,
          sandboxRows: a.sandboxRows,
          sandboxExactlyOnce: a.sandboxExactlyOnce,
          sandboxMissing: a.sandboxMissing,
          sandboxDuplicated: a.sandboxDuplicated,
          sandboxOrphans: a.sandboxOrphans,
          jobs: a.jobs,
          jobsRetried: a.jobsRetried,
          serviceWarnings: o.warnings.counts,
        },
        cpuPercentOfOneCore: {
          secondsSampled: round(o.cpu.seconds),
          replicas: Object.fromEntries(o.cpu.replicas.map((v, i) => [String.fromCharCode(65 + i), round(v)])),
          postgres: round(o.cpu.postgres),
          bench: round(o.cpu.bench),
          machine: round(o.cpu.machine),
          others: round(others(o)),
        },
        cpuMsPerIntent: {
          service: round(perIntent(o, sum(o.cpu.replicas))),
          postgres: round(perIntent(o, o.cpu.postgres)),
        },
        bySecond: Object.fromEntries(
          Array.from({ length: Math.max(a.createdBySecond.length, a.deliveredBySecond.length) }, (_, i) => [
            String(i),
            { created: a.createdBySecond[i] ?? 0, delivered: a.deliveredBySecond[i] ?? 0 },
          ]),
        ),
        cpuBySecond: Object.fromEntries(
          o.cpu.tiles.map((t) => [
            String(t.at),
            {
              ...Object.fromEntries(t.replicas.map((v, i) => [`service${String.fromCharCode(65 + i)}`, v ?? null])),
              postgres: t.postgres ?? null,
              machine: t.machine ?? null,
            },
          ]),
        ),
      };
    }),
  };
}
