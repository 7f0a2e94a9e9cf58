import { type Client, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { MessageServiceService } from '../gen/comms/v1/message.js';
import { ReadReceiptServiceService } from '../gen/comms/v1/read_receipt.js';
import { VirtualSessionServiceService } from '../gen/comms/v1/session.js';
import { call as unaryCall, type UnaryMethod } from '../test/support/unary.js';

/**
 * What the parent (loadgen.ts) and the load-generating child processes (worker.ts) say to each other,
 * and the little gRPC plumbing both sides share.
 */

/** The kinds of call a worker makes; each maps to one unary method and one request builder. */
export type CallKind = 'baseline' | 'send' | 'replay' | 'markRead' | 'list' | 'join';

/** The method path of the raw baseline: SendMessage's messages, registered under another service. */
export const BASELINE_PATH = '/bench.Baseline/Insert';

/** The unary method each call kind uses (path and the generated ts-proto encoders). */
export const METHODS = {
  baseline: { ...MessageServiceService.sendMessage, path: BASELINE_PATH },
  send: MessageServiceService.sendMessage,
  replay: MessageServiceService.sendMessage,
  markRead: ReadReceiptServiceService.markRead,
  list: MessageServiceService.listMessages,
  join: VirtualSessionServiceService.joinSession,
} as const;

/** One send to repeat in the replay scenario, with the id the first send got. */
export interface Replay {
  readonly threadId: string;
  readonly clientMutationId: string;
  readonly body: string;
  readonly messageId: string;
}

/**
 * One in-flight call slot: a loop that issues its next call as soon as the previous one answers. Call i
 * of a slot uses `threads[(start + i * stride) % threads.length]` (send, baseline, list; join: sessions), message window
 * `(start + i) % windows` of `messageSets[messageSet]` (markRead), or `replays[i % replays.length]`.
 */
export interface SlotPlan {
  /** Which worker process runs this slot. */
  readonly worker: number;
  /** Bearer token of the caller this slot acts as. */
  readonly token: string;
  readonly start: number;
  readonly stride: number;
  readonly messageSet: number;
  readonly replays: readonly Replay[];
}

/** Everything a worker needs to run its share of one scenario. */
export interface WorkerTask {
  readonly scenario: string;
  readonly kind: CallKind;
  /** host:port on loopback. */
  readonly target: string;
  /** HTTP/2 connections this worker opens; its slots are spread over them round-robin. */
  readonly channels: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Per-call deadline. */
  readonly deadlineMs: number;
  /** Body size of new messages (send, baseline). */
  readonly bodyBytes: number;
  /** Ids per MarkRead call; page size of ListMessages. */
  readonly batch: number;
  /** A tag that makes client_mutation_ids of this run unique. */
  readonly runTag: string;
  readonly threads: readonly string[];
  readonly messageSets: readonly (readonly string[])[];
  readonly slots: readonly SlotPlan[];
}

/** Parent → worker. */
export type ToWorker =
  | { readonly type: 'task'; readonly task: WorkerTask; readonly worker: number }
  /** Start calling at `startAt` (epoch ms); the warm-up ends and measurement starts `warmupMs` later. */
  | { readonly type: 'go'; readonly startAt: number };

/** What one worker measured. Errors count every non-OK answer, whatever the phase it fell in. */
export interface WorkerResult {
  /** Latencies (ms) of the OK calls that completed inside the measurement window. */
  readonly latenciesMs: Float64Array;
  /** Non-OK answers completing inside the measurement window, by gRPC code name (or BAD_RESPONSE). */
  readonly errors: Record<string, number>;
  /** Non-OK answers during warm-up and after the window (draining), by code name. */
  readonly errorsOutsideWindow: Record<string, number>;
  /** One message per error code, to say what went wrong. */
  readonly errorSamples: Record<string, string>;
  /** Calls started, in all phases. */
  readonly callsStarted: number;
  /** CPU time (user + system, ms) this worker used during the measurement window. */
  readonly cpuMs: number;
}

/** Worker → parent. */
export type FromWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'result'; readonly result: WorkerResult }
  | { readonly type: 'failed'; readonly message: string };

/** Metadata carrying `authorization: Bearer <token>`. */
export function bearer(token: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

/** The gRPC code name of an error (`UNIMPLEMENTED`, …), or CLIENT_ERROR for anything else. */
export function codeName(err: unknown): string {
  const code = (err as Partial<ServiceError> | null)?.code;
  return typeof code === 'number' && status[code] !== undefined ? status[code] : 'CLIENT_ERROR';
}

/** An error as `CODE: details`, for setup failures. */
export function describeError(err: unknown): string {
  const e = err as Partial<ServiceError>;
  return `${codeName(err)}: ${e.details || e.message || String(err)}`;
}

/** Promisifies one unary call of a generated client (setup traffic, not the measured loop). */
export function call<Req, Res>(
  client: Client,
  method: UnaryMethod<Req, Res>,
  req: Req,
  md: Metadata,
  timeoutMs = 30_000,
): Promise<Res> {
  return unaryCall(client, method, req, md, { deadline: new Date(Date.now() + timeoutMs) });
}

/** A message body of about `bytes` UTF-8 bytes (ASCII), distinct per `seq`. */
export function messageBody(bytes: number, seq: string): string {
  const head = `bench message ${seq} `;
  return head.length >= bytes ? head : head + 'x'.repeat(bytes - head.length);
}
