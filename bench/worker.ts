/**
 * One load-generating child process (forked by loadgen.ts). It receives a task over IPC, opens its
 * channels, says `ready`, and on `go` runs its slots: each slot keeps one call in flight, issuing the next
 * as soon as the previous answers, from `startAt` until the measurement window ends. It reports the
 * latencies of OK calls completed inside the window and every non-OK answer by gRPC code.
 */
import { performance } from 'node:perf_hooks';
import { Client, credentials, type Metadata, type ServiceError } from '@grpc/grpc-js';
import { ListDirection, type ListMessagesResponse, type SendMessageResponse } from '../gen/comms/v1/message.js';
import type { MarkReadResponse } from '../gen/comms/v1/read_receipt.js';
import { AdmitState, type JoinSessionResponse } from '../gen/comms/v1/session.js';
import {
  bearer,
  codeName,
  type FromWorker,
  messageBody,
  METHODS,
  type SlotPlan,
  type ToWorker,
  type WorkerTask,
} from './protocol.js';

/** A prepared call: the request and how to check its answer (a message when the answer is wrong). */
interface Prepared {
  readonly req: unknown;
  readonly check: (res: unknown) => string | undefined;
}

function send(msg: FromWorker): Promise<void> {
  return new Promise((resolve) => process.send!(msg, () => resolve()));
}

/** Builds call i of a slot. */
function requestBuilder(task: WorkerTask, slot: SlotPlan, slotIndex: number): (i: number) => Prepared {
  const { threads, batch } = task;
  const threadOf = (i: number) => threads[(slot.start + i * slot.stride) % threads.length]!;
  switch (task.kind) {
    case 'baseline':
    case 'send': {
      const prefix = `${task.scenario}-${task.runTag}-${process.pid}-${slotIndex}`;
      const checkNew = (res: unknown) => {
        const r = res as SendMessageResponse;
        if (!r.message?.messageId) return 'no message in the response';
        if (r.replayed) return 'a new message was answered as a replay';
        return undefined;
      };
      return (i) => ({
        req: {
          threadId: threadOf(i),
          clientMutationId: `${prefix}-${i}`,
          body: messageBody(task.bodyBytes, `${prefix}-${i}`),
          clientSentAt: new Date(),
        },
        check: checkNew,
      });
    }
    case 'replay':
      return (i) => {
        const r = slot.replays[i % slot.replays.length]!;
        return {
          req: { threadId: r.threadId, clientMutationId: r.clientMutationId, body: r.body, clientSentAt: new Date() },
          check: (res) => {
            const m = res as SendMessageResponse;
            if (!m.replayed) return 'a retry was not answered as a replay';
            if (m.message?.messageId !== r.messageId) return 'a retry returned another message id';
            return undefined;
          },
        };
      };
    case 'markRead': {
      const ids = task.messageSets[slot.messageSet]!;
      const windows = Math.max(1, Math.floor(ids.length / batch));
      const check = (res: unknown) => {
        const n = (res as MarkReadResponse).receipts.length;
        return n === batch ? undefined : `expected ${batch} receipts, got ${n}`;
      };
      return (i) => {
        const w = (slot.start + i) % windows;
        return { req: { messageIds: ids.slice(w * batch, w * batch + batch), readAt: new Date() }, check };
      };
    }
    case 'join': {
      const check = (res: unknown) => {
        const r = res as JoinSessionResponse;
        if (r.participant?.admitState !== AdmitState.ADMIT_STATE_ADMITTED) return 'the provider was not ADMITTED';
        return r.credential?.token ? undefined : 'no join credential';
      };
      return (i) => ({ req: { sessionId: threadOf(i) }, check });
    }
    case 'list': {
      const check = (res: unknown) => {
        const n = (res as ListMessagesResponse).messages.length;
        return n === batch ? undefined : `expected a page of ${batch} messages, got ${n}`;
      };
      return (i) => ({
        req: {
          threadId: threadOf(i),
          pageSize: batch,
          pageToken: '',
          direction: ListDirection.LIST_DIRECTION_BACKWARD,
          cursor: '',
        },
        check,
      });
    }
  }
}

