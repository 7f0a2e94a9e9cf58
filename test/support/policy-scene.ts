import {
  Client,
  type ClientReadableStream,
  credentials,
  type Metadata,
  type MethodDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { expect } from 'chai';
import { FeedServiceService } from '../../gen/comms/v1/feed.js';
import { GovernanceServiceService, type LegalHold } from '../../gen/comms/v1/governance.js';
import { type Message, MessageServiceService } from '../../gen/comms/v1/message.js';
import { type Notification, NotificationServiceService } from '../../gen/comms/v1/notification.js';
import { ReadReceiptServiceService } from '../../gen/comms/v1/read_receipt.js';
import { VirtualParticipant, type VirtualSession, VirtualSessionServiceService } from '../../gen/comms/v1/session.js';
import { ParticipantRole, type Thread, ThreadServiceService } from '../../gen/comms/v1/thread.js';
import type { Permission, Role } from '../../src/domain/actor.js';
import { newTenant, newUser, newUserWith, type TestUser } from './clients.js';
import { env } from './hooks.js';
import { newKey } from './messages.js';
import { db, newUserId, participant } from './threads.js';

/** Every comms.v1 service definition (ts-proto generated), by full service name. */
export const SERVICE_DEFINITIONS = {
  'comms.v1.ThreadService': ThreadServiceService,
  'comms.v1.MessageService': MessageServiceService,
  'comms.v1.ReadReceiptService': ReadReceiptServiceService,
  'comms.v1.FeedService': FeedServiceService,
  'comms.v1.NotificationService': NotificationServiceService,
  'comms.v1.VirtualSessionService': VirtualSessionServiceService,
  'comms.v1.GovernanceService': GovernanceServiceService,
} as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyMethod = MethodDefinition<any, any>;

/** Every method of comms.v1, by its full path ('/comms.v1.ThreadService/CreateThread'). */
export const METHODS: ReadonlyMap<string, AnyMethod> = new Map(
  Object.values(SERVICE_DEFINITIONS).flatMap((service) =>
    Object.values(service as Record<string, AnyMethod>).map((def) => [def.path, def] as const),
  ),
);

function methodOf(path: string): AnyMethod {
  const def = METHODS.get(path);
  if (!def) throw new Error(`no comms.v1 method ${path}`);
  return def;
}

/** How one call ended: its (first) response, or its error status. */
export type Outcome = { readonly ok: true; readonly res: unknown } | { readonly ok: false; readonly err: ServiceError };

/**
 * Calls any comms.v1 method by path on one untyped grpc-js client, with the generated serializers.
 * Requests are given as partials: fields left out keep their proto3 defaults.
 */
export class RpcCaller {
  readonly #client: Client;

  constructor(address = env.address) {
    this.#client = new Client(address, credentials.createInsecure());
  }

  /** The full request of `path`: proto3 defaults overridden by `fields`. */
  request(path: string, fields: Record<string, unknown>): unknown {
    return { ...(methodOf(path).requestDeserialize(Buffer.alloc(0)) as object), ...fields };
  }

  /** One unary call; resolves with the response, rejects with the ServiceError. */
  unary<Res>(path: string, fields: Record<string, unknown>, md: Metadata): Promise<Res> {
    const def = methodOf(path);
    return this.#unary(path, def.requestSerialize, def.responseDeserialize, this.request(path, fields), md);
  }

  /** One unary call whose request is empty on the wire (zero bytes: every field at its default). */
  empty(path: string, md: Metadata): Promise<unknown> {
    return this.#unary(path, (b: Buffer) => b, methodOf(path).responseDeserialize, Buffer.alloc(0), md);
  }

  /**
   * Calls `path` once: unary methods answer; server-streaming methods are opened, their first response
   * (or the error that ends them) is taken, and the stream is cancelled.
   */
  async once(path: string, fields: Record<string, unknown>, md: Metadata, timeoutMs = 10_000): Promise<Outcome> {
    const def = methodOf(path);
    if (!def.responseStream) {
      return this.unary(path, fields, md).then(
        (res) => ({ ok: true, res }),
        (err: ServiceError) => ({ ok: false, err }),
      );
    }
    const stream: ClientReadableStream<unknown> = this.#client.makeServerStreamRequest(
      path,
      def.requestSerialize,
      def.responseDeserialize,
      this.request(path, fields),
      md,
    );
    return new Promise<Outcome>((resolve, reject) => {
      let settled = false;
      const settle = (outcome: Outcome | Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        stream.cancel();
        if (outcome instanceof Error) reject(outcome);
        else resolve(outcome);
      };
      const timer = setTimeout(() => settle(new Error(`${path}: no response within ${timeoutMs} ms`)), timeoutMs);
      stream.on('data', (res: unknown) => settle({ ok: true, res }));
      // After the cancel the client reports CANCELLED; only the first end counts.
      stream.on('error', (err: ServiceError) => settle({ ok: false, err }));
      stream.on('end', () => settle(new Error(`${path}: the stream ended without a response`)));
    });
  }

  close(): void {
    this.#client.close();
  }

  #unary<Res>(
    path: string,
    serialize: (value: never) => Buffer,
    deserialize: (value: Buffer) => unknown,
    req: unknown,
    md: Metadata,
  ): Promise<Res> {
    return new Promise((resolve, reject) =>
      this.#client.makeUnaryRequest(
        path,
        serialize as (value: unknown) => Buffer,
        deserialize,
        req,
        md,
        (err: ServiceError | null, res?: unknown) => (err ? reject(err) : resolve(res as Res)),
      ),
    );
  }
}

