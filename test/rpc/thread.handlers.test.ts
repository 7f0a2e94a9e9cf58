import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  EscalationLevel,
  type Participant,
  ParticipantRole,
  type Thread,
  type ThreadServiceClient,
  ThreadState,
} from '../../gen/comms/v1/thread.js';
import type { Role } from '../../src/domain/actor.js';
import { call, callError, expectError, newTenant, newUser, type TestUser, threadClient } from '../support/clients.js';
import {
  archive,
  createThread,
  escalate,
  expectFieldViolations,
  expectRefusedUnchanged,
  expectWithin,
  getThread,
  newUserId,
  participant,
  sameSubjectIn,
  seedThreads,
  storedThread,
  tenantRowCounts,
  threadScene,
  type ThreadScene,
} from '../support/threads.js';

const { PARTICIPANT_ROLE_PATIENT, PARTICIPANT_ROLE_PROVIDER, PARTICIPANT_ROLE_CARE_STAFF } = ParticipantRole;
const { PARTICIPANT_ROLE_FAMILY, PARTICIPANT_ROLE_INTERPRETER, PARTICIPANT_ROLE_UNSPECIFIED } = ParticipantRole;
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('ThreadService over gRPC', () => {
  let client: ThreadServiceClient;
  before(() => (client = threadClient()));
  after(() => client.close());

  /** `count` other participants with fresh ids (family members). */
  const others = (count: number): Participant[] =>
    Array.from({ length: count }, () => participant(newUserId('member'), PARTICIPANT_ROLE_FAMILY));

  const list = (user: TestUser, req: { pageSize?: number; pageToken?: string; state?: ThreadState } = {}) =>
    call(
      client,
      client.listThreads,
      { pageSize: req.pageSize ?? 0, pageToken: req.pageToken ?? '', state: req.state ?? 0 },
      user.md,
    );

  const addParticipant = (user: TestUser, threadId: string, p: Participant | undefined, etag = '') =>
    call(client, client.addParticipant, { threadId, participant: p, etag }, user.md);

  const removeParticipant = (user: TestUser, threadId: string, userId: string, etag = '') =>
    call(client, client.removeParticipant, { threadId, userId, etag }, user.md);

  const reopen = (user: TestUser, threadId: string, etag = '') =>
    call(client, client.reopenThread, { threadId, etag }, user.md);

  const escalateRaw = (
    user: TestUser,
    threadId: string,
    req: { level: EscalationLevel; assigneeUserId: string; reason: string; etag?: string },
  ) => call(client, client.escalateThread, { threadId, etag: '', ...req }, user.md);

  /** Walks every page of a listing; returns the thread ids in order and the page sizes. */
  async function walk(user: TestUser, pageSize: number, state: ThreadState = ThreadState.THREAD_STATE_UNSPECIFIED) {
    const ids: string[] = [];
    const sizes: number[] = [];
    let pageToken = '';
    for (let page = 0; page < 100; page++) {
      const res = await list(user, { pageSize, pageToken, state });
      ids.push(...res.threads.map((t) => t.threadId));
      sizes.push(res.threads.length);
      pageToken = res.nextPageToken;
      if (pageToken === '') return { ids, sizes };
    }
    expect.fail('listing did not end');
  }

  describe('CreateThread', () => {
    it('adds the creator with the participant role its token carries', async () => {
      const tenant = newTenant();
      const cases: [Role[], ParticipantRole][] = [
        [['patient'], PARTICIPANT_ROLE_PATIENT],
        [['provider'], PARTICIPANT_ROLE_PROVIDER],
        [['staff'], PARTICIPANT_ROLE_CARE_STAFF],
        [['staff', 'provider'], PARTICIPANT_ROLE_PROVIDER],
      ];
      for (const [roles, expected] of cases) {
        const creator = await newUser(tenant, ...roles);
        const other = newUserId('member');
        const thread = await createThread(client, creator, {
          participants: [participant(other, PARTICIPANT_ROLE_FAMILY)],
        });
        const roleOf = new Map(thread.participants.map((p) => [p.userId, p.role]));
        expect(roleOf.get(creator.userId), `creator with roles ${roles.join('+')}`).to.equal(expected);
        expect(roleOf.get(other)).to.equal(PARTICIPANT_ROLE_FAMILY);
        expect(thread.participants).to.have.length(2);
        expect(thread.createdBy).to.equal(creator.userId);
      }
    });

    it('does not add a service caller as a participant', async () => {
      const tenant = newTenant();
      const service = await newUser(tenant, 'service');
      const patient = await newUser(tenant, 'patient');
      const thread = await createThread(client, service, {
        participants: [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)],
      });
      expect(thread.participants.map((p) => p.userId)).to.deep.equal([patient.userId]);
      expect(thread.createdBy).to.equal(service.userId);
      const stored = await storedThread(tenant, thread.threadId);
      expect(stored!.participants.map((p) => p.user_id)).to.deep.equal([patient.userId]);
    });

    it('returns server-owned metadata set by the server: id, state, timestamps, etag, escalation', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const before = new Date();
      const thread = await createThread(client, provider, { subject: 'Blood pressure' });
      const after = new Date();
      expect(thread.threadId).to.match(UUID_V7);
      expect(thread.subject).to.equal('Blood pressure');
      expect(thread.state).to.equal(ThreadState.THREAD_STATE_ACTIVE);
      expect(thread.etag).to.be.a('string').and.not.equal('');
      expectWithin(thread.createdAt, before, after, 'created_at');
      expect(thread.updatedAt).to.deep.equal(thread.createdAt);
      expect(thread.lastActivityAt).to.deep.equal(thread.createdAt);
      expect(thread.archivedAt).to.equal(undefined);
      expect(thread.escalation).to.deep.include({
        level: EscalationLevel.ESCALATION_LEVEL_NONE,
        assigneeUserId: '',
        escalatedBy: '',
        escalatedAt: undefined,
      });
      const stored = await storedThread(tenant, thread.threadId);
      expect(stored!.row).to.include({ state: 'active', created_by: provider.userId, escalation_level: 'none' });
    });

    it("ignores the participants' added_by and added_at sent by the client", async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const patientId = newUserId('patient');
      const forged: Participant = {
        userId: patientId,
        role: PARTICIPANT_ROLE_PATIENT,
        addedAt: new Date('2001-01-01T00:00:00Z'),
        addedBy: 'mallory',
      };
      const thread = await createThread(client, provider, { participants: [forged] });
      const added = thread.participants.find((p) => p.userId === patientId)!;
      expect(added.addedBy).to.equal(provider.userId);
      expect(added.addedAt).to.deep.equal(thread.createdAt);
      const stored = await storedThread(tenant, thread.threadId);
      const row = stored!.participants.find((p) => p.user_id === patientId)!;
      expect(row.added_by).to.equal(provider.userId);
      expect(row.added_at).to.deep.equal(thread.createdAt);
    });

    it('a retry with the same request_id returns the first thread and creates nothing', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const patient = await newUser(tenant, 'patient');
      const first = await createThread(client, provider, {
        subject: 'First',
        participants: [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)],
        requestId: 'req-1',
      });
      const retry = await createThread(client, provider, { subject: 'Second', participants: [], requestId: 'req-1' });
      expect(retry.threadId).to.equal(first.threadId);
      expect(retry.subject).to.equal('First');
      expect(retry.etag).to.equal(first.etag);
      expect(retry.createdAt).to.deep.equal(first.createdAt);
      expect(retry.participants.map((p) => p.userId)).to.have.members([provider.userId, patient.userId]);
      expect(await tenantRowCounts(tenant)).to.deep.equal({ threads: 1, participants: 2 });

      // The key belongs to its caller: another caller using it gets a thread of its own.
      const staff = await newUser(tenant, 'staff');
      const theirs = await createThread(client, staff, { requestId: 'req-1' });
      expect(theirs.threadId).to.not.equal(first.threadId);
      // And without a key every call creates a thread.
      const a = await createThread(client, provider);
      const b = await createThread(client, provider);
      expect(a.threadId).to.not.equal(b.threadId);
      expect((await tenantRowCounts(tenant)).threads).to.equal(4);
    });

    it('accepts the limits exactly: 200-character subject, 50 participants, 128-character user ids', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const service = await newUser(tenant, 'service');
      // 200 code points of an astral character (400 UTF-16 units) is still 200 characters.
      const subject = '\u{1F4AC}'.repeat(200);
      const longId = 'l'.repeat(128);
      const members = [participant(longId, PARTICIPANT_ROLE_INTERPRETER), ...others(48)];
      const byProvider = await createThread(client, provider, { subject, participants: members });
      expect(byProvider.subject).to.equal(subject);
      expect(byProvider.participants).to.have.length(50);
      const byService = await createThread(client, service, { participants: others(50) });
      expect(byService.participants).to.have.length(50);
    });

    describe('refuses bad input with field violations and creates nothing', () => {
      const cases: {
        name: string;
        roles?: Role[];
        req: (creator: TestUser) => { subject?: string; participants?: Participant[]; requestId?: string };
        fields: string[];
      }[] = [
        { name: 'empty subject', req: () => ({ subject: '' }), fields: ['subject'] },
        { name: 'subject over 200 characters', req: () => ({ subject: 's'.repeat(201) }), fields: ['subject'] },
        { name: 'subject with a control character', req: () => ({ subject: 'lab\u0007results' }), fields: ['subject'] },
        {
          name: 'participant without a role',
          req: () => ({ participants: [participant(newUserId(), PARTICIPANT_ROLE_UNSPECIFIED)] }),
          fields: ['participants[0].role'],
        },
        {
          name: 'participant with an empty user_id',
          req: () => ({ participants: [participant('', PARTICIPANT_ROLE_FAMILY)] }),
          fields: ['participants[0].user_id'],
        },
        {
          name: 'duplicate participants',
          req: () => ({
            participants: [participant('dup', PARTICIPANT_ROLE_FAMILY), participant('dup', PARTICIPANT_ROLE_PATIENT)],
          }),
          fields: ['participants[1].user_id'],
        },
        {
          name: 'the caller listed among the participants',
          req: (creator) => ({ participants: [participant(creator.userId, PARTICIPANT_ROLE_PROVIDER)] }),
          fields: ['participants[0].user_id'],
        },
        {
          name: 'user_id with control characters',
          req: () => ({ participants: [participant('bob\nsmith', PARTICIPANT_ROLE_FAMILY)] }),
          fields: ['participants[0].user_id'],
        },
        {
          name: 'user_id over 128 characters',
          req: () => ({ participants: [participant('u'.repeat(129), PARTICIPANT_ROLE_FAMILY)] }),
          fields: ['participants[0].user_id'],
        },
        {
          name: 'more than 50 participants with the creator',
          req: () => ({ participants: others(50) }),
          fields: ['participants'],
        },
        {
          name: 'more than 50 participants from a service caller',
          roles: ['service'],
          req: () => ({ participants: others(51) }),
          fields: ['participants'],
        },
        {
          name: 'no participant at all from a service caller',
          roles: ['service'],
          req: () => ({ participants: [] }),
          fields: ['participants'],
        },
        { name: 'request_id over 128 characters', req: () => ({ requestId: 'r'.repeat(129) }), fields: ['request_id'] },
        {
          name: 'every bad field at once',
          req: () => ({ subject: '', participants: [participant('', PARTICIPANT_ROLE_UNSPECIFIED)] }),
          fields: ['subject', 'participants[0].user_id', 'participants[0].role'],
        },
      ];
      for (const c of cases) {
        it(c.name, async () => {
          const tenant = newTenant();
          const creator = await newUser(tenant, ...(c.roles ?? ['provider']));
          const req = { subject: 'Valid subject', participants: [], requestId: '', ...c.req(creator) };
          const { err } = await expectError(
            call(client, client.createThread, req, creator.md),
            status.INVALID_ARGUMENT,
            'INVALID_ARGUMENT',
          );
          expectFieldViolations(err, c.fields);
          expect(await tenantRowCounts(tenant)).to.deep.equal({ threads: 0, participants: 0 });
        });
      }
    });
  });

  describe('GetThread', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('participants and the tenant’s staff and service callers read the thread', async () => {
      for (const user of [s.provider, s.patient, s.staff, s.service]) {
        const thread = await getThread(client, user, s.thread.threadId);
        expect(thread.threadId).to.equal(s.thread.threadId);
        expect(thread.etag).to.equal(s.thread.etag);
        expect(thread.participants.map((p) => p.userId)).to.have.members([
          s.provider.userId,
          s.patient.userId,
          s.familyUserId,
        ]);
      }
    });

    it('reads back exactly what CreateThread returned (same etag, same representation)', async () => {
      const thread = await getThread(client, s.provider, s.thread.threadId);
      expect(thread).to.deep.equal(s.thread);
    });

    it('accepts the thread id in upper case', async () => {
      const thread = await getThread(client, s.patient, s.thread.threadId.toUpperCase());
      expect(thread.threadId).to.equal(s.thread.threadId);
    });

    it('a provider or patient who does not take part gets NOT_FOUND', async () => {
      for (const user of [s.outsiderProvider, s.outsiderPatient]) {
        const { info } = await expectError(
          call(client, client.getThread, { threadId: s.thread.threadId }, user.md),
          status.NOT_FOUND,
          'THREAD_NOT_FOUND',
        );
        expect(info!.metadata).to.deep.equal({ thread_id: s.thread.threadId });
      }
    });

    it('another tenant’s callers, even staff and service or the same subject, get NOT_FOUND', async () => {
      const samePatientElsewhere = await sameSubjectIn(s.foreignStaff.tenantId, s.patient);
      for (const user of [s.foreignStaff, s.foreignService, samePatientElsewhere]) {
        await expectError(
          call(client, client.getThread, { threadId: s.thread.threadId }, user.md),
          status.NOT_FOUND,
          'THREAD_NOT_FOUND',
        );
      }
    });

    it('an unknown id is NOT_FOUND and a malformed one INVALID_ARGUMENT on thread_id', async () => {
      await expectError(
        call(client, client.getThread, { threadId: uuidv7() }, s.staff.md),
        status.NOT_FOUND,
        'THREAD_NOT_FOUND',
      );
      for (const threadId of ['', 'not-a-uuid', `${s.thread.threadId}x`, "1' or '1'='1"]) {
        const { err } = await expectError(
          call(client, client.getThread, { threadId }, s.staff.md),
          status.INVALID_ARGUMENT,
          'INVALID_ARGUMENT',
        );
        expectFieldViolations(err, ['thread_id']);
      }
    });
  });

  describe('ListThreads', () => {
    it("lists only the caller's threads of its tenant, newest activity first", async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const patient = await newUser(tenant, 'patient');
      const staff = await newUser(tenant, 'staff');
      const withPatient = [participant(patient.userId, PARTICIPANT_ROLE_PATIENT)];
      const t1 = await createThread(client, provider, { subject: 't1', participants: withPatient });
      const t2 = await createThread(client, provider, { subject: 't2' });
      const t3 = await createThread(client, provider, { subject: 't3', participants: withPatient });
      await createThread(client, staff, { subject: 'not the provider’s', participants: withPatient });
      // The same subject in another tenant has threads of its own that must not show up.
      const providerElsewhere = await sameSubjectIn(newTenant(), provider);
      await createThread(client, providerElsewhere, { subject: 'other tenant' });

      const res = await list(provider);
      expect(res.threads.map((t) => t.subject)).to.deep.equal(['t3', 't2', 't1']);
      expect(res.nextPageToken).to.equal('');
      expect(res.threads[0]).to.deep.include({ threadId: t3.threadId, etag: t3.etag });
      expect(res.threads[0]!.participants.map((p) => p.userId)).to.have.members([provider.userId, patient.userId]);
      expect((await list(patient)).threads.map((t) => t.subject)).to.deep.equal(['not the provider’s', 't3', 't1']);
      expect((await list(providerElsewhere)).threads.map((t) => t.subject)).to.deep.equal(['other tenant']);

      // A change to the oldest thread is activity: it moves to the top.
      await escalate(client, staff, t1.threadId, { assigneeUserId: staff.userId });
      expect((await list(provider)).threads.map((t) => t.threadId)).to.deep.equal([
        t1.threadId,
        t3.threadId,
        t2.threadId,
      ]);
    });

    it('pages with page_size and next_page_token, without duplicates or gaps', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const created: Thread[] = [];
      for (let i = 0; i < 7; i++) created.push(await createThread(client, provider, { subject: `p${i}` }));
      const expected = created.map((t) => t.threadId).reverse();
      const { ids, sizes } = await walk(provider, 3);
      expect(sizes).to.deep.equal([3, 3, 1]);
      expect(ids).to.deep.equal(expected);
      const single = await walk(provider, 1);
      expect(single.ids).to.deep.equal(expected);
      const exact = await walk(provider, 7);
      expect(exact.ids).to.deep.equal(expected);
    });

    it('filters by state, and a page token only continues the filter it came from', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const threads: Thread[] = [];
      for (let i = 0; i < 4; i++) threads.push(await createThread(client, provider, { subject: `s${i}` }));
      const archived = [await archive(client, provider, threads[0]!.threadId)];
      archived.unshift(await archive(client, provider, threads[2]!.threadId));
      const active = [threads[3]!, threads[1]!];

      const byState = async (state: ThreadState) => (await walk(provider, 1, state)).ids;
      expect(await byState(ThreadState.THREAD_STATE_ACTIVE)).to.deep.equal(active.map((t) => t.threadId));
      expect(await byState(ThreadState.THREAD_STATE_ARCHIVED)).to.deep.equal(archived.map((t) => t.threadId));
      expect(await byState(ThreadState.THREAD_STATE_UNSPECIFIED)).to.have.members(threads.map((t) => t.threadId));

      const archivedPage = await list(provider, { pageSize: 1, state: ThreadState.THREAD_STATE_ARCHIVED });
      expect(archivedPage.threads[0]!.state).to.equal(ThreadState.THREAD_STATE_ARCHIVED);
      expect(archivedPage.nextPageToken).to.not.equal('');
      for (const state of [ThreadState.THREAD_STATE_ACTIVE, ThreadState.THREAD_STATE_UNSPECIFIED]) {
        const { err } = await expectError(
          list(provider, { pageSize: 1, pageToken: archivedPage.nextPageToken, state }),
          status.INVALID_ARGUMENT,
          'INVALID_ARGUMENT',
        );
        expectFieldViolations(err, ['page_token']);
      }
    });

    it('page_size 0 means 50 and a huge page_size is clamped to 200', async () => {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      await seedThreads(tenant, provider.userId, 205);
      const byDefault = await list(provider, { pageSize: 0 });
      expect(byDefault.threads).to.have.length(50);
      expect(byDefault.nextPageToken).to.not.equal('');
      const clamped = await list(provider, { pageSize: 1_000_000 });
      expect(clamped.threads).to.have.length(200);
      expect(clamped.threads.slice(0, 50).map((t) => t.threadId)).to.deep.equal(
        byDefault.threads.map((t) => t.threadId),
      );
      const activity = clamped.threads.map((t) => t.lastActivityAt!.getTime());
      expect(activity).to.deep.equal([...activity].sort((a, b) => b - a));
      const rest = await list(provider, { pageSize: 1_000_000, pageToken: clamped.nextPageToken });
      expect(rest.threads).to.have.length(5);
      expect(rest.nextPageToken).to.equal('');
      const all = new Set([...clamped.threads, ...rest.threads].map((t) => t.threadId));
      expect(all.size).to.equal(205);
    });

    it('a negative page_size is INVALID_ARGUMENT on page_size', async () => {
      const provider = await newUser(newTenant(), 'provider');
      const { err } = await expectError(list(provider, { pageSize: -1 }), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
      expectFieldViolations(err, ['page_size']);
    });

    it('a page_token the list did not issue is INVALID_ARGUMENT on page_token', async () => {
      const provider = await newUser(newTenant(), 'provider');
      await createThread(client, provider);
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      const tokens = [
        'garbage!!',
        'not-a-token',
        Buffer.from('not json').toString('base64url'),
        b64({ k: 'messages', at: new Date().toISOString(), id: uuidv7(), state: null }),
        b64({ k: 'threads', at: 'yesterday', id: uuidv7(), state: null }),
        'A'.repeat(5000),
      ];
      for (const pageToken of tokens) {
        const { err } = await expectError(list(provider, { pageToken }), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
        expectFieldViolations(err, ['page_token']);
      }
    });

    it('a tampered page_token with a thread id that is not a UUID is INVALID_ARGUMENT, not INTERNAL', async () => {
      const provider = await newUser(newTenant(), 'provider');
      await createThread(client, provider);
      const pageToken = Buffer.from(
        JSON.stringify({ k: 'threads', at: new Date().toISOString(), id: 'not-a-uuid', state: null }),
      ).toString('base64url');
      const err = await callError(list(provider, { pageToken }));
      expect(err.code, `code (message: ${err.details})`).to.equal(status.INVALID_ARGUMENT);
    });

    it('every page carries as_of, the server time it was read, also when empty', async () => {
      const provider = await newUser(newTenant(), 'provider');
      let before = new Date();
      const empty = await list(provider);
      expectWithin(empty.asOf, before, new Date(), 'as_of');
      expect(empty.threads).to.deep.equal([]);
      expect(empty.nextPageToken).to.equal('');
      await createThread(client, provider);
      before = new Date();
      const one = await list(provider);
      expectWithin(one.asOf, before, new Date(), 'as_of');
      expect(one.asOf!.getTime()).to.be.at.least(one.threads[0]!.lastActivityAt!.getTime());
    });
  });

  describe('AddParticipant', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('a provider who takes part adds someone; the server sets added_by, added_at and a new etag', async () => {
      const interpreter = newUserId('interpreter');
      const forged: Participant = {
        userId: interpreter,
        role: PARTICIPANT_ROLE_INTERPRETER,
        addedAt: new Date('2001-01-01T00:00:00Z'),
        addedBy: s.patient.userId,
      };
      const before = new Date();
      const { thread } = await addParticipant(s.provider, s.thread.threadId, forged, s.thread.etag);
      const after = new Date();
      const added = thread!.participants.find((p) => p.userId === interpreter);
      expect(added).to.deep.include({ role: PARTICIPANT_ROLE_INTERPRETER, addedBy: s.provider.userId });
      expectWithin(added!.addedAt, before, after, 'added_at');
      expect(thread!.participants).to.have.length(4);
      expect(thread!.etag).to.not.equal(s.thread.etag);
      expect(thread!.updatedAt).to.deep.equal(added!.addedAt);
      expect(thread!.lastActivityAt).to.deep.equal(added!.addedAt);
      expect(thread!.createdAt).to.deep.equal(s.thread.createdAt);
      expect(await getThread(client, s.staff, s.thread.threadId)).to.deep.equal(thread);
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      const row = stored!.participants.find((p) => p.user_id === interpreter);
      expect(row).to.deep.include({ role: 'interpreter', added_by: s.provider.userId });
      // Someone added now sees the thread.
      await expectError(getThread(client, s.outsiderPatient, s.thread.threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
      await addParticipant(s.staff, s.thread.threadId, participant(s.outsiderPatient.userId, PARTICIPANT_ROLE_PATIENT));
      expect((await getThread(client, s.outsiderPatient, s.thread.threadId)).threadId).to.equal(s.thread.threadId);
    });

    it('staff and service callers add without taking part themselves', async () => {
      const a = newUserId('a');
      const b = newUserId('b');
      await addParticipant(s.staff, s.thread.threadId, participant(a, PARTICIPANT_ROLE_FAMILY));
      const { thread } = await addParticipant(s.service, s.thread.threadId, participant(b, PARTICIPANT_ROLE_FAMILY));
      const ids = thread!.participants.map((p) => p.userId);
      expect(ids).to.include.members([a, b]);
      expect(ids.filter((id) => id === s.staff.userId || id === s.service.userId)).to.deep.equal([]);
      expect(thread!.participants.find((p) => p.userId === b)!.addedBy).to.equal(s.service.userId);
    });

    it('adding someone who already takes part changes nothing, whatever role is sent', async () => {
      const before = await storedThread(s.tenantId, s.thread.threadId);
      const { thread } = await addParticipant(
        s.provider,
        s.thread.threadId,
        participant(s.patient.userId, PARTICIPANT_ROLE_INTERPRETER),
        s.thread.etag,
      );
      expect(thread!.etag).to.equal(s.thread.etag);
      expect(thread!.participants.find((p) => p.userId === s.patient.userId)!.role).to.equal(PARTICIPANT_ROLE_PATIENT);
      expect(await storedThread(s.tenantId, s.thread.threadId)).to.deep.equal(before);
    });

    it('the etag changes with every change and the new etag is accepted', async () => {
      const first = await addParticipant(s.provider, s.thread.threadId, others(1)[0], s.thread.etag);
      const second = await addParticipant(s.provider, s.thread.threadId, others(1)[0], first.thread!.etag);
      expect(new Set([s.thread.etag, first.thread!.etag, second.thread!.etag]).size).to.equal(3);
      expect(second.thread!.participants).to.have.length(5);
    });

    it('refuses a 51st participant with FAILED_PRECONDITION and changes nothing', async () => {
      const full = await createThread(client, s.provider, { participants: others(49) });
      expect(full.participants).to.have.length(50);
      await expectRefusedUnchanged(
        s.tenantId,
        full.threadId,
        () => addParticipant(s.staff, full.threadId, others(1)[0]),
        status.FAILED_PRECONDITION,
        'THREAD_FULL',
      );
    });

    describe('refuses bad input with field violations and changes nothing', () => {
      const cases: { name: string; p: () => Participant | undefined; fields: string[] }[] = [
        {
          name: 'missing role',
          p: () => participant(newUserId(), PARTICIPANT_ROLE_UNSPECIFIED),
          fields: ['participant.role'],
        },
        {
          name: 'user_id with control characters',
          p: () => participant('eve\u0000', PARTICIPANT_ROLE_FAMILY),
          fields: ['participant.user_id'],
        },
        {
          name: 'user_id over 128 characters',
          p: () => participant('u'.repeat(129), PARTICIPANT_ROLE_FAMILY),
          fields: ['participant.user_id'],
        },
        { name: 'no participant', p: () => undefined, fields: ['participant.user_id', 'participant.role'] },
      ];
      for (const c of cases) {
        it(c.name, async () => {
          const { err } = await expectRefusedUnchanged(
            s.tenantId,
            s.thread.threadId,
            () => addParticipant(s.provider, s.thread.threadId, c.p()),
            status.INVALID_ARGUMENT,
            'INVALID_ARGUMENT',
          );
          expectFieldViolations(err, c.fields);
        });
      }
    });
  });

  describe('RemoveParticipant', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('a provider who takes part removes a participant; the etag changes', async () => {
      const before = new Date();
      const { thread } = await removeParticipant(s.provider, s.thread.threadId, s.familyUserId, s.thread.etag);
      const after = new Date();
      expect(thread!.participants.map((p) => p.userId)).to.have.members([s.provider.userId, s.patient.userId]);
      expect(thread!.etag).to.not.equal(s.thread.etag);
      expectWithin(thread!.updatedAt, before, after, 'updated_at');
      expect(await getThread(client, s.staff, s.thread.threadId)).to.deep.equal(thread);
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      expect(stored!.participants.map((p) => p.user_id)).to.not.include(s.familyUserId);
      // The removed patient no longer sees the thread.
      await removeParticipant(s.staff, s.thread.threadId, s.patient.userId);
      await expectError(
        call(client, client.getThread, { threadId: s.thread.threadId }, s.patient.md),
        status.NOT_FOUND,
        'THREAD_NOT_FOUND',
      );
    });

    it('the last participant cannot be removed (FAILED_PRECONDITION LAST_PARTICIPANT)', async () => {
      const alone = await createThread(client, s.provider);
      for (const user of [s.provider, s.staff]) {
        await expectRefusedUnchanged(
          s.tenantId,
          alone.threadId,
          () => removeParticipant(user, alone.threadId, s.provider.userId),
          status.FAILED_PRECONDITION,
          'LAST_PARTICIPANT',
        );
      }
    });

    it('the escalation assignee cannot be removed while the escalation stands', async () => {
      const nurse = newUserId('nurse');
      await escalate(client, s.staff, s.thread.threadId, { assigneeUserId: nurse });
      await expectRefusedUnchanged(
        s.tenantId,
        s.thread.threadId,
        () => removeParticipant(s.staff, s.thread.threadId, nurse),
        status.FAILED_PRECONDITION,
        'ESCALATION_ASSIGNEE',
      );
      // Reassigning frees the previous assignee; clearing frees the last one.
      const other = newUserId('nurse');
      await escalate(client, s.staff, s.thread.threadId, { assigneeUserId: other });
      await removeParticipant(s.staff, s.thread.threadId, nurse);
      await escalate(client, s.staff, s.thread.threadId, {
        level: EscalationLevel.ESCALATION_LEVEL_NONE,
        reason: 'resolved',
      });
      const { thread } = await removeParticipant(s.staff, s.thread.threadId, other);
      const ids = thread!.participants.map((p) => p.userId);
      expect(ids).to.not.include(nurse);
      expect(ids).to.not.include(other);
    });

    it('removing someone who does not take part is NOT_FOUND PARTICIPANT_NOT_FOUND', async () => {
      await expectRefusedUnchanged(
        s.tenantId,
        s.thread.threadId,
        () => removeParticipant(s.provider, s.thread.threadId, s.outsiderPatient.userId),
        status.NOT_FOUND,
        'PARTICIPANT_NOT_FOUND',
      );
    });

    it('refuses a bad user_id with a field violation and changes nothing', async () => {
      for (const userId of ['', 'x'.repeat(129), 'a\u001bb']) {
        const { err } = await expectRefusedUnchanged(
          s.tenantId,
          s.thread.threadId,
          () => removeParticipant(s.provider, s.thread.threadId, userId),
          status.INVALID_ARGUMENT,
          'INVALID_ARGUMENT',
        );
        expectFieldViolations(err, ['user_id']);
      }
    });
  });

  describe('EscalateThread', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('staff escalate; the assignee joins as CARE_STAFF and the escalation is server-stamped', async () => {
      const nurse = newUserId('nurse');
      const before = new Date();
      const thread = await escalate(client, s.staff, s.thread.threadId, {
        level: EscalationLevel.ESCALATION_LEVEL_EMERGENCY,
        assigneeUserId: nurse,
        reason: 'chest pain',
        etag: s.thread.etag,
      });
      const after = new Date();
      expect(thread.escalation).to.deep.include({
        level: EscalationLevel.ESCALATION_LEVEL_EMERGENCY,
        assigneeUserId: nurse,
        reason: 'chest pain',
        escalatedBy: s.staff.userId,
      });
      expectWithin(thread.escalation!.escalatedAt, before, after, 'escalated_at');
      const joined = thread.participants.find((p) => p.userId === nurse);
      expect(joined).to.deep.include({ role: PARTICIPANT_ROLE_CARE_STAFF, addedBy: s.staff.userId });
      expect(thread.participants.map((p) => p.userId)).to.not.include(s.staff.userId);
      expect(thread.etag).to.not.equal(s.thread.etag);
      expect(thread.lastActivityAt).to.deep.equal(thread.escalation!.escalatedAt);
      expect(await getThread(client, s.patient, s.thread.threadId)).to.deep.equal(thread);
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      expect(stored!.row).to.include({
        escalation_level: 'emergency',
        escalation_assignee: nurse,
        escalated_by: s.staff.userId,
      });
    });

    it('a provider who takes part may escalate; an assignee who takes part keeps its role', async () => {
      const thread = await escalate(client, s.provider, s.thread.threadId, { assigneeUserId: s.provider.userId });
      expect(thread.escalation!.assigneeUserId).to.equal(s.provider.userId);
      expect(thread.participants).to.have.length(3);
      expect(thread.participants.find((p) => p.userId === s.provider.userId)!.role).to.equal(PARTICIPANT_ROLE_PROVIDER);
    });

    it('level NONE clears the escalation and keeps the participants', async () => {
      const nurse = newUserId('nurse');
      const escalated = await escalate(client, s.staff, s.thread.threadId, { assigneeUserId: nurse });
      const cleared = await escalate(client, s.provider, s.thread.threadId, {
        level: EscalationLevel.ESCALATION_LEVEL_NONE,
        reason: 'called back',
        etag: escalated.etag,
      });
      expect(cleared.escalation).to.deep.include({
        level: EscalationLevel.ESCALATION_LEVEL_NONE,
        assigneeUserId: '',
        reason: 'called back',
        escalatedBy: s.provider.userId,
      });
      expect(cleared.etag).to.not.equal(escalated.etag);
      expect(cleared.participants.map((p) => p.userId)).to.deep.equal(escalated.participants.map((p) => p.userId));
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      expect(stored!.row).to.include({ escalation_level: 'none', escalation_assignee: null });
    });

    it('escalating to a new assignee never takes a thread past 50 participants', async () => {
      const full = await createThread(client, s.provider, { participants: others(49) });
      const outcome = escalate(client, s.staff, full.threadId, { assigneeUserId: newUserId('nurse') });
      await expectError(outcome, status.FAILED_PRECONDITION, 'THREAD_FULL');
      const stored = await storedThread(s.tenantId, full.threadId);
      expect(stored!.participants.length, 'stored participants').to.equal(50);
      expect(stored!.row).to.include({ escalation_level: 'none', version: 1 });
    });

    describe('refuses bad input with field violations and changes nothing', () => {
      const cases: {
        name: string;
        req: { level: EscalationLevel; assigneeUserId: string; reason: string };
        fields: string[];
      }[] = [
        {
          name: 'an assignee with level NONE',
          req: { level: EscalationLevel.ESCALATION_LEVEL_NONE, assigneeUserId: 'nurse-1', reason: 'done' },
          fields: ['assignee_user_id'],
        },
        {
          name: 'no assignee with a level',
          req: { level: EscalationLevel.ESCALATION_LEVEL_URGENT, assigneeUserId: '', reason: 'call back' },
          fields: ['assignee_user_id'],
        },
        {
          name: 'an assignee with control characters',
          req: { level: EscalationLevel.ESCALATION_LEVEL_URGENT, assigneeUserId: 'nurse\t1', reason: 'call back' },
          fields: ['assignee_user_id'],
        },
        {
          name: 'an assignee over 128 characters',
          req: { level: EscalationLevel.ESCALATION_LEVEL_URGENT, assigneeUserId: 'n'.repeat(129), reason: 'x' },
          fields: ['assignee_user_id'],
        },
        {
          name: 'missing reason',
          req: { level: EscalationLevel.ESCALATION_LEVEL_URGENT, assigneeUserId: 'nurse-1', reason: '' },
          fields: ['reason'],
        },
        {
          name: 'reason over 1000 characters',
          req: { level: EscalationLevel.ESCALATION_LEVEL_URGENT, assigneeUserId: 'nurse-1', reason: 'r'.repeat(1001) },
          fields: ['reason'],
        },
        {
          name: 'level unspecified',
          req: { level: EscalationLevel.ESCALATION_LEVEL_UNSPECIFIED, assigneeUserId: 'nurse-1', reason: 'x' },
          fields: ['level'],
        },
      ];
      for (const c of cases) {
        it(c.name, async () => {
          const { err } = await expectRefusedUnchanged(
            s.tenantId,
            s.thread.threadId,
            () => escalateRaw(s.staff, s.thread.threadId, c.req),
            status.INVALID_ARGUMENT,
            'INVALID_ARGUMENT',
          );
          expectFieldViolations(err, c.fields);
        });
      }
    });
  });

  describe('ArchiveThread', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('a provider who takes part archives; archiving again changes nothing', async () => {
      const before = new Date();
      const archived = await archive(client, s.provider, s.thread.threadId, s.thread.etag);
      const after = new Date();
      expect(archived.state).to.equal(ThreadState.THREAD_STATE_ARCHIVED);
      expectWithin(archived.archivedAt, before, after, 'archived_at');
      expect(archived.etag).to.not.equal(s.thread.etag);
      expect(await getThread(client, s.patient, s.thread.threadId)).to.deep.equal(archived);
      const again = await archive(client, s.staff, s.thread.threadId, archived.etag);
      expect(again).to.deep.equal(archived);
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      expect(stored!.row).to.include({ state: 'archived' });
      expect(stored!.row.archived_at).to.deep.equal(archived.archivedAt);
    });

    it('staff and service callers archive without taking part', async () => {
      expect((await archive(client, s.staff, s.thread.threadId)).state).to.equal(ThreadState.THREAD_STATE_ARCHIVED);
      const other = await createThread(client, s.provider);
      const archived = await archive(client, s.service, other.threadId);
      expect(archived.state).to.equal(ThreadState.THREAD_STATE_ARCHIVED);
      expect(archived.participants.map((p) => p.userId)).to.deep.equal([s.provider.userId]);
    });
  });

  describe('ReopenThread', () => {
    let s: ThreadScene;
    beforeEach(async () => (s = await threadScene(client)));

    it('a patient who takes part reopens an archived thread; it accepts changes again', async () => {
      const archived = await archive(client, s.provider, s.thread.threadId);
      const { thread } = await reopen(s.patient, s.thread.threadId, archived.etag);
      expect(thread!.state).to.equal(ThreadState.THREAD_STATE_ACTIVE);
      expect(thread!.archivedAt).to.equal(undefined);
      expect(thread!.etag).to.not.equal(archived.etag);
      const stored = await storedThread(s.tenantId, s.thread.threadId);
      expect(stored!.row).to.include({ state: 'active', archived_at: null });
      const added = await addParticipant(s.provider, s.thread.threadId, others(1)[0], thread!.etag);
      expect(added.thread!.participants).to.have.length(4);
    });

    it('staff who do not take part may reopen', async () => {
      await archive(client, s.provider, s.thread.threadId);
      const { thread } = await reopen(s.staff, s.thread.threadId);
      expect(thread!.state).to.equal(ThreadState.THREAD_STATE_ACTIVE);
    });

    it('reopening an active thread changes nothing and returns it', async () => {
      const before = await storedThread(s.tenantId, s.thread.threadId);
      const { thread } = await reopen(s.patient, s.thread.threadId, s.thread.etag);
      expect(thread!.etag).to.equal(s.thread.etag);
      expect(thread!.state).to.equal(ThreadState.THREAD_STATE_ACTIVE);
      expect(await storedThread(s.tenantId, s.thread.threadId)).to.deep.equal(before);
    });
  });

  describe('refusals of every mutation (nothing changes)', () => {
    interface Mutation {
      readonly name: string;
      /** A patient who takes part is refused (PERMISSION_DENIED): every mutation but reopen. */
      readonly managed: boolean;
      /** Refused on an archived thread with THREAD_ARCHIVED. */
      readonly needsActive: boolean;
      /** Brings the thread into the state the mutation acts on (reopen needs an archived thread). */
      readonly prepare?: (s: ThreadScene) => Promise<unknown>;
      readonly run: (s: ThreadScene, user: TestUser, threadId: string, etag?: string) => Promise<unknown>;
    }
    const mutations: Mutation[] = [
      {
        name: 'AddParticipant',
        managed: true,
        needsActive: true,
        run: (_s, user, threadId, etag) =>
          addParticipant(user, threadId, participant(newUserId('new'), PARTICIPANT_ROLE_INTERPRETER), etag),
      },
      {
        name: 'RemoveParticipant',
        managed: true,
        needsActive: true,
        run: (s, user, threadId, etag) => removeParticipant(user, threadId, s.familyUserId, etag),
      },
      {
        name: 'EscalateThread',
        managed: true,
        needsActive: true,
        run: (s, user, threadId, etag) =>
          escalate(client, user, threadId, { assigneeUserId: s.staff.userId, reason: 'urgent', etag }),
      },
      {
        name: 'ArchiveThread',
        managed: true,
        needsActive: false,
        run: (_s, user, threadId, etag) => archive(client, user, threadId, etag),
      },
      {
        name: 'ReopenThread',
        managed: false,
        needsActive: false,
        prepare: (s) => archive(client, s.staff, s.thread.threadId),
        run: (_s, user, threadId, etag) => reopen(user, threadId, etag),
      },
    ];

    for (const m of mutations) {
      describe(m.name, () => {
        let s: ThreadScene;
        beforeEach(async () => {
          s = await threadScene(client);
          await m.prepare?.(s);
        });
        const refused = (user: TestUser, code: number, reason: string, threadId = s.thread.threadId, etag = '') =>
          expectRefusedUnchanged(s.tenantId, s.thread.threadId, () => m.run(s, user, threadId, etag), code, reason);

        if (m.managed) {
          it('a patient who takes part is PERMISSION_DENIED', async () => {
            const { info } = await refused(s.patient, status.PERMISSION_DENIED, 'THREAD_PERMISSION_DENIED');
            expect(info!.metadata.thread_id).to.equal(s.thread.threadId);
          });
        } else {
          it('a patient who takes part is allowed', async () => {
            await m.run(s, s.patient, s.thread.threadId);
            expect((await storedThread(s.tenantId, s.thread.threadId))!.row.version).to.be.greaterThan(2);
          });
        }

        it('a provider or patient who does not take part gets NOT_FOUND', async () => {
          await refused(s.outsiderProvider, status.NOT_FOUND, 'THREAD_NOT_FOUND');
          await refused(s.outsiderPatient, status.NOT_FOUND, 'THREAD_NOT_FOUND');
        });

        it('staff and service callers of another tenant get NOT_FOUND', async () => {
          await refused(s.foreignStaff, status.NOT_FOUND, 'THREAD_NOT_FOUND');
          await refused(s.foreignService, status.NOT_FOUND, 'THREAD_NOT_FOUND');
          const staffElsewhere = await sameSubjectIn(s.foreignStaff.tenantId, s.provider, 'staff', 'provider');
          await refused(staffElsewhere, status.NOT_FOUND, 'THREAD_NOT_FOUND');
        });

        it('an unknown thread is NOT_FOUND and a malformed thread_id INVALID_ARGUMENT', async () => {
          await refused(s.staff, status.NOT_FOUND, 'THREAD_NOT_FOUND', uuidv7());
          const { err } = await refused(s.staff, status.INVALID_ARGUMENT, 'INVALID_ARGUMENT', 'thread-1');
          expectFieldViolations(err, ['thread_id']);
        });

        it('a stale etag is ABORTED ETAG_MISMATCH and tells the current etag', async () => {
          const stale = (await getThread(client, s.staff, s.thread.threadId)).etag;
          // Someone else changes the thread in between (reopen and archive again for an archived one).
          if (m.prepare) await reopen(s.staff, s.thread.threadId);
          else await escalate(client, s.staff, s.thread.threadId, { assigneeUserId: s.provider.userId });
          await m.prepare?.(s);
          const current = (await getThread(client, s.staff, s.thread.threadId)).etag;
          expect(current).to.not.equal(stale);
          for (const user of [s.staff, s.provider]) {
            const { info } = await refused(user, status.ABORTED, 'ETAG_MISMATCH', s.thread.threadId, stale);
            expect(info!.metadata).to.deep.include({ thread_id: s.thread.threadId, current_etag: current });
          }
          // The current etag is accepted.
          await m.run(s, s.staff, s.thread.threadId, current);
          expect((await getThread(client, s.staff, s.thread.threadId)).etag).to.not.equal(current);
        });

        if (m.needsActive) {
          it('an archived thread is FAILED_PRECONDITION THREAD_ARCHIVED', async () => {
            await archive(client, s.staff, s.thread.threadId);
            await refused(s.provider, status.FAILED_PRECONDITION, 'THREAD_ARCHIVED');
            await refused(s.staff, status.FAILED_PRECONDITION, 'THREAD_ARCHIVED');
          });
        }
      });
    }
  });
});
