/**
 * `npm run bench:feeds`: live-feed fan-out of the real service against a raw streaming baseline, in one
 * run. Sets up a fresh database, FEEDS_REPLICAS service processes on it and as many raw baseline
 * processes (bench/feeds/baseline-server.ts), prepares users and threads over gRPC, then for each
 * scenario measures the baseline and the service the same way: subscriber processes open the streams
 * and record every message; the sender (SendMessage, this process) or the baseline's own timer
 * publishes at a fixed rate. Prints the markdown report and writes bench/results/feeds-latest.md and
 * .json. Everything it starts, it stops, also on error and Ctrl-C. Exit code 1 when a scenario is
 * invalid (a stream or send error, a message missing or duplicated); a missed target alone is reported.
 */
import path from 'node:path';
import { Client, credentials, type ServiceError } from '@grpc/grpc-js';
import { intEnv, listEnv, runInfo, writeReport } from '../common.js';
import { CpuSampler, rssMb } from '../cpu.js';
import {
  createDatabase,
  isStopping,
  runMain,
  type RunningProcess,
  settle,
  startBaseline,
  startService,
} from '../environment.js';
import { analyse, percentiles } from './analysis.js';
import {
  BASELINE_CONTROL,
  epochNow,
  type PublishRequest,
  type PublishResponse,
  sleep,
  type StreamPlan,
  type Target,
} from './protocol.js';
import {
  FEED_SCENARIOS,
  type FeedConfig,
  type FeedScenario,
  type IdleOutcome,
  isValid,
  json,
  type LiveOutcome,
  markdown,
  type Outcome,
  type RunInfo,
} from './report.js';
import { FeedScene, sendPaced } from './scene.js';
import { killSubscribers, Subscribers } from './subscribers.js';

const BASELINE_MAIN = path.join(import.meta.dirname, 'baseline-server.js');

function log(line: string): void {
  process.stderr.write(`bench:feeds: ${line}\n`);
}

function readConfig(): FeedConfig {
  return {
    scenarios: listEnv('FEEDS_SCENARIOS', Object.keys(FEED_SCENARIOS) as FeedScenario[]),
    targets: listEnv('FEEDS_TARGETS', ['baseline', 'service'] as const),
    seconds: intEnv('FEEDS_BENCH_SECONDS', 20, 1, 3600),
    warmupSeconds: intEnv('FEEDS_WARMUP_SECONDS', 10, 0, 600),
    subscribers: intEnv('FEEDS_SUBSCRIBERS', 1000, 1, 100_000),
    fanoutRate: intEnv('FEEDS_RATE', 20, 1, 10_000),
    threads: intEnv('FEEDS_THREADS', 2000, 1, 100_000),
    spreadRate: intEnv('FEEDS_SPREAD_RATE', 200, 1, 10_000),
    idleStreams: intEnv('FEEDS_IDLE_STREAMS', 5000, 1, 100_000),
    idleSettleSeconds: intEnv('FEEDS_IDLE_SETTLE_SECONDS', 5, 0, 600),
    replicas: intEnv('FEEDS_REPLICAS', 2, 1, 8),
    processes: intEnv('FEEDS_PROCESSES', 2, 1, 32),
    streamsPerChannel: intEnv('FEEDS_STREAMS_PER_CHANNEL', 25, 1, 1000),
    clientWindow: intEnv('FEEDS_CLIENT_WINDOW', 0, 0, 2 ** 31 - 1),
    openConcurrency: intEnv('FEEDS_OPEN_CONCURRENCY', 50, 1, 10_000),
    senders: intEnv('FEEDS_SENDERS', 50, 1, 10_000),
    maxInFlight: intEnv('FEEDS_MAX_IN_FLIGHT', 256, 1, 10_000),
    bodyBytes: intEnv('FEEDS_BODY_BYTES', 256, 1, 16_384),
    drainSeconds: intEnv('FEEDS_DRAIN_SECONDS', 30, 1, 600),
    deadlineMs: intEnv('FEEDS_DEADLINE_MS', 10_000, 100, 120_000),
  };
}

/** The knobs the command line of the report shows. */
const isKnob = (k: string) => /^(FEEDS?_|DB_POOL_MAX$|GRPC_MAX_CONCURRENT_STREAMS$)/.test(k);

/** A unary JSON control call to a raw baseline process. */
function control<Req, Res>(
  address: string,
  method: (typeof BASELINE_CONTROL)[keyof typeof BASELINE_CONTROL],
  req: Req,
  deadline: number,
): Promise<Res> {
  const client = new Client(address, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  return new Promise<Res>((resolve, reject) =>
    client.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      req,
      { deadline: new Date(deadline) },
      (err: ServiceError | null, res?: unknown) => (err ? reject(err) : resolve(res as Res)),
    ),
  ).finally(() => client.close());
}