/** What a cell's scene must hold besides the users. */
export interface SceneNeeds {
  /** A thread created by the owner (a provider) in which the caller takes part. */
  readonly thread?: boolean;
  /** A message the owner sent to the thread. */
  readonly message?: boolean;
  /** A message the caller sent to the thread just now (within the retraction window). */
  readonly ownMessage?: boolean;
  /** An active legal hold on the thread, placed by a staff user with `holds.manage`. */
  readonly hold?: boolean;
  /** The thread archived by the owner (for ReopenThread). */
  readonly archived?: boolean;
  /** A notification intent whose recipient is the caller (requested by a service user). */
  readonly notification?: boolean;
  /**
   * A session created by the owner in which the caller takes part: 'open' starts now (waiting room open),
   * 'scheduled' starts in two hours (waiting room not open yet).
   */
  readonly session?: 'open' | 'scheduled';
  /** The other patient of the session has joined and is WAITING. */
  readonly otherWaiting?: boolean;
  /** The caller has joined the session (ADMITTED for a provider, WAITING otherwise). */
  readonly callerJoined?: boolean;
}

/** One matrix cell's world: a fresh tenant whose resources the caller takes part in. */
export interface PolicyScene {
  readonly tenantId: string;
  /** A fresh user holding exactly the cell's role (and the permissions the scene was asked for). */
  readonly caller: TestUser;
  readonly role: Role;
  /** A provider: creates the thread and the session, sends the message. */
  readonly owner: TestUser;
  /** A service user: requests the caller's notification. */
  readonly service: TestUser;
  /** Another patient taking part in the thread and the session (the target of admit, deny, remove). */
  readonly other: TestUser;
  /** A family member of the thread (the target of RemoveParticipant). */
  readonly familyUserId: string;
  readonly thread?: Thread;
  readonly message?: Message;
  /** The caller's own message. */
  readonly ownMessage?: Message;
  readonly hold?: LegalHold;
  readonly notification?: Notification;
  /** The session as it is after the scene's joins (its etag is current). */
  readonly session?: VirtualSession;
}

/** The thread participant role a caller of `role` takes part with. */
export function threadRoleOf(role: Role): ParticipantRole {
  switch (role) {
    case 'patient':
      return ParticipantRole.PARTICIPANT_ROLE_PATIENT;
    case 'provider':
      return ParticipantRole.PARTICIPANT_ROLE_PROVIDER;
    default:
      return ParticipantRole.PARTICIPANT_ROLE_CARE_STAFF;
  }
}

/** The session participant role a caller of `role` takes part with: PROVIDER for a provider, else PATIENT. */
export function sessionRoleOf(role: Role): ParticipantRole {
  return role === 'provider' ? ParticipantRole.PARTICIPANT_ROLE_PROVIDER : ParticipantRole.PARTICIPANT_ROLE_PATIENT;
}

const MINUTE = 60_000;

/**
 * Builds a fresh scene for a caller of `role` whose token carries `permissions`, holding what `needs`
 * asks for.
 */
