/**
 * What the feed benchmark's parent (bench/feeds/run.ts), its subscriber processes (subscriber.ts) and its
 * raw streaming baseline (baseline-server.ts) say to each other over IPC, and the little they share.
 */
import { performance } from 'node:perf_hooks';
import { FeedServiceService } from '../../gen/comms/v1/feed.js';

/** The raw baseline's method: WatchThread's request and response, registered under another service. */
export const BASELINE_WATCH_PATH = '/bench.FeedBaseline/Watch';

/** The streaming method of each target (path and the generated ts-proto encoders, the same for both). */
export const WATCH_METHODS = {
  service: FeedServiceService.watchThread,
  baseline: { ...FeedServiceService.watchThread, path: BASELINE_WATCH_PATH },
} as const;

export type Target = keyof typeof WATCH_METHODS;

/** Milliseconds since the epoch with sub-millisecond resolution; the same machine clock in every process. */
export function epochNow(): number {
  return performance.timeOrigin + performance.now();
}

/** The body of bench message `k`: about `bytes` ASCII bytes, `k` readable back by `messageIndex`. */
export function feedBody(runTag: string, k: number, bytes: number): string {
  const head = `feedbench ${runTag} ${k} `;
  return head.length >= bytes ? head : head + 'x'.repeat(bytes - head.length);
}

/** The message index a bench body carries, or -1 when it is not one of this run's. */
export function messageIndex(body: string, runTag: string): number {
  const parts = body.split(' ', 3);
  if (parts[0] !== 'feedbench' || parts[1] !== runTag) return -1;
  const k = Number(parts[2]);
  return Number.isInteger(k) && k >= 0 ? k : -1;
}

/** One stream a subscriber process opens. */
export interface StreamPlan {
  /** Index of the stream in the scenario (unique over all processes). */
  readonly id: number;
  /** Which replica (index into `SubscriberTask.addresses`) it goes to. */
  readonly replica: number;
  readonly threadId: string;
  /** Bearer token (ignored by the baseline). */
  readonly token: string;
}

/** Everything a subscriber process needs for one scenario. */
export interface SubscriberTask {
  readonly scenario: string;
  readonly target: Target;
  /** host:port of each replica, on loopback. */
  readonly addresses: readonly string[];
  readonly streams: readonly StreamPlan[];
  /** At most this many streams share one HTTP/2 connection (the server allows 1000 by default). */
  readonly streamsPerChannel: number;
  /** HTTP/2 receive window of each connection and stream (grpc-node.flow_control_window); 0 = grpc-js's 64 KiB. */
  readonly clientWindow: number;
  /** Streams being opened at once (each waits for its caught_up before the next starts). */
  readonly openConcurrency: number;
  /** Time allowed for every stream to reach caught_up. */
  readonly openTimeoutMs: number;
  readonly runTag: string;
}

/** Parent → subscriber process. */
export type ToSubscriber =
  | { readonly type: 'open'; readonly task: SubscriberTask }
  /** The measurement window (epoch ms), for the process's CPU figure. */
  | { readonly type: 'window'; readonly start: number; readonly end: number }
  /** How many bench messages have arrived so far (answered with `progress`). */
  | { readonly type: 'progress' }
  /** Cancel every stream and report. */
  | { readonly type: 'close' };

/** What one stream saw. Arrays are parallel: one entry per bench message received, in arrival order. */
export interface StreamResult {
  readonly id: number;
  /** Message index (from the body) of each message received. */
  readonly ks: Int32Array;
  /** Epoch ms it was received (decoded). */
  readonly recvMs: Float64Array;
  /** Its Message.sent_at, epoch ms. */
  readonly sentAtMs: Float64Array;
  readonly heartbeats: number;
  /** Events other than message_posted, caught_up and heartbeat (receipts, thread changes). */
  readonly otherEvents: number;
  /** Messages that are not this run's bench messages. */
  readonly foreignMessages: number;
  /** Resume-token sequence numbers that skipped ahead (gap) or did not move forward (repeat). */
  readonly seqGaps: number;
  readonly seqRepeats: number;
  /** How the stream ended before it was closed by us: a gRPC code name, or 'OK' when the server ended it. */
  readonly endedEarly?: string;
}

/** What one subscriber process reports at the end. */
export interface SubscriberResult {
  readonly streams: readonly StreamResult[];
  /** Errors by gRPC code (opening and while open), with one sample message each. */
  readonly errors: Record<string, number>;
  readonly errorSamples: Record<string, string>;
  /** CPU (user + system) of this process during the window, ms. */
  readonly cpuMs: number;
}

/** Subscriber process → parent. */
export type FromSubscriber =
  | { readonly type: 'opened'; readonly streams: number; readonly failed: number; readonly ms: number }
  | { readonly type: 'progress'; readonly messages: number }
  | { readonly type: 'result'; readonly result: SubscriberResult }
  | { readonly type: 'failed'; readonly message: string };

/**
 * The raw baseline's control calls (unary, JSON-encoded; the parent holds no IPC channel to it):
 * `Publish` writes `count` messages, message k at `startAt + k * 1000 / rate` (epoch ms), to every
 * stream of thread `threads[k % threads.length]`, and answers once all are written; `Streams` answers
 * how many streams are open.
 */
export interface PublishRequest {
  readonly startAt: number;
  readonly rate: number;
  readonly count: number;
  readonly threads: readonly string[];
  readonly bodyBytes: number;
  readonly runTag: string;
}

export interface PublishResponse {
  /** Messages written (each to every subscriber of its thread). */
  readonly written: number;
  /** Stream writes made. */
  readonly writes: number;
  /** Messages written more than 50 ms after their scheduled time (the timer fell behind). */
  readonly late: number;
}

const json = {
  requestStream: false as const,
  responseStream: false as const,
  requestSerialize: (v: unknown): Buffer => Buffer.from(JSON.stringify(v)),
  requestDeserialize: (b: Buffer): unknown => JSON.parse(b.toString()),
  responseSerialize: (v: unknown): Buffer => Buffer.from(JSON.stringify(v)),
  responseDeserialize: (b: Buffer): unknown => JSON.parse(b.toString()),
};

export const BASELINE_CONTROL = {
  publish: { ...json, path: '/bench.FeedBaseline/Publish' },
  streams: { ...json, path: '/bench.FeedBaseline/Streams' },
} as const;

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Calls `fn(k)` for k = 0 … count-1 at `startAt + k * 1000 / rate` (epoch ms), open loop: a call that
 * returns a promise (back-pressure) delays the ones after it. Resolves with how many started more than
 * `lateMs` after their time.
 */
export async function paced(
  count: number,
  rate: number,
  startAt: number,
  fn: (k: number) => void | Promise<void>,
  lateMs = 50,
): Promise<number> {
  let late = 0;
  for (let k = 0; k < count; k++) {
    const due = startAt + (k * 1000) / rate;
    const wait = due - epochNow();
    if (wait >= 1) await sleep(wait);
    if (epochNow() - due > lateMs) late++;
    await fn(k);
  }
  return late;
}
