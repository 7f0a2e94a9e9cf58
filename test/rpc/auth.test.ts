import { createHmac } from 'node:crypto';
import { Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { type JWTPayload, SignJWT, UnsecuredJWT } from 'jose';
import type { Message } from '../../gen/comms/v1/message.js';
import { type Notification, NotificationPreferences, QuietHours } from '../../gen/comms/v1/notification.js';
import { SessionTransition, VirtualParticipant, type VirtualSession } from '../../gen/comms/v1/session.js';
import { EscalationLevel, ParticipantRole, type Thread } from '../../gen/comms/v1/thread.js';
import type { Role } from '../../src/domain/actor.js';
import { bearer, errorDetails, newTenant, newUser, type TestUser } from '../support/clients.js';
import { env } from '../support/hooks.js';
import { newKey } from '../support/messages.js';
import { type Outcome, RpcCaller } from '../support/policy-scene.js';
import { db, newUserId, participant, sameSubjectIn } from '../support/threads.js';

// Authentication and tenant isolation, table-driven: every token case is refused with its code AND
// ErrorInfo reason on a unary write, a unary read and a stream, and stores nothing. Some rows repeat what
// test/rpc/server.test.ts ("server: authentication") checks on ListThreads alone — expired, another
// secret, alg none, wrong audience and issuer, no tenant, unknown roles only, no or malformed
// authorization metadata — so that the whole token contract is in one table here.

const MINUTE = 60_000;
const now = () => Math.floor(Date.now() / 1000);
const SECRET = () => new TextEncoder().encode(env.config.jwt.secret!);
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** The claims of a valid staff token of `tenant` for subject `sub`. */
function validClaims(tenant: string, sub: string): JWTPayload {
  return {
    sub,
    tenant,
    roles: ['staff'],
    iss: env.config.jwt.issuer,
    aud: env.config.jwt.audience,
    iat: now(),
    exp: now() + 3600,
  };
}

/** `claims` signed HS256 with the server's secret (or `opts.secret`, `opts.alg`, extra header fields). */
function sign(
  claims: JWTPayload,
  opts: { secret?: Uint8Array; alg?: string; header?: Record<string, unknown> } = {},
): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: opts.alg ?? 'HS256', typ: 'JWT', ...opts.header })
    .sign(opts.secret ?? SECRET());
}

