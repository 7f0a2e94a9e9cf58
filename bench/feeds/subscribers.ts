/**
 * The parent side of the subscriber processes: forks them (dist/bench/feeds/subscriber.js), hands each
 * its share of the streams, and talks to them (opened, window, progress, close). Streams go to
 * processes round-robin after replicas: stream j → replica j mod R, process ⌊j / R⌋ mod P, so every
 * process holds streams of every replica.
 */
import { type ChildProcess, fork } from 'node:child_process';
import path from 'node:path';
import { exited, profileArgs } from '../loadgen.js';
import type { FromSubscriber, StreamPlan, SubscriberResult, SubscriberTask, ToSubscriber } from './protocol.js';

const SUBSCRIBER = path.join(import.meta.dirname, 'subscriber.js');

/** Subscriber processes currently running, so an interrupted run can kill them. */
const running = new Set<ChildProcess>();

/** Kills every subscriber process still running (on error or Ctrl-C). */
export function killSubscribers(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

type Kind = FromSubscriber['type'];

/** A child's messages, by type, in order; `failed` or an early exit rejects whatever is awaited. */
class Inbox {
  #queues = new Map<Kind, FromSubscriber[]>();
  #waiters = new Map<Kind, { resolve: (m: FromSubscriber) => void; reject: (e: Error) => void }[]>();
  #dead: Error | undefined;

  constructor(child: ChildProcess, name: string) {
    child.on('message', (m: FromSubscriber) => {
      if (m.type === 'failed') return this.#die(new Error(`${name} failed: ${m.message}`));
      const w = this.#waiters.get(m.type)?.shift();
      if (w) w.resolve(m);
      else this.#queues.set(m.type, [...(this.#queues.get(m.type) ?? []), m]);
    });
    child.on('exit', (code, signal) => this.#die(new Error(`${name} exited (code ${code}, signal ${signal})`)));
    child.on('error', (err) => this.#die(err));
  }

  #die(err: Error): void {
    this.#dead ??= err;
    for (const list of this.#waiters.values()) for (const w of list.splice(0)) w.reject(this.#dead);
  }

  expect<K extends Kind>(type: K): Promise<Extract<FromSubscriber, { type: K }>> {
    const queued = this.#queues.get(type)?.shift();
    if (queued) return Promise.resolve(queued as Extract<FromSubscriber, { type: K }>);
    if (this.#dead) return Promise.reject(this.#dead);
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(type) ?? [];
      list.push({ resolve: resolve as (m: FromSubscriber) => void, reject });
      this.#waiters.set(type, list);
    });
  }
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Which process holds stream j. */
export function processOf(j: number, replicas: number, processes: number): number {
  return Math.floor(j / replicas) % processes;
}

/** A set of subscriber processes holding one scenario's streams. */
export class Subscribers {
  readonly #children: { child: ChildProcess; inbox: Inbox }[];

  private constructor(children: { child: ChildProcess; inbox: Inbox }[]) {
    this.#children = children;
  }

  /** Forks `processes` subscriber processes and opens `streams` among them (see the module comment). */
  static async open(
    task: Omit<SubscriberTask, 'streams'>,
    streams: readonly StreamPlan[],
    processes: number,
  ): Promise<{ subscribers: Subscribers; opened: number; failed: number; openMs: number }> {
    const shares = Array.from({ length: processes }, () => [] as StreamPlan[]);
    for (const s of streams) shares[processOf(s.id, task.addresses.length, processes)]!.push(s);
    const children = shares
      .filter((share) => share.length > 0)
      .map((share, p) => {
        const child = fork(SUBSCRIBER, [], {
          serialization: 'advanced',
          stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
          execArgv: profileArgs(`feeds-subscriber-${task.scenario}-${task.target}-${p}`),
        });
        running.add(child);
        child.on('exit', () => running.delete(child));
        const inbox = new Inbox(child, `subscriber process ${p}`);
        child.send({ type: 'open', task: { ...task, streams: share } } satisfies ToSubscriber);
        return { child, inbox };
      });
    const subscribers = new Subscribers(children);
    try {
      const answers = await within(
        Promise.all(children.map((c) => c.inbox.expect('opened'))),
        task.openTimeoutMs + 30_000,
        'opening the streams',
      );
      return {
        subscribers,
        opened: answers.reduce((n, a) => n + a.streams, 0),
        failed: answers.reduce((n, a) => n + a.failed, 0),
        openMs: Math.max(...answers.map((a) => a.ms)),
      };
    } catch (err) {
      subscribers.kill();
      throw err;
    }
  }

  get pids(): number[] {
    return this.#children.map((c) => c.child.pid!).filter((p) => p !== undefined);
  }

  window(window: { start: number; end: number }): void {
    for (const { child } of this.#children) child.send({ type: 'window', ...window } satisfies ToSubscriber);
  }

  /** Sends `request` to every process and waits for each one's `answer`, at most `ms`. */
  #ask<K extends Kind>(
    request: ToSubscriber,
    answer: K,
    ms: number,
    what: string,
  ): Promise<Extract<FromSubscriber, { type: K }>[]> {
    const answers = this.#children.map(({ child, inbox }) => {
      child.send(request);
      return inbox.expect(answer);
    });
    return within(Promise.all(answers), ms, what);
  }

  /** Bench messages received so far, over all processes. */
  async progress(): Promise<number> {
    const answers = await this.#ask({ type: 'progress' }, 'progress', 30_000, 'progress');
    return answers.reduce((n, a) => n + a.messages, 0);
  }

  /** Cancels every stream; what each process recorded. The processes exit by themselves. */
  async close(): Promise<SubscriberResult[]> {
    try {
      const answers = await this.#ask({ type: 'close' }, 'result', 60_000, 'closing the streams');
      return answers.map((a) => a.result);
    } finally {
      await Promise.all(this.#children.map(({ child }) => exited(child, 5000)));
    }
  }

  kill(): void {
    for (const { child } of this.#children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}
