/**
 * The report: a markdown table of every scenario with its ratios to the raw baseline, the issue's
 * targets checked, where the CPU went, and what the errors were; plus the same as JSON.
 */
import type { RunInfo as CommonRunInfo } from './common.js';
import type { CpuUsage } from './cpu.js';
import type { LoadResult } from './loadgen.js';
import { type BenchConfig, SCENARIOS, type ScenarioName } from './scenarios.js';

/** The access_audit rows a scenario's calls wrote (warm-up, window and drain), and its OK calls. */
export interface AuditCount {
  readonly rows: number;
  /** Message ids the rows record (listed, or counted in a range). */
  readonly messageIds: number;
  readonly calls: number;
}

/** One scenario's outcome: measured, or not runnable (setup failed). */
export interface ScenarioOutcome {
  readonly name: ScenarioName;
  readonly load?: LoadResult;
  readonly cpu?: CpuUsage;
  readonly setupError?: string;
  /** Counted for every scenario on the service. */
  readonly audit?: AuditCount;
  /** The audit rows are not what the scenario's audit switch says (see run.ts); the scenario is invalid. */
  readonly auditProblem?: string;
}

export type RunInfo = CommonRunInfo<BenchConfig>;

/** A target of issue 4, checked against the baseline of the same run. */
interface Target {
  readonly label: string;
  readonly scenario: ScenarioName;
  readonly minThroughputRatio: number;
  readonly maxP99Ratio?: number;
}

const TARGETS: readonly Target[] = [
  { label: 'SendMessage, distinct threads', scenario: 'send-distinct', minThroughputRatio: 0.6, maxP99Ratio: 2 },
  { label: 'SendMessage, one hot thread', scenario: 'send-hot', minThroughputRatio: 0.6, maxP99Ratio: 2 },
  { label: 'SendMessage, idempotent replays', scenario: 'send-replay', minThroughputRatio: 0.6, maxP99Ratio: 2 },
  { label: 'MarkRead(50)', scenario: 'markread-50', minThroughputRatio: 0.5 },
];

/** Valid: measured, without a single non-OK answer, with at least one OK call, audit rows as expected. */
export function isValid(o: ScenarioOutcome | undefined): o is ScenarioOutcome & { load: LoadResult } {
  return !!o?.load && o.load.errorCount === 0 && o.load.okCalls > 0 && !o.auditProblem;
}

const num = (v: number | undefined, digits = 1) => (v === undefined ? '—' : v.toFixed(digits));
const ratio = (v: number | undefined) => (v === undefined ? '—' : `${v.toFixed(2)}×`);

function errorsCell(o: ScenarioOutcome): string {
  if (o.setupError) return `setup failed: ${o.setupError}`;
  const errors = Object.entries(o.load!.errors).map(([code, n]) => `${n} ${code}`);
  if (o.auditProblem) errors.push('audit check failed');
  return errors.length === 0 ? '0' : errors.join(', ');
}

/**
 * What the access audit costs ListMessages(50) (issue 9): `list-50` (audit on) against `list-50-noaudit`
 * (the same calls to a service process with AUDIT_ENABLED=false), as ratios with ÷ without.
 */
function auditCost(outcomes: readonly ScenarioOutcome[]) {
  const on = outcomes.find((o) => o.name === 'list-50');
  const off = outcomes.find((o) => o.name === 'list-50-noaudit');
  const both = isValid(on) && isValid(off);
  const div = (a: number | undefined, b: number | undefined) => (both && a !== undefined && b ? a / b : undefined);
  return {
    on,
    off,
    throughput: div(on?.load?.callsPerSecond, off?.load?.callsPerSecond),
    p50: div(on?.load?.p50Ms, off?.load?.p50Ms),
    p99: div(on?.load?.p99Ms, off?.load?.p99Ms),
    serviceCpu: div(cpuMsPerCall(on, 'service'), cpuMsPerCall(off, 'service')),
    postgresCpu: div(cpuMsPerCall(on, 'postgres'), cpuMsPerCall(off, 'postgres')),
  };
}

/**
 * CPU per OK call in the window, ms: less sensitive to other load on the machine than calls/s and
 * latency, which move with whatever else runs.
 */
function cpuMsPerCall(o: ScenarioOutcome | undefined, who: 'service' | 'postgres'): number | undefined {
  const pct = o?.cpu?.[who];
  const rate = o?.load?.callsPerSecond;
  return pct === undefined || !rate ? undefined : (pct * 10) / rate;
}

function ratios(o: ScenarioOutcome, base: ScenarioOutcome | undefined) {
  if (!o.load || !isValid(base) || o.load.okCalls === 0) return { throughput: undefined, p99: undefined };
  return {
    throughput: o.load.callsPerSecond / base.load.callsPerSecond,
    p99: o.load.p99Ms !== undefined && base.load.p99Ms ? o.load.p99Ms / base.load.p99Ms : undefined,
  };
}

interface TargetCheck {
  readonly label: string;
  readonly requirement: string;
  readonly measured: string;
  readonly result: 'PASS' | 'MISS' | 'INVALID' | 'NOT RUN';
}

