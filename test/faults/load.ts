import { type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { MessageServiceClient } from '../../gen/comms/v1/message.js';
import { ErrorInfo, RetryInfo } from '../../gen/google/rpc/error_details.js';
import { Status } from '../../gen/google/rpc/status.js';
import { call, type TestUser } from '../support/clients.js';
import type { AnyFeedStream } from '../support/feeds.js';
import { checkHealth, healthClient } from '../support/health.js';
import { sleep } from '../support/messages.js';
import { waitFor } from '../support/wait.js';
import { withAdmin, testDatabaseName } from '../support/replicas.js';

// ---- what a call ended with, as the client sees it on the wire ----

/** The end of one call: its code and, for errors, what grpc-status-details-bin says. */
export interface Outcome {
  readonly code: status;
  /** The gRPC status message. */
  readonly message: string;
  /** ErrorInfo.reason ('' when the status carries none). */
  readonly reason: string;
  readonly metadata: Record<string, string>;
  /** RetryInfo.retry_delay in ms, when the status carries a RetryInfo. */
  readonly retryDelayMs: number | undefined;
  /** Whether the error carried google.rpc.Status details at all (a transport error does not). */
  readonly hasDetails: boolean;
}

export const OK_OUTCOME: Outcome = {
  code: status.OK,
  message: '',
  reason: '',
  metadata: {},
  retryDelayMs: undefined,
  hasDetails: false,
};

/** Decodes a ServiceError without asserting anything about it. */
export function outcomeOf(err: ServiceError): Outcome {
  const raw = err.metadata?.get('grpc-status-details-bin')[0];
  if (!(raw instanceof Buffer)) {
    return {
      code: err.code,
      message: err.details,
      reason: '',
      metadata: {},
      retryDelayMs: undefined,
      hasDetails: false,
    };
  }
  const st = Status.decode(raw);
  let reason = '';
  let metadata: Record<string, string> = {};
  let retryDelayMs: number | undefined;
  for (const any of st.details) {
    if (any.typeUrl === 'type.googleapis.com/google.rpc.ErrorInfo') {
      const info = ErrorInfo.decode(any.value);
      reason = info.reason;
      metadata = info.metadata;
    }
    if (any.typeUrl === 'type.googleapis.com/google.rpc.RetryInfo') {
      const d = RetryInfo.decode(any.value).retryDelay;
      retryDelayMs = Number(d?.seconds ?? 0) * 1000 + Math.round((d?.nanos ?? 0) / 1e6);
    }
  }
  return { code: err.code, message: err.details, reason, metadata, retryDelayMs, hasDetails: true };
}

/** `UNAVAILABLE/DATABASE_UNAVAILABLE+retry` style label of an outcome, for counting and messages. */
export function label(o: Outcome): string {
  if (o.code === status.OK) return 'OK';
  return `${status[o.code]}/${o.reason || (o.hasDetails ? '-' : 'no-details')}${o.retryDelayMs !== undefined ? '+RetryInfo' : ''}`;
}

/** How many outcomes of each label, e.g. `{ OK: 812, 'UNAVAILABLE/DATABASE_UNAVAILABLE+RetryInfo': 14 }`. */
export function tally(outcomes: readonly Outcome[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of outcomes) out[label(o)] = (out[label(o)] ?? 0) + 1;
  return out;
}

/** Prints a figure line when FAULT_REPORT is set (the runs quoted in reports); silent otherwise. */
export function report(what: string, figures: unknown): void {
  if (process.env.FAULT_REPORT) process.stdout.write(`      [figures] ${what}: ${JSON.stringify(figures)}\n`);
}

// ---- any call, recorded ----

/** One call of a load: what it was, when it ran (client clock, ms since the epoch) and how it ended. */
export interface CallRecord<T = unknown> {
  readonly kind: string;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly outcome: Outcome;
  readonly result?: T;
}

/** Runs one call and records how it ended (never throws for a gRPC error). */
export async function record<T>(kind: string, fn: () => Promise<T>): Promise<CallRecord<T>> {
  const startedAt = Date.now();
  try {
    const result = await fn();
    return { kind, startedAt, endedAt: Date.now(), outcome: OK_OUTCOME, result };
  } catch (err) {
    if (typeof (err as ServiceError).code !== 'number') throw err;
    return { kind, startedAt, endedAt: Date.now(), outcome: outcomeOf(err as ServiceError) };
  }
}

// ---- SendMessage load ----

/** One SendMessage attempt of a load. */
export interface SendAttempt {
  readonly sender: TestUser;
  readonly threadId: string;
  readonly key: string;
  readonly body: string;
  /** Client clock, ms since the epoch. */
  readonly startedAt: number;
  readonly endedAt: number;
  readonly outcome: Outcome;
  /** Set when OK. */
  readonly messageId?: string;
  readonly replayed?: boolean;
}

/** One SendMessage with its outcome recorded (never throws for a gRPC error). */
export async function attemptSend(
  client: MessageServiceClient,
  sender: TestUser,
  threadId: string,
  key: string,
  body: string,
  deadlineMs = 10_000,
): Promise<SendAttempt> {
  const startedAt = Date.now();
  try {
    const res = await call(
      client,
      client.sendMessage,
      { threadId, clientMutationId: key, body, clientSentAt: undefined },
      sender.md,
      { deadline: new Date(startedAt + deadlineMs) },
    );
    return {
      sender,
      threadId,
      key,
      body,
      startedAt,
      endedAt: Date.now(),
      outcome: OK_OUTCOME,
      messageId: res.message!.messageId,
      replayed: res.replayed,
    };
  } catch (err) {
    return { sender, threadId, key, body, startedAt, endedAt: Date.now(), outcome: outcomeOf(err as ServiceError) };
  }
}

/**
 * Concurrent senders, each sending one message after the other with its own fresh client_mutation_ids
 * (`<user>-<n>`) until `stop()`. After a failed send a sender waits `pauseAfterFailureMs` (a client
 * backing off) and goes on with its next key; the failed keys are retried by the test afterwards.
 */
export class SendLoad {
  readonly attempts: SendAttempt[] = [];
  #stopped = false;
  readonly #running: Promise<void>;

  constructor(
    client: (sender: TestUser) => MessageServiceClient,
    senders: readonly { user: TestUser; threadId: string }[],
    opts: { pauseAfterFailureMs?: number; deadlineMs?: number; prefix?: string } = {},
  ) {
    this.#running = Promise.all(
      senders.map(async ({ user, threadId }) => {
        for (let n = 0; !this.#stopped; n++) {
          const key = `${opts.prefix ?? 'load'}-${user.userId}-${n}`;
          const a = await attemptSend(client(user), user, threadId, key, `body of ${key}`, opts.deadlineMs);
          this.attempts.push(a);
          if (a.outcome.code !== status.OK) await sleep(opts.pauseAfterFailureMs ?? 100);
        }
      }),
    ).then(() => undefined);
  }

  get ok(): SendAttempt[] {
    return this.attempts.filter((a) => a.outcome.code === status.OK);
  }

  get failed(): SendAttempt[] {
    return this.attempts.filter((a) => a.outcome.code !== status.OK);
  }

  /** OK sends that started after `t`. */
  okSince(t: number): number {
    return this.attempts.filter((a) => a.outcome.code === status.OK && a.startedAt > t).length;
  }

  /** Resolves once `n` sends that started after `t` succeeded; fails after `timeoutMs`. */
  async okAfter(t: number, n: number, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.okSince(t) < n) {
      if (Date.now() > deadline) {
        expect.fail(
          `${n} sends OK after ${new Date(t).toISOString()}: got ${this.okSince(t)}; ${JSON.stringify(tally(this.attempts.map((a) => a.outcome)))}`,
        );
      }
      await sleep(20);
    }
  }

  /** Stops the senders after their current call; resolves with every attempt. */
  async stop(): Promise<SendAttempt[]> {
    this.#stopped = true;
    await this.#running;
    return this.attempts;
  }
}

