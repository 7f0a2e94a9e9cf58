/**
 * The soak's report: the verdict (errors, deliveries, RSS growth), the calls per kind, the delivery
 * check, RSS per replica, and the per-minute series of throughput, p99, RSS and CPU; plus the same as
 * JSON (with the 10-second series).
 */
import type { RunInfo as CommonRunInfo } from '../common.js';
import { type Delivery, deliveryClean, type Percentiles } from '../feeds/analysis.js';
import { type Kind, KINDS } from './protocol.js';

export type Dispatch = 'none' | 'a' | 'both';

export interface SoakConfig {
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly streams: number;
  readonly threads: number;
  readonly concurrency: number;
  readonly mix: Readonly<Record<Kind, number>>;
  readonly processes: number;
  readonly channels: number;
  readonly markBatch: number;
  readonly pageSize: number;
  readonly bodyBytes: number;
  readonly seedMessages: number;
  readonly senders: number;
  readonly subscriberProcesses: number;
  readonly streamsPerChannel: number;
  readonly openConcurrency: number;
  readonly intervalSeconds: number;
  readonly drainSeconds: number;
  readonly deadlineMs: number;
  readonly dispatch: Dispatch;
  readonly rssLimitPercent: number;
}

export type RunInfo = CommonRunInfo<SoakConfig>;

/** One interval of the series (10 s by default; the first warm-up one may be shorter). */
export interface IntervalRow {
  readonly index: number;
  /** Start, seconds from the end of the warm-up (negative during the warm-up). */
  readonly from: number;
  readonly seconds: number;
  readonly ok: Record<Kind, number>;
  readonly callsPerSecond: number;
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly p99ByKind: Record<Kind, number | undefined>;
  readonly errors: number;
  readonly okPerReplica: readonly number[];
  /** Bench messages received by the streams during the interval. */
  readonly deliveries: number | undefined;
  /** Receipt − sent_at of the messages sent in the interval, p99. */
  readonly deliveryP99Ms: number | undefined;
  /** VmRSS of each replica at the interval's end, MB. */
  readonly rssMb: readonly (number | undefined)[];
  /** V8 heap used (and external memory) of each replica at the interval's end, MB (its metrics endpoint). */
  readonly heapUsedMb: readonly (number | undefined)[];
  readonly externalMb: readonly (number | undefined)[];
  /** Server streams open on each replica at the interval's end. */
  readonly streamsOpen: readonly (number | undefined)[];
  /** pg-boss jobs queued (not yet fetched) at the interval's end. */
  readonly jobsQueued: number | undefined;
  /** % of one core during the interval. */
  readonly cpu: {
    readonly replicas: readonly (number | undefined)[];
    readonly postgres: number | undefined;
    readonly machine: number | undefined;
  };
}

export interface KindFigures extends Percentiles {
  readonly callsPerSecond: number;
}

export interface RssFigures {
  readonly replica: string;
  readonly pid: number | undefined;
  readonly notifyDispatch: boolean;
  /** After the streams opened, before the load. */
  readonly startMb: number | undefined;
  readonly warmupEndMb: number | undefined;
  readonly endMb: number | undefined;
  /** Highest and lowest sample after the warm-up (end included). */
  readonly maxAfterWarmupMb: number | undefined;
  readonly minAfterWarmupMb: number | undefined;
  /** After the drain, streams still open. */
  readonly afterDrainMb: number | undefined;
  /** (end − warm-up end) / warm-up end, %. */
  readonly growthPercent: number | undefined;
  /** V8 heap used at the end of the warm-up and at the end, MB. */
  readonly heapWarmupEndMb: number | undefined;
  readonly heapEndMb: number | undefined;
  /** Server streams open on the replica at the end (its metrics endpoint). */
  readonly streamsOpenAtEnd: number | undefined;
  readonly met: boolean | undefined;
}

