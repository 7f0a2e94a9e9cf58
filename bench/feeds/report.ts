/**
 * The feed benchmark's report: a summary table (service against the raw streaming baseline per
 * scenario), the issue-5 targets, the per-subscriber delivery check, latency detail, CPU and errors;
 * plus the same as JSON.
 */
import type { RunInfo as CommonRunInfo } from '../common.js';
import { type Analysis, deliveryClean, type Percentiles } from './analysis.js';
import type { Target } from './protocol.js';

export const FEED_SCENARIOS = {
  fanout: 'one thread, many subscribers (staff) split over the replicas; messages at a fixed rate',
  spread: 'many threads, one subscriber each (a participant), split over the replicas; sends spread over the threads',
  idle: 'idle streams all on one replica (one replica process): RSS before and after opening them',
} as const;

export type FeedScenario = keyof typeof FEED_SCENARIOS;

export interface FeedConfig {
  readonly scenarios: readonly FeedScenario[];
  readonly targets: readonly Target[];
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly subscribers: number;
  readonly fanoutRate: number;
  readonly threads: number;
  readonly spreadRate: number;
  readonly idleStreams: number;
  readonly idleSettleSeconds: number;
  readonly replicas: number;
  readonly processes: number;
  readonly streamsPerChannel: number;
  readonly clientWindow: number;
  readonly openConcurrency: number;
  readonly senders: number;
  readonly maxInFlight: number;
  readonly bodyBytes: number;
  readonly drainSeconds: number;
  readonly deadlineMs: number;
}

export type RunInfo = CommonRunInfo<FeedConfig>;

export interface Cpu {
  /** % of one core, during the window. */
  readonly subscribers: number;
  readonly sender: number | undefined;
  /** Per replica (service replicas or baseline processes, whichever is measured). */
  readonly servers: readonly (number | undefined)[];
  readonly postgres: number | undefined;
  readonly machine: number | undefined;
}

/** What every measured scenario says of the streams it opened against its target. */
interface StreamsOutcome {
  readonly target: Target;
  readonly streams: number;
  readonly threads: number;
  readonly opened: number;
  readonly openFailed: number;
  readonly openMs: number;
}

export interface LiveOutcome extends StreamsOutcome {
  readonly kind: 'live';
  readonly scenario: 'fanout' | 'spread';
  readonly offeredRate: number;
  readonly messages: number;
  readonly messagesOk: number;
  readonly windowSeconds: number;
  /** OK sends issued in the window per second (service), or messages written per second (baseline). */
  readonly achievedRate: number;
  /** SendMessage call latency of the window's sends (service only). */
  readonly sendCall: Percentiles | undefined;
  readonly sendErrors: Record<string, number>;
  readonly sendErrorSamples: Record<string, string>;
  /** Messages issued (service) or written (baseline) more than 50 ms late. */
  readonly late: number;
  readonly analysis: Analysis;
  /** VmRSS per replica at the end of the window, MB. */
  readonly rssMb: readonly (number | undefined)[];
  readonly cpu: Cpu;
  /** From the last message issued to the last delivery, ms. */
  readonly drainMs: number | undefined;
}

export interface IdleOutcome extends StreamsOutcome {
  readonly kind: 'idle';
  readonly scenario: 'idle';
  readonly rssBeforeMb: number | undefined;
  readonly rssAfterMb: number | undefined;
  /** Streams the baseline server says are open (the service exposes no such count). */
  readonly serverOpen: number | undefined;
  readonly heartbeats: number;
  readonly errors: Record<string, number>;
  readonly errorSamples: Record<string, string>;
}

export interface FailedOutcome {
  readonly kind: 'failed';
  readonly scenario: FeedScenario;
  readonly target: Target;
  readonly error: string;
}

export type Outcome = LiveOutcome | IdleOutcome | FailedOutcome;

export function isValid(o: Outcome | undefined): boolean {
  if (!o || o.kind === 'failed') return false;
  if (o.kind === 'idle') return o.openFailed === 0 && Object.keys(o.errors).length === 0;
  return (
    o.openFailed === 0 &&
    Object.keys(o.sendErrors).length === 0 &&
    o.messagesOk > 0 &&
    deliveryClean(o.analysis.delivery)
  );
}

const TARGET_P99_MS = 250;
const TARGET_RSS_MB = 600;

const num = (v: number | undefined, digits = 1) => (v === undefined || Number.isNaN(v) ? '—' : v.toFixed(digits));
const letters = (i: number) => String.fromCharCode(65 + i);
const rssCell = (rss: readonly (number | undefined)[]) => rss.map((v, i) => `${letters(i)} ${num(v, 0)}`).join(' / ');