export async function policyScene(
  rpc: RpcCaller,
  role: Role,
  needs: SceneNeeds,
  permissions: readonly Permission[] = [],
): Promise<PolicyScene> {
  const tenantId = newTenant();
  const [caller, owner, service, other] = await Promise.all([
    permissions.length > 0 ? newUserWith(tenantId, permissions, role) : newUser(tenantId, role),
    newUser(tenantId, 'provider'),
    newUser(tenantId, 'service'),
    newUser(tenantId, 'patient'),
  ]);
  const familyUserId = newUserId('family');
  const base = { tenantId, caller, role, owner, service, other, familyUserId };

  const threadPart = async () => {
    if (!needs.thread && !needs.message && !needs.ownMessage && !needs.hold && !needs.archived) return {};
    const { thread } = await rpc.unary<{ thread: Thread }>(
      '/comms.v1.ThreadService/CreateThread',
      {
        subject: 'Policy matrix',
        participants: [
          participant(caller.userId, threadRoleOf(role)),
          participant(other.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          participant(familyUserId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
        ],
      },
      owner.md,
    );
    let message: Message | undefined;
    if (needs.message) {
      message = (
        await rpc.unary<{ message: Message }>(
          '/comms.v1.MessageService/SendMessage',
          { threadId: thread.threadId, clientMutationId: newKey('policy'), body: 'Your results are in' },
          owner.md,
        )
      ).message;
    }
    let ownMessage: Message | undefined;
    if (needs.ownMessage) {
      ownMessage = (
        await rpc.unary<{ message: Message }>(
          '/comms.v1.MessageService/SendMessage',
          { threadId: thread.threadId, clientMutationId: newKey('policy'), body: 'Sent to the wrong thread' },
          caller.md,
        )
      ).message;
    }
    let hold: LegalHold | undefined;
    if (needs.hold) {
      const holder = await newUserWith(tenantId, ['holds.manage'], 'staff');
      hold = (
        await rpc.unary<{ hold: LegalHold }>(
          '/comms.v1.GovernanceService/PlaceLegalHold',
          { target: { $case: 'threadId', value: thread.threadId }, reason: 'Records request' },
          holder.md,
        )
      ).hold;
    }
    if (needs.archived) {
      await rpc.unary('/comms.v1.ThreadService/ArchiveThread', { threadId: thread.threadId }, owner.md);
    }
    return { thread, message, ownMessage, hold };
  };

  const notificationPart = async () => {
    if (!needs.notification) return {};
    const { notification } = await rpc.unary<{ notification: Notification }>(
      '/comms.v1.NotificationService/RequestNotification',
      { recipientUserId: caller.userId, dedupeKey: newKey('policy'), templateKey: 'generic' },
      service.md,
    );
    return { notification };
  };

  const sessionPart = async () => {
    if (!needs.session) return {};
    const start = needs.session === 'open' ? new Date() : new Date(Date.now() + 120 * MINUTE);
    let { session } = await rpc.unary<{ session: VirtualSession }>(
      '/comms.v1.VirtualSessionService/CreateSession',
      {
        scheduledStartAt: start,
        scheduledEndAt: new Date(start.getTime() + 30 * MINUTE),
        participants: [
          VirtualParticipant.fromPartial({ userId: caller.userId, role: sessionRoleOf(role) }),
          VirtualParticipant.fromPartial({ userId: other.userId, role: ParticipantRole.PARTICIPANT_ROLE_PATIENT }),
        ],
      },
      owner.md,
    );
    const join = (user: TestUser) =>
      rpc.unary('/comms.v1.VirtualSessionService/JoinSession', { sessionId: session.sessionId }, user.md);
    if (needs.otherWaiting) await join(other);
    if (needs.callerJoined) await join(caller);
    if (needs.otherWaiting || needs.callerJoined) {
      session = (
        await rpc.unary<{ session: VirtualSession }>(
          '/comms.v1.VirtualSessionService/GetSession',
          { sessionId: session.sessionId },
          owner.md,
        )
      ).session;
    }
    return { session };
  };

  const [t, n, s] = await Promise.all([threadPart(), notificationPart(), sessionPart()]);
  return { ...base, ...t, ...n, ...s };
}

/** Runs `work` over `items` with at most `limit` in flight; results in the order of `items`. */
export async function pooled<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await work(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Every table that holds a tenant's data (each has a tenant_id column). */
const TENANT_TABLES = [
  'thread',
  'thread_participant',
  'message',
  'read_receipt',
  'read_watermark',
  'feed_stream',
  'feed_event',
  'inbox_event',
  'notification_intent',
  'dispatch_record',
  'notification_preference',
  'virtual_session',
  'session_participant',
  'session_event',
  'message_retraction',
  'access_audit',
  'retention_policy',
  'legal_hold',
] as const;

/**
 * A fingerprint of everything stored for a tenant: per table, the row count and a digest of every row.
 * Equal before and after a call means the call stored nothing.
 */
export async function tenantFingerprint(tenantId: string): Promise<Record<string, string>> {
  // Audit records reach the database a moment after their call: write what is pending first.
  await env.app.audit.flush();
  const columns = TENANT_TABLES.map(
    (t) =>
      `(select count(*) || ':' || md5(coalesce(string_agg(r::text, '|' order by r::text), ''))
          from ${t} r where r.tenant_id = $1) as ${t}`,
  );
  const { rows } = await db().query<Record<string, string>>(`select ${columns.join(', ')}`, [tenantId]);
  expect(rows).to.have.length(1);
  return rows[0]!;
}