export interface SoakOutcome {
  readonly tenant: string;
  readonly setup: {
    readonly threads: number;
    readonly seededMessages: number;
    readonly streamsOpened: number;
    readonly streamsFailed: number;
    readonly openMs: number;
    readonly setupSeconds: number;
  };
  readonly window: { readonly seconds: number };
  readonly total: Percentiles & { readonly callsPerSecond: number };
  readonly byKind: Record<Kind, KindFigures>;
  readonly callsStarted: number;
  /** Every non-OK answer (warm-up, window and drain), by kind and code. */
  readonly errors: Record<Kind, Record<string, number>>;
  readonly errorCount: number;
  readonly errorSamples: Record<string, string>;
  readonly sendsOk: number;
  /** pg-boss jobs queued at the end of the warm-up and at the end (every send queues its recipient's push). */
  readonly jobsQueued: { readonly warmupEnd: number | undefined; readonly end: number | undefined };
  /** OK calls answered by each replica over the window. */
  readonly okPerReplica: readonly number[];
  /**
   * Feed events per thread (messages and receipt events, one per OK send or MarkRead) since the streams
   * opened, at the end of the warm-up and at the end: what each replica's tail caches hold, up to
   * FEED_CACHE_EVENTS per watched thread.
   */
  readonly eventsPerThread: { readonly warmupEnd: number; readonly end: number; readonly cacheEvents: number };
  readonly delivery: Delivery;
  /** Receipt − sent_at of the messages sent in the window. */
  readonly deliveryLatency: Percentiles;
  readonly drainMs: number | undefined;
  readonly rss: readonly RssFigures[];
  readonly cpu: {
    readonly replicas: readonly (number | undefined)[];
    readonly postgres: number | undefined;
    readonly machine: number | undefined;
    /** Load processes and subscriber processes, over the window. */
    readonly load: number | undefined;
    readonly subscribers: number | undefined;
  };
  readonly serviceWarnings: readonly { readonly replica: string; readonly counts: Record<string, number> }[];
  readonly series: readonly IntervalRow[];
  readonly invalid: readonly string[];
}

const f = (v: number | undefined, digits = 1) => (v === undefined || Number.isNaN(v) ? '—' : v.toFixed(digits));
const n0 = (v: number) => Math.round(v).toLocaleString('en-US');