function find(outcomes: readonly Outcome[], scenario: FeedScenario, target: Target): Outcome | undefined {
  return outcomes.find((o) => o.scenario === scenario && o.target === target);
}

function label(c: FeedConfig, scenario: FeedScenario): string {
  switch (scenario) {
    case 'fanout':
      return `fanout: 1 thread × ${c.subscribers} subscribers, ${c.fanoutRate} msg/s`;
    case 'spread':
      return `spread: ${c.threads} threads × 1 subscriber, ${c.spreadRate} msg/s offered`;
    case 'idle':
      return `idle: ${c.idleStreams} idle streams on one replica`;
  }
}

/** How much the idle streams grew their process: MB in all, and KB per stream open. */
function growth(o: IdleOutcome): { mb: number | undefined; kbPerStream: number | undefined } {
  const mb = o.rssAfterMb !== undefined && o.rssBeforeMb !== undefined ? o.rssAfterMb - o.rssBeforeMb : undefined;
  return { mb, kbPerStream: mb !== undefined && o.opened > 0 ? (mb * 1024) / o.opened : undefined };
}

/** p50, p99, events/s and RSS cells of one outcome. */
function summaryCells(o: Outcome | undefined): string[] {
  if (!o) return ['not run', '', '', ''];
  if (o.kind === 'failed') return [`failed: ${o.error.split('\n')[0]}`, '', '', ''];
  const mark = isValid(o) ? '' : ' (INVALID)';
  if (o.kind === 'idle') {
    const g = growth(o);
    return [
      '—',
      '—',
      '—',
      `${num(o.rssAfterMb, 0)} (before ${num(o.rssBeforeMb, 0)}, +${num(g.mb, 0)} = ${num(g.kbPerStream, 1)} KB/stream)${mark}`,
    ];
  }
  const a = o.analysis;
  return [num(a.fromSentAt.p50, 1) + mark, num(a.fromSentAt.p99, 1), num(a.eventsPerSecond, 0), rssCell(o.rssMb)];
}

interface TargetCheck {
  readonly label: string;
  readonly measured: string;
  readonly result: 'PASS' | 'MISS' | 'INVALID' | 'NOT RUN';
}

function checkTargets(c: FeedConfig, outcomes: readonly Outcome[]): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const fan = find(outcomes, 'fanout', 'service');
  const fanLabel =
    `p99 ≤ ${TARGET_P99_MS} ms, 1 thread × 1,000 subscribers at 20 msg/s` +
    (c.subscribers !== 1000 || c.fanoutRate !== 20 ? ` (measured at ${c.subscribers} × ${c.fanoutRate} msg/s)` : '');
  if (!fan) checks.push({ label: fanLabel, measured: '—', result: 'NOT RUN' });
  else if (fan.kind !== 'live' || !isValid(fan))
    checks.push({ label: fanLabel, measured: 'invalid', result: 'INVALID' });
  else {
    const p99 = fan.analysis.fromSentAt.p99;
    checks.push({
      label: fanLabel,
      measured: `p99 ${num(p99)} ms (sent_at → receipt)`,
      result: p99 !== undefined && p99 <= TARGET_P99_MS ? 'PASS' : 'MISS',
    });
  }
  const idle = find(outcomes, 'idle', 'service');
  const idleLabel =
    `5,000 idle streams in ≤ ${TARGET_RSS_MB} MB RSS per replica` +
    (c.idleStreams !== 5000 ? ` (measured with ${c.idleStreams})` : '');
  if (!idle) checks.push({ label: idleLabel, measured: '—', result: 'NOT RUN' });
  else if (idle.kind !== 'idle' || !isValid(idle))
    checks.push({ label: idleLabel, measured: 'invalid', result: 'INVALID' });
  else {
    checks.push({
      label: idleLabel,
      measured: `${num(idle.rssAfterMb, 0)} MB VmRSS with ${idle.opened} streams open`,
      result: idle.rssAfterMb !== undefined && idle.rssAfterMb <= TARGET_RSS_MB ? 'PASS' : 'MISS',
    });
  }
  return checks;
}

const errorsText = (errors: Record<string, number>) =>
  Object.keys(errors).length === 0
    ? '0'
    : Object.entries(errors)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ');

/** A markdown table, after a blank line, its caption and another blank line. */
function table(caption: string, header: string, separator: string, rows: readonly string[]): string[] {
  return ['', caption, '', header, separator, ...rows];
}

