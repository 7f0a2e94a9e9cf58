/**
 * The scenarios and the data they need, prepared over gRPC as real callers would: a provider creates the
 * threads (ThreadService) with the load's users as participants, and seeds messages (MessageService).
 *
 * Who calls: each load worker process acts as one sender (a patient taking part in every send thread);
 * each in-flight slot of the read scenarios acts as its own reader (a patient in one of the read threads,
 * 40 readers per thread, under the 50-participant limit), so concurrent MarkRead calls never fight over
 * the same receipt rows, as on a real server with many users.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { credentials } from '@grpc/grpc-js';
import { MessageServiceClient } from '../gen/comms/v1/message.js';
import { VirtualParticipant, VirtualSessionServiceClient } from '../gen/comms/v1/session.js';
import { ParticipantRole, ThreadServiceClient } from '../gen/comms/v1/thread.js';
import type { Role } from '../src/domain/actor.js';
import { signDevToken } from '../src/infra/auth/dev-token.js';
import { DEV_JWT_SECRET } from '../src/infra/config/config.js';
import { mapLimit } from './common.js';
import { assignSlots } from './loadgen.js';
import { bearer, call, type CallKind, describeError, messageBody, type Replay, type SlotPlan } from './protocol.js';

/** The knobs, from the environment (see bench/README.md). */
export interface BenchConfig {
  readonly concurrency: number;
  readonly processes: number;
  readonly channels: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly deadlineMs: number;
  readonly bodyBytes: number;
  readonly threads: number;
  readonly replayKeys: number;
  readonly readMessages: number;
  readonly batch: number;
  readonly scenarios: readonly ScenarioName[];
}

export const SCENARIOS = {
  baseline: 'raw baseline: grpc-js unary handler, one prepared `pg` INSERT of a message-like row',
  'send-distinct': 'SendMessage, new messages spread over many threads',
  'send-hot': 'SendMessage, new messages, all into one thread',
  'send-replay': 'SendMessage retries: replays of already-sent messages (same key, thread and body)',
  'markread-50': 'MarkRead of 50 message ids, read_at = now, by a participant',
  'list-50': 'ListMessages, page of 50, BACKWARD (newest page) on a seeded thread',
  'list-50-noaudit':
    'list-50 against a second service process started with AUDIT_ENABLED=false (the access audit off), same threads and readers',
  'session-join':
    'JoinSession by a provider already in the room: a fresh join credential (session row lock, clock check, signing)',
} as const;

export type ScenarioName = keyof typeof SCENARIOS;

/** Readers per read thread (the thread limit is 50 participants, creator included). */
const READERS_PER_THREAD = 40;
/** Concurrency of the setup traffic. */
export const SETUP_CONCURRENCY = 16;
/** Tokens outlive any run. */
const TOKEN_TTL_SECONDS = 12 * 3600;

/** A setup step failed (e.g. SendMessage UNIMPLEMENTED while seeding); the scenario cannot run. */
export class SetupError extends Error {}

export interface User {
  readonly userId: string;
  readonly token: string;
}

/** User `userId` of `tenant` in `role`, with a token signed with the development secret. */
export async function devUser(tenant: string, userId: string, role: Role): Promise<User> {
  const token = await signDevToken(DEV_JWT_SECRET, {
    sub: userId,
    tenant,
    roles: [role],
    issuer: 'comms-dev',
    audience: 'comms',
    ttlSeconds: TOKEN_TTL_SECONDS,
  });
  return { userId, token };
}

/** CreateThread as `creator`, with `participants` as patients; the new thread's id. */
export async function createThread(
  client: ThreadServiceClient,
  creator: User,
  subject: string,
  participants: readonly User[],
): Promise<string> {
  const res = await call(
    client,
    client.createThread,
    {
      subject,
      participants: participants.map((u) => ({
        userId: u.userId,
        role: ParticipantRole.PARTICIPANT_ROLE_PATIENT,
        addedAt: undefined,
        addedBy: '',
      })),
      requestId: '',
    },
    bearer(creator.token),
  );
  return res.thread!.threadId;
}

/** What one scenario asks of the load generator. */
export interface ScenarioPlan {
  readonly kind: CallKind;
  /** Which server the load goes to: the raw baseline, the service, or the service with the audit off. */
  readonly target: 'baseline' | 'service' | 'service-noaudit';
  readonly threads: readonly string[];
  readonly messageSets: readonly (readonly string[])[];
  readonly slots: readonly SlotPlan[];
}

/** The tenant, users and data of one run; each piece is made on first use. */
export class Scene {
  readonly tenant = `bench-${randomBytes(4).toString('hex')}`;
  readonly runTag = randomBytes(3).toString('hex');
  readonly workerOfSlot: readonly number[];
  #threadClient: ThreadServiceClient;
  #messageClient: MessageServiceClient;
  #sessionClient: VirtualSessionServiceClient;
  #provider!: User;
  #senders!: User[];
  #readers!: User[];
  #sendThreads?: Promise<string[]>;
  #hotThread?: Promise<string>;
  #readThreads?: Promise<{ threadIds: string[]; messageIds: string[][] }>;
  #replays?: Promise<Replay[][]>;
  #hosts!: User[];
  #sessions?: Promise<string[]>;
  readonly #baselineThreads = Array.from({ length: 256 }, () => randomUUID());

