/**
 * One subscriber process of the feed benchmark (forked by run.ts). It receives its streams over IPC,
 * opens them over several HTTP/2 connections per replica (a few at a time, each waiting for its
 * `caught_up`), says `opened`, and from then on records every bench message it receives: the message
 * index (from the body), the receive time and the message's sent_at. It checks the resume tokens'
 * sequence numbers as they come (each event must be the previous one + 1). On `close` it cancels every
 * stream and reports.
 */
import { Client, type ClientReadableStream, credentials, type ServiceError, status } from '@grpc/grpc-js';
import type { WatchThreadRequest, WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import { decodeResumeToken } from '../../src/domain/feed/feed.token.js';
import { bearer, codeName } from '../protocol.js';
import {
  epochNow,
  type FromSubscriber,
  messageIndex,
  type StreamPlan,
  type StreamResult,
  type SubscriberTask,
  type ToSubscriber,
  WATCH_METHODS,
} from './protocol.js';

function send(msg: FromSubscriber): Promise<void> {
  return new Promise((resolve) => process.send!(msg, () => resolve()));
}

/** One open stream and what it has seen. */
class Recorder {
  readonly ks: number[] = [];
  readonly recvMs: number[] = [];
  readonly sentAtMs: number[] = [];
  heartbeats = 0;
  otherEvents = 0;
  foreignMessages = 0;
  seqGaps = 0;
  seqRepeats = 0;
  lastSeq: number | undefined;
  endedEarly: string | undefined;
  call: ClientReadableStream<WatchThreadResponse> | undefined;
  readonly #stream: string;

  constructor(
    readonly plan: StreamPlan,
    private readonly runTag: string,
  ) {
    this.#stream = `t:${plan.threadId}`;
  }

  /** Records one response; true when it is the caught_up marker. */
  onData(res: WatchThreadResponse, now: number): boolean {
    const ev = res.event;
    switch (ev?.$case) {
      case 'caughtUp':
        this.lastSeq = this.#seq(res.resumeToken);
        return true;
      case 'heartbeat':
        this.heartbeats++;
        return false;
      case 'messagePosted': {
        this.#step(res.resumeToken);
        const k = messageIndex(ev.value.body, this.runTag);
        if (k < 0) {
          this.foreignMessages++;
          return false;
        }
        this.ks.push(k);
        this.recvMs.push(now);
        this.sentAtMs.push(ev.value.sentAt?.getTime() ?? Number.NaN);
        return false;
      }
      default:
        this.#step(res.resumeToken);
        this.otherEvents++;
        return false;
    }
  }

  #seq(token: string): number | undefined {
    try {
      const seq = decodeResumeToken(token, this.#stream, /^\d{1,15}$/);
      return seq === undefined ? undefined : Number(seq);
    } catch {
      return undefined;
    }
  }

  /** An event's token must name the next sequence number of the stream. */
  #step(token: string): void {
    const seq = this.#seq(token);
    if (seq === undefined || this.lastSeq === undefined) {
      this.seqGaps++;
    } else if (seq <= this.lastSeq) {
      this.seqRepeats++;
    } else if (seq > this.lastSeq + 1) {
      this.seqGaps++;
    }
    if (seq !== undefined) this.lastSeq = Math.max(seq, this.lastSeq ?? seq);
  }

  result(): StreamResult {
    return {
      id: this.plan.id,
      ks: Int32Array.from(this.ks),
      recvMs: Float64Array.from(this.recvMs),
      sentAtMs: Float64Array.from(this.sentAtMs),
      heartbeats: this.heartbeats,
      otherEvents: this.otherEvents,
      foreignMessages: this.foreignMessages,
      seqGaps: this.seqGaps,
      seqRepeats: this.seqRepeats,
      endedEarly: this.endedEarly,
    };
  }
}

let task: SubscriberTask | undefined;
let clients: Client[] = [];
const recorders: Recorder[] = [];
let closing = false;
const errors: Record<string, number> = {};
const errorSamples: Record<string, string> = {};
let cpuAtStart: NodeJS.CpuUsage | undefined;
let cpuMs: number | undefined;

function fail(code: string, message: string): void {
  errors[code] = (errors[code] ?? 0) + 1;
  errorSamples[code] ??= message;
}