/** The markdown report. */
export function markdown(info: RunInfo, outcomes: readonly Outcome[]): string {
  const c = info.config;
  const lines: string[] = [];
  lines.push(`## Feed fan-out benchmark run ${info.startedAt}`, '');
  lines.push(
    `- Machine: ${info.machine}; subscribers, sender, ${c.replicas} service replicas, the baseline and PostgreSQL share it, all on loopback.`,
    `- Node ${info.node}; ${info.database}; commit ${info.commit}.`,
    `- ${c.replicas} replicas (service processes on one database; ${c.replicas} raw baseline processes); ` +
      `subscribers in ${c.processes} processes, ≤ ${c.streamsPerChannel} streams per HTTP/2 connection; ` +
      `${c.warmupSeconds} s warm-up + ${c.seconds} s measured per live scenario; bodies of ${c.bodyBytes} bytes.`,
    `- Latency = subscriber's receive time − Message.sent_at (the service stamps sent_at before its write ` +
      `transaction; the baseline stamps it when it writes), same machine clock; messages of the measured window only.`,
    `- Command: \`${info.command}\``,
    '',
  );
  lines.push(
    '| scenario | service p50 ms | service p99 ms | service events/s | service RSS MB | baseline p50 ms | baseline p99 ms | baseline events/s | baseline RSS MB |',
    '|---|---:|---:|---:|---|---:|---:|---:|---|',
  );
  for (const s of c.scenarios) {
    const sv = summaryCells(find(outcomes, s, 'service'));
    const bl = summaryCells(find(outcomes, s, 'baseline'));
    lines.push(`| ${label(c, s)} | ${sv.join(' | ')} | ${bl.join(' | ')} |`);
  }
  lines.push(
    ...table(
      'Targets (issue 5):',
      '| target | measured | result |',
      '|---|---|---|',
      checkTargets(c, outcomes).map((t) => `| ${t.label} | ${t.measured} | ${t.result} |`),
    ),
  );

  const live = outcomes.filter((o): o is LiveOutcome => o.kind === 'live');
  if (live.length > 0) {
    lines.push(
      ...table(
        'Delivery check (per subscriber: every message sent OK into its thread must arrive once; resume-token ' +
          'sequence numbers must step by one):',
        '| scenario | target | streams open | messages sent OK | deliveries due | delivered | missing (streams) | duplicated | unexpected | seq gaps / repeats | stream errors | send errors |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|',
        live.map((o) => {
          const d = o.analysis.delivery;
          return (
            `| ${o.scenario} | ${o.target} | ${o.opened}/${o.streams} | ${o.messagesOk}/${o.messages} | ${d.expected} | ` +
            `${d.delivered} | ${d.missing} (${d.streamsMissing}) | ${d.duplicated} | ${d.unexpected + d.foreign} | ` +
            `${d.seqGaps} / ${d.seqRepeats} | ${errorsText(d.errors)} | ${errorsText(o.sendErrors)} |`
          );
        }),
      ),
      ...table(
        'Latency detail, ms (window messages; "from answer" = receive − the sender getting its SendMessage answer, a lower bound):',
        '| scenario | target | deliveries | p50 | p90 | p99 | p99.9 | max | from answer p50 / p99 | rate achieved msg/s | late | SendMessage p50 / p99 | drain ms |',
        '|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|',
        live.map((o) => {
          const l = o.analysis.fromSentAt;
          const fa = o.analysis.fromAnswer;
          return (
            `| ${o.scenario} | ${o.target} | ${l.count} | ${num(l.p50)} | ${num(l.p90)} | ${num(l.p99)} | ${num(l.p999)} | ` +
            `${num(l.max)} | ${fa ? `${num(fa.p50)} / ${num(fa.p99)}` : '—'} | ${num(o.achievedRate, 1)} | ${o.late} | ` +
            `${o.sendCall ? `${num(o.sendCall.p50)} / ${num(o.sendCall.p99)}` : '—'} | ${num(o.drainMs, 0)} |`
          );
        }),
      ),
    );
    let disturbed = false;
    lines.push(
      ...table(
        `CPU during the window, % of one core (${info.cores} cores = ${100 * info.cores} %); replicas are the service's or the baseline's, whichever is measured:`,
        `| scenario | target | subscribers | sender | ${Array.from({ length: c.replicas }, (_, i) => `replica ${letters(i)}`).join(' | ')} | postgres | whole machine | anything else | replicas µs CPU per delivery | subscribers µs CPU per delivery |`,
        `|---|---|---:|---:|${'---:|'.repeat(c.replicas)}---:|---:|---:|---:|---:|`,
        live.map((o) => {
          const u = o.cpu;
          const servers = u.servers.reduce((s: number, v) => s + (v ?? 0), 0);
          const ours = u.subscribers + (u.sender ?? 0) + servers + (u.postgres ?? 0);
          const others = u.machine === undefined ? undefined : Math.max(0, u.machine - ours);
          if (others !== undefined && others > 20) disturbed = true;
          const perDelivery = (pct: number) =>
            o.analysis.eventsPerSecond > 0 ? ((pct / 100) * 1e6) / o.analysis.eventsPerSecond : undefined;
          return (
            `| ${o.scenario} | ${o.target} | ${num(u.subscribers, 0)} | ${num(u.sender, 0)} | ` +
            `${u.servers.map((v) => num(v, 0)).join(' | ')} | ${num(u.postgres, 0)} | ${num(u.machine, 0)} | ${num(others, 0)} | ` +
            `${num(perDelivery(servers), 0)} | ${num(perDelivery(u.subscribers), 0)} |`
          );
        }),
      ),
    );
    if (disturbed) {
      lines.push(
        '',
        '**Warning:** other processes used more than 20 % of a core during a window; this run is disturbed.',
      );
    }
  }
  const idle = outcomes.filter((o): o is IdleOutcome => o.kind === 'idle');
  if (idle.length > 0) {
    lines.push(
      ...table(
        'Idle streams (VmRSS of the one process holding them, before opening and after they were all caught up ' +
          `and ${c.idleSettleSeconds} s idle):`,
        '| target | streams open | threads | open time s | RSS before MB | RSS after MB | Δ MB | KB per stream | heartbeats | errors |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
        idle.map((o) => {
          const g = growth(o);
          return (
            `| ${o.target} | ${o.opened}/${o.streams}${o.serverOpen !== undefined ? ` (server: ${o.serverOpen})` : ''} | ` +
            `${o.threads} | ${num(o.openMs / 1000, 1)} | ${num(o.rssBeforeMb, 0)} | ${num(o.rssAfterMb, 0)} | ${num(g.mb, 0)} | ` +
            `${num(g.kbPerStream, 1)} | ${o.heartbeats} | ${errorsText(o.errors)} |`
          );
        }),
      ),
    );
  }
  const samples = outcomes.flatMap((o) => {
    if (o.kind === 'failed') return [`- ${o.scenario} (${o.target}): ${o.error}`];
    const streamSamples = o.kind === 'live' ? o.analysis.delivery.errorSamples : o.errorSamples;
    const sendSamples = o.kind === 'live' ? o.sendErrorSamples : {};
    return [
      ...Object.entries(streamSamples).map(([code, m]) => `- ${o.scenario} (${o.target}), stream ${code}: ${m}`),
      ...Object.entries(sendSamples).map(([code, m]) => `- ${o.scenario} (${o.target}), SendMessage ${code}: ${m}`),
    ];
  });
  if (samples.length > 0) lines.push('', 'Errors (one sample message per code):', '', ...samples);
  lines.push('', 'Scenarios:', '');
  for (const s of c.scenarios) lines.push(`- ${s}: ${FEED_SCENARIOS[s]}`);
  return lines.join('\n') + '\n';
}