function checkTargets(outcomes: readonly ScenarioOutcome[]): TargetCheck[] {
  const base = outcomes.find((o) => o.name === 'baseline');
  return TARGETS.map((t) => {
    const o = outcomes.find((x) => x.name === t.scenario);
    const requirement =
      `calls/s ≥ ${t.minThroughputRatio}× baseline` + (t.maxP99Ratio ? `, p99 ≤ ${t.maxP99Ratio}× baseline p99` : '');
    if (!o || !base) return { label: t.label, requirement, measured: '—', result: 'NOT RUN' };
    if (!isValid(o) || !isValid(base)) {
      const why = !isValid(base) ? 'baseline invalid' : o.setupError ? 'setup failed' : 'errors';
      return { label: t.label, requirement, measured: why, result: 'INVALID' };
    }
    const r = ratios(o, base);
    const okThroughput = (r.throughput ?? 0) >= t.minThroughputRatio;
    const okP99 = t.maxP99Ratio === undefined || (r.p99 !== undefined && r.p99 <= t.maxP99Ratio);
    const measured = `${ratio(r.throughput)} calls/s` + (t.maxP99Ratio ? `, ${ratio(r.p99)} p99` : '');
    return { label: t.label, requirement, measured, result: okThroughput && okP99 ? 'PASS' : 'MISS' };
  });
}