/** Opens one stream; resolves once it is caught up (true) or failed (false). */
function openStream(t: SubscriberTask, rec: Recorder, client: Client): Promise<boolean> {
  const method = WATCH_METHODS[t.target];
  return new Promise((resolve) => {
    let settled = false;
    const settle = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(ok);
    };
    const timer = setTimeout(() => {
      fail('OPEN_TIMEOUT', `no caught_up within ${t.openTimeoutMs} ms`);
      settle(false);
    }, t.openTimeoutMs);
    const call = client.makeServerStreamRequest<WatchThreadRequest, WatchThreadResponse>(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      { threadId: rec.plan.threadId, resumeToken: '' },
      bearer(rec.plan.token),
      {},
    );
    rec.call = call;
    call.on('data', (res: WatchThreadResponse) => {
      if (rec.onData(res, epochNow())) settle(true);
    });
    call.on('error', (err: ServiceError) => {
      if (closing && err.code === status.CANCELLED) return;
      rec.endedEarly = codeName(err);
      fail(rec.endedEarly, err.details || err.message);
      settle(false);
    });
    call.on('status', (st: { code: number }) => {
      if (st.code === status.OK && !closing) {
        rec.endedEarly = 'OK';
        fail('ENDED_BY_SERVER', 'the server ended the stream with OK');
        settle(false);
      }
    });
  });
}

async function open(t: SubscriberTask): Promise<void> {
  const started = epochNow();
  // Per replica, enough connections that none carries more than streamsPerChannel streams.
  const perReplica = t.addresses.map((address, r) => {
    const n = t.streams.filter((s) => s.replica === r).length;
    return Array.from(
      { length: Math.max(1, Math.ceil(n / t.streamsPerChannel)) },
      () =>
        new Client(address, credentials.createInsecure(), {
          // A local subchannel pool gives each client its own HTTP/2 connection.
          'grpc.use_local_subchannel_pool': 1,
          'grpc.enable_channelz': 0,
          'grpc.enable_retries': 0,
          // FEEDS_CLIENT_WINDOW: the connection's (and each stream's) receive window; grpc-js's default is 64 KiB.
          ...(t.clientWindow ? { 'grpc-node.flow_control_window': t.clientWindow } : {}),
        }),
    );
  });
  clients = perReplica.flat();
  const used = t.addresses.map(() => 0);
  const jobs = t.streams.map((plan) => {
    const rec = new Recorder(plan, t.runTag);
    recorders.push(rec);
    const pool = perReplica[plan.replica]!;
    const client = pool[used[plan.replica]!++ % pool.length]!;
    return { rec, client };
  });
  let next = 0;
  let failed = 0;
  const lane = async () => {
    while (next < jobs.length) {
      const { rec, client } = jobs[next++]!;
      if (!(await openStream(t, rec, client))) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(t.openConcurrency, jobs.length)) }, lane));
  await send({ type: 'opened', streams: jobs.length - failed, failed, ms: epochNow() - started });
}

async function close(): Promise<void> {
  closing = true;
  if (cpuMs === undefined && cpuAtStart) {
    const d = process.cpuUsage(cpuAtStart);
    cpuMs = (d.user + d.system) / 1000;
  }
  for (const rec of recorders) rec.call?.cancel();
  for (const c of clients) c.close();
  await send({
    type: 'result',
    result: { streams: recorders.map((r) => r.result()), errors, errorSamples, cpuMs: cpuMs ?? 0 },
  });
}

process.on('message', (msg: ToSubscriber) => {
  const report = (err: unknown) =>
    send({ type: 'failed', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  switch (msg.type) {
    case 'open':
      task = msg.task;
      open(task).catch(report);
      break;
    case 'window':
      setTimeout(() => (cpuAtStart = process.cpuUsage()), Math.max(0, msg.start - epochNow()));
      setTimeout(
        () => {
          const d = process.cpuUsage(cpuAtStart);
          cpuMs = (d.user + d.system) / 1000;
        },
        Math.max(0, msg.end - epochNow()),
      );
      break;
    case 'progress':
      void send({ type: 'progress', messages: recorders.reduce((n, r) => n + r.ks.length, 0) });
      break;
    case 'close':
      close()
        .catch(report)
        .finally(() => process.disconnect());
      break;
  }
});

// The parent went away (finished, crashed or was interrupted): stop at once.
process.on('disconnect', () => process.exit(0));
