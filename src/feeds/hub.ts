import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import { type FeedEvent, FeedRepository } from '../domain/feed/feed.repository.js';
import type { Logger } from '../infra/log/logger.js';

/** An event read from the log, with the part of its rendering every subscriber shares. */
export interface Prepared<S, E = FeedEvent> {
  readonly event: E;
  readonly shared: S;
}

/** Reads what every subscriber of a stream shares for a batch of its events (the message posted, …). */
export type Prepare<S> = (em: EntityManager, tenantId: string, events: readonly FeedEvent[]) => Promise<Prepared<S>[]>;

/**
 * How a newly read event changes an older cached one (a retraction hides the cached message's body):
 * the replacement, or undefined to keep it.
 */
export type Revise<S> = (cached: Prepared<S>, fresh: Prepared<S>) => Prepared<S> | undefined;

/** Cached events older than this are read from the log again (a purge may have changed them since). */
const CACHE_MAX_AGE_MS = 3_600_000;

export interface HubOptions {
  /** Events each stream keeps prepared in memory for subscribers that are (nearly) live. */
  readonly cacheEvents: number;
  /** Events read from the log per query. */
  readonly pageSize: number;
}

/**
 * The process's live-feed fan-out. Subscribers of the same stream on this replica share one Tail. For a
 * sequence-numbered stream (threads, sessions) the tail reads each new event from the log once (when
 * the listener reports a commit to its stream), prepares it once, and keeps the latest few in memory;
 * for an inbox it only wakes its subscribers, which read their own log. Every subscriber pulls by its own
 * cursor: from the tail's cache when it covers the cursor, otherwise straight from the log, so pulling
 * can neither skip nor repeat an event, whatever the timing of notifications, reconnects or resumes.
 */
export class FeedHub {
  readonly #tails = new Map<string, Tail<unknown>>();
  #closing = false;

  constructor(
    private readonly orm: MikroORM,
    private readonly log: Logger,
    private readonly options: HubOptions,
  ) {}

