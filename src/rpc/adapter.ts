import { randomUUID } from 'node:crypto';
import {
  type Metadata,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  status,
  type UntypedHandleCall,
} from '@grpc/grpc-js';
import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import { context, propagation, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { type Actor, hasPermission } from '../domain/actor.js';
import type { AuditLog, AuditTarget } from '../domain/audit/audit.log.js';
import { DeadlineExceeded, PermissionDenied, TooMuch } from '../domain/errors.js';
import { SlowConsumer } from '../domain/feed/feed.errors.js';
import type { Authenticator } from '../infra/auth/authenticator.js';
import type { Logger } from '../infra/log/logger.js';
import type { Metrics } from '../infra/metrics/metrics.js';
import { toStatus } from './errors.js';
import { type CallLimits, capPageSize } from './limits.js';
import { policyOf, type RpcPolicy } from './policy.js';
import { checkRequest } from './request.js';

/** Everything a handler gets besides its request. */
export interface CallContext {
  /** The verified caller. */
  readonly actor: Actor;
  /** A fresh EntityManager fork for this call only. */
  readonly em: EntityManager;
  /** The client's deadline, if it set one; the domain bounds its transactions by it. */
  readonly deadline: Date | undefined;
  /** The statement timeout every pooled connection has (DB_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs: number;
  /** Aborted when the client cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** The client's `x-request-id`, or a generated one; logged with the call. */
  readonly requestId: string;
  /** When the caller's token expires (a stream must end then). */
  readonly expiresAt: Date;
  /**
   * Records, in the access audit, message content this call reads (writes are recorded by the adapter
   * once they succeed). Throws UNAVAILABLE when the audit can take no more: hand nothing out then.
   */
  readonly audit: (target: AuditTarget) => void;
}

/** A unary handler: decode → domain → encode, nothing else. */
export type UnaryHandler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

/** A server-streaming handler: an async generator of responses; it stops when `ctx.signal` aborts. */
export type StreamHandler<Req, Res> = (req: Req, ctx: CallContext) => AsyncIterable<Res>;

export interface AdapterDeps {
  readonly orm: MikroORM;
  readonly statementTimeoutMs: number;
  readonly auth: Authenticator;
  readonly log: Logger;
  /**
   * How long a stream may wait for its client to accept data (grpc-js `write()` returned false and no
   * `drain` came) before it is ended with RESOURCE_EXHAUSTED.
   */
  readonly streamStallMs: number;
  readonly limits: CallLimits;
  /** PAGE_SIZE_MAX (0: the contract's maxima). */
  readonly pageSizeMax: number;
  readonly metrics: Metrics;
  /** The access audit: every write that succeeds, and what handlers report they read. */
  readonly audit: AuditLog;
}

/**
 * Turns `async (req, ctx) => res` handlers into grpc-js callbacks. It authenticates once from metadata,
 * applies the method's access gate and the caller's limits (src/rpc/policy.ts, limits.ts), forks one
 * EntityManager per call, honours cancellation and deadlines, maps every thrown error through
 * `toStatus`, logs one line per call (method, code, latency, request id; never bodies or tokens), counts
 * it in the metrics, and answers exactly once by construction.
 */
export class RpcAdapter {
  constructor(private readonly deps: AdapterDeps) {}

  unary<Req, Res>(method: string, handler: UnaryHandler<Req, Res>): UntypedHandleCall {
    const policy = policyOf(method);
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = process.hrtime.bigint();
      const requestId = requestIdOf(call.metadata);
      const controller = new AbortController();
      call.on('cancelled', () => controller.abort());
      const span = startSpan(method, call.metadata, requestId);
      const finish = (code: status, err?: unknown) => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        const entry = { method, code: status[code], ms: Math.round(ms * 100) / 100, requestId };
        endSpan(span, code);
        this.deps.metrics.unary(method, status[code], ms / 1000);
        if (err) this.deps.log.error({ ...entry, err }, 'rpc failed');
        else this.deps.log.info(entry, 'rpc');
      };
      context
        .with(trace.setSpan(context.active(), span), () =>
          this.#run(call, handler, policy, method, controller.signal, requestId),
        )
        .then(
          (res) => {
            finish(status.OK);
            callback(null, res);
          },
          (err: unknown) => {
            if (err instanceof TooMuch) this.deps.metrics.rateLimited.inc({ method });
            const { status: st, internal } = toStatus(err);
            finish(st.code, internal ? err : undefined);
            callback(st);
          },
        );
    };
  }

  /**
   * Turns an async-generator handler into a grpc-js server-streaming callback. Each response is written
   * only after the previous one was accepted: when `write()` returns false the loop waits for `drain`, so
   * a slow client holds at most grpc-js's buffer (16 messages) in memory, and if no drain comes within
   * `streamStallMs` the stream ends with RESOURCE_EXHAUSTED. Every error status of a stream carries, in
   * ErrorInfo metadata `resume_token`, the token of the last response written (from `resumeTokenOf`),
   * which the client receives before the status. Client cancel or deadline aborts `ctx.signal`, and the
   * generator is closed (its `finally` runs) in every case.
   */
  serverStream<Req, Res>(
    method: string,
    handler: StreamHandler<Req, Res>,
    resumeTokenOf: (res: Res) => string,
    /** When the event a response carries was committed (undefined for markers): the feed-lag metric. */
    committedAtOf: (res: Res) => Date | undefined = () => undefined,
    /** How long this method's client may take no data before the stream ends (default `streamStallMs`). */
    stallMs = this.deps.streamStallMs,
  ): UntypedHandleCall {
    const policy = policyOf(method);
    return (call: ServerWritableStream<Req, Res>) => {
      const started = process.hrtime.bigint();
      const requestId = requestIdOf(call.metadata);
      const controller = new AbortController();
      call.on('cancelled', () => controller.abort());
      let lastToken = '';
      let sent = 0;
      const span = startSpan(method, call.metadata, requestId);
      const run = async () => {
        const ctx = await this.#context(call, controller.signal, requestId, method);
        gate(policy, ctx.actor, method);
        checkRequest(call.request);
        const release = this.deps.limits.openStream(ctx.actor);
        this.deps.metrics.streams.inc({ method });
        try {
          for await (const res of handler(call.request, ctx)) {
            if (controller.signal.aborted) return;
            const accepted = call.write(res);
            lastToken = resumeTokenOf(res) || lastToken;
            sent++;
            const committedAt = committedAtOf(res);
            if (committedAt) this.deps.metrics.feedLag.observe({ method }, (Date.now() - committedAt.getTime()) / 1000);
            if (!accepted) await drained(call, controller.signal, stallMs);
          }
        } finally {
          this.deps.metrics.streams.dec({ method });
          release();
        }
      };
      context.with(trace.setSpan(context.active(), span), run).then(
        () => {
          endSpan(span, controller.signal.aborted ? status.CANCELLED : status.OK);
          this.#logStream(method, requestId, started, sent, controller.signal.aborted ? 'CANCELLED' : 'OK');
          if (!controller.signal.aborted) call.end();
        },
        (err: unknown) => {
          if (err instanceof TooMuch) this.deps.metrics.rateLimited.inc({ method });
          const { status: st, internal } = toStatus(err, lastToken ? { resume_token: lastToken } : {});
          endSpan(span, st.code);
          this.#logStream(method, requestId, started, sent, status[st.code], internal ? err : undefined);
          if (!controller.signal.aborted) call.emit('error', st);
        },
      );
    };
  }

  #logStream(method: string, requestId: string, started: bigint, sent: number, code: string, err?: unknown): void {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    this.deps.metrics.calls.inc({ method, code });
    const entry = { method, code, ms: Math.round(ms), sent, requestId };
    if (err) this.deps.log.error({ ...entry, err }, 'stream failed');
    else this.deps.log.info(entry, 'stream ended');
  }

  async #run<Req, Res>(
    call: ServerUnaryCall<Req, Res>,
    handler: UnaryHandler<Req, Res>,
    policy: RpcPolicy,
    method: string,
    signal: AbortSignal,
    requestId: string,
  ): Promise<Res> {
    const ctx = await this.#context(call, signal, requestId, method);
    gate(policy, ctx.actor, method);
    checkRequest(call.request);
    capPageSize(call.request, this.deps.pageSizeMax);
    if (policy.write) await this.deps.limits.write(ctx.actor, method);
    const res = await handler(call.request, ctx);
    if (policy.write) {
      for (const target of writeTargets(call.request, res)) {
        this.deps.audit.write({ actor: ctx.actor, method, requestId }, target);
      }
    }
    return res;
  }

  /** Authenticates the call and builds its context. */
  async #context(
    call: Pick<ServerUnaryCall<unknown, unknown>, 'metadata' | 'getDeadline'>,
    signal: AbortSignal,
    requestId: string,
    method: string,
  ): Promise<CallContext> {
    const raw = call.getDeadline();
    const deadline = raw instanceof Date ? raw : Number.isFinite(raw) ? new Date(raw) : undefined;
    if (deadline && deadline.getTime() <= Date.now()) {
      throw new DeadlineExceeded();
    }
    const { actor, expiresAt } = await this.deps.auth.authenticate(authorizationOf(call.metadata));
    const { orm, audit } = this.deps;
    let em: EntityManager | undefined;
    return {
      actor,
      // Forked on first use: a stream may never need it, and an idle stream should not hold one.
      get em() {
        return (em ??= orm.em.fork() as EntityManager);
      },
      deadline,
      statementTimeoutMs: this.deps.statementTimeoutMs,
      signal,
      requestId,
      expiresAt,
      audit: (target) => audit.read({ actor, method, requestId }, target),
    };
  }
}