/** A compact JWS over any header and payload, HMAC-SHA256 with the server's secret (no checks at all). */
function hs256(header: Record<string, unknown>, payload: JWTPayload): string {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${createHmac('sha256', env.config.jwt.secret!).update(input).digest('base64url')}`;
}

/** `claims` with the keys in `drop` removed and `set` merged in. */
function edit(claims: JWTPayload, set: Record<string, unknown>, ...drop: string[]): JWTPayload {
  const out: Record<string, unknown> = { ...claims, ...set };
  for (const key of drop) delete out[key];
  return out;
}

/**
 * Every table that holds tenant data (a `tenant_id` column in schema public; pg-boss keeps none), read
 * from the catalogue so a new table is covered without touching this file.
 */
let fingerprintSql: string | undefined;
async function tenantFingerprint(tenantId: string): Promise<Record<string, string>> {
  // Audit records reach the database a moment after their call: write what is pending first.
  await env.app.audit.flush();
  if (!fingerprintSql) {
    const { rows } = await db().query<{ table_name: string }>(
      `select c.table_name
         from information_schema.columns c
         join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema = 'public' and c.column_name = 'tenant_id' and t.table_type = 'BASE TABLE'
        order by c.table_name`,
    );
    expect(rows.map((r) => r.table_name)).to.include.members(['thread', 'message', 'notification_intent']);
    fingerprintSql = `select ${rows
      .map(
        ({ table_name: t }) =>
          `(select count(*) || ':' || md5(coalesce(string_agg(r::text, '|' order by r::text), ''))
              from public."${t}" r where r.tenant_id::text = $1) as "${t}"`,
      )
      .join(', ')}`;
  }
  const { rows } = await db().query<Record<string, string>>(fingerprintSql, [tenantId]);
  return rows[0]!;
}

/** True when the fingerprint shows no row at all. */
function isEmpty(fingerprint: Record<string, string>): boolean {
  return Object.values(fingerprint).every((v) => v.startsWith('0:'));
}

/** Asserts an outcome is the error `code` with ErrorInfo `reason` (domain comms.example.com). */
function expectRefused(outcome: Outcome, code: status, reason: string, what: string): void {
  expect(outcome.ok, `${what} was expected to fail with ${status[code]} ${reason}`).to.equal(false);
  const { err } = outcome as Extract<Outcome, { ok: false }>;
  expect(status[err.code], `${what}: code (message: ${err.details})`).to.equal(status[code]);
  const { info } = errorDetails(err);
  expect(info?.reason, `${what}: ErrorInfo reason (message: ${err.details})`).to.equal(reason);
  expect(info?.domain, `${what}: ErrorInfo domain`).to.equal('comms.example.com');
}

const P = {
  createThread: '/comms.v1.ThreadService/CreateThread',
  getThread: '/comms.v1.ThreadService/GetThread',
  listThreads: '/comms.v1.ThreadService/ListThreads',
  addParticipant: '/comms.v1.ThreadService/AddParticipant',
  escalate: '/comms.v1.ThreadService/EscalateThread',
  archive: '/comms.v1.ThreadService/ArchiveThread',
  reopen: '/comms.v1.ThreadService/ReopenThread',
  send: '/comms.v1.MessageService/SendMessage',
  getMessage: '/comms.v1.MessageService/GetMessage',
  listMessages: '/comms.v1.MessageService/ListMessages',
  markRead: '/comms.v1.ReadReceiptService/MarkRead',
  markThreadRead: '/comms.v1.ReadReceiptService/MarkThreadRead',
  listReceipts: '/comms.v1.ReadReceiptService/ListReadReceipts',
  watchThread: '/comms.v1.FeedService/WatchThread',
  watchInbox: '/comms.v1.FeedService/WatchInbox',
  watchSession: '/comms.v1.FeedService/WatchSession',
  getNotification: '/comms.v1.NotificationService/GetNotification',
  listNotifications: '/comms.v1.NotificationService/ListNotifications',
  requestNotification: '/comms.v1.NotificationService/RequestNotification',
  getPreferences: '/comms.v1.NotificationService/GetNotificationPreferences',
  updatePreferences: '/comms.v1.NotificationService/UpdateNotificationPreferences',
  createSession: '/comms.v1.VirtualSessionService/CreateSession',
  getSession: '/comms.v1.VirtualSessionService/GetSession',
  listSessions: '/comms.v1.VirtualSessionService/ListSessions',
  updateSession: '/comms.v1.VirtualSessionService/UpdateSession',
  transition: '/comms.v1.VirtualSessionService/RequestTransition',
  invite: '/comms.v1.VirtualSessionService/InviteParticipant',
  join: '/comms.v1.VirtualSessionService/JoinSession',
  leave: '/comms.v1.VirtualSessionService/LeaveSession',
  admit: '/comms.v1.VirtualSessionService/AdmitParticipant',
  listSessionEvents: '/comms.v1.VirtualSessionService/ListSessionEvents',
} as const;

let rpc: RpcCaller;

describe('auth', () => {
  before(() => (rpc = new RpcCaller()));
  after(() => rpc?.close());

  describe('auth: tokens (table-driven; each refused on a write, a read and a stream, nothing stored)', () => {
    type Make = (tenant: string, sub: string) => Promise<string> | string;
    interface TokenCase {
      readonly name: string;
      /** The whole `authorization` value (a token is sent as `Bearer <token>`); undefined: no header. */
      readonly authorization: Make;
      readonly code: status;
      readonly reason: string;
    }
    const UNAUTH = { code: status.UNAUTHENTICATED, reason: 'UNAUTHENTICATED' };
    const NO_ROLE = { code: status.PERMISSION_DENIED, reason: 'NO_ROLE' };
    const token =
      (
        make: (claims: JWTPayload) => Promise<string> | string,
        change: (c: JWTPayload) => JWTPayload = (c) => c,
      ): Make =>
      async (tenant, sub) =>
        `Bearer ${await make(change(validClaims(tenant, sub)))}`;
    const signed = (change: (c: JWTPayload) => JWTPayload) => token((c) => sign(c), change);

    const CASES: TokenCase[] = [
      // Not a bearer token at all.
      { name: 'no authorization metadata', authorization: () => '', ...UNAUTH },
      { name: 'Basic credentials', authorization: () => 'Basic dXNlcjpwYXNz', ...UNAUTH },
      { name: '"Bearer" without a token', authorization: () => 'Bearer', ...UNAUTH },
      { name: 'a bearer value that is not a JWT', authorization: () => 'Bearer not-a-jwt', ...UNAUTH },
      {
        name: 'two tokens in one header',
        authorization: async (t, s) => `Bearer ${await sign(validClaims(t, s))} x`,
        ...UNAUTH,
      },
      // Time.
      { name: 'expired (exp 2 minutes ago)', authorization: signed((c) => edit(c, { exp: now() - 120 })), ...UNAUTH },
      { name: 'expired (exp 2 seconds ago)', authorization: signed((c) => edit(c, { exp: now() - 2 })), ...UNAUTH },
      {
        name: 'not yet valid (nbf in 5 minutes)',
        authorization: signed((c) => edit(c, { nbf: now() + 300 })),
        ...UNAUTH,
      },
      { name: 'without exp', authorization: signed((c) => edit(c, {}, 'exp')), ...UNAUTH },
      { name: 'exp not a number', authorization: signed((c) => edit(c, { exp: 'tomorrow' })), ...UNAUTH },
      // Signature and algorithm.
      {
        name: 'signed with another secret',
        authorization: token((c) => sign(c, { secret: new TextEncoder().encode('x'.repeat(40)) })),
        ...UNAUTH,
      },
      {
        name: 'signature of another token (payload swapped: roles raised to service)',
        authorization: async (tenant, sub) => {
          const [header, , sig] = (await sign(edit(validClaims(tenant, sub), { roles: ['patient'] }))).split('.');
          return `Bearer ${header}.${b64(edit(validClaims(tenant, sub), { roles: ['service'] }))}.${sig}`;
        },
        ...UNAUTH,
      },
      {
        name: 'signature bytes altered',
        authorization: async (tenant, sub) => {
          const t = await sign(validClaims(tenant, sub));
          return `Bearer ${t.slice(0, -2)}${t.endsWith('AA') ? 'BB' : 'AA'}`;
        },
        ...UNAUTH,
      },
      {
        name: 'alg none (jose UnsecuredJWT)',
        authorization: token((c) => new UnsecuredJWT(c).encode()),
        ...UNAUTH,
      },
      {
        name: 'alg "NONE" with the valid signature attached',
        authorization: async (tenant, sub) => {
          const [, payload, sig] = (await sign(validClaims(tenant, sub))).split('.');
          return `Bearer ${b64({ alg: 'NONE', typ: 'JWT' })}.${payload}.${sig}`;
        },
        ...UNAUTH,
      },
      {
        name: 'HS512 with the right secret (only HS256 is accepted)',
        authorization: token((c) => sign(c, { alg: 'HS512' })),
        ...UNAUTH,
      },
      {
        // jose refuses to sign this itself: signed by hand, with a correct HS256 signature.
        name: 'an unknown critical header',
        authorization: (tenant, sub) =>
          `Bearer ${hs256({ alg: 'HS256', crit: ['x-escalate'], 'x-escalate': true }, validClaims(tenant, sub))}`,
        ...UNAUTH,
      },
      // Issuer and audience.
      {
        name: 'HS256 with the right secret but another audience',
        authorization: signed((c) => edit(c, { aud: 'other' })),
        ...UNAUTH,
      },
      { name: 'another issuer', authorization: signed((c) => edit(c, { iss: 'other' })), ...UNAUTH },
      { name: 'without aud', authorization: signed((c) => edit(c, {}, 'aud')), ...UNAUTH },
      { name: 'without iss', authorization: signed((c) => edit(c, {}, 'iss')), ...UNAUTH },
      // Tenant.
      { name: 'without tenant', authorization: signed((c) => edit(c, {}, 'tenant')), ...UNAUTH },
      { name: 'empty tenant', authorization: signed((c) => edit(c, { tenant: '' })), ...UNAUTH },
      { name: 'tenant not a string', authorization: signed((c) => edit(c, { tenant: ['a', 'b'] })), ...UNAUTH },
      { name: 'tenant "../other"', authorization: signed((c) => edit(c, { tenant: '../other' })), ...UNAUTH },
      {
        name: 'tenant of 65 characters',
        authorization: signed((c) => edit(c, { tenant: `t${'x'.repeat(64)}` })),
        ...UNAUTH,
      },
      // Subject.
      { name: 'without sub', authorization: signed((c) => edit(c, {}, 'sub')), ...UNAUTH },
      { name: 'empty sub', authorization: signed((c) => edit(c, { sub: '' })), ...UNAUTH },
      { name: 'sub of 129 characters', authorization: signed((c) => edit(c, { sub: 'u'.repeat(129) })), ...UNAUTH },
      // Roles: none of the four is PERMISSION_DENIED NO_ROLE (README, Identity and access).
      { name: 'without roles', authorization: signed((c) => edit(c, {}, 'roles')), ...NO_ROLE },
      { name: 'roles not a list ("staff")', authorization: signed((c) => edit(c, { roles: 'staff' })), ...NO_ROLE },
      {
        name: 'roles an object ({staff: true})',
        authorization: signed((c) => edit(c, { roles: { staff: true } })),
        ...NO_ROLE,
      },
      { name: 'roles empty', authorization: signed((c) => edit(c, { roles: [] })), ...NO_ROLE },
      {
        name: 'unknown roles only (admin, root)',
        authorization: signed((c) => edit(c, { roles: ['admin', 'root'] })),
        ...NO_ROLE,
      },
      {
        name: 'roles spelled differently (STAFF, " staff", staff!)',
        authorization: signed((c) => edit(c, { roles: ['STAFF', ' staff', 'staff!'] })),
        ...NO_ROLE,
      },
      {
        name: 'the role in another claim only (role, scope, groups, realm_access.roles)',
        authorization: signed((c) =>
          edit(
            c,
            { role: 'staff', scope: 'staff service', groups: ['staff'], realm_access: { roles: ['staff'] } },
            'roles',
          ),
        ),
        ...NO_ROLE,
      },
      {
        name: 'the roles in the protected header only',
        authorization: token((c) => sign(edit(c, {}, 'roles'), { header: { roles: ['staff'] } })),
        ...NO_ROLE,
      },
    ];

    it('a valid token (the control: the same calls succeed and store a thread)', async () => {
      const tenant = newTenant();
      const md = bearer((await sign(validClaims(tenant, 'someone'))) as string);
      expect((await rpc.once(P.createThread, { subject: 'control' }, md)).ok).to.equal(true);
      expect((await rpc.once(P.listThreads, {}, md)).ok).to.equal(true);
      expect((await rpc.once(P.watchInbox, {}, md)).ok).to.equal(true);
      expect(isEmpty(await tenantFingerprint(tenant))).to.equal(false);
      // The hand-signed tokens below are refused for what they carry, not for how they are signed.
      const byHand = bearer(hs256({ alg: 'HS256', typ: 'JWT' }, validClaims(tenant, 'someone')));
      expect((await rpc.once(P.listThreads, {}, byHand)).ok, 'a hand-signed valid token is accepted').to.equal(true);
    });

    for (const c of CASES) {
      it(`${c.name}: ${status[c.code]} ${c.reason}`, async () => {
        const tenant = newTenant();
        const md = new Metadata();
        const authorization = await c.authorization(tenant, `user-${newKey()}`);
        if (authorization !== '') md.set('authorization', authorization);
        expectRefused(
          await rpc.once(P.createThread, { subject: 'must not exist' }, md),
          c.code,
          c.reason,
          'CreateThread',
        );
        expectRefused(await rpc.once(P.listThreads, {}, md), c.code, c.reason, 'ListThreads');
        expectRefused(await rpc.once(P.watchInbox, {}, md), c.code, c.reason, 'WatchInbox');
        const stored = await tenantFingerprint(tenant);
        expect(isEmpty(stored), `nothing stored for tenant ${tenant}: ${JSON.stringify(stored)}`).to.equal(true);
      });
    }
  });

  /**
   * Tenant B with a thread, a message, a session and a notification of its patient; callers of tenant A,
   * among them the same subjects as B's provider and patient.
   */
  interface TwoTenants {
    readonly a: string;
    readonly b: string;
    readonly providerB: TestUser;
    readonly patientB: TestUser;
    readonly thread: Thread;
    readonly message: Message;
    readonly session: VirtualSession;
    readonly notification: Notification;
    /** Callers of tenant A: staff, service, and B's provider's and patient's subjects with A tokens. */
    readonly callersA: Record<'staff' | 'service' | 'provider' | 'patient', TestUser>;
  }

  async function twoTenants(): Promise<TwoTenants> {
    const a = newTenant();
    const b = newTenant();
    const [providerB, patientB, serviceB, staffA, serviceA] = await Promise.all([
      newUser(b, 'provider'),
      newUser(b, 'patient'),
      newUser(b, 'service'),
      newUser(a, 'staff'),
      newUser(a, 'service'),
    ]);
    const [providerA, patientA] = await Promise.all([
      sameSubjectIn(a, providerB, 'provider', 'staff', 'service'),
      sameSubjectIn(a, patientB, 'patient', 'staff'),
    ]);
    const { thread } = await rpc.unary<{ thread: Thread }>(
      P.createThread,
      { subject: 'B only', participants: [participant(patientB.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)] },
      providerB.md,
    );
    const start = new Date(Date.now() + 5 * MINUTE);
    const [{ message }, { session }, { notification }] = await Promise.all([
      rpc.unary<{ message: Message }>(
        P.send,
        { threadId: thread.threadId, clientMutationId: newKey(), body: 'for B' },
        providerB.md,
      ),
      rpc.unary<{ session: VirtualSession }>(
        P.createSession,
        {
          threadId: thread.threadId,
          scheduledStartAt: start,
          scheduledEndAt: new Date(start.getTime() + 30 * MINUTE),
          waitingRoomOpensAt: new Date(Date.now() - MINUTE),
          participants: [
            VirtualParticipant.fromPartial({ userId: patientB.userId, role: ParticipantRole.PARTICIPANT_ROLE_PATIENT }),
          ],
        },
        providerB.md,
      ),
      rpc.unary<{ notification: Notification }>(
        P.requestNotification,
        { recipientUserId: patientB.userId, dedupeKey: newKey(), templateKey: 'document_available' },
        serviceB.md,
      ),
    ]);
    return {
      a,
      b,
      providerB,
      patientB,
      thread,
      message,
      session,
      notification,
      callersA: { staff: staffA, service: serviceA, provider: providerA, patient: patientA },
    };
  }

  describe('auth: a token of tenant A on resources of tenant B is NOT_FOUND (never PERMISSION_DENIED)', function () {
    this.timeout(60_000);
    let s: TwoTenants;
    let beforeA: Record<string, string>;
    let beforeB: Record<string, string>;
    before(async () => {
      s = await twoTenants();
      [beforeA, beforeB] = await Promise.all([tenantFingerprint(s.a), tenantFingerprint(s.b)]);
    });

    type Caller = keyof TwoTenants['callersA'];
    const EVERYONE: Caller[] = ['staff', 'service', 'provider', 'patient'];
    const CASES: {
      path: string;
      req: (s: TwoTenants) => Record<string, unknown>;
      reason: string;
      callers?: Caller[];
    }[] = [
      { path: P.getThread, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      {
        path: P.addParticipant,
        req: (s) => ({
          threadId: s.thread.threadId,
          participant: participant(newUserId(), ParticipantRole.PARTICIPANT_ROLE_FAMILY),
        }),
        reason: 'THREAD_NOT_FOUND',
      },
      {
        path: P.escalate,
        req: (s) => ({
          threadId: s.thread.threadId,
          level: EscalationLevel.ESCALATION_LEVEL_URGENT,
          assigneeUserId: 'nurse-1',
          reason: 'now',
        }),
        reason: 'THREAD_NOT_FOUND',
      },
      { path: P.archive, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      { path: P.reopen, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      {
        path: P.send,
        req: (s) => ({ threadId: s.thread.threadId, clientMutationId: newKey(), body: 'from A' }),
        reason: 'THREAD_NOT_FOUND',
      },
      { path: P.listMessages, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      { path: P.getMessage, req: (s) => ({ messageId: s.message.messageId }), reason: 'MESSAGE_NOT_FOUND' },
      { path: P.markRead, req: (s) => ({ messageIds: [s.message.messageId] }), reason: 'MESSAGE_NOT_FOUND' },
      { path: P.markThreadRead, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      { path: P.listReceipts, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      { path: P.watchThread, req: (s) => ({ threadId: s.thread.threadId }), reason: 'THREAD_NOT_FOUND' },
      { path: P.watchSession, req: (s) => ({ sessionId: s.session.sessionId }), reason: 'SESSION_NOT_FOUND' },
      { path: P.getSession, req: (s) => ({ sessionId: s.session.sessionId }), reason: 'SESSION_NOT_FOUND' },
      {
        path: P.updateSession,
        req: (s) => ({
          sessionId: s.session.sessionId,
          session: { ...s.session, scheduledEndAt: new Date(s.session.scheduledEndAt!.getTime() + MINUTE) },
          updateMask: ['scheduled_end_at'],
          etag: s.session.etag,
        }),
        reason: 'SESSION_NOT_FOUND',
      },
      {
        path: P.transition,
        req: (s) => ({ sessionId: s.session.sessionId, transition: SessionTransition.SESSION_TRANSITION_CANCEL }),
        reason: 'SESSION_NOT_FOUND',
      },
      {
        path: P.invite,
        req: (s) => ({
          sessionId: s.session.sessionId,
          participant: VirtualParticipant.fromPartial({
            userId: newUserId(),
            role: ParticipantRole.PARTICIPANT_ROLE_FAMILY,
          }),
        }),
        reason: 'SESSION_NOT_FOUND',
      },
      { path: P.join, req: (s) => ({ sessionId: s.session.sessionId }), reason: 'SESSION_NOT_FOUND' },
      { path: P.leave, req: (s) => ({ sessionId: s.session.sessionId }), reason: 'SESSION_NOT_FOUND' },
      {
        path: P.admit,
        req: (s) => ({ sessionId: s.session.sessionId, userId: s.patientB.userId }),
        reason: 'SESSION_NOT_FOUND',
      },
      { path: P.listSessionEvents, req: (s) => ({ sessionId: s.session.sessionId }), reason: 'SESSION_NOT_FOUND' },
      {
        path: P.getNotification,
        req: (s) => ({ notificationId: s.notification.notificationId }),
        reason: 'NOTIFICATION_NOT_FOUND',
      },
      // Creating in A while naming B's thread: the thread does not exist in A. (CreateSession and
      // RequestNotification gate their roles first, so only roles they allow are asked.)
      {
        path: P.createSession,
        req: (s) => ({
          threadId: s.thread.threadId,
          scheduledStartAt: new Date(Date.now() + 60 * MINUTE),
          scheduledEndAt: new Date(Date.now() + 90 * MINUTE),
          participants: [
            VirtualParticipant.fromPartial({
              userId: newUserId('doc'),
              role: ParticipantRole.PARTICIPANT_ROLE_PROVIDER,
            }),
          ],
        }),
        reason: 'THREAD_NOT_FOUND',
        callers: ['staff', 'service', 'provider'],
      },
      {
        path: P.requestNotification,
        req: (s) => ({
          recipientUserId: s.patientB.userId,
          dedupeKey: newKey(),
          templateKey: 'document_available',
          threadId: s.thread.threadId,
        }),
        reason: 'THREAD_NOT_FOUND',
        callers: ['service', 'provider'],
      },
    ];

    for (const c of CASES) {
      const name = c.path.split('/').pop()!;
      for (const who of c.callers ?? EVERYONE) {
        it(`${name} by ${who} of tenant A${who === 'provider' || who === 'patient' ? ` (B's ${who}'s subject)` : ''}: NOT_FOUND ${c.reason}`, async () => {
          expectRefused(await rpc.once(c.path, c.req(s), s.callersA[who].md), status.NOT_FOUND, c.reason, name);
        });
      }
    }

    it('stored nothing in either tenant, and B’s patient still sees B’s thread', async () => {
      expect(await tenantFingerprint(s.b), 'tenant B unchanged').to.deep.equal(beforeB);
      expect(await tenantFingerprint(s.a), 'tenant A unchanged').to.deep.equal(beforeA);
      const seen = await rpc.once(P.getThread, { threadId: s.thread.threadId }, s.patientB.md);
      expect(seen.ok).to.equal(true);
    });
  });

  describe('auth: no role escalation through other claims, metadata or request fields', function () {
    this.timeout(60_000);
    let s: TwoTenants;
    let otherThread: Thread;
    let snapshot: [Record<string, string>, Record<string, string>];
    before(async () => {
      s = await twoTenants();
      // In tenant B: a thread of B's provider without the patient (staff and service would see it).
      ({ thread: otherThread } = await rpc.unary<{ thread: Thread }>(
        P.createThread,
        { subject: 'not for the patient', participants: [participant('x-1', ParticipantRole.PARTICIPANT_ROLE_FAMILY)] },
        s.providerB.md,
      ));
      snapshot = await Promise.all([tenantFingerprint(s.a), tenantFingerprint(s.b)]);
    });

    /** Ways a patient of B dresses up its call as staff (or as tenant A). */
    const DISGUISES: { name: string; md: (s: TwoTenants) => Promise<Metadata> }[] = [
      {
        name: 'staff claims beside roles [patient] (role, scope, groups, realm_access, a namespaced roles claim)',
        md: async (s) =>
          bearer(
            await sign(
              edit(validClaims(s.b, s.patientB.userId), {
                roles: ['patient'],
                role: 'staff',
                scope: 'staff service',
                groups: ['staff'],
                realm_access: { roles: ['staff', 'service'] },
                'https://comms.example.com/roles': ['staff'],
              }),
              { header: { roles: ['staff'] } },
            ),
          ),
      },
      {
        name: 'role, roles, x-roles, x-user-id and x-tenant-id metadata beside a patient token',
        md: async (s) => {
          const md = s.patientB.md.clone();
          md.set('role', 'staff');
          md.set('roles', 'staff,service');
          md.set('x-roles', 'staff');
          md.set('x-user-id', s.providerB.userId);
          md.set('x-tenant-id', s.a);
          md.set('tenant', s.a);
          return md;
        },
      },
    ];

    for (const d of DISGUISES) {
      describe(d.name, () => {
        let md: Metadata;
        before(async () => (md = await d.md(s)));

        it('GetThread of a thread only staff would see: NOT_FOUND THREAD_NOT_FOUND', async () => {
          expectRefused(
            await rpc.once(P.getThread, { threadId: otherThread.threadId }, md),
            status.NOT_FOUND,
            'THREAD_NOT_FOUND',
            'GetThread',
          );
        });

        it('AddParticipant to its own thread (staff and providers only): PERMISSION_DENIED THREAD_PERMISSION_DENIED', async () => {
          const req = {
            threadId: s.thread.threadId,
            participant: participant('mallory', ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
          };
          expectRefused(
            await rpc.once(P.addParticipant, req, md),
            status.PERMISSION_DENIED,
            'THREAD_PERMISSION_DENIED',
            'AddParticipant',
          );
        });

        it('RequestNotification and CreateSession (role-gated): PERMISSION_DENIED ROLE_NOT_ALLOWED', async () => {
          const notify = {
            recipientUserId: s.providerB.userId,
            dedupeKey: newKey(),
            templateKey: 'document_available',
          };
          expectRefused(
            await rpc.once(P.requestNotification, notify, md),
            status.PERMISSION_DENIED,
            'ROLE_NOT_ALLOWED',
            'RequestNotification',
          );
          const session = {
            scheduledStartAt: new Date(Date.now() + 60 * MINUTE),
            scheduledEndAt: new Date(Date.now() + 90 * MINUTE),
          };
          expectRefused(
            await rpc.once(P.createSession, session, md),
            status.PERMISSION_DENIED,
            'ROLE_NOT_ALLOWED',
            'CreateSession',
          );
        });

        it('ListNotifications of the provider: PERMISSION_DENIED ROLE_NOT_ALLOWED', async () => {
          const req = { recipientUserId: s.providerB.userId };
          expectRefused(
            await rpc.once(P.listNotifications, req, md),
            status.PERMISSION_DENIED,
            'ROLE_NOT_ALLOWED',
            'ListNotifications',
          );
        });

        it('still acts in its own tenant, as itself: its own thread is there, tenant A’s header changed nothing', async () => {
          const own = await rpc.once(P.getThread, { threadId: s.thread.threadId }, md);
          expect(own.ok, 'the patient still reads its own thread of tenant B').to.equal(true);
          const listed = await rpc.once(P.listThreads, {}, md);
          expect(listed.ok).to.equal(true);
          const ids = (listed as { res: { threads: Thread[] } }).res.threads.map((t) => t.threadId);
          expect(ids).to.deep.equal([s.thread.threadId]);
        });
      });
    }

    /**
     * Request fields naming another user: allowed only for the roles the proto names; every other role
     * is PERMISSION_DENIED ROLE_NOT_ALLOWED. Each row is also asked with an allowed role (the control).
     */
    const NAMING: { path: string; req: (target: string) => Record<string, unknown>; allowed: Role[] }[] = [
      { path: P.listNotifications, req: (target) => ({ recipientUserId: target }), allowed: ['staff', 'service'] },
      { path: P.listSessions, req: (target) => ({ participantUserId: target }), allowed: ['staff', 'service'] },
      { path: P.getPreferences, req: (target) => ({ userId: target }), allowed: ['staff', 'service'] },
      {
        path: P.updatePreferences,
        req: (target) => ({
          userId: target,
          preferences: NotificationPreferences.fromPartial({
            quietHours: QuietHours.fromPartial({
              start: { hours: 22, minutes: 0 },
              end: { hours: 7, minutes: 0 },
              timeZone: 'Europe/Berlin',
            }),
          }),
          updateMask: ['quiet_hours'],
        }),
        allowed: ['service'],
      },
    ];
    const ROLES: Role[] = ['patient', 'provider', 'staff', 'service'];

    for (const n of NAMING) {
      const name = n.path.split('/').pop()!;
      for (const role of ROLES) {
        const allowed = n.allowed.includes(role);
        it(`${name} naming another user, as ${role}: ${allowed ? 'allowed' : 'PERMISSION_DENIED ROLE_NOT_ALLOWED, nothing stored'}`, async () => {
          const tenant = newTenant();
          const [caller, target] = await Promise.all([newUser(tenant, role), newUser(tenant, 'patient')]);
          const beforeCall = await tenantFingerprint(tenant);
          const outcome = await rpc.once(n.path, n.req(target.userId), caller.md);
          if (allowed) {
            expect(outcome.ok, `${name} as ${role}: ${outcome.ok ? '' : outcome.err.details}`).to.equal(true);
            return;
          }
          expectRefused(outcome, status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED', name);
          expect(await tenantFingerprint(tenant), 'nothing stored').to.deep.equal(beforeCall);
          // The caller's own id in the same field is not an escalation.
          const own = await rpc.once(n.path, n.req(caller.userId), caller.md);
          expect(own.ok, `${name} naming itself as ${role}: ${own.ok ? '' : own.err.details}`).to.equal(true);
        });
      }
    }

    it('stored nothing in tenant A or B', async () => {
      expect(await tenantFingerprint(s.a), 'tenant A').to.deep.equal(snapshot[0]);
      expect(await tenantFingerprint(s.b), 'tenant B').to.deep.equal(snapshot[1]);
    });
  });
});
