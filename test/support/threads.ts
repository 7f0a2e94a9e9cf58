import { randomBytes } from 'node:crypto';
import type { ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg from 'pg';
import {
  EscalationLevel,
  type Participant,
  ParticipantRole,
  type Thread,
  type ThreadServiceClient,
} from '../../gen/comms/v1/thread.js';
import type { Role } from '../../src/domain/actor.js';
import { signDevToken } from '../../src/infra/auth/dev-token.js';
import { bearer, call, errorDetails, expectError, newTenant, newUser, type TestUser } from './clients.js';
import { env } from './hooks.js';

/** A participant as a request names it (output-only fields left empty). */
export function participant(userId: string, role: ParticipantRole): Participant {
  return { userId, role, addedAt: undefined, addedBy: '' };
}

/** A fresh user id that no token carries (family members, interpreters, assignees). */
export function newUserId(prefix = 'x'): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/** Creates a thread as `creator` and returns it. */
export async function createThread(
  client: ThreadServiceClient,
  creator: TestUser,
  opts: { subject?: string; participants?: Participant[]; requestId?: string } = {},
): Promise<Thread> {
  const res = await call(
    client,
    client.createThread,
    { subject: opts.subject ?? 'Follow-up', participants: opts.participants ?? [], requestId: opts.requestId ?? '' },
    creator.md,
  );
  expect(res.thread, 'CreateThread returns the thread').to.not.equal(undefined);
  return res.thread!;
}

/** Reads a thread as `user`. */
export async function getThread(client: ThreadServiceClient, user: TestUser, threadId: string): Promise<Thread> {
  const res = await call(client, client.getThread, { threadId }, user.md);
  return res.thread!;
}

/**
 * One tenant with a thread created by a provider, with a patient and a family member taking part, and
 * the callers the refusal tests need: staff of the tenant (governs, not a participant), a provider and
 * a patient of the tenant who do not take part, and staff and service callers of another tenant.
 */
export interface ThreadScene {
  readonly tenantId: string;
  readonly provider: TestUser;
  readonly patient: TestUser;
  readonly familyUserId: string;
  readonly staff: TestUser;
  readonly service: TestUser;
  readonly outsiderProvider: TestUser;
  readonly outsiderPatient: TestUser;
  readonly foreignStaff: TestUser;
  readonly foreignService: TestUser;
  readonly thread: Thread;
}

/** Builds a fresh ThreadScene. */
export async function threadScene(client: ThreadServiceClient): Promise<ThreadScene> {
  const tenantId = newTenant();
  const foreignTenant = newTenant();
  const [provider, patient, staff, service, outsiderProvider, outsiderPatient, foreignStaff, foreignService] =
    await Promise.all([
      newUser(tenantId, 'provider'),
      newUser(tenantId, 'patient'),
      newUser(tenantId, 'staff'),
      newUser(tenantId, 'service'),
      newUser(tenantId, 'provider'),
      newUser(tenantId, 'patient'),
      newUser(foreignTenant, 'staff'),
      newUser(foreignTenant, 'service'),
    ]);
  const familyUserId = newUserId('family');
  const thread = await createThread(client, provider, {
    subject: 'Lab results',
    participants: [
      participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
      participant(familyUserId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
    ],
  });
  return {
    tenantId,
    provider,
    patient,
    familyUserId,
    staff,
    service,
    outsiderProvider,
    outsiderPatient,
    foreignStaff,
    foreignService,
    thread,
  };
}

/** Escalates a thread (URGENT by default) and returns it. */
export async function escalate(
  client: ThreadServiceClient,
  user: TestUser,
  threadId: string,
  opts: { level?: EscalationLevel; assigneeUserId?: string; reason?: string; etag?: string } = {},
): Promise<Thread> {
  const res = await call(
    client,
    client.escalateThread,
    {
      threadId,
      level: opts.level ?? EscalationLevel.ESCALATION_LEVEL_URGENT,
      assigneeUserId: opts.assigneeUserId ?? '',
      reason: opts.reason ?? 'needs a call back',
      etag: opts.etag ?? '',
    },
    user.md,
  );
  return res.thread!;
}

/** Archives a thread and returns it. */
export async function archive(client: ThreadServiceClient, user: TestUser, threadId: string, etag = '') {
  return (await call(client, client.archiveThread, { threadId, etag }, user.md)).thread!;
}

// ---- direct database access (the source of truth for "nothing changed") ----

let pool: pg.Pool | undefined;

/** A small pg pool on the test database; idle connections close quickly so the run can drop it. */
export function db(): pg.Pool {
  if (!pool) {
    pool = new pg.Pool({ connectionString: env.db.url, max: 4, idleTimeoutMillis: 200, allowExitOnIdle: true });
    // The run drops the database with FORCE at the end; an idle client terminated then is not an error.
    pool.on('error', () => {});
  }
  return pool;
}

/** A thread's stored row and participant rows, exactly as in the database. */
export interface StoredThread {
  readonly row: Record<string, unknown>;
  readonly participants: Record<string, unknown>[];
}

/** Reads a thread and its participants straight from the database. */
export async function storedThread(tenantId: string, threadId: string): Promise<StoredThread | undefined> {
  const { rows } = await db().query('select * from thread where tenant_id = $1 and thread_id = $2', [
    tenantId,
    threadId,
  ]);
  if (rows.length === 0) return undefined;
  const participants = await db().query(
    'select * from thread_participant where tenant_id = $1 and thread_id = $2 order by added_at, user_id',
    [tenantId, threadId],
  );
  return { row: rows[0] as Record<string, unknown>, participants: participants.rows as Record<string, unknown>[] };
}

/** Row counts of a tenant's threads and participants. */
export async function tenantRowCounts(tenantId: string): Promise<{ threads: number; participants: number }> {
  const { rows } = await db().query<{ threads: string; participants: string }>(
    `select (select count(*) from thread where tenant_id = $1) as threads,
            (select count(*) from thread_participant where tenant_id = $1) as participants`,
    [tenantId],
  );
  return { threads: Number(rows[0]!.threads), participants: Number(rows[0]!.participants) };
}

/**
 * Inserts `count` active threads of `tenantId` in which `userId` takes part, straight into the
 * database (fast fixtures for page-size limits). Their last activity lies in the past, one second apart.
 */
export async function seedThreads(tenantId: string, userId: string, count: number): Promise<void> {
  await db().query(
    `with t as (
       insert into thread (tenant_id, thread_id, subject, state, created_by, created_at, updated_at, last_activity_at)
       select $1, gen_random_uuid(), 'seeded ' || i, 'active', $2, at, at, at
         from generate_series(1, $3::int) as i,
              lateral (select date_trunc('milliseconds', now()) - i * interval '1 second' as at) as a
       returning tenant_id, thread_id, created_at)
     insert into thread_participant (tenant_id, thread_id, user_id, role, added_at, added_by)
     select tenant_id, thread_id, $2, 'provider', created_at, $2 from t`,
    [tenantId, userId, count],
  );
}

/**
 * Asserts that `attempt` fails with `code` and ErrorInfo `reason` and that the thread's rows are the
 * same before and after. Returns the decoded error.
 */
export async function expectRefusedUnchanged(
  tenantId: string,
  threadId: string,
  attempt: () => Promise<unknown>,
  code: number,
  reason: string,
) {
  const before = await storedThread(tenantId, threadId);
  const result = await expectError(attempt(), code, reason);
  expect(await storedThread(tenantId, threadId), 'thread rows unchanged').to.deep.equal(before);
  return result;
}

/** Asserts an error carries a BadRequest naming exactly `fields` (in any order). */
export function expectFieldViolations(err: ServiceError, fields: string[]): void {
  const { badRequest } = errorDetails(err);
  expect(badRequest, 'BadRequest detail present').to.not.equal(undefined);
  const named = badRequest!.fieldViolations.map((v) => v.field);
  expect(named).to.have.members(fields);
  for (const v of badRequest!.fieldViolations) expect(v.description, `description of ${v.field}`).to.not.equal('');
}

/** A caller with the same subject (user id) as `user` but a token of another tenant. */
export async function sameSubjectIn(tenantId: string, user: TestUser, ...roles: Role[]): Promise<TestUser> {
  const token = await signDevToken(env.config.jwt.secret!, {
    sub: user.userId,
    tenant: tenantId,
    roles: roles.length > 0 ? roles : user.roles,
    issuer: env.config.jwt.issuer,
    audience: env.config.jwt.audience,
  });
  return { tenantId, userId: user.userId, roles: roles.length > 0 ? roles : user.roles, token, md: bearer(token) };
}

/** Asserts `date` lies within [from, to] (server time of a call made between the two). */
export function expectWithin(date: Date | undefined, from: Date, to: Date, what = 'timestamp'): void {
  expect(date, `${what} set`).to.be.instanceOf(Date);
  expect(date!.getTime(), what).to.be.within(from.getTime(), to.getTime());
}

/**
 * Opens a transaction on its own connection that holds the thread's row lock (FOR UPDATE), so a
 * mutation of that thread stays in flight until `release()`. `waitForWaiter()` resolves once some
 * backend is blocked on a lock.
 */
export async function holdThreadLock(tenantId: string, threadId: string) {
  const locker = new pg.Client({ connectionString: env.db.url });
  await locker.connect();
  await locker.query('begin');
  await locker.query('select 1 from thread where tenant_id = $1 and thread_id = $2 for update', [tenantId, threadId]);
  const lockWaiters = async () => {
    const { rows } = await locker.query(
      "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
    );
    return rows[0].n as number;
  };
  return {
    lockWaiters,
    release: async () => {
      await locker.query('commit');
      await locker.end();
    },
  };
}

/**
 * A thread created by `creator` with one patient, whose row lock another connection now holds: a
 * mutation or send of it stays in flight until `lock.release()`.
 */
export async function threadWithHeldLock(client: ThreadServiceClient, creator: TestUser) {
  const thread = await createThread(client, creator, {
    participants: [participant('p1', ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
  });
  return { thread, lock: await holdThreadLock(creator.tenantId, thread.threadId) };
}
