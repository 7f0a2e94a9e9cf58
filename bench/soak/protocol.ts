/**
 * What the soak's parent (bench/soak/run.ts, through load.ts) and its load processes (worker.ts) say to
 * each other over IPC. Time is split into intervals of `intervalMs` anchored at the end of the warm-up:
 * interval n covers [windowStart + n·I, windowStart + (n+1)·I) (n < 0 during the warm-up, the first one
 * possibly partial); every call is counted in the interval in which its answer arrived.
 */

/** The unary calls of the mix. */
export const KINDS = ['send', 'markRead', 'list'] as const;
export type Kind = (typeof KINDS)[number];

/** One thread a load process owns: only that process sends into it, marks it read and lists it. */
export interface SoakThread {
  /** Index of the thread in the run (0 … threads − 1). */
  readonly index: number;
  readonly threadId: string;
  /** The provider who created it and sends into it. */
  readonly senderToken: string;
  /** The patient who takes part in it: marks its messages read and lists it. */
  readonly readerToken: string;
  /** Ids of the messages seeded into it before the run, oldest first. */
  readonly seedIds: readonly string[];
}

/** Everything a load process needs. */
export interface SoakTask {
  readonly worker: number;
  /** host:port of each replica; call n of a slot goes to replica (slot + n) mod replicas. */
  readonly addresses: readonly string[];
  /** HTTP/2 connections per replica. */
  readonly channels: number;
  /** In-flight slots of this process, and the global index of its first one. */
  readonly slots: number;
  readonly slotBase: number;
  /** Relative weights of the call kinds. */
  readonly mix: Readonly<Record<Kind, number>>;
  readonly threads: readonly SoakThread[];
  /** Threads in the run (message k goes to thread k mod threadCount). */
  readonly threadCount: number;
  readonly runTag: string;
  readonly bodyBytes: number;
  /** Ids per MarkRead (the newest of the thread). */
  readonly markBatch: number;
  /** ListMessages page size. */
  readonly pageSize: number;
  readonly deadlineMs: number;
  readonly intervalMs: number;
}

/** What happened during one interval (or, for `done`, after the end: the drain). */
export interface IntervalData {
  readonly index: number;
  /** Latencies (ms) of the OK calls answered in the interval, per kind. */
  readonly latencies: Record<Kind, Float64Array>;
  /** Non-OK answers per kind and gRPC code name (or BAD_RESPONSE). */
  readonly errors: Record<Kind, Record<string, number>>;
  readonly errorSamples: Record<string, string>;
  /** Message index k of every send answered OK (a new message) in the interval. */
  readonly sendKs: Int32Array;
  /** OK calls per replica. */
  readonly okPerReplica: readonly number[];
}

/** Parent → load process. */
export type ToSoakWorker =
  | { readonly type: 'task'; readonly task: SoakTask }
  /** Calls start at `startAt` and stop being issued at `endAt` (epoch ms); intervals count from `windowStart`. */
  | { readonly type: 'go'; readonly startAt: number; readonly windowStart: number; readonly endAt: number };

/** Load process → parent. */
export type FromSoakWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'interval'; readonly data: IntervalData }
  /** Every slot has stopped; `drain` holds the answers that came after `endAt`. */
  | { readonly type: 'done'; readonly drain: IntervalData; readonly callsStarted: number; readonly cpuMs: number }
  | { readonly type: 'failed'; readonly message: string };

/** The interval of epoch time `t`. */
export function intervalOf(t: number, windowStart: number, intervalMs: number): number {
  return Math.floor((t - windowStart) / intervalMs);
}

/** The kind of each call in a repeating pattern with `mix`'s proportions, interleaved (smooth weighted round robin). */
export function mixPattern(mix: Readonly<Record<Kind, number>>): Kind[] {
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  const g = KINDS.map((k) => mix[k]).reduce((a, b) => gcd(a, b), 0);
  if (g === 0) throw new Error('the call mix has no weight');
  const weights = KINDS.map((k) => mix[k] / g);
  const total = weights.reduce((a, b) => a + b, 0);
  const current = KINDS.map(() => 0);
  const out: Kind[] = [];
  for (let n = 0; n < total; n++) {
    let best = 0;
    for (let i = 0; i < KINDS.length; i++) {
      current[i]! += weights[i]!;
      if (current[i]! > current[best]!) best = i;
    }
    current[best]! -= total;
    out.push(KINDS[best]!);
  }
  return out;
}
