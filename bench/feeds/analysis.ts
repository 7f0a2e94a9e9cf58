/**
 * From what the subscribers recorded to figures: per stream, which messages it had to receive (every
 * message sent OK into its thread) against what it received (missing, duplicated, unexpected); and the
 * fan-out latency of the messages of the measurement window.
 */
import { quantile } from '../loadgen.js';
import type { SubscriberResult } from './protocol.js';

export interface Percentiles {
  readonly count: number;
  readonly p50: number | undefined;
  readonly p90: number | undefined;
  readonly p99: number | undefined;
  readonly p999: number | undefined;
  readonly max: number | undefined;
  readonly mean: number | undefined;
}

export function percentiles(values: Float64Array): Percentiles {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  return {
    count: n,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    p999: quantile(sorted, 0.999),
    max: n > 0 ? sorted[n - 1] : undefined,
    mean: n > 0 ? sorted.reduce((s, v) => s + v, 0) / n : undefined,
  };
}

export interface Delivery {
  readonly streams: number;
  /** Deliveries due: for every stream, every message sent OK into its thread. */
  readonly expected: number;
  /** Distinct due messages received. */
  readonly delivered: number;
  readonly missing: number;
  /** Due messages received more than once (extra copies). */
  readonly duplicated: number;
  /** Messages received that were not due on that stream (another thread's, or a send that failed). */
  readonly unexpected: number;
  /** Streams that missed at least one message. */
  readonly streamsMissing: number;
  readonly seqGaps: number;
  readonly seqRepeats: number;
  readonly foreign: number;
  readonly otherEvents: number;
  readonly heartbeats: number;
  /** Stream errors (opening and while open) by gRPC code. */
  readonly errors: Record<string, number>;
  readonly errorSamples: Record<string, string>;
}

export interface Analysis {
  readonly delivery: Delivery;
  /** Receive time − Message.sent_at, messages of the window. */
  readonly fromSentAt: Percentiles;
  /** Receive time − the sender's SendMessage answer time (service only). */
  readonly fromAnswer: Percentiles | undefined;
  /** Deliveries received during the window (whatever message) per second of window. */
  readonly eventsPerSecond: number;
  /** Epoch ms of the last delivery of any message. */
  readonly lastDeliveryMs: number | undefined;
  /** CPU of the subscriber processes during the window, ms. */
  readonly subscriberCpuMs: number;
  /** Per second of the window (by the message's sent_at): deliveries, p50, p99 and max latency, ms. */
  readonly bySecond: readonly { second: number; deliveries: number; p50?: number; p99?: number; max?: number }[];
}

/**
 * `threads[k % threads.length]` is message k's thread; `ok[k]` says it was sent; messages k ≥
 * `windowFrom` are those sent in the measurement window (their latencies count); `threadOfStream[id]` is
 * stream id's thread.
 */
export function analyse(o: {
  results: readonly SubscriberResult[];
  threadOfStream: readonly string[];
  threads: readonly string[];
  ok: Uint8Array;
  answerMs: Float64Array | undefined;
  windowFrom: number;
  /** The measurement window, epoch ms. */
  window: { readonly start: number; readonly end: number };
}): Analysis {
  const count = o.ok.length;
  const threadIndex = new Map(o.threads.map((t, i) => [t, i]));
  // Due messages per thread index: how many k ≡ i (mod T) were sent OK.
  const duePerThread = new Int32Array(o.threads.length);
  for (let k = 0; k < count; k++) if (o.ok[k]) duePerThread[k % o.threads.length]!++;

  let expected = 0;
  let delivered = 0;
  let duplicated = 0;
  let unexpected = 0;
  let streamsMissing = 0;
  let seqGaps = 0;
  let seqRepeats = 0;
  let foreign = 0;
  let otherEvents = 0;
  let heartbeats = 0;
  let streams = 0;
  let lastDeliveryMs: number | undefined;
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  const fromSentAt: number[] = [];
  const seconds = Math.max(1, Math.ceil((o.window.end - o.window.start) / 1000));
  const perSecond: number[][] = Array.from({ length: seconds }, () => []);
  const fromAnswer: number[] = [];
  let windowDeliveries = 0; // received during the window
  let cpuMs = 0;

  for (const r of o.results) {
    cpuMs += r.cpuMs;
    for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + n;
    for (const [code, m] of Object.entries(r.errorSamples)) errorSamples[code] ??= m;
    for (const s of r.streams) {
      streams++;
      const ti = threadIndex.get(o.threadOfStream[s.id]!);
      const due = ti === undefined ? 0 : duePerThread[ti]!;
      expected += due;
      const seen = new Set<number>();
      for (let j = 0; j < s.ks.length; j++) {
        const k = s.ks[j]!;
        const recv = s.recvMs[j]!;
        lastDeliveryMs = Math.max(lastDeliveryMs ?? recv, recv);
        if (k >= count || k % o.threads.length !== ti || !o.ok[k]) {
          unexpected++;
          continue;
        }
        if (seen.has(k)) {
          duplicated++;
          continue;
        }
        seen.add(k);
        if (recv >= o.window.start && recv < o.window.end) windowDeliveries++;
        if (k >= o.windowFrom) {
          const latency = recv - s.sentAtMs[j]!;
          fromSentAt.push(latency);
          const second = Math.floor((s.sentAtMs[j]! - o.window.start) / 1000);
          perSecond[Math.min(seconds - 1, Math.max(0, second))]!.push(latency);
          if (o.answerMs) fromAnswer.push(recv - o.answerMs[k]!);
        }
      }
      delivered += seen.size;
      if (seen.size < due) streamsMissing++;
      seqGaps += s.seqGaps;
      seqRepeats += s.seqRepeats;
      foreign += s.foreignMessages;
      otherEvents += s.otherEvents;
      heartbeats += s.heartbeats;
    }
  }
  return {
    delivery: {
      streams,
      expected,
      delivered,
      missing: expected - delivered,
      duplicated,
      unexpected,
      streamsMissing,
      seqGaps,
      seqRepeats,
      foreign,
      otherEvents,
      heartbeats,
      errors,
      errorSamples,
    },
    fromSentAt: percentiles(Float64Array.from(fromSentAt)),
    fromAnswer: o.answerMs ? percentiles(Float64Array.from(fromAnswer)) : undefined,
    eventsPerSecond: windowDeliveries / ((o.window.end - o.window.start) / 1000),
    lastDeliveryMs,
    subscriberCpuMs: cpuMs,
    bySecond: perSecond.map((values, second) => {
      const p = percentiles(Float64Array.from(values));
      return { second, deliveries: p.count, p50: p.p50, p99: p.p99, max: p.max };
    }),
  };
}

/** True when every due message arrived exactly once, in sequence, and no stream failed. */
export function deliveryClean(d: Delivery): boolean {
  return (
    d.missing === 0 &&
    d.duplicated === 0 &&
    d.unexpected === 0 &&
    d.seqGaps === 0 &&
    d.seqRepeats === 0 &&
    d.foreign === 0 &&
    Object.keys(d.errors).length === 0
  );
}