const round = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? null : Math.round(v * 100) / 100);

function roundPercentiles(p: Percentiles | undefined) {
  if (!p) return null;
  return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, round(v as number | undefined)]));
}

/** Per-replica values keyed A, B, … (objects, which stay one key per line in formatted JSON). */
function byReplica(values: readonly (number | undefined)[]): Record<string, number | null> {
  return Object.fromEntries(values.map((v, i) => [letters(i), round(v)]));
}

/** The same report as plain data. */
export function json(info: RunInfo, outcomes: readonly Outcome[]): unknown {
  return {
    ...info,
    config: { ...info.config, scenarios: info.config.scenarios.join(','), targets: info.config.targets.join(',') },
    outcomes: outcomes.map((o) => {
      if (o.kind !== 'live') return { ...o, valid: isValid(o) };
      const { analysis, ...rest } = o;
      return {
        ...rest,
        cpu: undefined,
        openMs: round(o.openMs),
        drainMs: round(o.drainMs),
        valid: isValid(o),
        latencyFromSentAtMs: roundPercentiles(analysis.fromSentAt),
        latencyFromAnswerMs: roundPercentiles(analysis.fromAnswer),
        eventsPerSecond: round(analysis.eventsPerSecond),
        latencyBySecond: analysis.bySecond.map((x) => ({
          second: x.second,
          deliveries: x.deliveries,
          p50: round(x.p50),
          p99: round(x.p99),
          max: round(x.max),
        })),
        delivery: analysis.delivery,
        sendCall: roundPercentiles(o.sendCall),
        rssMb: byReplica(o.rssMb),
        cpuPercentOfOneCore: {
          subscribers: round(o.cpu.subscribers),
          sender: round(o.cpu.sender),
          servers: byReplica(o.cpu.servers),
          postgres: round(o.cpu.postgres),
          machine: round(o.cpu.machine),
        },
      };
    }),
    targets: checkTargets(info.config, outcomes),
  };
}
