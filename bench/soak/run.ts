/**
 * `npm run bench:soak`: a long mixed workload against two service replicas, for stability (issue 8).
 * Sets up a fresh database and two replicas (`node dist/src/main.js`) on it, prepares threads over gRPC
 * (bench/feeds/scene.ts), opens SOAK_STREAMS WatchThread streams over both replicas in subscriber
 * processes (bench/feeds/subscribers.ts) and holds them open, then runs a closed-loop mix of SendMessage,
 * MarkRead and ListMessages at a fixed concurrency from load processes (worker.ts) for a warm-up and the
 * measured window. Every interval (10 s) it records the calls, each replica's VmRSS, the deliveries and
 * the CPU. At the end it checks that every call answered OK and every stream received every message of
 * its thread exactly once, prints the markdown report and writes bench/results/soak-latest.md and .json.
 * Everything it starts, it stops, also on error and Ctrl-C. Exit code 1 when the run is invalid (a failed
 * call, a missing, duplicated or unexpected delivery, a stream error); an RSS growth above the limit is
 * reported as a missed target.
 */
import { loadConfig } from '../../src/infra/config/config.js';
import { intEnv, runInfo, writeReport } from '../common.js';
import { CpuSampler, rssMb } from '../cpu.js';
import {
  createDatabase,
  freePort,
  isStopping,
  runMain,
  type RunningProcess,
  settle,
  startService,
} from '../environment.js';
import { analyse, deliveryClean, percentiles } from '../feeds/analysis.js';
import { epochNow, sleep } from '../feeds/protocol.js';
import { FeedScene } from '../feeds/scene.js';
import { killSubscribers, Subscribers } from '../feeds/subscribers.js';
import { assignSlots } from '../loadgen.js';
import { logWarnings } from '../notify/check.js';
import { concat, killLoad, Load, mergeIntervals } from './load.js';
import { type IntervalData, intervalOf, type Kind, KINDS, type SoakTask } from './protocol.js';
import {
  type Dispatch,
  type IntervalRow,
  json,
  markdown,
  type MinuteRow,
  type RssFigures,
  type SoakConfig,
  type SoakOutcome,
} from './report.js';
import { seedMessages, streamPlans, threadsOf } from './scene.js';

/** Staff users watching threads beyond each thread's own patient. */
const STAFF = 50;
const REPLICAS = 2;

function log(line: string): void {
  process.stderr.write(`bench:soak: ${line}\n`);
}

function readMix(): Record<Kind, number> {
  const raw = process.env.SOAK_MIX?.trim() || '60,20,20';
  const parts = raw.split(',').map((s) => s.trim());
  if (parts.length !== 3 || parts.some((p) => !/^\d+$/.test(p)) || parts.every((p) => Number(p) === 0)) {
    throw new Error(`SOAK_MIX: must be three whole numbers send,markRead,list (e.g. 60,20,20), got "${raw}"`);
  }
  return { send: Number(parts[0]), markRead: Number(parts[1]), list: Number(parts[2]) };
}

function readDispatch(): Dispatch {
  const raw = process.env.SOAK_DISPATCH?.trim() || 'none';
  if (raw !== 'none' && raw !== 'a' && raw !== 'both') throw new Error(`SOAK_DISPATCH: none, a or both, got "${raw}"`);
  return raw;
}