// ---- health, sampled ----

/** A health Check poller: records every change of the answer (status, or the error code) with its time. */
export class HealthWatch {
  readonly changes: { at: number; status: string }[] = [];
  #stopped = false;
  readonly #running: Promise<void>;

  constructor(address: string, intervalMs = 25) {
    const client = healthClient(address);
    this.#running = (async () => {
      try {
        while (!this.#stopped) {
          let s: string;
          try {
            s = await Promise.race([checkHealth(client), sleep(1000).then(() => 'NO_ANSWER')]);
          } catch (err) {
            s = `ERROR_${status[(err as ServiceError).code]}`;
          }
          if (this.changes.at(-1)?.status !== s) this.changes.push({ at: Date.now(), status: s });
          await sleep(intervalMs);
        }
      } finally {
        client.close();
      }
    })();
  }

  get current(): string | undefined {
    return this.changes.at(-1)?.status;
  }

  /** When the answer first became `s` at or after `since` (undefined: not seen). */
  firstAt(s: string, since = 0): number | undefined {
    return this.changes.find((c) => c.status === s && c.at >= since)?.at;
  }

  /** Resolves with the time the answer became `s` (at or after `since`); fails after `timeoutMs`. */
  async reach(s: string, since = 0, timeoutMs = 10_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.firstAt(s, since);
      if (at !== undefined) return at;
      if (Date.now() > deadline) expect.fail(`health did not answer ${s} within ${timeoutMs} ms: ${this.describe()}`);
      await sleep(10);
    }
  }

  /** Resolves once the answer has been `s` for `forMs` without a change; fails after `timeoutMs`. */
  async steady(s: string, forMs = 500, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(this.current === s && Date.now() - this.changes.at(-1)!.at >= forMs)) {
      if (Date.now() > deadline) expect.fail(`health not steadily ${s} within ${timeoutMs} ms: ${this.describe()}`);
      await sleep(10);
    }
  }

  /** The changes relative to the first one, e.g. `SERVING@0 NOT_SERVING@1520 SERVING@2710`. */
  describe(origin = this.changes[0]?.at ?? 0): string {
    return this.changes.map((c) => `${c.status}@${c.at - origin}`).join(' ');
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
  }
}