  /** Registers a subscriber of a stream; call `leave()` when done. */
  join<S>(tenantId: string, stream: string): Subscription<S> {
    const key = `${tenantId} ${stream}`;
    let tail = this.#tails.get(key) as Tail<S> | undefined;
    if (!tail) {
      tail = new Tail<S>(this, tenantId, stream, () => this.#tails.delete(key));
      this.#tails.set(key, tail as Tail<unknown>);
    }
    const sub = new Subscription<S>(tail, this.#closing);
    tail.subscribers.add(sub);
    return sub;
  }

  /** A commit touched a stream (the listener's notification). */
  wake(tenantId: string, stream: string): void {
    this.#tails.get(`${tenantId} ${stream}`)?.wake();
  }

  /** Every stream may have missed notifications (the listener reconnected): read them all again. */
  wakeAll(): void {
    for (const tail of this.#tails.values()) tail.wake();
  }

  /** Ends every subscription (they end with UNAVAILABLE) and refuses new ones. */
  close(): void {
    this.#closing = true;
    for (const tail of this.#tails.values()) for (const sub of tail.subscribers) sub.close();
  }

  /** Streams with subscribers on this replica, and subscribers. */
  stats(): { streams: number; subscribers: number } {
    let subscribers = 0;
    for (const tail of this.#tails.values()) subscribers += tail.subscribers.size;
    return { streams: this.#tails.size, subscribers };
  }

  /** @internal A fresh EntityManager (no identity map carried between reads). */
  fork(): EntityManager {
    return this.orm.em.fork() as EntityManager;
  }

  /** @internal */
  get logger(): Logger {
    return this.log;
  }

  /** @internal */
  get opts(): HubOptions {
    return this.options;
  }
}

/** One stream's shared reader on this replica. */
export class Tail<S> {
  readonly subscribers = new Set<Subscription<S>>();
  /** Prepared events (loaded - cache.length, loaded], contiguous. */
  #cache: Prepared<S>[] = [];
  /** The highest seq this tail has read; undefined until the first subscriber told it the head. */
  #loaded: number | undefined;
  #dirty = false;
  #running = false;
  #prepare: Prepare<S> | undefined;
  #revise: Revise<S> | undefined;
  /** An inbox: no shared reads, wake-ups only. */
  #wakeOnly = false;

  constructor(
    private readonly hub: FeedHub,
    readonly tenantId: string,
    readonly stream: string,
    private readonly drop: () => void,
  ) {}

  /**
   * A sequence-numbered stream's head as a subscriber read it after joining: everything after it is the
   * tail's to read and prepare with `prepare`.
   */
  start(head: number, prepare: Prepare<S>, revise?: Revise<S>): void {
    if (this.#loaded !== undefined) return;
    this.#prepare = prepare;
    this.#revise = revise;
    this.#loaded = head;
    if (this.#dirty) this.wake();
  }

  /** A stream whose subscribers read the log themselves: the tail only wakes them. */
  startWakeOnly(): void {
    this.#wakeOnly = true;
  }

  /** A commit touched the stream: read what is new (once, however many subscribers). */
  wake(): void {
    if (this.#wakeOnly) {
      for (const sub of this.subscribers) sub.notify();
      return;
    }
    this.#dirty = true;
    if (this.#loaded === undefined || this.#running) return;
    void this.#refresh();
  }

  /**
   * The prepared events after `cursor` this tail holds: [] when it has nothing newer, undefined when
   * the cursor is older than its cache (read the log instead).
   */
  after(cursor: number): readonly Prepared<S>[] | undefined {
    if (this.#loaded === undefined || cursor >= this.#loaded) return [];
    const first = this.#cache[0]?.event.seq;
    if (first === undefined || cursor + 1 < first) return undefined;
    const out = this.#cache.slice(cursor + 1 - first);
    if (out[0] && Date.now() - out[0].event.occurredAt.getTime() > CACHE_MAX_AGE_MS) return undefined;
    return out;
  }

  leave(sub: Subscription<S>): void {
    this.subscribers.delete(sub);
    if (this.subscribers.size === 0) this.drop();
  }

  #reviseCache(fresh: readonly Prepared<S>[], revise: Revise<S>): void {
    for (const f of fresh) {
      for (let i = 0; i < this.#cache.length; i++) {
        const replaced = revise(this.#cache[i]!, f);
        if (replaced) this.#cache[i] = replaced;
      }
    }
  }

  async #refresh(): Promise<void> {
    this.#running = true;
    const { pageSize, cacheEvents } = this.hub.opts;
    try {
      while (this.#dirty && this.subscribers.size > 0) {
        this.#dirty = false;
        const em = this.hub.fork();
        const events = await new FeedRepository(em).after(this.tenantId, this.stream, this.#loaded!, pageSize);
        if (events.length === 0) continue;
        const prepared = await this.#prepare!(em, this.tenantId, events);
        if (events[0]!.seq !== this.#loaded! + 1) this.#cache = []; // pruned past us: keep the cache contiguous
        if (this.#revise) this.#reviseCache(prepared, this.#revise);
        this.#cache.push(...prepared);
        if (this.#cache.length > cacheEvents) this.#cache.splice(0, this.#cache.length - cacheEvents);
        this.#loaded = events.at(-1)!.seq;
        if (events.length === pageSize) this.#dirty = true;
        for (const sub of this.subscribers) sub.notify();
      }
    } catch (err) {
      this.hub.logger.warn({ err: String(err), stream: this.stream }, 'feed read failed; retrying');
      this.#dirty = true;
      setTimeout(() => this.wake(), 1000).unref();
    } finally {
      this.#running = false;
    }
  }
}

/** One subscriber's registration: how the tail, shutdown and timers wake its loop. */
export class Subscription<S> {
  #pending = false;
  #resolve: (() => void) | undefined;
  #closed: boolean;

  constructor(
    readonly tail: Tail<S>,
    closed: boolean,
  ) {
    this.#closed = closed;
  }

  /** True once the server is shutting down. */
  get closed(): boolean {
    return this.#closed;
  }

  notify(): void {
    this.#pending = true;
    this.#resolve?.();
  }

  close(): void {
    this.#closed = true;
    this.notify();
  }

  /** Waits until notified (or was notified since the last wait) or `ms` passed; true when notified. */
  wait(ms: number): Promise<boolean> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#resolve = undefined;
        resolve(false);
      }, ms);
      this.#resolve = () => {
        clearTimeout(timer);
        this.#resolve = undefined;
        this.#pending = false;
        resolve(true);
      };
    });
  }

  leave(): void {
    this.#resolve?.();
    this.tail.leave(this);
  }
}