export function markdown(info: RunInfo, o: SoakOutcome, minuteRows: readonly MinuteRow[]): string {
  const c = info.config;
  const lines: string[] = [];
  const out = (s = '') => lines.push(s);
  out(`# Soak (\`npm run bench:soak\`)`);
  out();
  out(`- started ${info.startedAt}; command: \`${info.command}\``);
  out(`- machine: ${info.machine}; Node ${info.node}; commit ${info.commit}`);
  out(`- database: ${info.database}`);
  out(
    `- two service replicas (A, B) on one fresh database; NOTIFY_DISPATCH: A ${c.dispatch === 'none' ? 'false' : 'true'}, ` +
      `B ${c.dispatch === 'both' ? 'true' : 'false'}`,
  );
  out(
    `- ${c.warmupSeconds} s warm-up + ${c.seconds} s measured; ${c.concurrency} calls in flight (closed loop) from ` +
      `${c.processes} processes, mix ${KINDS.map((k) => `${k} ${c.mix[k]}`).join(' / ')}, calls alternating between the replicas`,
  );
  out(
    `- ${o.setup.streamsOpened} WatchThread streams over ${o.setup.threads} threads, half on each replica ` +
      `(opened in ${f(o.setup.openMs / 1000)} s, ${o.setup.streamsFailed} failed), held open the whole run; ` +
      `${o.setup.seededMessages} messages seeded before; setup ${f(o.setup.setupSeconds)} s`,
  );
  out();

  const valid = o.invalid.length === 0;
  out(`## Verdict: ${valid ? 'valid' : '**INVALID**'}`);
  out();
  out('| criterion | measured | result |');
  out('|---|---|---|');
  out(
    `| no failed call (every kind, warm-up and drain included) | ${o.errorCount} errors | ${o.errorCount === 0 ? 'met' : '**INVALID**'} |`,
  );
  const d = o.delivery;
  out(
    `| every stream receives every message of its thread exactly once | ${n0(d.delivered)} of ${n0(d.expected)} expected; ` +
      `${d.missing} missing, ${d.duplicated} duplicated, ${d.unexpected} unexpected, ${d.seqGaps + d.seqRepeats} sequence faults, ` +
      `${Object.values(d.errors).reduce((a, b) => a + b, 0)} stream errors | ${deliveryClean(d) && d.delivered === d.expected ? 'met' : '**INVALID**'} |`,
  );
  for (const r of o.rss) {
    out(
      `| replica ${r.replica}: RSS growth after warm-up ≤ ${c.rssLimitPercent} % | ${f(r.warmupEndMb, 0)} → ${f(r.endMb, 0)} MB ` +
        `(${r.growthPercent === undefined ? '—' : `${r.growthPercent >= 0 ? '+' : ''}${f(r.growthPercent)} %`}) | ` +
        `${r.met === undefined ? '—' : r.met ? 'met' : '**missed**'} |`,
    );
  }
  if (!valid) {
    out();
    for (const reason of o.invalid) out(`- INVALID: ${reason}`);
  }
  out();

  out('## Calls (measured window)');
  out();
  out('| call | OK calls | calls/s | p50 ms | p99 ms | p99.9 ms | max ms | errors (whole run) |');
  out('|---|---:|---:|---:|---:|---:|---:|---|');
  const errs = (k: Kind) => {
    const e = Object.entries(o.errors[k]);
    return e.length === 0 ? '0' : e.map(([code, n]) => `${code} ${n}`).join(', ');
  };
  for (const k of KINDS) {
    const b = o.byKind[k];
    out(
      `| ${k} | ${n0(b.count)} | ${f(b.callsPerSecond)} | ${f(b.p50, 2)} | ${f(b.p99, 2)} | ${f(b.p999, 2)} | ${f(b.max, 2)} | ${errs(k)} |`,
    );
  }
  const t = o.total;
  out(
    `| **all** | ${n0(t.count)} | ${f(t.callsPerSecond)} | ${f(t.p50, 2)} | ${f(t.p99, 2)} | ${f(t.p999, 2)} | ${f(t.max, 2)} | ${o.errorCount} |`,
  );
  out();
  out(
    `Latency: request sent → answer decoded in the load process, OK calls answered in the window ` +
      `(${o.okPerReplica.map((v, i) => `${n0(v)} by replica ${String.fromCharCode(65 + i)}`).join(', ')}). ` +
      `${n0(o.callsStarted)} calls started in all (warm-up and drain included).`,
  );
  if (Object.keys(o.errorSamples).length > 0) {
    out();
    for (const [k, m] of Object.entries(o.errorSamples)) out(`- ${k}: ${m.slice(0, 300)}`);
  }
  out();

  out('## Streams');
  out();
  out(
    '| streams | messages sent OK | deliveries expected | received | missing | duplicated | unexpected | seq gaps / repeats | other events | heartbeats | stream errors | delivery p50 / p99 / max ms | drain |',
  );
  out('|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|');
  const streamErrors = Object.entries(d.errors);
  const dl = o.deliveryLatency;
  out(
    `| ${d.streams} | ${n0(o.sendsOk)} | ${n0(d.expected)} | ${n0(d.delivered)} | ${d.missing} | ${d.duplicated} | ${d.unexpected} | ` +
      `${d.seqGaps} / ${d.seqRepeats} | ${n0(d.otherEvents)} | ${n0(d.heartbeats)} | ` +
      `${streamErrors.length === 0 ? '0' : streamErrors.map(([code, n]) => `${code} ${n}`).join(', ')} | ` +
      `${f(dl.p50)} / ${f(dl.p99)} / ${f(dl.max)} | ${o.drainMs === undefined ? '—' : `${f(o.drainMs / 1000)} s`} |`,
  );
  out();
  out(
    'Every stream must receive every message sent OK into its thread exactly once, with resume-token sequence ' +
      'numbers stepping by one (receipt events count as "other events"). Delivery latency: receipt − the message\'s ' +
      '`sent_at`, messages sent in the window. Drain: last call answered → last delivery.',
  );
  for (const [code, m] of Object.entries(d.errorSamples)) out(`- stream ${code}: ${m.slice(0, 300)}`);
  out();

  out('## RSS per replica (VmRSS, MB)');
  out();
  out(
    '| replica | NOTIFY_DISPATCH | start (streams open, no load) | end of warm-up | end | growth | min / max after warm-up | after drain | V8 heap used, warm-up end → end | streams open at end |',
  );
  out('|---|---|---:|---:|---:|---:|---|---:|---|---:|');
  for (const r of o.rss) {
    out(
      `| ${r.replica} (pid ${r.pid ?? '?'}) | ${r.notifyDispatch} | ${f(r.startMb, 0)} | ${f(r.warmupEndMb, 0)} | ${f(r.endMb, 0)} | ` +
        `${r.growthPercent === undefined ? '—' : `${r.growthPercent >= 0 ? '+' : ''}${f(r.growthPercent)} %`} | ` +
        `${f(r.minAfterWarmupMb, 0)} / ${f(r.maxAfterWarmupMb, 0)} | ${f(r.afterDrainMb, 0)} | ` +
        `${f(r.heapWarmupEndMb, 0)} → ${f(r.heapEndMb, 0)} | ${r.streamsOpenAtEnd ?? '—'} |`,
    );
  }
  out();
  out(
    'RSS is VmRSS from `/proc/<pid>/status`, sampled every interval; the criterion compares the sample at the end ' +
      "of the warm-up with the one at the end. V8 heap used and open streams come from each replica's metrics " +
      'endpoint (`comms_nodejs_heap_size_used_bytes`, `comms_streams_open`) at the same moments.',
  );
  out();
  const e = o.eventsPerThread;
  out(
    `Feed events per thread since the streams opened (one per message sent, one per MarkRead): ${f(e.warmupEnd)} at the ` +
      `end of the warm-up, ${f(e.end)} at the end. Each replica keeps up to FEED_CACHE_EVENTS (${e.cacheEvents}) of them ` +
      `in memory per watched thread (every thread is watched on both replicas)` +
      (e.end < e.cacheEvents
        ? ': those caches were still filling at the end, so part of any growth is theirs (bounded), not a leak.'
        : e.warmupEnd >= e.cacheEvents
          ? '; they were full before the measured window began.'
          : '; they were full by the end.'),
  );
  out();
  const dispatching = o.rss.filter((r) => r.notifyDispatch).map((r) => r.replica);
  out(
    `Notification jobs queued (\`comms_job_queue_jobs\`, pg-boss's own counts, which it refreshes about once a minute, ` +
      `so they lag): ${o.jobsQueued.warmupEnd ?? '—'} at the end of the warm-up, ${o.jobsQueued.end ?? '—'} at the end; ` +
      (dispatching.length === 0
        ? "no replica dispatches (NOTIFY_DISPATCH=false on both), so every send's job waits in the database."
        : `dispatched by replica ${dispatching.join(' and ')}.`),
  );
  out();

  out('## Per minute');
  out();
  out(
    '| minute | calls/s | p99 ms | send p99 | markRead p99 | list p99 | errors | deliveries/s | delivery p99 ms | RSS A / B MB | heap used A / B MB | external A / B MB | CPU A / B / postgres / machine % |',
  );
  out('|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|');
  for (const m of minuteRows) {
    out(
      `| ${m.label} | ${f(m.callsPerSecond)} | ${f(m.p99Ms, 1)} | ${f(m.p99ByKind.send)} | ${f(m.p99ByKind.markRead)} | ` +
        `${f(m.p99ByKind.list)} | ${m.errors} | ${f(m.deliveriesPerSecond)} | ${f(m.deliveryP99Ms)} | ` +
        `${m.rssMb.map((v) => f(v, 0)).join(' / ')} | ${m.heapUsedMb.map((v) => f(v, 0)).join(' / ')} | ${m.externalMb.map((v) => f(v, 0)).join(' / ')} | ${[...m.cpu.replicas, m.cpu.postgres, m.cpu.machine].map((v) => f(v, 0)).join(' / ')} |`,
    );
  }
  out();
  out(
    'RSS, V8 heap used and external memory (`comms_nodejs_external_memory_bytes`: ArrayBuffers and Buffers) at the end of each minute; CPU in % of one core, averaged over the minute (the machine has ' +
      `${info.cores} cores: ${info.cores * 100} % is all of it). The 10-second series is in the JSON.`,
  );
  out();
  out(
    `CPU over the window: replica ${o.cpu.replicas.map((v, i) => `${String.fromCharCode(65 + i)} ${f(v, 0)} %`).join(', ')}, ` +
      `PostgreSQL ${f(o.cpu.postgres, 0)} %, load processes ${f(o.cpu.load, 0)} %, subscriber processes ${f(o.cpu.subscribers, 0)} %, ` +
      `machine ${f(o.cpu.machine, 0)} %.`,
  );
  const warned = o.serviceWarnings.filter((w) => Object.keys(w.counts).length > 0);
  out();
  if (warned.length === 0) out('No line at level warn or above in either replica log.');
  for (const w of warned) {
    out(
      `Replica ${w.replica} logged at warn or above: ${Object.entries(w.counts)
        .map(([m, n]) => `"${m.slice(0, 120)}" × ${n}`)
        .join('; ')} (bench/results/soak-service-${w.replica.toLowerCase()}.log).`,
    );
  }
  out();
  return lines.join('\n');
}

/** One row of the per-minute table. */
export interface MinuteRow {
  readonly label: string;
  readonly seconds: number;
  readonly callsPerSecond: number;
  readonly p99Ms: number | undefined;
  readonly p99ByKind: Record<Kind, number | undefined>;
  readonly errors: number;
  readonly deliveriesPerSecond: number | undefined;
  readonly deliveryP99Ms: number | undefined;
  readonly rssMb: readonly (number | undefined)[];
  readonly heapUsedMb: readonly (number | undefined)[];
  readonly externalMb: readonly (number | undefined)[];
  readonly cpu: IntervalRow['cpu'];
}

export function json(info: RunInfo, o: SoakOutcome, minuteRows: readonly MinuteRow[]): unknown {
  return { ...info, outcome: o, minutes: minuteRows };
}