// ---- the test database, as an administrator sees it ----

/**
 * Terminates every backend connected to the test database (and only to it: other runs share the
 * server), except the caller's own admin connection, which is on the maintenance database anyway.
 * Returns the backends terminated by application name.
 */
export async function terminateTestDatabaseBackends(): Promise<Record<string, number>> {
  return withAdmin(async (c) => {
    // Selected first, terminated by pid: the filter is never evaluated after a termination.
    const { rows: found } = await c.query<{ pid: number; app: string }>(
      `select pid, application_name as app from pg_stat_activity
        where datname = $1 and pid <> pg_backend_pid() and backend_type = 'client backend'`,
      [testDatabaseName()],
    );
    const { rows } = await c.query<{ pid: number; done: boolean }>(
      'select pid, pg_terminate_backend(pid) as done from unnest($1::int[]) as pid',
      [found.map((f) => f.pid)],
    );
    const done = new Set(rows.filter((r) => r.done).map((r) => r.pid));
    const byApp: Record<string, number> = {};
    for (const f of found) if (done.has(f.pid)) byApp[f.app || '(none)'] = (byApp[f.app || '(none)'] ?? 0) + 1;
    return byApp;
  });
}

/** `ALTER DATABASE <test db> ALLOW_CONNECTIONS <allow>`. */
export async function allowConnections(allow: boolean): Promise<void> {
  const name = testDatabaseName();
  // An identifier, not a parameter: quoted as one (the name is ours, comms_test_<pid>_<hex>).
  await withAdmin((c) => c.query(`alter database "${name.replace(/"/g, '""')}" allow_connections ${allow}`));
}

// ---- feeds compared by resume token ----

/** The resume tokens of a feed's events (markers and heartbeats left out). */
export function eventTokens(s: AnyFeedStream): string[] {
  return s.responses
    .filter((r) => r.event?.$case !== 'caughtUp' && r.event?.$case !== 'heartbeat')
    .map((r) => r.resumeToken);
}

/** The message ids of a thread feed's messagePosted events, in order. */
export function posted(s: AnyFeedStream): string[] {
  return s.responses.flatMap((r) => (r.event?.$case === 'messagePosted' ? [r.event.value.messageId] : []));
}

/** Resolves once the feeds' last event tokens agree and have not changed for `quietMs`. */
export async function settled(streams: readonly AnyFeedStream[], quietMs = 500, timeoutMs = 20_000): Promise<void> {
  let last = '';
  let since = Date.now();
  const lastTokens = () => streams.map((s) => eventTokens(s).at(-1) ?? '');
  try {
    await waitFor(async () => {
      const now = lastTokens().join('|');
      if (now !== last) {
        last = now;
        since = Date.now();
      }
      return new Set(lastTokens()).size === 1 && Date.now() - since >= quietMs;
    }, timeoutMs);
  } catch {
    expect.fail(`the feeds did not settle on one last event in ${timeoutMs} ms: ${lastTokens().join(' | ')}`);
  }
}
