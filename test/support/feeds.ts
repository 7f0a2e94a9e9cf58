import { type ClientReadableStream, credentials, type Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { FeedServiceClient, type WatchInboxResponse, type WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import { env } from './hooks.js';

/** A FeedService client on the shared test server (or `address`). */
export function feedClient(address = env.address): FeedServiceClient {
  return new FeedServiceClient(address, credentials.createInsecure());
}

type FeedResponse = WatchThreadResponse | WatchInboxResponse;

/**
 * An open feed stream that records every response, and how it ended. `waitFor` resolves once the
 * recorded responses satisfy a condition; `ended` resolves with the final status (OK or the error).
 */
export class FeedStream<R extends FeedResponse> {
  readonly responses: R[] = [];
  readonly ended: Promise<ServiceError | undefined>;
  #listeners = new Set<() => void>();
  #end: ServiceError | undefined | null = null;

  constructor(readonly call: ClientReadableStream<R>) {
    call.on('data', (res: R) => {
      this.responses.push(res);
      for (const l of this.#listeners) l();
    });
    this.ended = new Promise((resolve) => {
      call.on('error', (err: ServiceError) => {
        this.#end = err;
        for (const l of this.#listeners) l();
        resolve(err);
      });
      call.on('status', (st: { code: number }) => {
        if (st.code === status.OK) {
          this.#end = undefined;
          for (const l of this.#listeners) l();
          resolve(undefined);
        }
      });
    });
  }

  /** Events only (no caught_up, no heartbeat). */
  get events(): R[] {
    return this.responses.filter((r) => r.event?.$case !== 'caughtUp' && r.event?.$case !== 'heartbeat');
  }

  /** The cases received, in order (e.g. ['caughtUp', 'messagePosted']). */
  get cases(): string[] {
    return this.responses.map((r) => r.event?.$case ?? 'none');
  }

  /** The last resume token received. */
  get lastToken(): string {
    return this.responses.at(-1)?.resumeToken ?? '';
  }

  /** Resolves once `condition` holds over the responses; fails after `timeoutMs` or if the stream ends first. */
  waitFor(condition: (responses: R[]) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (condition(this.responses)) {
          done();
          resolve();
        } else if (this.#end !== null) {
          done();
          reject(new Error(`stream ended (${this.#end?.code ?? 'OK'} ${this.#end?.details ?? ''}) before ${what}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${what} not met in ${timeoutMs} ms; got ${this.cases.join(',')}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#listeners.delete(check);
      };
      this.#listeners.add(check);
      check();
    });
  }

  /** Resolves once the caught-up marker arrived. */
  caughtUp(timeoutMs = 10_000): Promise<void> {
    return this.waitFor((rs) => rs.some((r) => r.event?.$case === 'caughtUp'), timeoutMs, 'caught_up');
  }

  /** Resolves once `n` events (not markers) arrived. */
  eventCount(n: number, timeoutMs = 10_000): Promise<void> {
    return this.waitFor(() => this.events.length >= n, timeoutMs, `${n} events`);
  }

  cancel(): void {
    this.call.cancel();
  }
}

/** Opens WatchThread as the caller whose metadata is `md`. */
export function watchThread(
  client: FeedServiceClient,
  md: Metadata,
  threadId: string,
  resumeToken = '',
): FeedStream<WatchThreadResponse> {
  return new FeedStream(client.watchThread({ threadId, resumeToken }, md));
}

/** Opens WatchInbox as the caller whose metadata is `md`. */
export function watchInbox(client: FeedServiceClient, md: Metadata, resumeToken = ''): FeedStream<WatchInboxResponse> {
  return new FeedStream(client.watchInbox({ resumeToken }, md));
}

/** The message ids of the messagePosted events received, in order. */
export function postedIds(stream: FeedStream<WatchThreadResponse>): string[] {
  return stream.responses.flatMap((r) => (r.event?.$case === 'messagePosted' ? [r.event.value.messageId] : []));
}

/** Asserts the list holds no duplicates. */
export function expectUnique(ids: readonly string[]): void {
  expect(new Set(ids).size, 'no duplicates').to.equal(ids.length);
}
