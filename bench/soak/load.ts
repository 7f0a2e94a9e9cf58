/**
 * The parent side of the soak's load processes: forks them (dist/bench/soak/worker.js), hands each its
 * slots and threads, starts them together, and passes on each interval's figures once every process has
 * reported that interval (merged), so the run can print and keep a time series while it goes.
 */
import { type ChildProcess, fork } from 'node:child_process';
import path from 'node:path';
import { exited, profileArgs } from '../loadgen.js';
import {
  type FromSoakWorker,
  type IntervalData,
  type Kind,
  KINDS,
  type SoakTask,
  type ToSoakWorker,
} from './protocol.js';

const WORKER = path.join(import.meta.dirname, 'worker.js');

/** Load processes currently running, so an interrupted run can kill them. */
const running = new Set<ChildProcess>();

/** Kills every load process still running (on error or Ctrl-C). */
export function killLoad(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

/** The arrays one after the other, in one array. */
export function concat(arrays: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

/** Merges the same interval of several processes. */
export function mergeIntervals(parts: readonly IntervalData[]): IntervalData {
  const latencies = {} as Record<Kind, Float64Array>;
  const errors = {} as Record<Kind, Record<string, number>>;
  for (const kind of KINDS) {
    latencies[kind] = concat(parts.map((p) => p.latencies[kind]));
    errors[kind] = {};
    for (const p of parts) {
      for (const [code, n] of Object.entries(p.errors[kind])) errors[kind][code] = (errors[kind][code] ?? 0) + n;
    }
  }
  const errorSamples: Record<string, string> = {};
  for (const p of parts) for (const [k, m] of Object.entries(p.errorSamples)) errorSamples[k] ??= m;
  const ks = new Int32Array(parts.reduce((n, p) => n + p.sendKs.length, 0));
  let at = 0;
  for (const p of parts) {
    ks.set(p.sendKs, at);
    at += p.sendKs.length;
  }
  const replicas = Math.max(0, ...parts.map((p) => p.okPerReplica.length));
  return {
    index: parts[0]?.index ?? 0,
    latencies,
    errors,
    errorSamples,
    sendKs: ks,
    okPerReplica: Array.from({ length: replicas }, (_, r) => parts.reduce((n, p) => n + (p.okPerReplica[r] ?? 0), 0)),
  };
}

export interface LoadEnd {
  /** Answers after the end (merged over processes). */
  readonly drain: IntervalData;
  readonly callsStarted: number;
  /** CPU of the load processes from start to end, ms (summed). */
  readonly cpuMs: number;
}

/** The load processes of one run. */
export class Load {
  readonly #children: ChildProcess[];
  readonly #pending = new Map<number, IntervalData[]>();
  #onInterval: (data: IntervalData) => void = () => {};
  readonly #done: Promise<LoadEnd>;
  readonly #ready: Promise<void>;

  private constructor(tasks: readonly SoakTask[]) {
    const readies: Promise<void>[] = [];
    const dones: Promise<Extract<FromSoakWorker, { type: 'done' }>>[] = [];
    this.#children = tasks.map((task) => {
      const child = fork(WORKER, [], {
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        execArgv: profileArgs(`soak-worker-${task.worker}`),
      });
      running.add(child);
      let failure: (err: Error) => void = () => {};
      const failed = new Promise<never>((_, reject) => (failure = reject));
      failed.catch(() => {}); // observed through ready/done
      let ready: () => void = () => {};
      let done: (m: Extract<FromSoakWorker, { type: 'done' }>) => void = () => {};
      readies.push(Promise.race([new Promise<void>((resolve) => (ready = resolve)), failed]));
      dones.push(Promise.race([new Promise<Extract<FromSoakWorker, { type: 'done' }>>((r) => (done = r)), failed]));
      let finished = false;
      child.on('message', (m: FromSoakWorker) => {
        switch (m.type) {
          case 'ready':
            return ready();
          case 'interval':
            return this.#arrive(m.data);
          case 'done':
            finished = true;
            return done(m);
          case 'failed':
            return failure(new Error(`load process ${task.worker} failed: ${m.message}`));
        }
      });
      child.on('exit', (code, signal) => {
        running.delete(child);
        if (!finished) failure(new Error(`load process ${task.worker} exited (code ${code}, signal ${signal})`));
      });
      child.on('error', (err) => failure(err));
      child.send({ type: 'task', task } satisfies ToSoakWorker);
      return child;
    });
    this.#ready = Promise.all(readies).then(() => undefined);
    this.#done = Promise.all(dones).then((ends) => ({
      drain: mergeIntervals(ends.map((e) => e.drain)),
      callsStarted: ends.reduce((n, e) => n + e.callsStarted, 0),
      cpuMs: ends.reduce((n, e) => n + e.cpuMs, 0),
    }));
    this.#done.catch(() => {}); // observed by finish()
  }

  /** Forks one process per task and waits until each has connected to every replica. */
  static async start(tasks: readonly SoakTask[]): Promise<Load> {
    const load = new Load(tasks);
    try {
      await load.#ready;
    } catch (err) {
      load.kill();
      throw err;
    }
    return load;
  }

  get pids(): number[] {
    return this.#children.map((c) => c.pid).filter((p) => p !== undefined);
  }

  #arrive(data: IntervalData): void {
    const parts = this.#pending.get(data.index) ?? [];
    parts.push(data);
    if (parts.length < this.#children.length) {
      this.#pending.set(data.index, parts);
      return;
    }
    this.#pending.delete(data.index);
    this.#onInterval(mergeIntervals(parts));
  }

  /** Starts the calls; `onInterval` gets each interval, merged over the processes, as soon as all sent it. */
  go(times: { startAt: number; windowStart: number; endAt: number }, onInterval: (data: IntervalData) => void): void {
    this.#onInterval = onInterval;
    for (const child of this.#children) child.send({ type: 'go', ...times } satisfies ToSoakWorker);
  }

  /** Waits until every process has stopped (at most `ms`), and for them to exit. */
  async finish(ms: number): Promise<LoadEnd> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.#done,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the load processes did not finish within ${ms} ms`)), ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      await Promise.all(this.#children.map((c) => exited(c, 5000)));
    }
  }

  kill(): void {
    for (const child of this.#children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}