function readConfig(): SoakConfig {
  const streams = intEnv('SOAK_STREAMS', 1000, 1, 100_000);
  const config: SoakConfig = {
    seconds: intEnv('SOAK_SECONDS', 600, 10, 86_400),
    warmupSeconds: intEnv('SOAK_WARMUP_SECONDS', 60, 0, 3600),
    streams,
    threads: intEnv('SOAK_THREADS', Math.ceil(streams / 4), 1, 100_000),
    concurrency: intEnv('SOAK_CONCURRENCY', 16, 1, 1024),
    mix: readMix(),
    processes: intEnv('SOAK_PROCESSES', 2, 1, 32),
    channels: intEnv('SOAK_CHANNELS', 2, 1, 64),
    markBatch: intEnv('SOAK_MARK_BATCH', 20, 1, 500),
    pageSize: intEnv('SOAK_PAGE_SIZE', 50, 1, 200),
    bodyBytes: intEnv('SOAK_BODY_BYTES', 256, 1, 16_384),
    seedMessages: intEnv('SOAK_SEED_MESSAGES', 2, 1, 1000),
    senders: intEnv('SOAK_SENDERS', 50, 1, 10_000),
    subscriberProcesses: intEnv('SOAK_SUBSCRIBER_PROCESSES', 2, 1, 32),
    streamsPerChannel: intEnv('SOAK_STREAMS_PER_CHANNEL', 25, 1, 1000),
    openConcurrency: intEnv('SOAK_OPEN_CONCURRENCY', 50, 1, 10_000),
    intervalSeconds: intEnv('SOAK_INTERVAL_SECONDS', 10, 1, 600),
    drainSeconds: intEnv('SOAK_DRAIN_SECONDS', 30, 1, 600),
    deadlineMs: intEnv('SOAK_DEADLINE_MS', 10_000, 100, 120_000),
    dispatch: readDispatch(),
    rssLimitPercent: intEnv('SOAK_RSS_LIMIT_PERCENT', 10, 0, 1000),
  };
  if (config.threads < config.processes) throw new Error('SOAK_THREADS: at least one thread per load process');
  if (config.concurrency < config.processes) throw new Error('SOAK_CONCURRENCY: at least one slot per load process');
  return config;
}

/** The knobs the command line of the report shows (the replicas' own settings pass through). */
const isKnob = (k: string) =>
  /^(SOAK_|DB_POOL_MAX$|FEED_|NOTIFY_|GRPC_MAX_|GRPC_KEEPALIVE_|RATE_LIMIT_|MAX_STREAMS_PER_CALLER$|METRICS_ENABLED$)/.test(
    k,
  );

/** What a replica's Prometheus endpoint says of its memory and streams (MB; undefined when absent). */
interface Scrape {
  readonly heapUsedMb: number | undefined;
  readonly heapTotalMb: number | undefined;
  readonly externalMb: number | undefined;
  /** Server streams open (all methods). */
  readonly streams: number | undefined;
  /** pg-boss jobs waiting in every queue (the database's, the same from every replica). */
  readonly jobsQueued: number | undefined;
}