interface Env {
  readonly config: FeedConfig;
  readonly dbUrl: string;
  readonly scene: FeedScene;
  readonly services: readonly RunningProcess[];
  readonly baselines: readonly RunningProcess[];
  readonly samplers: readonly CpuSampler[];
}

/** Measures the parent's own CPU (the sender) during a window. */
function parentCpu(window: { start: number; end: number }): () => number | undefined {
  let start: NodeJS.CpuUsage | undefined;
  let ms: number | undefined;
  const a = setTimeout(() => (start = process.cpuUsage()), Math.max(0, window.start - epochNow()));
  const b = setTimeout(
    () => {
      if (!start) return;
      const d = process.cpuUsage(start);
      ms = (d.user + d.system) / 1000;
    },
    Math.max(0, window.end - epochNow()),
  );
  return () => {
    clearTimeout(a);
    clearTimeout(b);
    return ms;
  };
}

/** One live scenario (fanout or spread) against one target. */
async function live(env: Env, scenario: 'fanout' | 'spread', target: Target): Promise<LiveOutcome> {
  const { config: c, scene } = env;
  const servers = target === 'service' ? env.services : env.baselines;
  const addresses = servers.map((s) => s.address);
  const R = addresses.length;
  const threads = scenario === 'fanout' ? [scene.hotThread] : scene.spread.map((t) => t.threadId);
  const streams: StreamPlan[] =
    scenario === 'fanout'
      ? Array.from({ length: c.subscribers }, (_, j) => ({
          id: j,
          replica: j % R,
          threadId: scene.hotThread,
          token: scene.staff[j % scene.staff.length]!.token,
        }))
      : scene.spread.map((t, j) => ({ id: j, replica: j % R, threadId: t.threadId, token: t.watcher.token }));
  const rate = scenario === 'fanout' ? c.fanoutRate : c.spreadRate;
  const count = Math.max(1, Math.round((c.warmupSeconds + c.seconds) * rate));
  const windowFrom = Math.round(c.warmupSeconds * rate);

  if (target === 'service') await settle(env.dbUrl);
  log(`${scenario} (${target}): opening ${streams.length} streams`);
  const { subscribers, opened, failed, openMs } = await Subscribers.open(
    {
      scenario,
      target,
      addresses,
      streamsPerChannel: c.streamsPerChannel,
      clientWindow: c.clientWindow,
      openConcurrency: c.openConcurrency,
      openTimeoutMs: 120_000,
      runTag: scene.runTag,
    },
    streams,
    c.processes,
  );
  try {
    log(`${scenario} (${target}): ${opened} open (${failed} failed) in ${(openMs / 1000).toFixed(1)} s; publishing`);
    const startAt = epochNow() + 1000;
    const window = { start: startAt + c.warmupSeconds * 1000, end: startAt + (c.warmupSeconds + c.seconds) * 1000 };
    subscribers.window(window);
    for (const s of env.samplers) s.schedule(window);
    const senderCpu = parentCpu(window);

    let ok: Uint8Array;
    let answerMs: Float64Array | undefined;
    let sendCall;
    let sendErrors: Record<string, number> = {};
    let sendErrorSamples: Record<string, string> = {};
    let late: number;
    let achievedRate: number;
    let lastIssued: number;
    if (target === 'service') {
      const sent = await sendPaced({
        addresses,
        count,
        rate,
        startAt,
        threadOf: (k) => threads[k % threads.length]!,
        senderOf: (k) => (scenario === 'fanout' ? scene.providers[0]! : scene.spread[k % threads.length]!.sender),
        runTag: scene.runTag,
        keyPrefix: `feeds-${scene.runTag}-${scenario}`,
        bodyBytes: c.bodyBytes,
        maxInFlight: c.maxInFlight,
        deadlineMs: c.deadlineMs,
      });
      ok = sent.ok;
      answerMs = sent.answerMs;
      sendErrors = sent.errors;
      sendErrorSamples = sent.errorSamples;
      late = sent.late;
      let inWindow = 0;
      const calls: number[] = [];
      for (let k = 0; k < count; k++) {
        const t = sent.issuedMs[k]!;
        if (sent.ok[k] && t >= window.start && t < window.end) inWindow++;
        if (sent.ok[k] && k >= windowFrom) calls.push(sent.callMs[k]!);
      }
      achievedRate = inWindow / c.seconds;
      sendCall = percentiles(Float64Array.from(calls));
      lastIssued = Math.max(...sent.issuedMs.filter((v) => !Number.isNaN(v)));
    } else {
      const req: PublishRequest = { startAt, rate, count, threads, bodyBytes: c.bodyBytes, runTag: scene.runTag };
      const deadline = startAt + ((c.warmupSeconds + c.seconds) * 1000 + 120_000);
      const answers = await Promise.all(
        addresses.map((a) => control<PublishRequest, PublishResponse>(a, BASELINE_CONTROL.publish, req, deadline)),
      );
      ok = new Uint8Array(count).fill(1);
      late = Math.max(...answers.map((a) => a.late));
      lastIssued = epochNow();
      achievedRate = rate; // written on its timer's schedule; `late` counts the writes that were not
    }

    // Drain: until every due delivery arrived, or FEEDS_DRAIN_SECONDS.
    const duePerThread = new Map<string, number>();
    for (let k = 0; k < count; k++) {
      if (ok[k])
        duePerThread.set(threads[k % threads.length]!, (duePerThread.get(threads[k % threads.length]!) ?? 0) + 1);
    }
    const due = streams.reduce((n, s) => n + (duePerThread.get(s.threadId) ?? 0), 0);
    const drainUntil = epochNow() + c.drainSeconds * 1000;
    let received = await subscribers.progress();
    while (received < due && epochNow() < drainUntil) {
      await sleep(200);
      received = await subscribers.progress();
    }
    const rss = servers.map((s) => rssMb(s.pid));
    const senderMs = senderCpu();
    const results = await subscribers.close();
    const analysis = analyse({
      results,
      threadOfStream: streams.map((s) => s.threadId),
      threads,
      ok,
      answerMs,
      windowFrom,
      window,
    });
    const usage = env.samplers.map((s) => s.usage());
    const pct = (ms: number) => (ms / (c.seconds * 1000)) * 100;
    const outcome: LiveOutcome = {
      kind: 'live',
      scenario,
      target,
      streams: streams.length,
      threads: threads.length,
      opened,
      openFailed: failed,
      openMs,
      offeredRate: rate,
      messages: count,
      messagesOk: ok.reduce((n, v) => n + v, 0),
      windowSeconds: c.seconds,
      achievedRate,
      sendCall,
      sendErrors,
      sendErrorSamples,
      late,
      analysis,
      rssMb: rss,
      cpu: {
        subscribers: pct(analysis.subscriberCpuMs),
        sender: target === 'service' && senderMs !== undefined ? pct(senderMs) : undefined,
        servers: usage.map((u) => (target === 'service' ? u.service : u.baseline)),
        postgres: usage[0]?.postgres,
        machine: usage[0]?.machineBusy,
      },
      drainMs: analysis.lastDeliveryMs === undefined ? undefined : Math.max(0, analysis.lastDeliveryMs - lastIssued),
    };
    const d = analysis.delivery;
    log(
      `${scenario} (${target}): p50 ${analysis.fromSentAt.p50?.toFixed(1) ?? '—'} ms, p99 ${analysis.fromSentAt.p99?.toFixed(1) ?? '—'} ms, ` +
        `${analysis.eventsPerSecond.toFixed(0)} events/s; delivered ${d.delivered}/${d.expected}, missing ${d.missing}, ` +
        `duplicated ${d.duplicated}, unexpected ${d.unexpected}, seq gaps ${d.seqGaps}, errors ${JSON.stringify(d.errors)}` +
        (Object.keys(sendErrors).length > 0 ? `, send errors ${JSON.stringify(sendErrors)}` : '') +
        `; RSS ${rss.map((v) => v?.toFixed(0)).join('/')} MB`,
    );
    return outcome;
  } finally {
    subscribers.kill();
  }
}