/**
 * What a successful write was about, for its audit records: the thread, the messages and any other
 * resource named by the request or the response (ids only; the audit never holds content). A write
 * whose receipts span threads (MarkRead) gets one record per thread.
 */
function writeTargets(req: unknown, res: unknown): AuditTarget[] {
  const receipts = (res as { receipts?: unknown } | undefined)?.receipts;
  if (Array.isArray(receipts) && receipts.length > 0) {
    const byThread = new Map<string, { messageId: string }[]>();
    for (const r of receipts as { messageId: string; threadId: string }[]) {
      let list = byThread.get(r.threadId);
      if (!list) byThread.set(r.threadId, (list = []));
      list.push({ messageId: r.messageId });
    }
    return [...byThread].map(([threadId, messages]) => ({ threadId, messages }));
  }
  return [writeTarget(req, res)];
}

function writeTarget(req: unknown, res: unknown): AuditTarget {
  const q = (req ?? {}) as Record<string, unknown>;
  const r = (res ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const text = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  // A legal hold names its thread or its patient.
  const held = r.hold?.target as { $case?: string; value?: string } | undefined;
  const threadId =
    text(q.threadId) ??
    text(r.message?.threadId) ??
    text(r.thread?.threadId) ??
    text(r.watermark?.threadId) ??
    (held?.$case === 'threadId' ? text(held.value) : undefined);
  const ids = new Set<string>();
  for (const id of [...(Array.isArray(q.messageIds) ? q.messageIds : []), q.messageId, r.message?.messageId]) {
    if (text(id)) ids.add(id as string);
  }
  const named: [string, unknown][] = [
    ['session', q.sessionId ?? r.session?.sessionId],
    ['notification', q.notificationId ?? r.notification?.notificationId],
    ['hold', q.holdId ?? r.hold?.holdId],
    ['user', q.userId ?? q.recipientUserId ?? (held?.$case === 'patientUserId' ? held.value : undefined)],
  ];
  const resource = named
    .filter(([, id]) => text(id))
    .map(([kind, id]) => `${kind}:${id as string}`)
    .join(' ');
  return { threadId, resource: resource || undefined, messages: [...ids].map((messageId) => ({ messageId })) };
}

const tracer = trace.getTracer('comms');

/** Reads W3C `traceparent` / `tracestate` from gRPC metadata. */
const metadataGetter = {
  keys: (md: Metadata) => Object.keys(md.getMap()),
  get: (md: Metadata, key: string) => {
    const values = md.get(key).filter((v): v is string => typeof v === 'string');
    return values.length === 0 ? undefined : values;
  },
};

/**
 * A server span for the call (OpenTelemetry), child of the caller's `traceparent` when it sends one.
 * Without an OpenTelemetry SDK registered in the process (e.g. `node --import` of a tracing setup) the
 * API is a no-op, so this costs nothing by default.
 */
function startSpan(method: string, md: Metadata, requestId: string): Span {
  const [, service = '', name = ''] = method.split('/');
  const parent = propagation.extract(context.active(), md, metadataGetter);
  return tracer.startSpan(
    method.slice(1),
    {
      kind: SpanKind.SERVER,
      attributes: { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': name, 'comms.request_id': requestId },
    },
    parent,
  );
}

function endSpan(span: Span, code: status): void {
  span.setAttribute('rpc.grpc.status_code', code);
  if (code !== status.OK && code !== status.CANCELLED)
    span.setStatus({ code: SpanStatusCode.ERROR, message: status[code] });
  span.end();
}

/**
 * Refuses, before the handler runs, a caller whose roles the method's policy never allows (`gate`), and
 * one without the governance permission the method needs.
 */
function gate(policy: RpcPolicy, actor: Actor, method: string): void {
  if (policy.gate && !policy.roles.some((role) => actor.roles.has(role))) {
    throw new PermissionDenied('ROLE_NOT_ALLOWED', `${method} is for ${policy.rule}`, { method });
  }
  const needed = policy.permission;
  if (!needed) return;
  if (needed.service && actor.roles.has('service')) return;
  if (!hasPermission(actor, needed.name)) {
    throw new PermissionDenied('PERMISSION_REQUIRED', `${method} needs the permission ${needed.name}`, {
      method,
      permission: needed.name,
    });
  }
}

function authorizationOf(md: Metadata): string | undefined {
  const value = md.get('authorization')[0];
  return typeof value === 'string' ? value : undefined;
}

function requestIdOf(md: Metadata): string {
  const value = md.get('x-request-id')[0];
  return typeof value === 'string' && /^[\w.:-]{1,128}$/.test(value) ? value : randomUUID();
}

/** Resolves on `drain`; returns early when the call is cancelled; throws SlowConsumer after `stallMs`. */
function drained(call: ServerWritableStream<unknown, unknown>, signal: AbortSignal, stallMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      call.off('drain', onDrain);
      signal.removeEventListener('abort', onDrain);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const timer = setTimeout(() => done(new SlowConsumer(stallMs)), stallMs);
    call.on('drain', onDrain);
    signal.addEventListener('abort', onDrain);
  });
}
