/**
 * The feed benchmark's tenant, users and threads, made over gRPC as real callers would (a provider
 * creates each thread), and its sender: SendMessage at a fixed rate, open loop, spread over the replicas.
 *
 * - The hot thread (fan-out): created by provider 0, who also sends into it; watched by staff users
 *   (staff govern every thread of their tenant, so a thread's 50-participant limit does not apply).
 * - The spread threads: thread i is created by provider i mod P with patient i as the other
 *   participant; provider i mod P sends into it and patient i watches it. P providers, so the sends do
 *   not all queue on one sender's inbox stream.
 */
import { randomBytes } from 'node:crypto';
import { Client, credentials, type ServiceError } from '@grpc/grpc-js';
import { MessageServiceService, type SendMessageResponse } from '../../gen/comms/v1/message.js';
import { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import type { Role } from '../../src/domain/actor.js';
import { mapLimit } from '../common.js';
import { bearer, codeName, describeError } from '../protocol.js';
import { createThread, devUser, SETUP_CONCURRENCY, type User } from '../scenarios.js';
import { epochNow, feedBody, paced } from './protocol.js';

export interface SpreadThread {
  readonly threadId: string;
  /** The provider who created it and sends into it. */
  readonly sender: User;
  /** The patient who takes part in it and watches it. */
  readonly watcher: User;
}

export class FeedScene {
  readonly tenant = `feeds-${randomBytes(4).toString('hex')}`;
  readonly runTag = randomBytes(3).toString('hex');
  #threads: ThreadServiceClient;
  providers: User[] = [];
  staff: User[] = [];
  hotThread = '';
  spread: SpreadThread[] = [];

  constructor(address: string) {
    this.#threads = new ThreadServiceClient(address, credentials.createInsecure());
  }

  close(): void {
    this.#threads.close();
  }

  user(userId: string, role: Role): Promise<User> {
    return devUser(this.tenant, userId, role);
  }

  async #createThread(creator: User, subject: string, participants: readonly User[]): Promise<string> {
    try {
      return await createThread(this.#threads, creator, subject, participants);
    } catch (err) {
      throw new Error(`setup: CreateThread failed: ${describeError(err)}`);
    }
  }

  /** Users, the hot thread (when `hot`) and `spreadThreads` spread threads. */
  async prepare(o: { providers: number; staff: number; hot: boolean; spreadThreads: number }): Promise<void> {
    this.providers = await Promise.all(
      Array.from({ length: o.providers }, (_, p) => this.user(`feeds-provider-${p}`, 'provider')),
    );
    this.staff = await Promise.all(Array.from({ length: o.staff }, (_, s) => this.user(`feeds-staff-${s}`, 'staff')));
    if (o.hot) this.hotThread = await this.#createThread(this.providers[0]!, 'feeds bench hot thread', []);
    const patients = await Promise.all(
      Array.from({ length: o.spreadThreads }, (_, i) => this.user(`feeds-patient-${i}`, 'patient')),
    );
    this.spread = await mapLimit(patients, SETUP_CONCURRENCY, async (watcher, i) => {
      const sender = this.providers[i % this.providers.length]!;
      const threadId = await this.#createThread(sender, `feeds bench thread ${i}`, [watcher]);
      return { threadId, sender, watcher };
    });
  }
}

/** What the sender saw of each message k (arrays indexed by k). */
export interface SendLog {
  /** 1 when SendMessage answered OK with a new message. */
  readonly ok: Uint8Array;
  /** Epoch ms the answer was decoded (NaN when not OK). */
  readonly answerMs: Float64Array;
  /** SendMessage call latency, ms (NaN when not OK). */
  readonly callMs: Float64Array;
  /** Epoch ms each send was issued. */
  readonly issuedMs: Float64Array;
  readonly errors: Record<string, number>;
  readonly errorSamples: Record<string, string>;
  /** Sends issued more than 50 ms after their time (the sender fell behind or hit maxInFlight). */
  readonly late: number;
}

/**
 * Sends message k (body naming k) into `threadOf(k)` as `senderOf(k)` at `startAt + k / rate`, to
 * replica k mod R, open loop with at most `maxInFlight` calls outstanding.
 */
export async function sendPaced(o: {
  addresses: readonly string[];
  count: number;
  rate: number;
  startAt: number;
  threadOf: (k: number) => string;
  senderOf: (k: number) => User;
  runTag: string;
  /** Prefix of the client_mutation_ids, distinct per scenario (message k's key is `<prefix>-k`). */
  keyPrefix: string;
  bodyBytes: number;
  maxInFlight: number;
  deadlineMs: number;
}): Promise<SendLog> {
  const method = MessageServiceService.sendMessage;
  // Two connections per replica, as a few front ends would have.
  const clients = o.addresses.map((address) =>
    Array.from(
      { length: 2 },
      () =>
        new Client(address, credentials.createInsecure(), {
          'grpc.use_local_subchannel_pool': 1,
          'grpc.enable_channelz': 0,
          'grpc.enable_retries': 0,
        }),
    ),
  );
  const log = {
    ok: new Uint8Array(o.count),
    answerMs: new Float64Array(o.count).fill(Number.NaN),
    callMs: new Float64Array(o.count).fill(Number.NaN),
    issuedMs: new Float64Array(o.count).fill(Number.NaN),
    errors: {} as Record<string, number>,
    errorSamples: {} as Record<string, string>,
  };
  const metadata = new Map<string, ReturnType<typeof bearer>>();
  let inFlight = 0;
  let freed: (() => void) | undefined;
  let allDone: (() => void) | undefined;
  const fail = (code: string, message: string) => {
    log.errors[code] = (log.errors[code] ?? 0) + 1;
    log.errorSamples[code] ??= message;
  };
  const one = (k: number) => {
    const sender = o.senderOf(k);
    let md = metadata.get(sender.userId);
    if (!md) metadata.set(sender.userId, (md = bearer(sender.token)));
    const r = k % o.addresses.length;
    const pool = clients[r]!;
    const client = pool[Math.floor(k / o.addresses.length) % pool.length]!;
    const t0 = epochNow();
    log.issuedMs[k] = t0;
    inFlight++;
    client.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      {
        threadId: o.threadOf(k),
        clientMutationId: `${o.keyPrefix}-${k}`,
        body: feedBody(o.runTag, k, o.bodyBytes),
        clientSentAt: new Date(),
      },
      md,
      { deadline: new Date(Date.now() + o.deadlineMs) },
      (err: ServiceError | null, res?: SendMessageResponse) => {
        const t1 = epochNow();
        if (err) fail(codeName(err), err.details || err.message);
        else if (!res?.message?.messageId || res.replayed) fail('BAD_RESPONSE', 'no new message in the answer');
        else {
          log.ok[k] = 1;
          log.answerMs[k] = t1;
          log.callMs[k] = t1 - t0;
        }
        inFlight--;
        freed?.();
        if (inFlight === 0) allDone?.();
      },
    );
  };
  try {
    const late = await paced(o.count, o.rate, o.startAt, async (k) => {
      while (inFlight >= o.maxInFlight) await new Promise<void>((resolve) => (freed = resolve));
      one(k);
    });
    if (inFlight > 0) await new Promise<void>((resolve) => (allDone = resolve));
    return { ...log, late };
  } finally {
    for (const c of clients.flat()) c.close();
  }
}
