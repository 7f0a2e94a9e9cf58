import { type ClientReadableStream, credentials, type Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  FeedServiceClient,
  type WatchInboxResponse,
  type WatchSessionResponse,
  type WatchThreadResponse,
} from '../../gen/comms/v1/feed.js';
import type { MessageServiceClient } from '../../gen/comms/v1/message.js';
import type { ReadReceiptServiceClient } from '../../gen/comms/v1/read_receipt.js';
import { ParticipantRole, type ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { expectError, messageClient, newTenant, newUser, receiptClient, threadClient } from './clients.js';
import type { App } from '../../src/app.js';
import { env, startTestApp } from './hooks.js';
import { createThread, participant } from './threads.js';

/** A FeedService client on the shared test server (or `address`). */
export function feedClient(address = env.address): FeedServiceClient {
  return new FeedServiceClient(address, credentials.createInsecure());
}

type FeedResponse = WatchThreadResponse | WatchInboxResponse | WatchSessionResponse;

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

/** Opens WatchSession as the caller whose metadata is `md`. */
export function watchSession(
  client: FeedServiceClient,
  md: Metadata,
  sessionId: string,
  resumeToken = '',
): FeedStream<WatchSessionResponse> {
  return new FeedStream(client.watchSession({ sessionId, resumeToken }, md));
}

/** The message ids of the messagePosted events received, in order. */
export function postedIds(stream: FeedStream<WatchThreadResponse>): string[] {
  return stream.responses.flatMap((r) => (r.event?.$case === 'messagePosted' ? [r.event.value.messageId] : []));
}

/** Asserts the list holds no duplicates. */
export function expectUnique(ids: readonly string[]): void {
  expect(new Set(ids).size, 'no duplicates').to.equal(ids.length);
}

/** A thread feed or an inbox feed. */
export type AnyFeedStream = FeedStream<WatchThreadResponse> | FeedStream<WatchInboxResponse>;

/** Asserts a stream ended with `code` and ErrorInfo `reason`; returns the error and its details. */
export async function expectEnd(stream: AnyFeedStream, code: number, reason: string) {
  return expectError(
    stream.ended.then((e) => Promise.reject(e ?? new Error('the stream ended OK'))),
    code,
    reason,
  );
}

/** A fresh tenant with a provider and a patient, and a thread the provider created with the patient taking part. */
export async function twoPartyThread(threads: ThreadServiceClient) {
  const tenant = newTenant();
  const [provider, patient] = await Promise.all([newUser(tenant, 'provider'), newUser(tenant, 'patient')]);
  const thread = await createThread(threads, provider, {
    participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
  });
  return { tenant, provider, patient, thread };
}

/**
 * Clients on the shared test server for a feed test suite (set in `before`, closed in `after`), and
 * the streams it opened (cancelled after each test). See `useFeedClients`.
 */
export class FeedClients {
  threads!: ThreadServiceClient;
  messages!: MessageServiceClient;
  receipts!: ReadReceiptServiceClient;
  feeds!: FeedServiceClient;
  readonly #open: { cancel(): void }[] = [];

  /** Cancels `stream` after the current test; returns it. */
  track<S extends { cancel(): void }>(stream: S): S {
    this.#open.push(stream);
    return stream;
  }

  /** Opens WatchThread on `feeds`, cancelled after the current test. */
  watchThread(md: Metadata, threadId: string, resumeToken = ''): FeedStream<WatchThreadResponse> {
    return this.track(watchThread(this.feeds, md, threadId, resumeToken));
  }

  /** Opens WatchInbox on `feeds`, cancelled after the current test. */
  watchInbox(md: Metadata, resumeToken = ''): FeedStream<WatchInboxResponse> {
    return this.track(watchInbox(this.feeds, md, resumeToken));
  }

  /** Cancels the streams tracked so far. */
  cancelTracked(): void {
    for (const s of this.#open.splice(0)) s.cancel();
  }
}

/**
 * Called inside a `describe`: registers the hooks that create the clients before its tests, cancel
 * the streams tracked by each test after it, and close the clients after the suite.
 */
export function useFeedClients(): FeedClients {
  const c = new FeedClients();
  before(() => {
    c.threads = threadClient();
    c.messages = messageClient();
    c.receipts = receiptClient();
    c.feeds = feedClient();
  });
  afterEach(() => c.cancelTracked());
  after(() => {
    for (const client of [c.threads, c.messages, c.receipts, c.feeds]) client.close();
  });
  return c;
}

/** A separate app instance with its own clients; `close()` cancels what is open and shuts it down. */
export async function feedInstance(overrides: Record<string, string>) {
  const app: App = await startTestApp(overrides);
  const address = `127.0.0.1:${app.port}`;
  const clients = { threads: threadClient(address), messages: messageClient(address), feeds: feedClient(address) };
  const streams: AnyFeedStream[] = [];
  return {
    app,
    ...clients,
    track<S extends AnyFeedStream>(s: S): S {
      streams.push(s);
      return s;
    },
    async close() {
      for (const s of streams) s.cancel();
      for (const c of Object.values(clients)) c.close();
      await app.shutdown();
    },
  };
}
