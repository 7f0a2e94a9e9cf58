/**
 * One load process of the soak (forked by load.ts). It receives its task over IPC, opens its channels to
 * every replica, says `ready`, and on `go` runs its slots: each keeps one call in flight (closed loop),
 * its calls following the mix's pattern (SendMessage, MarkRead, ListMessages) and alternating between
 * the replicas, until `endAt`. Every call is counted in the interval in which its answer arrived; each
 * finished interval is reported at once (latencies per kind, errors by code, the sends answered OK), so
 * the parent can print and keep a time series.
 *
 * The process owns its threads (the parent gives each thread to one process): it sends into them, marks
 * their newest messages read (ids from its own sends' answers, after the seeded ones) and lists them, so
 * it knows what each answer must hold without asking anyone.
 */
import { Client, credentials, type Metadata, type ServiceError } from '@grpc/grpc-js';
import { ListDirection, type ListMessagesResponse, type SendMessageResponse } from '../../gen/comms/v1/message.js';
import type { MarkReadResponse } from '../../gen/comms/v1/read_receipt.js';
import { epochNow, feedBody } from '../feeds/protocol.js';
import { bearer, codeName, METHODS } from '../protocol.js';
import {
  type FromSoakWorker,
  type IntervalData,
  intervalOf,
  type Kind,
  mixPattern,
  type SoakTask,
  type SoakThread,
  type ToSoakWorker,
} from './protocol.js';

function send(msg: FromSoakWorker): Promise<void> {
  return new Promise((resolve) => process.send!(msg, () => resolve()));
}

/** What the process knows of one of its threads. */
interface ThreadState {
  readonly thread: SoakThread;
  /** Sends issued (message k = index + sent · threadCount). */
  sent: number;
  /** Messages known committed (seeded + sends answered OK). */
  committed: number;
  /** The newest message ids known, oldest first (at most 2 × markBatch). */
  readonly recent: string[];
}

/** Counts of one interval while it is open. */
class Bucket {
  readonly latencies: Record<Kind, number[]> = { send: [], markRead: [], list: [] };
  readonly errors: Record<Kind, Record<string, number>> = { send: {}, markRead: {}, list: {} };
  readonly errorSamples: Record<string, string> = {};
  readonly sendKs: number[] = [];
  readonly okPerReplica: number[];

  constructor(
    readonly index: number,
    replicas: number,
  ) {
    this.okPerReplica = Array.from({ length: replicas }, () => 0);
  }

  fail(kind: Kind, code: string, message: string): void {
    this.errors[kind][code] = (this.errors[kind][code] ?? 0) + 1;
    this.errorSamples[`${kind} ${code}`] ??= message;
  }

  data(): IntervalData {
    return {
      index: this.index,
      latencies: {
        send: Float64Array.from(this.latencies.send),
        markRead: Float64Array.from(this.latencies.markRead),
        list: Float64Array.from(this.latencies.list),
      },
      errors: this.errors,
      errorSamples: this.errorSamples,
      sendKs: Int32Array.from(this.sendKs),
      okPerReplica: this.okPerReplica,
    };
  }
}

/** A prepared call: method, request, caller and how to check (and learn from) the answer. */
interface Prepared {
  readonly kind: Kind;
  readonly req: unknown;
  readonly token: string;
  /** A message when the answer is wrong; otherwise undefined (after recording what it taught). */
  readonly check: (res: unknown, into: Bucket) => string | undefined;
}

