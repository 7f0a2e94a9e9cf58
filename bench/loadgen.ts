/**
 * The load generator's parent side: forks the worker processes (dist/bench/worker.js), hands each its
 * slots, starts them together, and merges what they measured into throughput and latency percentiles.
 * One Node process saturates before the server does, hence several.
 */
import { type ChildProcess, fork } from 'node:child_process';
import path from 'node:path';
import type { FromWorker, SlotPlan, ToWorker, WorkerResult, WorkerTask } from './protocol.js';

const WORKER = path.join(import.meta.dirname, 'worker.js');

/** The merged measurement of one scenario. */
export interface LoadResult {
  /** OK calls completed per second inside the measurement window. */
  readonly callsPerSecond: number;
  readonly okCalls: number;
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly p999Ms: number | undefined;
  readonly meanMs: number | undefined;
  readonly maxMs: number | undefined;
  /** Every non-OK answer (warm-up, window and drain), by gRPC code name or BAD_RESPONSE. */
  readonly errors: Record<string, number>;
  readonly errorCount: number;
  /** Non-OK answers inside the measurement window only. */
  readonly errorsInWindow: Record<string, number>;
  readonly errorSamples: Record<string, string>;
  readonly callsStarted: number;
  /** CPU the load generator used during the window, in % of one core (summed over workers). */
  readonly loadgenCpuPercent: number;
  /** Epoch ms of the measurement window. */
  readonly window: { readonly start: number; readonly end: number };
}

/** Which worker runs each of `concurrency` slots: as even as possible, contiguous per worker. */
export function assignSlots(concurrency: number, processes: number): number[] {
  const p = Math.max(1, Math.min(processes, concurrency));
  return Array.from({ length: concurrency }, (_, g) => Math.floor((g * p) / concurrency));
}

/**
 * With BENCH_PROFILE=1, node options that make a process write a V8 CPU profile (open it in Chrome
 * DevTools or speedscope) to bench/results/profiles/ when it exits.
 */
export function profileArgs(name: string): string[] {
  if (process.env.BENCH_PROFILE !== '1') return [];
  const dir = path.resolve(import.meta.dirname, '../../bench/results/profiles');
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}.cpuprofile`];
}

/** Children currently running, so an interrupted run can kill them. */
const running = new Set<ChildProcess>();

/** Kills every worker still running (on error or Ctrl-C). */
export function killWorkers(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

/**
 * Runs one scenario: `slots` (each naming its worker) over `task`'s target, warm-up then measurement.
 * `onWindow` is told the measurement window's epoch bounds as soon as they are fixed (for CPU sampling).
 * Bounded in time: workers that have not reported well after the window ends are killed.
 */
export async function runLoad(
  task: Omit<WorkerTask, 'slots'>,
  slots: readonly SlotPlan[],
  onWindow?: (window: { start: number; end: number }) => void,
): Promise<LoadResult> {
  const workers = [...new Set(slots.map((s) => s.worker))].sort((a, b) => a - b);
  const children = workers.map((w) => {
    const child = fork(WORKER, [], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: profileArgs(`worker-${task.scenario}-${w}`),
    });
    running.add(child);
    child.on('exit', () => running.delete(child));
    return { worker: w, child };
  });
  const limitMs = task.warmupMs + task.durationMs + task.deadlineMs + 60_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`workers did not finish within ${limitMs} ms`)), limitMs);
    });
    const messages = children.map(({ child }) => messageQueue(child));
    for (const { worker, child } of children) {
      const own = slots.filter((s) => s.worker === worker);
      child.send({ type: 'task', worker, task: { ...task, slots: own } } satisfies ToWorker);
    }
    await Promise.race([Promise.all(messages.map((m) => m.expect('ready'))), timeout]);
    const startAt = Date.now() + 200;
    const window = { start: startAt + task.warmupMs, end: startAt + task.warmupMs + task.durationMs };
    onWindow?.(window);
    for (const { child } of children) child.send({ type: 'go', startAt } satisfies ToWorker);
    const results = await Promise.race([
      Promise.all(messages.map((m) => m.expect('result').then((r) => (r as { result: WorkerResult }).result))),
      timeout,
    ]);
    return merge(results, task.durationMs, window);
  } finally {
    clearTimeout(timer);
    // Workers exit by themselves once they have reported (writing their profile, if asked); give them
    // a moment, then make sure.
    await Promise.all(children.map(({ child }) => exited(child, 5000)));
  }
}

/** Resolves when `child` has exited; SIGKILLs it if it has not after `ms`. */
export function exited(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Waits for a worker's messages in order; a `failed` message or an early exit rejects. */
function messageQueue(child: ChildProcess) {
  const inbox: FromWorker[] = [];
  let waiter: { resolve: (m: FromWorker) => void; reject: (e: Error) => void } | undefined;
  let dead: Error | undefined;
  child.on('message', (m: FromWorker) => {
    if (waiter) {
      const w = waiter;
      waiter = undefined;
      if (m.type === 'failed') w.reject(new Error(`load worker failed: ${m.message}`));
      else w.resolve(m);
    } else inbox.push(m);
  });
  child.on('exit', (code, signal) => {
    dead = new Error(`load worker exited early (code ${code}, signal ${signal})`);
    waiter?.reject(dead);
  });
  child.on('error', (err) => {
    dead = err;
    waiter?.reject(err);
  });
  return {
    expect(type: FromWorker['type']): Promise<FromWorker> {
      const queued = inbox.shift();
      if (queued) {
        if (queued.type === 'failed') return Promise.reject(new Error(`load worker failed: ${queued.message}`));
        if (queued.type !== type)
          return Promise.reject(new Error(`expected ${type} from a worker, got ${queued.type}`));
        return Promise.resolve(queued);
      }
      if (dead) return Promise.reject(dead);
      return new Promise((resolve, reject) => (waiter = { resolve, reject }));
    },
  };
}

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

/** The q-quantile of sorted values (nearest rank). */
export function quantile(sorted: Float64Array, q: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function merge(results: WorkerResult[], durationMs: number, window: { start: number; end: number }): LoadResult {
  const total = results.reduce((n, r) => n + r.latenciesMs.length, 0);
  const all = new Float64Array(total);
  let offset = 0;
  for (const r of results) {
    all.set(r.latenciesMs, offset);
    offset += r.latenciesMs.length;
  }
  all.sort();
  const errorsInWindow: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  for (const r of results) {
    addCounts(errorsInWindow, r.errors);
    addCounts(errors, r.errors);
    addCounts(errors, r.errorsOutsideWindow);
    for (const [k, v] of Object.entries(r.errorSamples)) errorSamples[k] ??= v;
  }
  const sum = all.reduce((s, v) => s + v, 0);
  return {
    callsPerSecond: total / (durationMs / 1000),
    okCalls: total,
    p50Ms: quantile(all, 0.5),
    p99Ms: quantile(all, 0.99),
    p999Ms: quantile(all, 0.999),
    meanMs: total > 0 ? sum / total : undefined,
    maxMs: total > 0 ? all[total - 1] : undefined,
    errors,
    errorCount: Object.values(errors).reduce((s, v) => s + v, 0),
    errorsInWindow,
    errorSamples,
    callsStarted: results.reduce((n, r) => n + r.callsStarted, 0),
    loadgenCpuPercent: (results.reduce((s, r) => s + r.cpuMs, 0) / durationMs) * 100,
    window,
  };
}