  private constructor(
    readonly config: BenchConfig,
    serviceAddress: string | undefined,
  ) {
    this.workerOfSlot = assignSlots(config.concurrency, config.processes);
    // Setup traffic only; the measured calls come from the workers. A placeholder address when the
    // service is not started (baseline only): the clients are then never used.
    const address = serviceAddress ?? '127.0.0.1:1';
    this.#threadClient = new ThreadServiceClient(address, credentials.createInsecure());
    this.#messageClient = new MessageServiceClient(address, credentials.createInsecure());
    this.#sessionClient = new VirtualSessionServiceClient(address, credentials.createInsecure());
  }

  static async create(config: BenchConfig, serviceAddress: string | undefined): Promise<Scene> {
    const scene = new Scene(config, serviceAddress);
    const processes = Math.max(...scene.workerOfSlot) + 1;
    scene.#provider = await scene.#user('bench-provider', 'provider');
    scene.#senders = await Promise.all(
      Array.from({ length: processes }, (_, w) => scene.#user(`bench-sender-${w}`, 'patient')),
    );
    scene.#hosts = await Promise.all(
      Array.from({ length: processes }, (_, w) => scene.#user(`bench-host-${w}`, 'provider')),
    );
    scene.#readers = await Promise.all(
      Array.from({ length: config.concurrency }, (_, g) => scene.#user(`bench-reader-${g}`, 'patient')),
    );
    return scene;
  }

  close(): void {
    this.#threadClient.close();
    this.#messageClient.close();
    this.#sessionClient.close();
  }