/** The markdown report. */
export function markdown(info: RunInfo, outcomes: readonly ScenarioOutcome[]): string {
  const c = info.config;
  const base = outcomes.find((o) => o.name === 'baseline');
  const lines: string[] = [];
  lines.push(`## Benchmark run ${info.startedAt}`, '');
  lines.push(
    `- Machine: ${info.machine}; load generator, service and PostgreSQL share it, all on loopback.`,
    `- Node ${info.node}; ${info.database}; commit ${info.commit}.`,
    `- Concurrency ${c.concurrency} calls in flight from ${c.processes} load processes × ${c.channels} channels; ` +
      `${c.warmupSeconds} s warm-up, then ${c.seconds} s measured per scenario; bodies of ${c.bodyBytes} bytes.`,
    `- Command: \`${info.command}\``,
    '',
  );
  lines.push(
    '| scenario | calls/s | p50 ms | p99 ms | p99.9 ms | errors | throughput ratio to baseline | p99 ratio to baseline |',
    '|---|---:|---:|---:|---:|---|---:|---:|',
  );
  for (const o of outcomes) {
    const l = o.load;
    const r = ratios(o, base);
    lines.push(
      `| ${o.name} | ${l ? num(l.callsPerSecond, 0) : '—'} | ${num(l?.p50Ms, 2)} | ${num(l?.p99Ms, 2)} | ` +
        `${num(l?.p999Ms, 2)} | ${errorsCell(o)} | ${ratio(r.throughput)} | ${ratio(r.p99)} |`,
    );
  }
  lines.push('', `Targets (issue 4, concurrency ${c.concurrency}, ratios to the baseline of this run):`, '');
  lines.push('| target | requirement | measured | result |', '|---|---|---|---|');
  for (const t of checkTargets(outcomes)) {
    lines.push(`| ${t.label} | ${t.requirement} | ${t.measured} | ${t.result} |`);
  }
  const cost = auditCost(outcomes);
  if (cost.on || cost.off) {
    lines.push(
      '',
      'Access audit cost (issue 9): ListMessages(50) with the audit on (`list-50`) and off (`list-50-noaudit`, ' +
        'a second service process with `AUDIT_ENABLED=false`); audit rows counted in `access_audit` after each ' +
        'scenario (warm-up and window):',
      '',
      '| scenario | audit | calls/s | p50 ms | p99 ms | service CPU ms/call | PostgreSQL CPU ms/call | OK calls | audit rows written | message ids recorded |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    );
    for (const [o, label] of [
      [cost.on, 'on'],
      [cost.off, 'off'],
    ] as const) {
      if (!o) continue;
      const l = o.load;
      const a = o.audit;
      lines.push(
        `| ${o.name}${isValid(o) ? '' : ' (INVALID)'} | ${label} | ${l ? num(l.callsPerSecond, 0) : '—'} | ` +
          `${num(l?.p50Ms, 2)} | ${num(l?.p99Ms, 2)} | ${num(cpuMsPerCall(o, 'service'), 3)} | ` +
          `${num(cpuMsPerCall(o, 'postgres'), 3)} | ${a?.calls ?? '—'} | ${a?.rows ?? '—'} | ${a?.messageIds ?? '—'} |`,
      );
    }
    lines.push(
      `| **ratio on ÷ off** | | **${ratio(cost.throughput)}** | **${ratio(cost.p50)}** | **${ratio(cost.p99)}** | ` +
        `${ratio(cost.serviceCpu)} | ${ratio(cost.postgresCpu)} | | | |`,
      '',
      'The figures of two windows run one after the other: other load on the machine moves calls/s and latency ' +
        'between them (see "anything else" below); CPU per call moves much less.',
    );
  }
  lines.push(
    '',
    `CPU during the measurement window, in % of one core (${info.cores} cores = ${100 * info.cores} %):`,
    '',
  );
  lines.push(
    '| scenario | load generator | service | baseline server | postgres | anything else | whole machine | iowait |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  );
  let disturbed = false;
  for (const o of outcomes) {
    if (!o.load) continue;
    const u = o.cpu ?? {};
    const others = othersPercent(o);
    if (others !== undefined && others > 20) disturbed = true;
    lines.push(
      `| ${o.name} | ${num(o.load.loadgenCpuPercent, 0)} | ${num(u.service, 0)} | ${num(u.baseline, 0)} | ` +
        `${num(u.postgres, 0)} | ${num(others, 0)} | ${num(u.machineBusy, 0)} | ${num(u.machineIowait, 0)} |`,
    );
  }
  if (disturbed) {
    lines.push(
      '',
      '**Warning:** other processes used more than 20 % of a core during a window; this run is disturbed, ' +
        'rerun it on a quiet machine before comparing figures.',
    );
  }
  const samples = outcomes.flatMap((o) =>
    Object.entries(o.load?.errorSamples ?? {}).map(([code, msg]) => `- ${o.name}, ${code}: ${msg}`),
  );
  const setups = outcomes.filter((o) => o.setupError).map((o) => `- ${o.name}: ${o.setupError}`);
  setups.push(...outcomes.filter((o) => o.auditProblem).map((o) => `- ${o.name}, audit check: ${o.auditProblem}`));
  if (samples.length > 0 || setups.length > 0) {
    lines.push(
      '',
      'Errors (a scenario with any error is invalid; one sample message per code):',
      '',
      ...setups,
      ...samples,
    );
  }
  lines.push('', 'Scenarios:', '');
  for (const o of outcomes) lines.push(`- ${o.name}: ${SCENARIOS[o.name]}`);
  return lines.join('\n') + '\n';
}

/** CPU used by processes that are not part of the benchmark (another job on the machine). */
function othersPercent(o: ScenarioOutcome): number | undefined {
  const u = o.cpu;
  if (!o.load || u?.machineBusy === undefined) return undefined;
  const ours = o.load.loadgenCpuPercent + (u.service ?? 0) + (u.baseline ?? 0) + (u.postgres ?? 0);
  return Math.max(0, u.machineBusy - ours);
}

const round = (v: number | undefined) => (v === undefined ? null : Math.round(v * 100) / 100);

/** The same report as plain data. */
export function json(info: RunInfo, outcomes: readonly ScenarioOutcome[]): unknown {
  const base = outcomes.find((o) => o.name === 'baseline');
  return {
    startedAt: info.startedAt,
    command: info.command,
    machine: info.machine,
    cores: info.cores,
    node: info.node,
    database: info.database,
    commit: info.commit,
    config: { ...info.config, scenarios: info.config.scenarios.join(',') },
    scenarios: Object.fromEntries(
      outcomes.map((o) => {
        const l = o.load;
        const r = ratios(o, base);
        return [
          o.name,
          {
            description: SCENARIOS[o.name],
            valid: isValid(o),
            setupError: o.setupError ?? null,
            callsPerSecond: round(l?.callsPerSecond),
            okCalls: l?.okCalls ?? null,
            p50Ms: round(l?.p50Ms),
            p99Ms: round(l?.p99Ms),
            p999Ms: round(l?.p999Ms),
            meanMs: round(l?.meanMs),
            maxMs: round(l?.maxMs),
            errors: l?.errors ?? {},
            errorsInWindow: l?.errorsInWindow ?? {},
            errorSamples: l?.errorSamples ?? {},
            audit: o.audit ?? null,
            auditProblem: o.auditProblem ?? null,
            throughputRatioToBaseline: round(r.throughput),
            p99RatioToBaseline: round(r.p99),
            cpuPercentOfOneCore: {
              loadgen: round(l?.loadgenCpuPercent),
              service: round(o.cpu?.service),
              baseline: round(o.cpu?.baseline),
              postgres: round(o.cpu?.postgres),
              others: round(othersPercent(o)),
              machine: round(o.cpu?.machineBusy),
              iowait: round(o.cpu?.machineIowait),
            },
          },
        ];
      }),
    ),
    targets: Object.fromEntries(checkTargets(outcomes).map((t) => [t.label, { ...t }])),
    auditCost: (() => {
      const cost = auditCost(outcomes);
      if (!cost.on || !cost.off) return null;
      return {
        throughputRatio: round(cost.throughput),
        p50Ratio: round(cost.p50),
        p99Ratio: round(cost.p99),
        serviceCpuPerCallRatio: round(cost.serviceCpu),
        postgresCpuPerCallRatio: round(cost.postgresCpu),
        cpuMsPerCall: Object.fromEntries(
          [cost.on!, cost.off!].map((o) => [
            o.name,
            { service: round(cpuMsPerCall(o, 'service')), postgres: round(cpuMsPerCall(o, 'postgres')) },
          ]),
        ),
      };
    })(),
  };
}
