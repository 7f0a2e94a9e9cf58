import pg from 'pg';
import type { Logger } from '../infra/log/logger.js';

/** The channel `comms_feed_append` notifies, with payload `<tenant> <stream>`. */
export const FEED_CHANNEL = 'comms_feed';

/** application_name of the listening connection (tests find it in pg_stat_activity). */
export const LISTENER_APPLICATION_NAME = 'comms-feed-listener';

/**
 * One LISTEN connection per process (not per stream). Notifications only wake streams; the events
 * themselves are read from the log, so a lost notification costs latency, not data. When the connection
 * drops it reconnects with backoff and, once listening again, calls `onListening` so every stream reads
 * what it may have missed.
 */
export class FeedListener {
  #client: pg.Client | undefined;
  #stopped = false;
  #backoffMs = 100;
  #reconnect: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: string,
    private readonly log: Logger,
    private readonly onWake: (tenantId: string, stream: string) => void,
    private readonly onListening: () => void,
  ) {}

  /** Connects and listens; rejects if the first attempt fails. */
  async start(): Promise<void> {
    try {
      await this.#connect();
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** True while the connection is up and listening. */
  get listening(): boolean {
    return this.#client !== undefined;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#reconnect);
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
  }

  async #connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.url,
      application_name: LISTENER_APPLICATION_NAME,
      keepAlive: true,
    });
    client.on('notification', (msg) => {
      const payload = msg.payload ?? '';
      const space = payload.indexOf(' ');
      if (msg.channel === FEED_CHANNEL && space > 0) this.onWake(payload.slice(0, space), payload.slice(space + 1));
    });
    client.on('error', (err) => this.log.warn({ err: String(err) }, 'feed listener connection error'));
    client.on('end', () => {
      if (this.#client === client) this.#client = undefined;
      if (!this.#stopped) this.#scheduleReconnect();
    });
    try {
      await client.connect();
      await client.query(`listen ${FEED_CHANNEL}`);
    } catch (err) {
      await client.end().catch(() => undefined);
      throw err;
    }
    if (this.#stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#backoffMs = 100;
    this.onListening();
  }

  #scheduleReconnect(): void {
    if (this.#reconnect) return;
    const delay = this.#backoffMs;
    this.#backoffMs = Math.min(this.#backoffMs * 2, 5000);
    this.log.warn({ delayMs: delay }, 'feed listener disconnected; reconnecting');
    this.#reconnect = setTimeout(() => {
      this.#reconnect = undefined;
      this.#connect().catch((err: unknown) => {
        this.log.warn({ err: String(err) }, 'feed listener reconnect failed');
        if (!this.#stopped) this.#scheduleReconnect();
      });
    }, delay);
    this.#reconnect.unref();
  }
}