async function run(task: SoakTask, clients: Client[][], go: Extract<ToSoakWorker, { type: 'go' }>): Promise<void> {
  const { windowStart, endAt, startAt } = go;
  const replicas = task.addresses.length;
  const states: ThreadState[] = task.threads.map((thread) => ({
    thread,
    sent: 0,
    committed: thread.seedIds.length,
    recent: thread.seedIds.slice(-2 * task.markBatch),
  }));
  const cursors: Record<Kind, number> = { send: 0, markRead: Math.floor(states.length / 2), list: 0 };
  const nextThread = (kind: Kind) => states[cursors[kind]++ % states.length]!;
  const metadata = new Map<string, Metadata>();
  const md = (token: string) => {
    let m = metadata.get(token);
    if (!m) metadata.set(token, (m = bearer(token)));
    return m;
  };

  const prepare = (kind: Kind): Prepared => {
    const s = nextThread(kind);
    const { thread } = s;
    switch (kind) {
      case 'send': {
        const k = thread.index + s.sent * task.threadCount;
        s.sent++;
        return {
          kind,
          token: thread.senderToken,
          req: {
            threadId: thread.threadId,
            clientMutationId: `soak-${task.runTag}-${k}`,
            body: feedBody(task.runTag, k, task.bodyBytes),
            clientSentAt: new Date(),
          },
          check: (res, into) => {
            const r = res as SendMessageResponse;
            if (!r.message?.messageId) return 'no message in the response';
            if (r.replayed) return 'a new message was answered as a replay';
            s.committed++;
            s.recent.push(r.message.messageId);
            if (s.recent.length > 2 * task.markBatch) s.recent.splice(0, s.recent.length - 2 * task.markBatch);
            into.sendKs.push(k);
            return undefined;
          },
        };
      }
      case 'markRead': {
        const ids = s.recent.slice(-task.markBatch);
        const distinct = new Set(ids).size;
        return {
          kind,
          token: thread.readerToken,
          req: { messageIds: ids, readAt: new Date() },
          check: (res) => {
            const n = (res as MarkReadResponse).receipts.length;
            return n === distinct ? undefined : `expected ${distinct} receipts, got ${n}`;
          },
        };
      }
      case 'list': {
        // At least what was committed before the call, up to a page (sends in flight may add more).
        const atLeast = Math.min(task.pageSize, s.committed);
        return {
          kind,
          token: thread.readerToken,
          req: {
            threadId: thread.threadId,
            pageSize: task.pageSize,
            pageToken: '',
            direction: ListDirection.LIST_DIRECTION_BACKWARD,
            cursor: '',
          },
          check: (res) => {
            const n = (res as ListMessagesResponse).messages.length;
            return n >= atLeast && n <= task.pageSize
              ? undefined
              : `expected a page of ${atLeast} to ${task.pageSize} messages, got ${n}`;
          },
        };
      }
    }
  };

  // Open intervals by index; finished ones are flushed by a timer at each boundary. Answers after
  // `endAt` go to the drain bucket.
  const drainIndex = intervalOf(endAt - 1, windowStart, task.intervalMs) + 1;
  const buckets = new Map<number, Bucket>();
  const current = (t: number): Bucket => {
    const index = t >= endAt ? drainIndex : intervalOf(t, windowStart, task.intervalMs);
    let b = buckets.get(index);
    if (!b) buckets.set(index, (b = new Bucket(index, replicas)));
    return b;
  };
  const flush = async (before: number) => {
    for (const index of [...buckets.keys()].sort((a, b) => a - b)) {
      if (index >= before) continue;
      const b = buckets.get(index);
      if (!b) continue; // flushed meanwhile by another flush
      buckets.delete(index);
      await send({ type: 'interval', data: b.data() });
    }
  };
  let flushTimer: NodeJS.Timeout | undefined;
  const scheduleFlush = () => {
    const next = Math.min(intervalOf(epochNow(), windowStart, task.intervalMs) + 1, drainIndex);
    const at = Math.min(windowStart + next * task.intervalMs, endAt);
    flushTimer = setTimeout(
      () => {
        // Every interval before the one now open is complete.
        void flush(Math.min(intervalOf(epochNow(), windowStart, task.intervalMs), drainIndex));
        if (next < drainIndex) scheduleFlush();
      },
      Math.max(0, at - epochNow()),
    );
  };

  let callsStarted = 0;
  const pattern = mixPattern(task.mix);
  const slotLoop = async (g: number) => {
    const slot = task.slotBase + g;
    for (let n = 0; epochNow() < endAt; n++) {
      const kind = pattern[(slot * 7 + n) % pattern.length]!;
      const replica = (slot + n) % replicas;
      const client = clients[replica]![slot % task.channels]!;
      const method = METHODS[kind];
      const p = prepare(kind);
      callsStarted++;
      const t0 = epochNow();
      const outcome = await new Promise<{ err: ServiceError | null; res: unknown }>((resolve) =>
        client.makeUnaryRequest(
          method.path,
          method.requestSerialize as (v: unknown) => Buffer,
          method.responseDeserialize as (b: Buffer) => unknown,
          p.req,
          md(p.token),
          { deadline: new Date(Date.now() + task.deadlineMs) },
          (err: ServiceError | null, res?: unknown) => resolve({ err, res }),
        ),
      );
      const t1 = epochNow();
      if (outcome.err) {
        current(t1).fail(kind, codeName(outcome.err), outcome.err.details || outcome.err.message);
        continue;
      }
      const b = current(t1);
      const wrong = p.check(outcome.res, b);
      if (wrong) {
        b.fail(kind, 'BAD_RESPONSE', wrong);
        continue;
      }
      b.latencies[kind].push(t1 - t0);
      b.okPerReplica[replica]!++;
    }
  };

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, startAt - epochNow())));
  const cpuAtStart = process.cpuUsage();
  scheduleFlush();
  await Promise.all(Array.from({ length: task.slots }, (_, g) => slotLoop(g)));
  const cpu = process.cpuUsage(cpuAtStart);
  clearTimeout(flushTimer);
  await flush(drainIndex);
  const drain = buckets.get(drainIndex) ?? new Bucket(drainIndex, replicas);
  await send({ type: 'done', drain: drain.data(), callsStarted, cpuMs: (cpu.user + cpu.system) / 1000 });
}

function waitReady(client: Client, deadlineMs: number): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + deadlineMs), (err) => (err ? reject(err) : resolve())),
  );
}

let task: SoakTask | undefined;
let clients: Client[][] = [];

process.on('message', (msg: ToSoakWorker) => {
  if (msg.type === 'task') {
    task = msg.task;
    clients = task.addresses.map((address) =>
      Array.from(
        { length: Math.max(1, task!.channels) },
        () =>
          new Client(address, credentials.createInsecure(), {
            // A local subchannel pool gives each client its own HTTP/2 connection.
            'grpc.use_local_subchannel_pool': 1,
            'grpc.enable_channelz': 0,
            'grpc.enable_retries': 0,
          }),
      ),
    );
    Promise.all(clients.flat().map((c) => waitReady(c, 10_000))).then(
      () => send({ type: 'ready' }),
      (err: unknown) => send({ type: 'failed', message: `cannot connect: ${String(err)}` }),
    );
  } else if (msg.type === 'go' && task) {
    run(task, clients, msg)
      .catch((err: unknown) => send({ type: 'failed', message: err instanceof Error ? err.stack! : String(err) }))
      .finally(() => {
        for (const c of clients.flat()) c.close();
        process.disconnect();
      });
  }
});

// The parent went away (finished, crashed or was interrupted): stop at once.
process.on('disconnect', () => process.exit(0));
