import { randomUUID } from 'node:crypto';
import { type Metadata, type sendUnaryData, type ServerUnaryCall, status, type UntypedHandleCall } from '@grpc/grpc-js';
import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import type { Actor } from '../domain/actor.js';
import { DeadlineExceeded } from '../domain/errors.js';
import type { Authenticator } from '../infra/auth/authenticator.js';
import type { Logger } from '../infra/log/logger.js';
import { errorStatus, toStatus } from './errors.js';

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
}

/** A unary handler: decode → domain → encode, nothing else. */
export type UnaryHandler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

export interface AdapterDeps {
  readonly orm: MikroORM;
  readonly statementTimeoutMs: number;
  readonly auth: Authenticator;
  readonly log: Logger;
}

/**
 * Turns `async (req, ctx) => res` handlers into grpc-js callbacks. It authenticates once from metadata,
 * forks one EntityManager per call, honours cancellation and deadlines, maps every thrown error through
 * `toStatus`, logs one line per call (method, code, latency; never bodies or tokens) and answers exactly
 * once by construction.
 */
export class RpcAdapter {
  constructor(private readonly deps: AdapterDeps) {}

  unary<Req, Res>(method: string, handler: UnaryHandler<Req, Res>): UntypedHandleCall {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = process.hrtime.bigint();
      const requestId = requestIdOf(call.metadata);
      const controller = new AbortController();
      call.on('cancelled', () => controller.abort());
      const finish = (code: status, err?: unknown) => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        const entry = { method, code: status[code], ms: Math.round(ms * 100) / 100, requestId };
        if (err) this.deps.log.error({ ...entry, err }, 'rpc failed');
        else this.deps.log.debug(entry, 'rpc');
      };
      this.#run(call, handler, controller.signal, requestId).then(
        (res) => {
          finish(status.OK);
          callback(null, res);
        },
        (err: unknown) => {
          const { status: st, internal } = toStatus(err);
          finish(st.code, internal ? err : undefined);
          callback(st);
        },
      );
    };
  }

  /** A handler for an RPC whose aggregate is built in a later issue. */
  unimplemented(method: string, issue: number): UntypedHandleCall {
    return (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
      callback(
        errorStatus(status.UNIMPLEMENTED, `${method} is not implemented yet (issue ${issue})`, 'NOT_IMPLEMENTED_YET', {
          method,
          issue: String(issue),
        }),
      );
    };
  }

  async #run<Req, Res>(
    call: ServerUnaryCall<Req, Res>,
    handler: UnaryHandler<Req, Res>,
    signal: AbortSignal,
    requestId: string,
  ): Promise<Res> {
    const raw = call.getDeadline();
    const deadline = raw instanceof Date ? raw : Number.isFinite(raw) ? new Date(raw) : undefined;
    if (deadline && deadline.getTime() <= Date.now()) {
      throw new DeadlineExceeded();
    }
    const { actor } = await this.deps.auth.authenticate(authorizationOf(call.metadata));
    const em = this.deps.orm.em.fork() as EntityManager;
    return handler(call.request, {
      actor,
      em,
      deadline,
      statementTimeoutMs: this.deps.statementTimeoutMs,
      signal,
      requestId,
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
