import { randomUUID } from 'node:crypto';
import { credentials, type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import pg, { type DatabaseError } from 'pg';
import { PgBoss } from 'pg-boss';
import {
  GovernanceServiceClient,
  type LegalHold,
  type ListLegalHoldsRequest,
  type PlaceLegalHoldRequest,
  type RetentionPolicy,
} from '../../gen/comms/v1/governance.js';
import type { Message, MessageServiceClient } from '../../gen/comms/v1/message.js';
import { ParticipantRole, type ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import type { Permission } from '../../src/domain/actor.js';
import {
  call,
  callError,
  errorDetails,
  expectError,
  messageClient,
  newTenant,
  newUser,
  newUserWith,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { env, startTestApp } from '../support/hooks.js';
import { addMember, listMessages, seedMessages, sendMany, sleep, storedMessage } from '../support/messages.js';
import { createThread, db, expectFieldViolations, expectWithin, newUserId, participant } from '../support/threads.js';
import { until } from '../support/wait.js';

const DAY_MS = 86_400_000;
const { PARTICIPANT_ROLE_PATIENT, PARTICIPANT_ROLE_FAMILY } = ParticipantRole;

// ---- GovernanceService calls ----

/** A GovernanceService client on the shared test server. */
function governanceClient(address = env.address): GovernanceServiceClient {
  return new GovernanceServiceClient(address, credentials.createInsecure());
}

let gov: GovernanceServiceClient;
let threads: ThreadServiceClient;
let messages: MessageServiceClient;

async function getPolicy(user: TestUser): Promise<RetentionPolicy> {
  const res = await call(gov, gov.getRetentionPolicy, {}, user.md);
  expect(res.policy, 'GetRetentionPolicy returns a policy').to.not.equal(undefined);
  return res.policy!;
}

async function updatePolicy(user: TestUser, bodyRetentionDays: number, etag = ''): Promise<RetentionPolicy> {
  const res = await call(gov, gov.updateRetentionPolicy, { bodyRetentionDays, etag }, user.md);
  expect(res.policy, 'UpdateRetentionPolicy returns the policy').to.not.equal(undefined);
  return res.policy!;
}

type Target = PlaceLegalHoldRequest['target'];
const onThread = (threadId: string): Target => ({ $case: 'threadId', value: threadId });
const onPatient = (patientUserId: string): Target => ({ $case: 'patientUserId', value: patientUserId });

function placeHold(user: TestUser, target: Target, reason = 'litigation 2026-17') {
  return call(gov, gov.placeLegalHold, { target, reason }, user.md);
}

async function releaseHold(user: TestUser, holdId: string, reason = 'case closed'): Promise<LegalHold> {
  const res = await call(gov, gov.releaseLegalHold, { holdId, reason }, user.md);
  expect(res.hold, 'ReleaseLegalHold returns the hold').to.not.equal(undefined);
  return res.hold!;
}

function listHolds(user: TestUser, req: Partial<ListLegalHoldsRequest> = {}) {
  return call(
    gov,
    gov.listLegalHolds,
    { includeReleased: req.includeReleased ?? false, pageSize: req.pageSize ?? 0, pageToken: req.pageToken ?? '' },
    user.md,
  );
}

/** Every hold the caller lists, following next_page_token. */
async function walkHolds(user: TestUser, includeReleased: boolean, pageSize: number): Promise<LegalHold[][]> {
  const pages: LegalHold[][] = [];
  let pageToken = '';
  for (let i = 0; i < 1000; i++) {
    const res = await listHolds(user, { includeReleased, pageSize, pageToken });
    pages.push(res.holds);
    if (res.nextPageToken === '') return pages;
    pageToken = res.nextPageToken;
  }
  expect.fail('listing did not end');
}

/** Asserts a call failed with `code` and an ErrorInfo reason matching `reason`. */
async function expectCode(promise: Promise<unknown>, code: number, reason: RegExp) {
  const err = await callError(promise);
  expect(err.code, `code (message: ${err.details})`).to.equal(code);
  const details = errorDetails(err);
  expect(details.info?.reason).to.match(reason);
  return { err, ...details };
}

/** Asserts a call failed with INVALID_ARGUMENT naming `fields` (or at least one field when none given). */
async function expectInvalidArgument(promise: Promise<unknown>, what: string, fields?: string[]): Promise<void> {
  const err = await promise.then(
    (res) => expect.fail(`${what}: expected INVALID_ARGUMENT, got ${JSON.stringify(res).slice(0, 300)}`),
    (e: ServiceError) => e,
  );
  expect(err.code, `${what}: code (message: ${err.details})`).to.equal(status.INVALID_ARGUMENT);
  const { info, badRequest } = errorDetails(err);
  expect(info?.reason, what).to.equal('INVALID_ARGUMENT');
  if (fields) expectFieldViolations(err, fields);
  else expect(badRequest?.fieldViolations ?? [], `${what}: field violations`).to.have.length.greaterThan(0);
}

/** Asserts a staff caller without `permission` is refused with PERMISSION_REQUIRED naming it. */
async function expectPermissionRequired(promise: Promise<unknown>, permission: Permission): Promise<void> {
  const { info } = await expectError(promise, status.PERMISSION_DENIED, 'PERMISSION_REQUIRED');
  expect(info?.metadata.permission).to.equal(permission);
}

// ---- direct database access, as a chosen role ----

/** Runs `fn` on a fresh connection of the test database's (superuser) login, after `set role role`. */
async function withConnection<T>(role: string | null, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: env.db.url });
  await c.connect();
  try {
    if (role) await c.query(`set role ${role}`);
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Runs `sql` as `role` (null: the superuser login) and asserts it is refused with 42501 and `message`. */
async function expectRefused(role: string | null, sql: string, params: unknown[], message: RegExp): Promise<void> {
  const err = await withConnection(role, (c) =>
    c.query(sql, params).then(
      (res) =>
        expect.fail(`expected "${sql}" as ${role ?? 'superuser'} to be refused; it affected ${res.rowCount} rows`),
      (e: DatabaseError) => e,
    ),
  );
  expect(err.code, `${sql} as ${role ?? 'superuser'}: ${err.message}`).to.equal('42501');
  expect(err.message, `${sql} as ${role ?? 'superuser'}`).to.match(message);
}

/** A tenant's message rows, by message id. */
async function messageRows(tenantId: string): Promise<Map<string, Record<string, unknown>>> {
  const { rows } = await db().query('select * from message where tenant_id = $1', [tenantId]);
  return new Map(rows.map((r: Record<string, unknown>) => [r.message_id as string, r]));
}

/** A message row without the columns the purge changes. */
function unpurgedColumns(row: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(row).filter(([k]) => !['body', 'body_sha256', 'purged_at'].includes(k)));
}

/** How many message rows (of every tenant) carry exactly this purge time. */
async function purgedAt(now: Date): Promise<number> {
  const { rows } = await db().query<{ n: number }>('select count(*)::int as n from message where purged_at = $1', [
    now,
  ]);
  return rows[0]!.n;
}

/** A legal_hold row as stored. */
async function holdRow(tenantId: string, holdId: string): Promise<Record<string, unknown>> {
  const { rows } = await db().query('select * from legal_hold where tenant_id = $1 and hold_id = $2', [
    tenantId,
    holdId,
  ]);
  expect(rows, `hold ${holdId} stored`).to.have.length(1);
  return rows[0] as Record<string, unknown>;
}

// ---- checks on messages ----

/** Asserts `m` is the tombstone of `original`: same id, thread, sender, position; empty body; purge time set. */
function expectTombstone(m: Message | undefined, original: Message, what: string): void {
  expect(m, `${what}: returned`).to.not.equal(undefined);
  expect(
    {
      messageId: m!.messageId,
      threadId: m!.threadId,
      senderUserId: m!.senderUserId,
      sentAt: m!.sentAt,
      cursor: m!.cursor,
      body: m!.body,
    },
    what,
  ).to.deep.equal({
    messageId: original.messageId,
    threadId: original.threadId,
    senderUserId: original.senderUserId,
    sentAt: original.sentAt,
    cursor: original.cursor,
    body: '',
  });
  expect(m!.bodyPurgedAt, `${what}: body_purged_at`).to.be.instanceOf(Date);
  expect(m!.retraction, `${what}: not a retraction`).to.equal(undefined);
}

/** Asserts `m` is `original` exactly as sent (body kept, no purge time). */
function expectIntact(m: Message | undefined, original: Message, what: string): void {
  expect(m, `${what}: returned`).to.not.equal(undefined);
  expect(m!.body, `${what}: body`).to.equal(original.body);
  expect(m!.bodyPurgedAt, `${what}: body_purged_at`).to.equal(undefined);
  expect(m!.messageId, what).to.equal(original.messageId);
}

async function getMessage(user: TestUser, messageId: string): Promise<Message | undefined> {
  return (await call(messages, messages.getMessage, { messageId }, user.md)).message;
}

/** The thread's messages as `user` lists them (one page; the fixtures are small), by id. */
async function listed(user: TestUser, threadId: string): Promise<Map<string, Message>> {
  const res = await listMessages(messages, user, threadId, { pageSize: 100 });
  expect(res.nextPageToken, 'one page').to.equal('');
  return new Map(res.messages.map((m) => [m.messageId, m]));
}

/** A fresh tenant with a provider, a patient and staff allowed to manage retention and holds. */
async function governedTenant() {
  const tenant = newTenant();
  const [provider, patient, staff] = await Promise.all([
    newUser(tenant, 'provider'),
    newUser(tenant, 'patient'),
    newUserWith(tenant, ['retention.manage', 'holds.manage'], 'staff'),
  ]);
  return { tenant, provider, patient, staff };
}

/** A thread the provider created with `patientUserId` taking part as `role`, and `count` messages in it. */
async function threadWithMessages(
  provider: TestUser,
  patientUserId: string,
  count: number,
  role = PARTICIPANT_ROLE_PATIENT,
) {
  const thread = await createThread(threads, provider, { participants: [participant(patientUserId, role)] });
  const sent = await sendMany(messages, provider, thread.threadId, count, `thread ${thread.threadId.slice(0, 8)}`);
  return { thread, sent };
}

/** A tenant with a 1-day policy and a thread with two messages seeded three days ago (due now). */
async function dueFixture() {
  const { tenant, provider, patient, staff } = await governedTenant();
  await updatePolicy(staff, 1);
  const thread = await createThread(threads, provider, {
    participants: [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)],
  });
  const old = Date.now() - 3 * DAY_MS;
  const seeded = await seedMessages(tenant, thread.threadId, provider.userId, [new Date(old), new Date(old + 1000)]);
  return { tenant, provider, thread, ids: seeded.map((m) => m.messageId) };
}

describe('Retention and legal holds (GovernanceService, purge, database roles)', () => {
  before(() => {
    gov = governanceClient();
    threads = threadClient();
    messages = messageClient();
  });
  after(() => {
    for (const c of [gov, threads, messages]) c.close();
  });

  describe('retention policy RPCs', () => {
    it('a tenant that never set a policy keeps bodies for ever: 0 days, empty etag', async () => {
      const tenant = newTenant();
      const [staff, service] = await Promise.all([
        newUserWith(tenant, ['retention.manage'], 'staff'),
        newUser(tenant, 'service'),
      ]);
      for (const user of [staff, service]) {
        const policy = await getPolicy(user);
        expect(policy.bodyRetentionDays, user.roles.join()).to.equal(0);
        expect(policy.etag, user.roles.join()).to.equal('');
      }
    });

    it('staff with retention.manage set 1 day; the policy reads back with etag, author and time', async () => {
      const tenant = newTenant();
      const [staff, service] = await Promise.all([
        newUserWith(tenant, ['retention.manage'], 'staff'),
        newUser(tenant, 'service'),
      ]);
      const from = new Date();
      const set = await updatePolicy(staff, 1);
      const to = new Date();
      expect(set.bodyRetentionDays).to.equal(1);
      expect(set.etag, 'etag').to.not.equal('');
      expect(set.updatedByUserId).to.equal(staff.userId);
      expectWithin(set.updateTime, from, to, 'update_time');
      expect(await getPolicy(staff), 'read by staff').to.deep.equal(set);
      expect(await getPolicy(service), 'read by service').to.deep.equal(set);
      const { rows } = await db().query('select body_retention_days from retention_policy where tenant_id = $1', [
        tenant,
      ]);
      expect(rows).to.deep.equal([{ body_retention_days: 1 }]);
    });

    it('optimistic concurrency: the current etag is taken, a stale one is ABORTED ETAG_MISMATCH', async () => {
      const tenant = newTenant();
      const staff = await newUserWith(tenant, ['retention.manage'], 'staff');
      const first = await updatePolicy(staff, 1);
      const second = await updatePolicy(staff, 7, first.etag);
      expect(second.bodyRetentionDays).to.equal(7);
      expect(second.etag, 'a new etag').to.not.equal(first.etag);
      await expectError(
        call(gov, gov.updateRetentionPolicy, { bodyRetentionDays: 90, etag: first.etag }, staff.md),
        status.ABORTED,
        'ETAG_MISMATCH',
      );
      expect(await getPolicy(staff), 'unchanged by the stale update').to.deep.equal(second);
      // An empty etag overwrites whatever is set.
      const third = await updatePolicy(staff, 365);
      expect(third.bodyRetentionDays).to.equal(365);
      expect(third.etag).to.not.equal(second.etag);
    });

    it('an etag this policy never had is ABORTED ETAG_MISMATCH too (the proto: any non-empty etag not the current one)', async () => {
      const tenant = newTenant();
      const staff = await newUserWith(tenant, ['retention.manage'], 'staff');
      for (const etag of ['made-up', 'W/"1"']) {
        await expectError(
          call(gov, gov.updateRetentionPolicy, { bodyRetentionDays: 30, etag }, staff.md),
          status.ABORTED,
          'ETAG_MISMATCH',
        ).catch((e: Error) => expect.fail(`etag ${etag}: ${e.message}`));
      }
      expect((await getPolicy(staff)).etag, 'nothing set by the refused calls').to.equal('');
    });

    it('takes 0 (for ever) and 5479 days; refuses -1 and 5480 with INVALID_ARGUMENT and changes nothing', async () => {
      const tenant = newTenant();
      const staff = await newUserWith(tenant, ['retention.manage'], 'staff');
      expect((await updatePolicy(staff, 5479)).bodyRetentionDays).to.equal(5479);
      const kept = await updatePolicy(staff, 0);
      expect(kept.bodyRetentionDays, 'for ever').to.equal(0);
      expect(kept.etag, 'a set policy has an etag').to.not.equal('');
      for (const days of [-1, 5480, 100_000]) {
        await expectInvalidArgument(
          call(gov, gov.updateRetentionPolicy, { bodyRetentionDays: days, etag: '' }, staff.md),
          `${days} days`,
          ['body_retention_days'],
        );
      }
      expect(await getPolicy(staff), 'unchanged').to.deep.equal(kept);
    });

    it('refuses staff without retention.manage (PERMISSION_REQUIRED) and other roles (ROLE_NOT_ALLOWED)', async () => {
      const tenant = newTenant();
      const [manager, noPermission, patient, provider, service] = await Promise.all([
        newUserWith(tenant, ['retention.manage'], 'staff'),
        newUserWith(tenant, ['holds.manage', 'audit.read'], 'staff'),
        newUserWith(tenant, ['retention.manage'], 'patient'),
        newUserWith(tenant, ['retention.manage'], 'provider'),
        newUser(tenant, 'service'),
      ]);
      const before = await updatePolicy(manager, 30);
      const update = (u: TestUser) => call(gov, gov.updateRetentionPolicy, { bodyRetentionDays: 1, etag: '' }, u.md);
      const get = (u: TestUser) => call(gov, gov.getRetentionPolicy, {}, u.md);
      await expectPermissionRequired(update(noPermission), 'retention.manage');
      await expectPermissionRequired(get(noPermission), 'retention.manage');
      for (const u of [patient, provider]) {
        await expectError(update(u), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
        await expectError(get(u), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      }
      // Service callers may read the policy, not set it.
      await expectError(update(service), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      expect(await getPolicy(service)).to.deep.equal(before);
      expect(await getPolicy(manager), 'unchanged').to.deep.equal(before);
    });

    it('is per tenant: setting tenant A’s policy leaves tenant B’s default, and B’s etag does not apply to A', async () => {
      const [a, b] = [newTenant(), newTenant()];
      const [staffA, staffB] = await Promise.all([
        newUserWith(a, ['retention.manage'], 'staff'),
        newUserWith(b, ['retention.manage'], 'staff'),
      ]);
      const setA = await updatePolicy(staffA, 1);
      const readB = await getPolicy(staffB);
      expect(readB.bodyRetentionDays, 'B keeps for ever').to.equal(0);
      expect(readB.etag, 'B never set one').to.equal('');
      await updatePolicy(staffB, 30);
      await updatePolicy(staffB, 20);
      const setB = await updatePolicy(staffB, 10);
      expect(setB.etag, 'B’s etag moved on; A’s did not').to.not.equal(setA.etag);
      expect(await getPolicy(staffA), 'A unchanged by B').to.deep.equal(setA);
      await expectError(
        call(gov, gov.updateRetentionPolicy, { bodyRetentionDays: 99, etag: setB.etag }, staffA.md),
        status.ABORTED,
        'ETAG_MISMATCH',
      );
      expect((await getPolicy(staffB)).bodyRetentionDays).to.equal(10);
    });
  });

  describe('legal hold RPCs', () => {
    it('places a hold on a thread: the hold records who and when; placing it again replays it', async () => {
      const { tenant, provider, patient, staff } = await governedTenant();
      const thread = await createThread(threads, provider, {
        participants: [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)],
      });
      const from = new Date();
      const placed = await placeHold(staff, onThread(thread.threadId), 'subpoena 17');
      const to = new Date();
      expect(placed.replayed).to.equal(false);
      const hold = placed.hold!;
      expect(hold.holdId).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(hold.target).to.deep.equal(onThread(thread.threadId));
      expect(hold.reason).to.equal('subpoena 17');
      expect(hold.placedByUserId).to.equal(staff.userId);
      expectWithin(hold.placeTime, from, to, 'place_time');
      expect([hold.releasedByUserId, hold.releaseTime, hold.releaseReason], 'not released').to.deep.equal([
        '',
        undefined,
        '',
      ]);

      const again = await placeHold(staff, onThread(thread.threadId), 'another reason');
      expect(again.replayed, 'replayed').to.equal(true);
      expect(again.hold, 'the same hold, unchanged').to.deep.equal(hold);
      const { rows } = await db().query('select hold_id from legal_hold where tenant_id = $1', [tenant]);
      expect(rows, 'one row').to.deep.equal([{ hold_id: hold.holdId }]);
    });

    it('places a hold on a patient (any user id), idempotent per patient', async () => {
      const { tenant, patient, staff } = await governedTenant();
      const placed = await placeHold(staff, onPatient(patient.userId));
      expect(placed.replayed).to.equal(false);
      expect(placed.hold!.target).to.deep.equal(onPatient(patient.userId));
      expect(placed.hold!.placedByUserId).to.equal(staff.userId);
      const again = await placeHold(staff, onPatient(patient.userId));
      expect([again.replayed, again.hold!.holdId]).to.deep.equal([true, placed.hold!.holdId]);
      // A user id no token carried yet is a target too.
      const unknownPatient = newUserId('patient');
      const other = await placeHold(staff, onPatient(unknownPatient));
      expect(other.replayed).to.equal(false);
      expect(other.hold!.holdId).to.not.equal(placed.hold!.holdId);
      const { rows } = await db().query<{ n: number }>(
        'select count(*)::int as n from legal_hold where tenant_id = $1',
        [tenant],
      );
      expect(rows[0]!.n).to.equal(2);
    });

    it('refuses an unknown thread with NOT_FOUND and bad input with INVALID_ARGUMENT, storing nothing', async () => {
      const { tenant, provider, staff } = await governedTenant();
      const thread = await createThread(threads, provider);
      await expectError(placeHold(staff, onThread(randomUUID())), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      await expectInvalidArgument(placeHold(staff, onThread(thread.threadId), ''), 'empty reason', ['reason']);
      await expectInvalidArgument(placeHold(staff, onThread(thread.threadId), 'x'.repeat(501)), '501-char reason', [
        'reason',
      ]);
      await expectInvalidArgument(placeHold(staff, undefined), 'no target');
      await expectInvalidArgument(placeHold(staff, onThread('')), 'empty thread_id');
      await expectInvalidArgument(placeHold(staff, onThread('not-a-uuid')), 'malformed thread_id', ['thread_id']);
      await expectInvalidArgument(placeHold(staff, onPatient('')), 'empty patient_user_id');
      await expectInvalidArgument(placeHold(staff, onPatient('p'.repeat(129))), '129-char patient_user_id', [
        'patient_user_id',
      ]);
      const { rows } = await db().query<{ n: number }>(
        'select count(*)::int as n from legal_hold where tenant_id = $1',
        [tenant],
      );
      expect(rows[0]!.n, 'no hold stored').to.equal(0);
    });

    it('releases a hold (who, when, why); releasing again returns it unchanged; the target can be held anew', async () => {
      const { tenant, provider, staff } = await governedTenant();
      const other = await newUserWith(tenant, ['holds.manage'], 'staff');
      const thread = await createThread(threads, provider);
      const hold = (await placeHold(staff, onThread(thread.threadId))).hold!;
      const from = new Date();
      const released = await releaseHold(other, hold.holdId, 'matter settled');
      const to = new Date();
      expect(released).to.deep.include({
        holdId: hold.holdId,
        target: hold.target,
        reason: hold.reason,
        placedByUserId: staff.userId,
        releasedByUserId: other.userId,
        releaseReason: 'matter settled',
      });
      expect(released.placeTime).to.deep.equal(hold.placeTime);
      expectWithin(released.releaseTime, from, to, 'release_time');

      expect(await releaseHold(staff, hold.holdId, 'a different reason'), 'unchanged').to.deep.equal(released);
      const row = await holdRow(tenant, hold.holdId);
      expect([row.released_by, row.release_reason]).to.deep.equal([other.userId, 'matter settled']);

      const anew = await placeHold(staff, onThread(thread.threadId));
      expect(anew.replayed, 'a new hold').to.equal(false);
      expect(anew.hold!.holdId).to.not.equal(hold.holdId);
    });

    it('ReleaseLegalHold refuses bad input with INVALID_ARGUMENT and an unknown hold with NOT_FOUND', async () => {
      const { tenant, staff } = await governedTenant();
      const hold = (await placeHold(staff, onPatient(newUserId('p')))).hold!;
      const release = (holdId: string, reason: string) => call(gov, gov.releaseLegalHold, { holdId, reason }, staff.md);
      await expectInvalidArgument(release(hold.holdId, ''), 'empty reason', ['reason']);
      await expectInvalidArgument(release(hold.holdId, 'r'.repeat(501)), '501-char reason', ['reason']);
      await expectInvalidArgument(release('', 'why'), 'empty hold_id', ['hold_id']);
      await expectInvalidArgument(release('nope', 'why'), 'malformed hold_id', ['hold_id']);
      await expectCode(release(randomUUID(), 'why'), status.NOT_FOUND, /NOT_FOUND$/);
      expect((await holdRow(tenant, hold.holdId)).released_at, 'still active').to.equal(null);
    });

    it('ListLegalHolds: active holds newest first, include_released adds the released ones, paginated', async () => {
      const { staff } = await governedTenant();
      const placed: LegalHold[] = [];
      for (let i = 0; i < 5; i++) {
        placed.push((await placeHold(staff, onPatient(newUserId(`p${i}`)), `reason ${i}`)).hold!);
        await sleep(3);
      }
      const released = [await releaseHold(staff, placed[1]!.holdId), await releaseHold(staff, placed[3]!.holdId)];
      const newestFirst = [...placed].reverse().map((h) => h.holdId);
      const releasedIds = new Set(released.map((h) => h.holdId));

      const activePages = await walkHolds(staff, false, 2);
      expect(
        activePages.map((p) => p.length),
        'pages of 2',
      ).to.deep.equal([2, 1]);
      const active = activePages.flat();
      expect(active.map((h) => h.holdId)).to.deep.equal(newestFirst.filter((id) => !releasedIds.has(id)));
      expect(active.every((h) => h.releaseTime === undefined)).to.equal(true);

      const allPages = await walkHolds(staff, true, 2);
      expect(allPages.map((p) => p.length)).to.deep.equal([2, 2, 1]);
      const all = allPages.flat();
      expect(all.map((h) => h.holdId)).to.deep.equal(newestFirst);
      expect(
        all.find((h) => h.holdId === placed[1]!.holdId),
        'released hold listed as released',
      ).to.deep.equal(released[0]);

      const whole = await listHolds(staff, { includeReleased: true });
      expect(
        whole.holds.map((h) => h.holdId),
        'default page size',
      ).to.deep.equal(newestFirst);
      expect(whole.nextPageToken).to.equal('');
      await expectInvalidArgument(listHolds(staff, { pageSize: -1 }), 'negative page size', ['page_size']);
    });

    it('refuses staff without holds.manage (PERMISSION_REQUIRED) and every other role (ROLE_NOT_ALLOWED)', async () => {
      const { tenant, provider, staff } = await governedTenant();
      const thread = await createThread(threads, provider);
      const hold = (await placeHold(staff, onPatient(newUserId('p')))).hold!;
      const [noPermission, patient, prov, service] = await Promise.all([
        newUserWith(tenant, ['retention.manage', 'audit.read', 'records.export', 'messages.moderate'], 'staff'),
        newUserWith(tenant, ['holds.manage'], 'patient'),
        newUserWith(tenant, ['holds.manage'], 'provider'),
        newUserWith(tenant, ['holds.manage'], 'service'),
      ]);
      const attempts: [string, (u: TestUser) => Promise<unknown>][] = [
        ['place', (u) => placeHold(u, onThread(thread.threadId))],
        ['release', (u) => call(gov, gov.releaseLegalHold, { holdId: hold.holdId, reason: 'why' }, u.md)],
        ['list', (u) => listHolds(u)],
      ];
      for (const [what, attempt] of attempts) {
        await expectPermissionRequired(attempt(noPermission), 'holds.manage').catch((e: Error) =>
          expect.fail(`${what}: ${e.message}`),
        );
        for (const u of [patient, prov, service]) {
          await expectError(attempt(u), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED').catch((e: Error) =>
            expect.fail(`${u.roles.join()} ${what}: ${e.message}`),
          );
        }
      }
      const { rows } = await db().query('select hold_id, released_at from legal_hold where tenant_id = $1', [tenant]);
      expect(rows, 'nothing changed').to.deep.equal([{ hold_id: hold.holdId, released_at: null }]);
    });

    it('is tenant-isolated: another tenant cannot see, release or place holds on this tenant’s things', async () => {
      const a = await governedTenant();
      const b = await governedTenant();
      const thread = await createThread(threads, a.provider);
      const holdA = (await placeHold(a.staff, onThread(thread.threadId))).hold!;
      const patientHoldA = (await placeHold(a.staff, onPatient(a.patient.userId))).hold!;

      await expectCode(
        call(gov, gov.releaseLegalHold, { holdId: holdA.holdId, reason: 'not yours' }, b.staff.md),
        status.NOT_FOUND,
        /NOT_FOUND$/,
      );
      await expectError(placeHold(b.staff, onThread(thread.threadId)), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      expect((await listHolds(b.staff, { includeReleased: true })).holds, 'B lists nothing of A').to.deep.equal([]);
      // The same patient id in tenant B is another target: a new hold, not A's replayed.
      const patientHoldB = await placeHold(b.staff, onPatient(a.patient.userId));
      expect(patientHoldB.replayed).to.equal(false);
      expect(patientHoldB.hold!.holdId).to.not.equal(patientHoldA.holdId);
      expect((await listHolds(b.staff)).holds.map((h) => h.holdId)).to.deep.equal([patientHoldB.hold!.holdId]);
      expect((await holdRow(a.tenant, holdA.holdId)).released_at, 'A’s hold still active').to.equal(null);
      expect((await listHolds(a.staff)).holds.map((h) => h.holdId)).to.have.members([
        holdA.holdId,
        patientHoldA.holdId,
      ]);
    });

    it('in SQL a hold row is never deleted, and once released it cannot change again', async () => {
      const { tenant, staff } = await governedTenant();
      const active = (await placeHold(staff, onPatient(newUserId('p')))).hold!;
      const released = (await placeHold(staff, onPatient(newUserId('p')))).hold!;
      await releaseHold(staff, released.holdId);
      const where = 'where tenant_id = $1 and hold_id = $2';
      const before = [await holdRow(tenant, active.holdId), await holdRow(tenant, released.holdId)];

      for (const role of [null, 'comms_app']) {
        await expectRefused(role, `delete from legal_hold ${where}`, [tenant, active.holdId], /./);
        await expectRefused(role, `delete from legal_hold ${where}`, [tenant, released.holdId], /./);
      }
      await expectRefused(null, 'truncate legal_hold', [], /./);
      // Superuser or not, a released hold keeps its release, and an active one its target and reason.
      await expectRefused(
        null,
        `update legal_hold set release_reason = 'rewritten' ${where}`,
        [tenant, released.holdId],
        /released, once/,
      );
      await expectRefused(
        null,
        `update legal_hold set released_at = null, released_by = null, release_reason = null ${where}`,
        [tenant, released.holdId],
        /released, once/,
      );
      await expectRefused(null, `update legal_hold set reason = 'rewritten' ${where}`, [tenant, active.holdId], /once/);
      expect([await holdRow(tenant, active.holdId), await holdRow(tenant, released.holdId)]).to.deep.equal(before);
    });
  });

  describe('the purge', () => {
    it('purges bodies past retention to tombstones, skipping held threads, held patients’ threads and other tenants', async () => {
      const { tenant, provider, patient, staff } = await governedTenant();
      const heldPatient = await newUser(tenant, 'patient');
      expect((await updatePolicy(staff, 1)).bodyRetentionDays).to.equal(1);

      const t1 = await threadWithMessages(provider, patient.userId, 3); // no hold: purged
      const t2 = await threadWithMessages(provider, patient.userId, 2); // thread hold
      const t3 = await threadWithMessages(provider, heldPatient.userId, 2); // held patient takes part as PATIENT
      // The held patient only as a family member: the patient hold does not cover this thread.
      const t5 = await threadWithMessages(provider, heldPatient.userId, 2, PARTICIPANT_ROLE_FAMILY);
      const threadHold = (await placeHold(staff, onThread(t2.thread.threadId))).hold!;
      await placeHold(staff, onPatient(heldPatient.userId));

      // Tenant B has no policy; tenant C set one and went back to "for ever".
      const b = await governedTenant();
      const t4 = await threadWithMessages(b.provider, b.patient.userId, 2);
      const c = await governedTenant();
      await updatePolicy(c.staff, 1);
      await updatePolicy(c.staff, 0);
      const t6 = await threadWithMessages(c.provider, c.patient.userId, 2);

      const rowsBefore = await messageRows(tenant);
      const now = new Date(Date.now() + 2 * DAY_MS);
      const n = await env.app.retention.purge(now);
      expect(n, 'the number purged').to.equal(await purgedAt(now));
      expect(n, 'at least this tenant’s five due messages').to.be.at.least(5);

      // Tombstones, as readers see them (participant and patient alike) and as stored.
      const purged = [...t1.sent, ...t5.sent];
      const rowsAfter = await messageRows(tenant);
      for (const reader of [provider, patient]) {
        const list = await listed(reader, t1.thread.threadId);
        expect([...list.keys()], 'same ids, same order').to.deep.equal(t1.sent.map((m) => m.messageId));
        for (const m of t1.sent) {
          expectTombstone(list.get(m.messageId), m, `ListMessages ${m.body}`);
          expectTombstone(await getMessage(reader, m.messageId), m, `GetMessage ${m.body}`);
        }
      }
      for (const m of t5.sent) expectTombstone(await getMessage(provider, m.messageId), m, `family thread ${m.body}`);
      for (const m of purged) {
        const row = rowsAfter.get(m.messageId)!;
        expect(row.body, 'SQL body').to.equal(null);
        expect(row.body_sha256, 'SQL body_sha256').to.equal(null);
        expect(row.purged_at, 'SQL purged_at').to.deep.equal(now);
        expect((await getMessage(provider, m.messageId))!.bodyPurgedAt, 'body_purged_at').to.deep.equal(now);
        expect(unpurgedColumns(row), 'the rest of the row unchanged').to.deep.equal(
          unpurgedColumns(rowsBefore.get(m.messageId)!),
        );
      }

      // Held and policy-less messages are untouched.
      for (const m of [...t2.sent, ...t3.sent]) {
        expectIntact(await getMessage(provider, m.messageId), m, `held ${m.body}`);
        expect(rowsAfter.get(m.messageId), `held row ${m.body}`).to.deep.equal(rowsBefore.get(m.messageId));
      }
      for (const [user, t] of [
        [b.provider, t4],
        [c.provider, t6],
      ] as const) {
        const list = await listed(user, t.thread.threadId);
        for (const m of t.sent) expectIntact(list.get(m.messageId), m, `other tenant ${m.body}`);
        for (const m of t.sent) expect((await storedMessage(user.tenantId, m.messageId)).purged_at).to.equal(null);
      }

      expect(await env.app.retention.purge(now), 'a second purge finds nothing').to.equal(0);

      // Released: the thread's messages are purged by the next run; the patient hold still holds.
      await releaseHold(staff, threadHold.holdId);
      const later = new Date(now.getTime() + 1000);
      const n2 = await env.app.retention.purge(later);
      expect(n2).to.equal(await purgedAt(later));
      expect(n2, 'the released thread’s two messages').to.be.at.least(2);
      for (const m of t2.sent) expectTombstone(await getMessage(provider, m.messageId), m, `released ${m.body}`);
      for (const m of t3.sent) expectIntact(await getMessage(provider, m.messageId), m, `still held ${m.body}`);
      expect(await env.app.retention.purge(later)).to.equal(0);
    });

    it('a patient hold covers a thread the patient joins after the hold was placed', async () => {
      const { provider, patient, staff } = await governedTenant();
      await updatePolicy(staff, 1);
      const heldPatient = newUserId('held');
      await placeHold(staff, onPatient(heldPatient));
      const { thread, sent } = await threadWithMessages(provider, patient.userId, 2);
      await addMember(threads, provider, thread.threadId, heldPatient, PARTICIPANT_ROLE_PATIENT);
      const now = new Date(Date.now() + 2 * DAY_MS);
      await env.app.retention.purge(now);
      const list = await listed(provider, thread.threadId);
      for (const m of sent) expectIntact(list.get(m.messageId), m, `held by the patient who joined: ${m.body}`);
    });

    it('a hold placed while a purge waits to start is honoured by that purge', async () => {
      const { tenant, provider, patient, staff } = await governedTenant();
      await updatePolicy(staff, 1);
      const { thread, sent } = await threadWithMessages(provider, patient.userId, 2);
      const control = await threadWithMessages(provider, patient.userId, 1);
      // A hold being placed: its transaction is open (inserted, not committed) when the purge starts.
      await withConnection(null, async (placing) => {
        await placing.query('begin');
        await placing.query(
          `insert into legal_hold (tenant_id, hold_id, thread_id, reason, placed_by, placed_at)
           values ($1, $2, $3, 'placed during a purge', $4, now())`,
          [tenant, randomUUID(), thread.threadId, staff.userId],
        );
        const now = new Date(Date.now() + 2 * DAY_MS);
        const purge = env.app.retention.purge(now);
        purge.catch(() => {});
        // The purge waits for the hold's transaction (had it run now, it would not have seen the hold).
        const state = await until(
          'the purge waits for the hold being placed, or ends',
          async () => {
            const { rows } = await db().query<{ n: number }>(
              `select count(*)::int as n from pg_stat_activity
                where application_name = 'comms-retention' and wait_event_type = 'Lock'`,
            );
            if (rows[0]!.n > 0) return 'waiting';
            return Promise.race([purge.then(() => 'ran without waiting'), sleep(20).then(() => undefined)]);
          },
          10_000,
        );
        await placing.query('commit');
        await purge;
        expect(state, 'the purge waited for the hold being placed').to.equal('waiting');
        const list = await listed(provider, thread.threadId);
        for (const m of sent) expectIntact(list.get(m.messageId), m, `held while purging: ${m.body}`);
        expectTombstone(await getMessage(provider, control.sent[0]!.messageId), control.sent[0]!, 'unheld thread');
      });
    });

    it('keeps bodies younger than the retention period', async () => {
      const { provider, patient, staff } = await governedTenant();
      await updatePolicy(staff, 1);
      const { thread, sent: old } = await threadWithMessages(provider, patient.userId, 2);
      await sleep(50);
      const cut = Date.now();
      await sleep(50);
      const recent = await sendMany(messages, provider, thread.threadId, 2, 'recent');
      expect(recent[0]!.sentAt!.getTime(), 'fixture: sent after the cut').to.be.greaterThan(cut);
      expect(old[1]!.sentAt!.getTime(), 'fixture: sent before the cut').to.be.lessThan(cut);

      const now = new Date(cut + DAY_MS);
      const n = await env.app.retention.purge(now);
      expect(n).to.equal(await purgedAt(now));
      const list = await listed(provider, thread.threadId);
      for (const m of old) expectTombstone(list.get(m.messageId), m, `older than a day: ${m.body}`);
      for (const m of recent) expectIntact(list.get(m.messageId), m, `younger than a day: ${m.body}`);
    });

    it('purges more than one batch in one run (RETENTION_PURGE_BATCH) until nothing is due', async () => {
      const app = await startTestApp({ RETENTION_PURGE: 'false', RETENTION_PURGE_BATCH: '2' });
      try {
        const { tenant, provider, patient, staff } = await governedTenant();
        await updatePolicy(staff, 1);
        const thread = await createThread(threads, provider, {
          participants: [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)],
        });
        const old = Date.now() - 3 * DAY_MS;
        await seedMessages(
          tenant,
          thread.threadId,
          provider.userId,
          Array.from({ length: 7 }, (_, i) => new Date(old + i * 1000)),
        );
        const now = new Date(Date.now() + 2000);
        const n = await app.retention.purge(now);
        expect(n).to.equal(await purgedAt(now));
        const { rows } = await db().query<{ n: number }>(
          'select count(*)::int as n from message where tenant_id = $1 and purged_at is null',
          [tenant],
        );
        expect(rows[0]!.n, 'nothing of the tenant left unpurged').to.equal(0);
      } finally {
        await app.shutdown();
      }
    });
  });

  describe('database roles', () => {
    it('the service’s pool runs as comms_app', async () => {
      const rows = (await env.app.orm.em.fork().getConnection().execute('select current_user as u')) as { u: string }[];
      expect(rows).to.deep.equal([{ u: 'comms_app' }]);
    });

    it('comms_app may not run the purge function, nor update or delete messages', async () => {
      const { tenant, ids } = await dueFixture();
      const before = await messageRows(tenant);
      await expectRefused(
        'comms_app',
        'select comms_purge_bodies($1, now(), 10)',
        [tenant],
        /permission denied for function/,
      );
      await expectRefused(
        'comms_app',
        'select * from comms_purge_bodies($1, now(), 10)',
        [tenant],
        /permission denied/,
      );
      await expectRefused(
        'comms_app',
        'update message set body = null, body_sha256 = null, purged_at = now() where tenant_id = $1 and message_id = $2',
        [tenant, ids[0]],
        /permission denied for table message/,
      );
      await expectRefused(
        'comms_app',
        'delete from message where tenant_id = $1 and message_id = $2',
        [tenant, ids[0]],
        /permission denied for table message/,
      );
      await expectRefused('comms_app', 'truncate message', [], /permission denied|append-only/);
      expect(await messageRows(tenant), 'nothing changed').to.deep.equal(before);
    });

    it('comms_retention runs the purge function (it purges what is due) but cannot touch a message directly', async () => {
      const { tenant, provider, ids } = await dueFixture();
      await expectRefused(
        'comms_retention',
        "update message set body = 'x' where tenant_id = $1 and message_id = $2",
        [tenant, ids[0]],
        /permission denied for table message/,
      );
      await expectRefused(
        'comms_retention',
        'update message set body = null, body_sha256 = null, purged_at = now() where tenant_id = $1 and message_id = $2',
        [tenant, ids[0]],
        /permission denied for table message/,
      );
      await expectRefused(
        'comms_retention',
        'delete from message where tenant_id = $1',
        [tenant],
        /permission denied for table message/,
      );
      const rows = await withConnection('comms_retention', async (c) => {
        expect((await c.query('select current_user as u')).rows).to.deep.equal([{ u: 'comms_retention' }]);
        return (await c.query<{ purged: number }>('select comms_purge_bodies($1, now(), 100000) as purged', [tenant]))
          .rows;
      });
      expect(rows[0]?.purged, 'this tenant’s two due messages').to.equal(2);
      for (const id of ids) {
        const row = await storedMessage(tenant, id);
        expect([row.body, row.body_sha256], 'purged').to.deep.equal([null, null]);
        expect(row.purged_at).to.be.instanceOf(Date);
        expect((await getMessage(provider, id))!.body).to.equal('');
      }
    });

    it('the message trigger refuses every other change, to the superuser and to comms_purger too', async () => {
      const { tenant, provider, ids } = await dueFixture();
      const where = 'where tenant_id = $1 and message_id = $2';
      const params = [tenant, ids[0]];
      const before = await messageRows(tenant);
      await expectRefused(null, `update message set body = 'x' ${where}`, params, /append-only/);
      await expectRefused(null, `update message set sender_user_id = 'someone-else' ${where}`, params, /append-only/);
      // Superuser is not the purger: even a well-formed purge of one row is refused outside the function.
      await expectRefused(
        null,
        `update message set body = null, body_sha256 = null, purged_at = now() ${where}`,
        params,
        /append-only/,
      );
      await expectRefused(null, `delete from message ${where}`, params, /append-only/);
      // TRUNCATE … CASCADE (other tables reference message), in a transaction rolled back whatever happens.
      await withConnection(null, async (c) => {
        await c.query('begin');
        try {
          const err = await c.query('truncate message cascade').then(
            () => expect.fail('TRUNCATE message was allowed'),
            (e: DatabaseError) => e,
          );
          expect(err.code, err.message).to.equal('42501');
          expect(err.message).to.match(/append-only/);
        } finally {
          await c.query('rollback');
        }
      });
      // comms_purger: anything but "body → null, purged_at set" is refused (by its grants or the trigger).
      await expectRefused('comms_purger', `update message set sender_user_id = 'someone-else' ${where}`, params, /./);
      await expectRefused('comms_purger', `update message set body = 'x' ${where}`, params, /append-only/);
      await expectRefused(
        'comms_purger',
        `update message set body = null, body_sha256 = null ${where}`,
        params,
        /append-only|violates check constraint/,
      );
      await expectRefused('comms_purger', `delete from message ${where}`, params, /./);
      expect(await messageRows(tenant), 'nothing changed').to.deep.equal(before);

      // The one change the trigger lets through (the function's own), here rolled back.
      await withConnection('comms_purger', async (c) => {
        await c.query('begin');
        const res = await c.query(
          `update message set body = null, body_sha256 = null, purged_at = now() ${where}`,
          params,
        );
        expect(res.rowCount, 'comms_purger clears one body').to.equal(1);
        // …once: a purged row cannot be changed again, not even its purge time.
        const err = await c.query(`update message set purged_at = now() + interval '1 day' ${where}`, params).then(
          () => expect.fail('a purged row was changed again'),
          (e: DatabaseError) => e,
        );
        expect(err.code, err.message).to.equal('42501');
        expect(err.message).to.match(/append-only/);
        await c.query('rollback');
      });
      expect(await messageRows(tenant), 'rolled back').to.deep.equal(before);
      expect((await getMessage(provider, ids[0]!))!.body).to.not.equal('');
    });
  });

  describe('the scheduled purge job', () => {
    it('a replica with RETENTION_PURGE=true schedules the retention-purge queue with RETENTION_PURGE_CRON and runs its jobs', async function () {
      this.timeout(60_000);
      const readSchedule = async () =>
        (
          await db().query<{ name: string; cron: string }>(
            "select name, cron from pgboss.schedule where name = 'retention-purge'",
          )
        ).rows;
      const previous = await readSchedule();
      const app = await startTestApp({ RETENTION_PURGE: 'true', RETENTION_PURGE_CRON: '* * * * *' });
      try {
        const rows = await readSchedule();
        expect(rows.map((r) => ({ name: r.name, cron: r.cron }))).to.deep.equal([
          { name: 'retention-purge', cron: '* * * * *' },
        ]);
        const queue = await db().query("select name from pgboss.queue where name = 'retention-purge'");
        expect(queue.rows, 'the queue exists').to.have.length(1);

        // A job on the queue (as the cron sends it) runs the purge on this replica, at the current time.
        const { tenant, ids } = await dueFixture();
        const boss = new PgBoss({ connectionString: env.db.url, supervise: false, schedule: false, max: 1 });
        boss.on('error', () => {});
        await boss.start();
        try {
          await boss.send('retention-purge', {});
        } finally {
          await boss.stop({ graceful: false });
        }
        await until(
          'the job purged the due messages',
          async () => {
            const { rows } = await db().query<{ n: number }>(
              'select count(*)::int as n from message where tenant_id = $1 and message_id = any($2) and purged_at is not null',
              [tenant, ids],
            );
            return rows[0]!.n === ids.length;
          },
          30_000,
        );
      } finally {
        await app.shutdown();
        // Leave the shared database's schedule as it was (a once-a-minute purge would race the other tests).
        if (previous.length === 0) await db().query("delete from pgboss.schedule where name = 'retention-purge'");
        else
          await db().query("update pgboss.schedule set cron = $1 where name = 'retention-purge'", [previous[0]!.cron]);
      }
    });
  });
});