/** The idle scenario against one target: all streams on replica A. */
async function idle(env: Env, target: Target): Promise<IdleOutcome> {
  const { config: c, scene } = env;
  const server = (target === 'service' ? env.services : env.baselines)[0]!;
  const threads = scene.spread.map((t) => t.threadId);
  const streams: StreamPlan[] = Array.from({ length: c.idleStreams }, (_, j) => ({
    id: j,
    replica: 0,
    threadId: threads[j % threads.length]!,
    token: scene.staff[j % scene.staff.length]!.token,
  }));
  const before = rssMb(server.pid);
  log(`idle (${target}): RSS ${before?.toFixed(0)} MB; opening ${streams.length} streams on one replica`);
  const { subscribers, opened, failed, openMs } = await Subscribers.open(
    {
      scenario: 'idle',
      target,
      addresses: [server.address],
      streamsPerChannel: c.streamsPerChannel,
      clientWindow: c.clientWindow,
      openConcurrency: c.openConcurrency,
      openTimeoutMs: 300_000,
      runTag: scene.runTag,
    },
    streams,
    c.processes,
  );
  try {
    log(`idle (${target}): ${opened} open (${failed} failed) in ${(openMs / 1000).toFixed(1)} s; idling`);
    await sleep(c.idleSettleSeconds * 1000);
    const after = rssMb(server.pid);
    const serverOpen =
      target === 'baseline'
        ? (await control<object, { open: number }>(server.address, BASELINE_CONTROL.streams, {}, Date.now() + 10_000))
            .open
        : undefined;
    const results = await subscribers.close();
    const errors: Record<string, number> = {};
    const errorSamples: Record<string, string> = {};
    let heartbeats = 0;
    for (const r of results) {
      for (const [k, n] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + n;
      for (const [k, m] of Object.entries(r.errorSamples)) errorSamples[k] ??= m;
      for (const s of r.streams) heartbeats += s.heartbeats;
    }
    log(`idle (${target}): RSS ${before?.toFixed(0)} → ${after?.toFixed(0)} MB with ${opened} streams`);
    return {
      kind: 'idle',
      scenario: 'idle',
      target,
      streams: streams.length,
      threads: Math.min(threads.length, streams.length),
      opened,
      openFailed: failed,
      openMs,
      rssBeforeMb: before,
      rssAfterMb: after,
      serverOpen,
      heartbeats,
      errors,
      errorSamples,
    };
  } finally {
    subscribers.kill();
  }
}

async function main(): Promise<number> {
  const config = readConfig();
  const info = runInfo(config, isKnob, 'npm run bench:feeds');
  log(
    `scenarios ${config.scenarios.join(', ')}; ${config.replicas} replicas; subscribers in ${config.processes} processes; ` +
      `${config.warmupSeconds} s warm-up + ${config.seconds} s per live scenario`,
  );
  const db = await createDatabase(log);
  log(`fresh database on ${db.description}`);
  // One after the other: each replica migrates the database at start.
  const services: RunningProcess[] = [];
  for (let r = 0; r < config.replicas; r++) {
    const letter = String.fromCharCode(65 + r);
    services.push(
      await startService(db.url, log, {
        name: `service replica ${letter}`,
        logName: `feeds-service-${letter.toLowerCase()}.log`,
        // Feed replicas: the sends' notification jobs are queued, not dispatched here (see bench:notify).
        env: { NOTIFY_DISPATCH: 'false' },
      }),
    );
  }
  const baselines = await Promise.all(
    Array.from({ length: config.replicas }, (_, r) => {
      const letter = String.fromCharCode(65 + r);
      return startBaseline(db.url, log, {
        main: BASELINE_MAIN,
        name: `feed baseline ${letter}`,
        logName: `feeds-baseline-${letter.toLowerCase()}.log`,
      });
    }),
  );
  const scene = new FeedScene(services[0]!.address);
  const outcomes: Outcome[] = [];
  try {
    const needsSpread = config.scenarios.includes('spread') || config.scenarios.includes('idle');
    log('preparing users and threads');
    const t0 = epochNow();
    await scene.prepare({
      providers: config.senders,
      staff: Math.max(1, Math.min(config.subscribers, 1000)),
      hot: config.scenarios.includes('fanout'),
      spreadThreads: needsSpread ? config.threads : 0,
    });
    log(
      `prepared ${scene.spread.length + (scene.hotThread ? 1 : 0)} threads in ${((epochNow() - t0) / 1000).toFixed(1)} s`,
    );
    const samplers = services.map((s, r) => new CpuSampler(() => ({ service: s.pid, baseline: baselines[r]?.pid })));
    const env: Env = { config, dbUrl: db.url, scene, services, baselines, samplers };
    for (const scenario of config.scenarios) {
      for (const target of config.targets) {
        if (isStopping()) break;
        try {
          outcomes.push(scenario === 'idle' ? await idle(env, target) : await live(env, scenario, target));
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          log(`${scenario} (${target}) failed: ${message}`);
          outcomes.push({ kind: 'failed', scenario, target, error: message });
        }
      }
    }
  } finally {
    scene.close();
  }

  if (isStopping()) return 130; // interrupted: no report (the signal handler cleans up and exits)
  const full: RunInfo = { ...info, database: db.description };
  writeReport('feeds-latest', markdown(full, outcomes), json(full, outcomes), log);
  const invalid = outcomes.filter((o) => !isValid(o)).map((o) => `${o.scenario} (${o.target})`);
  if (invalid.length > 0) {
    log(`INVALID (errors, missing or duplicated events, or failed): ${invalid.join(', ')}`);
    return 1;
  }
  return 0;
}

runMain(main, log, killSubscribers);