  #user(userId: string, role: Role): Promise<User> {
    return devUser(this.tenant, userId, role);
  }

  async #createThread(subject: string, participants: readonly User[]): Promise<string> {
    try {
      return await createThread(this.#threadClient, this.#provider, subject, participants);
    } catch (err) {
      throw new SetupError(`CreateThread failed: ${describeError(err)}`);
    }
  }

  async #send(user: User, threadId: string, clientMutationId: string, body: string): Promise<string> {
    try {
      const res = await call(
        this.#messageClient,
        this.#messageClient.sendMessage,
        { threadId, clientMutationId, body, clientSentAt: new Date() },
        bearer(user.token),
      );
      if (!res.message?.messageId) throw new Error('SendMessage answered without a message');
      return res.message.messageId;
    } catch (err) {
      throw new SetupError(`seeding messages with SendMessage failed: ${describeError(err)}`);
    }
  }

  /** The send threads: `config.threads` threads with every sender taking part. */
  sendThreads(): Promise<string[]> {
    return (this.#sendThreads ??= mapLimit(
      Array.from({ length: this.config.threads }, (_, i) => i),
      SETUP_CONCURRENCY,
      (i) => this.#createThread(`bench send thread ${i}`, this.#senders),
    ));
  }

  /** The one hot thread, every sender taking part. */
  hotThread(): Promise<string> {
    return (this.#hotThread ??= this.#createThread('bench hot thread', this.#senders));
  }

  /** Read threads, 40 readers each, each seeded with `config.readMessages` messages by the provider. */
  readThreads(): Promise<{ threadIds: string[]; messageIds: string[][] }> {
    return (this.#readThreads ??= (async () => {
      const groups: User[][] = [];
      for (let g = 0; g < this.#readers.length; g += READERS_PER_THREAD) {
        groups.push(this.#readers.slice(g, g + READERS_PER_THREAD));
      }
      const threadIds = await mapLimit(groups, SETUP_CONCURRENCY, (readers, r) =>
        this.#createThread(`bench read thread ${r}`, readers),
      );
      const n = this.config.readMessages;
      const sends = threadIds.flatMap((threadId, r) => Array.from({ length: n }, (_, k) => ({ threadId, r, k })));
      const ids = await mapLimit(sends, SETUP_CONCURRENCY, ({ threadId, r, k }) => {
        const key = `seed-${this.runTag}-${r}-${k}`;
        return this.#send(this.#provider, threadId, key, messageBody(this.config.bodyBytes, key));
      });
      const messageIds = threadIds.map((_, r) => ids.slice(r * n, (r + 1) * n));
      return { threadIds, messageIds };
    })());
  }

  /**
   * `config.threads` open sessions (starting now, one hour long), every worker's host a PROVIDER of each,
   * and each host already in each room (its first JoinSession), so the measured joins refresh credentials.
   */
  sessions(): Promise<string[]> {
    return (this.#sessions ??= (async () => {
      const now = Date.now();
      const ids = await mapLimit(
        Array.from({ length: this.config.threads }, (_, i) => i),
        SETUP_CONCURRENCY,
        async () => {
          try {
            const res = await call(
              this.#sessionClient,
              this.#sessionClient.createSession,
              {
                threadId: '',
                scheduledStartAt: new Date(now),
                scheduledEndAt: new Date(now + 3_600_000),
                waitingRoomOpensAt: undefined,
                participants: this.#hosts.map((h) =>
                  VirtualParticipant.fromPartial({ userId: h.userId, role: ParticipantRole.PARTICIPANT_ROLE_PROVIDER }),
                ),
                requestId: '',
              },
              bearer(this.#provider.token),
            );
            return res.session!.sessionId;
          } catch (err) {
            throw new SetupError(`CreateSession failed: ${describeError(err)}`);
          }
        },
      );
      const joins = ids.flatMap((sessionId) => this.#hosts.map((host) => ({ sessionId, host })));
      await mapLimit(joins, SETUP_CONCURRENCY, async ({ sessionId, host }) => {
        try {
          await call(this.#sessionClient, this.#sessionClient.joinSession, { sessionId }, bearer(host.token));
        } catch (err) {
          throw new SetupError(`JoinSession failed: ${describeError(err)}`);
        }
      });
      return ids;
    })());
  }

  /** Per slot, the sends it will replay: first sent once here by the slot's worker's sender. */
  replays(): Promise<Replay[][]> {
    return (this.#replays ??= (async () => {
      const threads = await this.sendThreads();
      const c = this.config.concurrency;
      const perSlot = Math.max(1, Math.ceil(this.config.replayKeys / c));
      const todo = Array.from({ length: c * perSlot }, (_, j) => ({ g: Math.floor(j / perSlot), k: j % perSlot }));
      const sent = await mapLimit(todo, SETUP_CONCURRENCY, async ({ g, k }) => {
        const threadId = threads[(g + k * c) % threads.length]!;
        const clientMutationId = `replay-${this.runTag}-${g}-${k}`;
        const body = messageBody(this.config.bodyBytes, clientMutationId);
        const sender = this.#senders[this.workerOfSlot[g]!]!;
        const messageId = await this.#send(sender, threadId, clientMutationId, body);
        return { threadId, clientMutationId, body, messageId };
      });
      return Array.from({ length: c }, (_, g) => sent.slice(g * perSlot, (g + 1) * perSlot));
    })());
  }

  /** Prepares what `name` needs and says how to load it. Throws SetupError when preparing fails. */
  async plan(name: ScenarioName): Promise<ScenarioPlan> {
    const c = this.config.concurrency;
    const slot = (g: number, token: string, extra: Partial<SlotPlan> = {}): SlotPlan => ({
      worker: this.workerOfSlot[g]!,
      token,
      start: g,
      stride: c,
      messageSet: 0,
      replays: [],
      ...extra,
    });
    const senderToken = (g: number) => this.#senders[this.workerOfSlot[g]!]!.token;
    const each = <T>(fn: (g: number) => T) => Array.from({ length: c }, (_, g) => fn(g));
    switch (name) {
      case 'baseline':
        return {
          kind: 'baseline',
          target: 'baseline',
          threads: this.#baselineThreads,
          messageSets: [],
          slots: each((g) => slot(g, senderToken(g))),
        };
      case 'send-distinct':
        return {
          kind: 'send',
          target: 'service',
          threads: await this.sendThreads(),
          messageSets: [],
          slots: each((g) => slot(g, senderToken(g))),
        };
      case 'send-hot':
        return {
          kind: 'send',
          target: 'service',
          threads: [await this.hotThread()],
          messageSets: [],
          slots: each((g) => slot(g, senderToken(g))),
        };
      case 'send-replay': {
        const replays = await this.replays();
        return {
          kind: 'replay',
          target: 'service',
          threads: [],
          messageSets: [],
          slots: each((g) => slot(g, senderToken(g), { replays: replays[g]! })),
        };
      }
      case 'markread-50': {
        const { messageIds } = await this.readThreads();
        return {
          kind: 'markRead',
          target: 'service',
          threads: [],
          messageSets: messageIds,
          slots: each((g) => slot(g, this.#readers[g]!.token, { messageSet: Math.floor(g / READERS_PER_THREAD) })),
        };
      }
      case 'session-join':
        return {
          kind: 'join',
          target: 'service',
          threads: await this.sessions(),
          messageSets: [],
          slots: each((g) => slot(g, this.#hosts[this.workerOfSlot[g]!]!.token)),
        };
      case 'list-50':
      case 'list-50-noaudit': {
        const { threadIds } = await this.readThreads();
        return {
          kind: 'list',
          target: name === 'list-50' ? 'service' : 'service-noaudit',
          threads: threadIds,
          messageSets: [],
          slots: each((g) =>
            slot(g, this.#readers[g]!.token, { start: Math.floor(g / READERS_PER_THREAD), stride: 0 }),
          ),
        };
      }
    }
  }
}