/** Scrapes `GET /metrics` of a replica; undefined when it does not answer within 2 s. */
async function scrape(port: number | undefined): Promise<Scrape | undefined> {
  if (port === undefined) return undefined;
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return undefined;
    const text = await res.text();
    /** The sum of every sample of `name` whose labels include `label` (all samples when omitted). */
    const sum = (name: string, label = '') => {
      let total: number | undefined;
      for (const m of text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? ([0-9.eE+-]+)$`, 'gm'))) {
        if (label && !(m[1] ?? '').includes(label)) continue;
        total = (total ?? 0) + Number(m[2]);
      }
      return total;
    };
    const mb = (v: number | undefined) => (v === undefined ? undefined : v / 2 ** 20);
    return {
      heapUsedMb: mb(sum('comms_nodejs_heap_size_used_bytes')),
      heapTotalMb: mb(sum('comms_nodejs_heap_size_total_bytes')),
      externalMb: mb(sum('comms_nodejs_external_memory_bytes')),
      streams: sum('comms_streams_open'),
      jobsQueued: sum('comms_job_queue_jobs', 'state="queued"'),
    };
  } catch {
    return undefined;
  }
}

const errorTotal = (d: IntervalData) =>
  KINDS.reduce((n, k) => n + Object.values(d.errors[k]).reduce((a, b) => a + b, 0), 0);

/** What is sampled at each interval boundary: every replica's RSS and the deliveries so far. */
interface Sample {
  readonly rss: (number | undefined)[];
  readonly received: number;
  /** Per replica, from its metrics endpoint. */
  readonly metrics: (Scrape | undefined)[];
}

/**
 * Samples at each boundary (epoch ms) RSS and the subscribers' progress, and CPU over each interval
 * between boundaries. A failed progress query (a subscriber process gone) rejects `failed`.
 */
class Monitor {
  readonly samples = new Map<number, Promise<Sample>>();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #cpu: CpuSampler[][] = [];
  #fail: (err: Error) => void = () => {};
  readonly failed = new Promise<never>((_, reject) => (this.#fail = reject));

  constructor(
    readonly boundaries: readonly number[],
    private readonly services: readonly RunningProcess[],
    private readonly metricsPorts: readonly (number | undefined)[],
    private readonly subscribers: Subscribers,
  ) {
    this.failed.catch(() => {}); // observed by the run
  }

  start(): void {
    for (let i = 0; i < this.boundaries.length; i++) {
      const at = this.boundaries[i]!;
      const next = this.boundaries[i + 1];
      if (next !== undefined) {
        const samplers = this.services.map((s) => new CpuSampler(() => ({ service: s.pid })));
        for (const s of samplers) s.schedule({ start: at, end: next });
        this.#cpu.push(samplers);
      }
      let resolve: (s: Sample) => void = () => {};
      this.samples.set(at, new Promise<Sample>((r) => (resolve = r)));
      this.#timers.push(
        setTimeout(
          () => {
            const rss = this.services.map((s) => rssMb(s.pid));
            const metrics = Promise.all(this.metricsPorts.map(scrape));
            Promise.all([this.subscribers.progress(), metrics]).then(
              ([received, metrics]) => {
                resolve({ rss, received, metrics });
              },
              (err: unknown) => this.#fail(err instanceof Error ? err : new Error(String(err))),
            );
          },
          Math.max(0, at - Date.now()),
        ),
      );
    }
  }

  /** CPU of interval i (between boundaries i and i + 1), % of one core. */
  cpu(i: number): IntervalRow['cpu'] {
    const usages = (this.#cpu[i] ?? []).map((s) => s.usage());
    return {
      replicas: usages.map((u) => u.service),
      postgres: usages[0]?.postgres,
      machine: usages[0]?.machineBusy,
    };
  }

  stop(): void {
    for (const t of this.#timers) clearTimeout(t);
  }
}

async function main(): Promise<number> {
  const config = readConfig();
  const info = runInfo(config, isKnob, 'npm run bench:soak');
  const setupStarted = epochNow();
  log(
    `${config.warmupSeconds} s warm-up + ${config.seconds} s; ${config.streams} streams over ${config.threads} threads; ` +
      `${config.concurrency} calls in flight from ${config.processes} processes; dispatch: ${config.dispatch}`,
  );
  const db = await createDatabase(log);
  log(`fresh database on ${db.description}`);
  // One after the other: each replica migrates the database at start.
  const services: RunningProcess[] = [];
  // Each replica's Prometheus endpoint on a known port, for its heap and open streams (METRICS_ENABLED=false: none).
  const metricsPorts =
    process.env.METRICS_ENABLED === 'false' ? [undefined, undefined] : [await freePort(), await freePort()];
  const dispatchOf = (r: number) => config.dispatch === 'both' || (config.dispatch === 'a' && r === 0);
  for (let r = 0; r < REPLICAS; r++) {
    const letter = String.fromCharCode(65 + r);
    services.push(
      await startService(db.url, log, {
        name: `soak replica ${letter}`,
        logName: `soak-service-${letter.toLowerCase()}.log`,
        env: {
          NOTIFY_DISPATCH: String(dispatchOf(r)),
          // The per-caller limits stay on, at the service's defaults unless set (the other benches turn them
          // off): the soak's callers are many, each well under them.
          RATE_LIMIT_WRITES: process.env.RATE_LIMIT_WRITES ?? '100',
          MAX_STREAMS_PER_CALLER: process.env.MAX_STREAMS_PER_CALLER ?? '100',
          ...(metricsPorts[r] === undefined
            ? {}
            : { METRICS_HOST: '127.0.0.1', METRICS_PORT: String(metricsPorts[r]) }),
        },
      }),
    );
  }
  const addresses = services.map((s) => s.address);
  const scene = new FeedScene(addresses[0]!);
  try {
    log('preparing users and threads');
    await scene.prepare({
      providers: config.senders,
      staff: Math.max(1, Math.min(STAFF, config.streams - config.threads)),
      hot: false,
      spreadThreads: config.threads,
    });
    const seeds = await seedMessages(scene, addresses, config.seedMessages, config.bodyBytes);
    await settle(db.url);
    const plans = streamPlans(scene, config.streams, REPLICAS);
    const watchers = new Int32Array(config.threads);
    for (const p of plans) watchers[p.id % config.threads]!++;
    log(`opening ${plans.length} streams`);
    const { subscribers, opened, failed, openMs } = await Subscribers.open(
      {
        scenario: 'soak',
        target: 'service',
        addresses,
        streamsPerChannel: config.streamsPerChannel,
        clientWindow: 0,
        openConcurrency: config.openConcurrency,
        openTimeoutMs: 120_000,
        runTag: scene.runTag,
      },
      plans,
      config.subscriberProcesses,
    );
    let load: Load | undefined;
    let monitor: Monitor | undefined;
    try {
      log(`${opened} streams open (${failed} failed) in ${(openMs / 1000).toFixed(1)} s`);
      if (failed > 0) throw new Error(`${failed} of ${plans.length} streams failed to open`);

      const slotWorkers = assignSlots(config.concurrency, config.processes);
      const tasks: SoakTask[] = Array.from({ length: config.processes }, (_, w) => ({
        worker: w,
        addresses,
        channels: config.channels,
        slots: slotWorkers.filter((x) => x === w).length,
        slotBase: slotWorkers.indexOf(w),
        mix: config.mix,
        threads: threadsOf(scene, seeds, w, config.processes),
        threadCount: config.threads,
        runTag: scene.runTag,
        bodyBytes: config.bodyBytes,
        markBatch: config.markBatch,
        pageSize: config.pageSize,
        deadlineMs: config.deadlineMs,
        intervalMs: config.intervalSeconds * 1000,
      }));
      load = await Load.start(tasks);
      const setupSeconds = (epochNow() - setupStarted) / 1000;

      const I = config.intervalSeconds * 1000;
      const startAt = Date.now() + 1500;
      const windowStart = startAt + config.warmupSeconds * 1000;
      const endAt = windowStart + config.seconds * 1000;
      const boundaries = [startAt];
      for (let n = Math.ceil(-config.warmupSeconds / config.intervalSeconds); ; n++) {
        const b = windowStart + n * I;
        if (b >= endAt) break;
        if (b > startAt) boundaries.push(b);
      }
      boundaries.push(endAt);
      subscribers.window({ start: windowStart, end: endAt });

      // Collected as the run goes.
      const intervals = new Map<number, IntervalData>();
      let okSends = 0;
      let due = 0;
      const okKs: Int32Array[] = [];
      monitor = new Monitor(boundaries, services, metricsPorts, subscribers);
      monitor.start();
      log(
        `load from ${new Date(startAt).toISOString()}; measuring from +${config.warmupSeconds} s to +${(endAt - startAt) / 1000} s`,
      );
      load.go({ startAt, windowStart, endAt }, (data) => {
        intervals.set(data.index, data);
        okKs.push(data.sendKs);
        okSends += data.sendKs.length;
        for (const k of data.sendKs) due += watchers[k % config.threads]!;
        const all = concat(KINDS.map((k) => data.latencies[k])).sort();
        const s = percentiles(all);
        const from = Math.max(startAt, windowStart + data.index * I);
        const to = Math.min(endAt, windowStart + (data.index + 1) * I);
        const dueNow = due;
        // Printed once the boundary's sample (RSS, heap, deliveries so far) is in.
        void monitor!.samples
          .get(to)
          ?.then((sample) =>
            log(
              `${data.index < 0 ? 'warm-up, ' : ''}t = ${((to - windowStart) / 1000).toFixed(0)} s: ` +
                `${(s.count / ((to - from) / 1000)).toFixed(0)} calls/s, p99 ${s.p99?.toFixed(1) ?? '—'} ms, ` +
                `errors ${errorTotal(data)}; deliveries ${sample.received} (${dueNow} due by the sends answered); ` +
                `RSS ${sample.rss.map((v) => v?.toFixed(0) ?? '?').join(' / ')} MB, heap ` +
                `${sample.metrics.map((m) => m?.heapUsedMb?.toFixed(0) ?? '?').join(' / ')} MB`,
            ),
          );
      });
      const end = await Promise.race([load.finish(endAt - Date.now() + config.deadlineMs + 60_000), monitor.failed]);
      const loadDoneAt = epochNow();
      okKs.push(end.drain.sendKs);
      okSends += end.drain.sendKs.length;
      for (const k of end.drain.sendKs) due += watchers[k % config.threads]!;
      const samples = new Map<number, Sample>();
      for (const [at, p] of monitor.samples) samples.set(at, await Promise.race([p, monitor.failed]));
      monitor.stop();

      // Drain: until every due delivery arrived, or SOAK_DRAIN_SECONDS.
      const drainUntil = epochNow() + config.drainSeconds * 1000;
      let received = await subscribers.progress();
      while (received < due && epochNow() < drainUntil && !isStopping()) {
        await sleep(200);
        received = await subscribers.progress();
      }
      log(`load stopped; ${received} of ${due} deliveries arrived`);
      const rssAfterDrain = services.map((s) => rssMb(s.pid));
      const results = await subscribers.close();

      // ---- figures ----
      let maxK = -1;
      for (const ks of okKs) for (const k of ks) maxK = Math.max(maxK, k);
      const ok = new Uint8Array(maxK + 1);
      for (const ks of okKs) for (const k of ks) ok[k] = 1;
      const analysis = analyse({
        results,
        threadOfStream: plans.map((p) => p.threadId),
        threads: scene.spread.map((t) => t.threadId),
        ok,
        answerMs: undefined,
        windowFrom: 0,
        window: { start: windowStart, end: endAt },
      });
      // Delivery latency (receipt − sent_at) by the interval of sent_at; only messages sent OK.
      const deliveryByInterval = new Map<number, number[]>();
      for (const r of results) {
        for (const s of r.streams) {
          for (let j = 0; j < s.ks.length; j++) {
            const k = s.ks[j]!;
            if (k >= ok.length || !ok[k]) continue;
            const sentAt = s.sentAtMs[j]!;
            if (sentAt >= endAt) continue;
            const idx = intervalOf(sentAt, windowStart, I);
            let list = deliveryByInterval.get(idx);
            if (!list) deliveryByInterval.set(idx, (list = []));
            list.push(s.recvMs[j]! - sentAt);
          }
        }
      }
      const empty = (index: number): IntervalData => ({ ...mergeIntervals([]), index });
      const rows: IntervalRow[] = [];
      const rawByRow: IntervalData[] = [];
      for (let i = 0; i + 1 < boundaries.length; i++) {
        const from = boundaries[i]!;
        const to = boundaries[i + 1]!;
        const index = intervalOf(from, windowStart, I);
        const data = intervals.get(index) ?? empty(index);
        rawByRow.push(data);
        const seconds = (to - from) / 1000;
        const all = percentiles(concat(KINDS.map((k) => data.latencies[k])));
        const a = samples.get(from);
        const b = samples.get(to);
        rows.push({
          index,
          from: (from - windowStart) / 1000,
          seconds,
          ok: {
            send: data.latencies.send.length,
            markRead: data.latencies.markRead.length,
            list: data.latencies.list.length,
          },
          callsPerSecond: all.count / seconds,
          p50Ms: all.p50,
          p99Ms: all.p99,
          p99ByKind: {
            send: percentiles(data.latencies.send).p99,
            markRead: percentiles(data.latencies.markRead).p99,
            list: percentiles(data.latencies.list).p99,
          },
          errors: errorTotal(data),
          okPerReplica: data.okPerReplica,
          deliveries: a && b ? b.received - a.received : undefined,
          deliveryP99Ms: percentiles(Float64Array.from(deliveryByInterval.get(index) ?? [])).p99,
          rssMb: b?.rss ?? services.map(() => undefined),
          heapUsedMb: services.map((_, r) => b?.metrics[r]?.heapUsedMb),
          externalMb: services.map((_, r) => b?.metrics[r]?.externalMb),
          streamsOpen: services.map((_, r) => b?.metrics[r]?.streams),
          jobsQueued: b?.metrics.find((m) => m?.jobsQueued !== undefined)?.jobsQueued,
          cpu: monitor.cpu(i),
        });
      }

      // Per minute (the warm-up as one row).
      const minuteRows: MinuteRow[] = [];
      const groups = new Map<string, number[]>();
      rows.forEach((row, i) => {
        const label = row.from < 0 ? 'warm-up' : String(Math.floor(row.from / 60) + 1);
        groups.set(label, [...(groups.get(label) ?? []), i]);
      });
      for (const [label, idx] of groups) {
        const rs = idx.map((i) => rows[i]!);
        const raw = idx.map((i) => rawByRow[i]!);
        const seconds = rs.reduce((n, r) => n + r.seconds, 0);
        const byKind = (k: Kind) => percentiles(concat(raw.map((d) => d.latencies[k]))).p99;
        const allLat = percentiles(concat(raw.flatMap((d) => KINDS.map((k) => d.latencies[k]))));
        const deliveries = rs.every((r) => r.deliveries !== undefined)
          ? rs.reduce((n, r) => n + r.deliveries!, 0)
          : undefined;
        const avg = (get: (r: IntervalRow) => number | undefined) => {
          if (rs.some((r) => get(r) === undefined)) return undefined;
          return rs.reduce((n, r) => n + get(r)! * r.seconds, 0) / seconds;
        };
        minuteRows.push({
          // A short group (the warm-up, or a last partial minute) says how long it was.
          label: label === 'warm-up' || seconds < 59.5 ? `${label} (${Math.round(seconds)} s)` : label,
          seconds,
          callsPerSecond: allLat.count / seconds,
          p99Ms: allLat.p99,
          p99ByKind: { send: byKind('send'), markRead: byKind('markRead'), list: byKind('list') },
          errors: rs.reduce((n, r) => n + r.errors, 0),
          deliveriesPerSecond: deliveries === undefined ? undefined : deliveries / seconds,
          deliveryP99Ms: percentiles(Float64Array.from(rs.flatMap((r) => deliveryByInterval.get(r.index) ?? []))).p99,
          rssMb: rs.at(-1)!.rssMb,
          heapUsedMb: rs.at(-1)!.heapUsedMb,
          externalMb: rs.at(-1)!.externalMb,
          cpu: {
            replicas: services.map((_, s) => avg((r) => r.cpu.replicas[s])),
            postgres: avg((r) => r.cpu.postgres),
            machine: avg((r) => r.cpu.machine),
          },
        });
      }

      // The window's totals.
      const windowRaw = rawByRow.filter((_, i) => rows[i]!.from >= 0);
      const windowRows = rows.filter((r) => r.from >= 0);
      const seconds = config.seconds;
      const byKind = {} as SoakOutcome['byKind'];
      for (const k of KINDS) {
        const p = percentiles(concat(windowRaw.map((d) => d.latencies[k])));
        byKind[k] = { ...p, callsPerSecond: p.count / seconds };
      }
      const totalP = percentiles(concat(windowRaw.flatMap((d) => KINDS.map((k) => d.latencies[k]))));
      const everything = mergeIntervals([...intervals.values(), end.drain]);
      const errorCount = errorTotal(everything);
      const windowAvg = (get: (r: IntervalRow) => number | undefined) => {
        if (windowRows.length === 0 || windowRows.some((r) => get(r) === undefined)) return undefined;
        return windowRows.reduce((n, r) => n + get(r)! * r.seconds, 0) / seconds;
      };
      /** OK sends and MarkReads answered in the intervals before `t` (each appended one feed event). */
      const eventsBefore = (t: number) =>
        rows.reduce(
          (n, r) => (windowStart + (r.from + r.seconds) * 1000 <= t + 1 ? n + r.ok.send + r.ok.markRead : n),
          0,
        );
      const windowLatency: number[] = [];
      for (const [idx, list] of deliveryByInterval) if (idx >= 0) windowLatency.push(...list);

      const rss: RssFigures[] = services.map((s, r) => {
        const at = (t: number) => samples.get(t)?.rss[r];
        const startMb = at(startAt);
        const warmupEndMb = at(windowStart);
        const endMb = at(endAt);
        const after = boundaries.filter((t) => t >= windowStart).map(at);
        const known = after.filter((v): v is number => v !== undefined);
        const growthPercent =
          warmupEndMb !== undefined && endMb !== undefined ? ((endMb - warmupEndMb) / warmupEndMb) * 100 : undefined;
        return {
          replica: String.fromCharCode(65 + r),
          pid: s.pid,
          notifyDispatch: dispatchOf(r),
          startMb,
          warmupEndMb,
          endMb,
          maxAfterWarmupMb: known.length > 0 ? Math.max(...known) : undefined,
          minAfterWarmupMb: known.length > 0 ? Math.min(...known) : undefined,
          afterDrainMb: rssAfterDrain[r],
          growthPercent,
          heapWarmupEndMb: samples.get(windowStart)?.metrics[r]?.heapUsedMb,
          heapEndMb: samples.get(endAt)?.metrics[r]?.heapUsedMb,
          streamsOpenAtEnd: samples.get(endAt)?.metrics[r]?.streams,
          met: growthPercent === undefined ? undefined : growthPercent <= config.rssLimitPercent,
        };
      });

      const invalid: string[] = [];
      if (errorCount > 0) invalid.push(`${errorCount} calls failed or answered wrongly`);
      const d = analysis.delivery;
      if (!deliveryClean(d) || d.delivered !== d.expected) {
        invalid.push(
          `deliveries: ${d.delivered} of ${d.expected} (missing ${d.missing}, duplicated ${d.duplicated}, unexpected ` +
            `${d.unexpected}, sequence faults ${d.seqGaps + d.seqRepeats}, stream errors ${JSON.stringify(d.errors)})`,
        );
      }
      const outcome: SoakOutcome = {
        tenant: scene.tenant,
        setup: {
          threads: config.threads,
          seededMessages: config.threads * config.seedMessages,
          streamsOpened: opened,
          streamsFailed: failed,
          openMs,
          setupSeconds,
        },
        window: { seconds },
        total: { ...totalP, callsPerSecond: totalP.count / seconds },
        byKind,
        callsStarted: end.callsStarted,
        errors: everything.errors,
        errorCount,
        errorSamples: everything.errorSamples,
        sendsOk: okSends,
        jobsQueued: {
          warmupEnd: samples.get(windowStart)?.metrics.find((m) => m?.jobsQueued !== undefined)?.jobsQueued,
          end: samples.get(endAt)?.metrics.find((m) => m?.jobsQueued !== undefined)?.jobsQueued,
        },
        okPerReplica: services.map((_, r) => windowRaw.reduce((n, d) => n + (d.okPerReplica[r] ?? 0), 0)),
        eventsPerThread: {
          warmupEnd: eventsBefore(windowStart) / config.threads,
          end: eventsBefore(endAt) / config.threads,
          cacheEvents: Number(process.env.FEED_CACHE_EVENTS || loadConfig({}).feed.cacheEvents),
        },
        delivery: d,
        deliveryLatency: percentiles(Float64Array.from(windowLatency)),
        drainMs: analysis.lastDeliveryMs === undefined ? undefined : Math.max(0, analysis.lastDeliveryMs - loadDoneAt),
        rss,
        cpu: {
          replicas: services.map((_, s) => windowAvg((r) => r.cpu.replicas[s])),
          postgres: windowAvg((r) => r.cpu.postgres),
          machine: windowAvg((r) => r.cpu.machine),
          load: (end.cpuMs / (endAt - startAt)) * 100,
          subscribers: (analysis.subscriberCpuMs / (seconds * 1000)) * 100,
        },
        serviceWarnings: services.map((_, r) => {
          const letter = String.fromCharCode(65 + r);
          return { replica: letter, counts: logWarnings(`soak-service-${letter.toLowerCase()}.log`).counts };
        }),
        series: rows,
        invalid,
      };
      const full = { ...info, database: db.description };
      writeReport('soak-latest', markdown(full, outcome, minuteRows), json(full, outcome, minuteRows), log);
      if (invalid.length > 0) {
        log(`INVALID: ${invalid.join('; ')}`);
        return 1;
      }
      return 0;
    } finally {
      monitor?.stop();
      load?.kill();
      subscribers.kill();
    }
  } finally {
    scene.close();
  }
}

runMain(main, log, () => {
  killLoad();
  killSubscribers();
});