async function run(task: WorkerTask, clients: Client[], startAt: number): Promise<void> {
  const method = METHODS[task.kind];
  // Epoch ms → this process's performance clock.
  const toLocal = (epochMs: number) => epochMs - performance.timeOrigin;
  const start = toLocal(startAt);
  const measureStart = start + task.warmupMs;
  const measureEnd = measureStart + task.durationMs;

  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  const errorsOutsideWindow: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  let callsStarted = 0;
  const fail = (name: string, message: string, inWindow: boolean) => {
    const bucket = inWindow ? errors : errorsOutsideWindow;
    bucket[name] = (bucket[name] ?? 0) + 1;
    errorSamples[name] ??= message;
  };

  let cpuAtStart: NodeJS.CpuUsage | undefined;
  let cpuMs = 0;
  const cpuStartTimer = setTimeout(() => (cpuAtStart = process.cpuUsage()), Math.max(0, measureStart - now()));
  const cpuEndTimer = setTimeout(
    () => {
      const d = process.cpuUsage(cpuAtStart);
      cpuMs = (d.user + d.system) / 1000;
    },
    Math.max(0, measureEnd - now()),
  );

  const slotLoop = async (slot: SlotPlan, slotIndex: number) => {
    const client = clients[slotIndex % clients.length]!;
    const md: Metadata = bearer(slot.token);
    const next = requestBuilder(task, slot, slotIndex);
    for (let i = 0; now() < measureEnd; i++) {
      const { req, check } = next(i);
      callsStarted++;
      const t0 = now();
      const outcome = await new Promise<{ err: ServiceError | null; res: unknown }>((resolve) =>
        client.makeUnaryRequest(
          method.path,
          method.requestSerialize as (v: unknown) => Buffer,
          method.responseDeserialize as (b: Buffer) => unknown,
          req,
          md,
          { deadline: new Date(Date.now() + task.deadlineMs) },
          (err: ServiceError | null, res?: unknown) => resolve({ err, res }),
        ),
      );
      const t1 = now();
      const inWindow = t1 >= measureStart && t1 <= measureEnd;
      if (outcome.err) {
        fail(codeName(outcome.err), outcome.err.details || outcome.err.message, inWindow);
        continue;
      }
      const wrong = check(outcome.res);
      if (wrong) fail('BAD_RESPONSE', wrong, inWindow);
      else if (inWindow) latencies.push(t1 - t0);
    }
  };

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, start - now())));
  await Promise.all(task.slots.map((slot, k) => slotLoop(slot, k)));
  clearTimeout(cpuStartTimer);
  clearTimeout(cpuEndTimer);
  if (cpuMs === 0 && cpuAtStart) {
    const d = process.cpuUsage(cpuAtStart);
    cpuMs = (d.user + d.system) / 1000;
  }
  await send({
    type: 'result',
    result: {
      latenciesMs: Float64Array.from(latencies),
      errors,
      errorsOutsideWindow,
      errorSamples,
      callsStarted,
      cpuMs,
    },
  });
}

function now(): number {
  return performance.now();
}

function waitReady(client: Client, deadlineMs: number): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + deadlineMs), (err) => (err ? reject(err) : resolve())),
  );
}

let task: WorkerTask | undefined;
let clients: Client[] = [];

process.on('message', (msg: ToWorker) => {
  if (msg.type === 'task') {
    task = msg.task;
    clients = Array.from(
      { length: Math.max(1, task.channels) },
      () =>
        new Client(task!.target, credentials.createInsecure(), {
          // A local subchannel pool gives each client its own HTTP/2 connection.
          'grpc.use_local_subchannel_pool': 1,
          // Per-call bookkeeping a load generator does not need (it retries nothing and is not
          // inspected): less client CPU on a machine the server shares.
          'grpc.enable_channelz': 0,
          'grpc.enable_retries': 0,
        }),
    );
    Promise.all(clients.map((c) => waitReady(c, 10_000))).then(
      () => send({ type: 'ready' }),
      (err: unknown) => send({ type: 'failed', message: `cannot connect to ${task!.target}: ${String(err)}` }),
    );
  } else if (msg.type === 'go' && task) {
    run(task, clients, msg.startAt)
      .catch((err: unknown) => send({ type: 'failed', message: err instanceof Error ? err.stack! : String(err) }))
      .finally(() => {
        for (const c of clients) c.close();
        process.disconnect();
      });
  }
});

// The parent went away (finished, crashed or was interrupted): stop at once.
process.on('disconnect', () => process.exit(0));
