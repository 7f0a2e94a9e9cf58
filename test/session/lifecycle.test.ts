import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import {
  AdmitState,
  type CreateSessionRequest,
  type ListSessionsRequest,
  type SessionEvent,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSession,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { ParticipantRole, type ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { call, expectError, newTenant, newUser, type TestUser, threadClient } from '../support/clients.js';
import { expectAll, expectInvalid } from '../support/messages.js';
import { createThread, db, expectWithin, participant } from '../support/threads.js';
import {
  admit,
  createSession,
  deny,
  getSession,
  joinSession,
  listEvents,
  participantOf,
  removeParticipant,
  sessionClient,
  sessionParticipant,
  type SessionScene,
  sessionScene,
  sessionSettings,
  useClockApp,
} from '../support/sessions.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const {
  PARTICIPANT_ROLE_PROVIDER: PROVIDER,
  PARTICIPANT_ROLE_PATIENT: PATIENT,
  PARTICIPANT_ROLE_FAMILY: FAMILY,
} = ParticipantRole;
const {
  SESSION_TRANSITION_OPEN: OPEN,
  SESSION_TRANSITION_END: END,
  SESSION_TRANSITION_CANCEL: CANCEL,
} = SessionTransition;

/** `ms` from now (or from `from`). */
const inMs = (ms: number, from = Date.now()) => new Date(from + ms);

/** An event as [kind, reason_code], e.g. ['INVITED', 'INVITED'] — how the tests compare histories. */
const summary = (e: SessionEvent) => [SessionEventKind[e.kind].replace('SESSION_EVENT_KIND_', ''), e.reasonCode];

const stateName = (s: SessionState) => SessionState[s].replace('SESSION_STATE_', '');

/** How many virtual_session rows a tenant has. */
async function storedSessions(tenantId: string): Promise<number> {
  const { rows } = await db().query<{ n: number }>(
    'select count(*)::int as n from virtual_session where tenant_id = $1',
    [tenantId],
  );
  return rows[0]!.n;
}

/** The session and its history as staff read them: "nothing changed" compares two of these. */
async function observe(client: VirtualSessionServiceClient, scene: SessionScene, sessionId: string) {
  return {
    session: await getSession(client, scene.staff, sessionId),
    events: await listEvents(client, scene.staff, sessionId),
  };
}

function transition(
  client: VirtualSessionServiceClient,
  user: TestUser,
  sessionId: string,
  t: SessionTransition,
  reason = '',
) {
  return call(client, client.requestTransition, { sessionId, transition: t, reason }, user.md);
}

function update(
  client: VirtualSessionServiceClient,
  user: TestUser,
  current: VirtualSession,
  paths: string[],
  values: Partial<VirtualSession>,
  etag = current.etag,
) {
  return call(
    client,
    client.updateSession,
    { sessionId: current.sessionId, session: { ...current, ...values }, updateMask: paths, etag },
    user.md,
  );
}

type Reachable = 'SCHEDULED' | 'OPEN' | 'IN_PROGRESS' | 'ENDED' | 'CANCELLED';

/**
 * A fresh session of the scene in `state`: SCHEDULED starts in 2 h; OPEN starts now; IN_PROGRESS: the
 * provider joins, the patient joins and is admitted; ENDED: the provider ends that visit; CANCELLED: staff
 * cancels a scheduled one.
 */
async function reach(client: VirtualSessionServiceClient, scene: SessionScene, state: Reachable) {
  if (state === 'SCHEDULED') return createSession(client, scene, { startAt: inMs(2 * HOUR) });
  if (state === 'CANCELLED') {
    const s = await reach(client, scene, 'SCHEDULED');
    const res = await transition(client, scene.staff, s.sessionId, CANCEL);
    expect(res.state).to.equal(SessionState.SESSION_STATE_CANCELLED);
    return res.session!;
  }
  const open = await createSession(client, scene);
  if (state === 'OPEN') return open;
  const id = open.sessionId;
  await joinSession(client, scene.provider, id);
  await joinSession(client, scene.patient, id);
  const started = (await admit(client, scene.provider, id, scene.patient.userId)).session!;
  expect(started.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
  if (state === 'IN_PROGRESS') return started;
  const ended = await transition(client, scene.provider, id, END);
  expect(ended.state).to.equal(SessionState.SESSION_STATE_ENDED);
  return ended.session!;
}

describe('sessions: lifecycle over gRPC', () => {
  let client: VirtualSessionServiceClient;
  let threads: ThreadServiceClient;
  before(() => {
    client = sessionClient();
    threads = threadClient();
  });
  after(() => {
    client.close();
    threads.close();
  });

  describe('CreateSession', () => {
    it('a waiting room that opens later: SCHEDULED (CREATED), opening = start − 15 min, expiry = start + 30 min', async () => {
      const scene = await sessionScene();
      const start = inMs(2 * HOUR);
      const before = new Date();
      const s = await createSession(client, scene, { startAt: start, endAt: inMs(45 * MINUTE, start.getTime()) });
      const after = new Date();
      expect(s.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
      expect(s.stateReason).to.equal('CREATED');
      expect(s.scheduledStartAt).to.deep.equal(start);
      expect(s.scheduledEndAt).to.deep.equal(inMs(45 * MINUTE, start.getTime()));
      expect(s.waitingRoomOpensAt).to.deep.equal(inMs(-15 * MINUTE, start.getTime()));
      expect(s.expiresAt).to.deep.equal(inMs(30 * MINUTE, start.getTime()));
      expect(s.latestEndAt).to.equal(undefined);
      expect([s.openedAt, s.startedAt, s.endedAt]).to.deep.equal([undefined, undefined, undefined]);
      expect(s.threadId).to.equal('');
      expect(s.createdBy).to.equal(scene.provider.userId);
      expectWithin(s.createdAt, before, after, 'created_at');
      expect(s.updatedAt).to.deep.equal(s.createdAt);
      expect(s.provider).to.equal('sandbox');
      expect(s.providerRoomId).to.equal(`sandbox-${s.sessionId}`);
      expect(s.etag).to.equal('"1"');

      // The provider caller first, then the invitees in the order given, all INVITED by the creator.
      expect(s.participants.map((p) => [p.userId, p.role, p.admitState])).to.deep.equal([
        [scene.provider.userId, PROVIDER, AdmitState.ADMIT_STATE_INVITED],
        [scene.provider2.userId, PROVIDER, AdmitState.ADMIT_STATE_INVITED],
        [scene.patient.userId, PATIENT, AdmitState.ADMIT_STATE_INVITED],
        [scene.family.userId, FAMILY, AdmitState.ADMIT_STATE_INVITED],
      ]);
      for (const p of s.participants) {
        expect(p.invitedBy, p.userId).to.equal(scene.provider.userId);
        expect(p.invitedAt, p.userId).to.deep.equal(s.createdAt);
        expect(p.admitStateChangedBy, p.userId).to.equal(scene.provider.userId);
        expect([p.joinedAt, p.admittedAt, p.leftAt, p.waitingExpiresAt, p.rejoinExpiresAt]).to.deep.equal([
          undefined,
          undefined,
          undefined,
          undefined,
          undefined,
        ]);
        expect(p.admittedBy).to.equal('');
      }

      const events = await listEvents(client, scene.staff, s.sessionId);
      expect(events.map(summary)).to.deep.equal([
        ['CREATED', 'CREATED'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
      ]);
      expect(events[0]).to.deep.include({
        sessionId: s.sessionId,
        fromState: SessionState.SESSION_STATE_UNSPECIFIED,
        toState: SessionState.SESSION_STATE_SCHEDULED,
        transition: SessionTransition.SESSION_TRANSITION_UNSPECIFIED,
        subjectUserId: '',
        actorUserId: scene.provider.userId,
        reason: '',
      });
      expect(events.slice(1).map((e) => e.subjectUserId)).to.deep.equal(s.participants.map((p) => p.userId));
      for (const e of events.slice(1)) {
        expect(e).to.deep.include({
          fromAdmitState: AdmitState.ADMIT_STATE_UNSPECIFIED,
          toAdmitState: AdmitState.ADMIT_STATE_INVITED,
          actorUserId: scene.provider.userId,
          toState: SessionState.SESSION_STATE_SCHEDULED,
        });
      }
      expect(await getSession(client, scene.patient, s.sessionId)).to.deep.equal(s);
    });

    it('opens at once when the opening has passed (CREATED_OPEN); an ad-hoc visit expires a no-show window after now', async () => {
      const scene = await sessionScene();
      // Started 10 minutes ago: its no-show window runs from now.
      const adHocStart = inMs(-10 * MINUTE);
      const before = new Date();
      const adHoc = await createSession(client, scene, { startAt: adHocStart, endAt: inMs(20 * MINUTE) });
      const after = new Date();
      expect(adHoc.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(adHoc.stateReason).to.equal('CREATED_OPEN');
      expect(adHoc.waitingRoomOpensAt).to.deep.equal(inMs(-15 * MINUTE, adHocStart.getTime()));
      expectWithin(adHoc.openedAt, before, after, 'opened_at');
      expectWithin(adHoc.expiresAt, inMs(30 * MINUTE, before.getTime()), inMs(30 * MINUTE, after.getTime()));
      const events = await listEvents(client, scene.staff, adHoc.sessionId);
      expect(events[0]).to.deep.include({
        kind: SessionEventKind.SESSION_EVENT_KIND_CREATED,
        reasonCode: 'CREATED_OPEN',
        toState: SessionState.SESSION_STATE_OPEN,
      });

      // Starts in 10 minutes: the default opening (start − 15 min) has passed; expiry from the start.
      const soon = inMs(10 * MINUTE);
      const s = await createSession(client, scene, { startAt: soon });
      expect(s.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(s.stateReason).to.equal('CREATED_OPEN');
      expect(s.expiresAt).to.deep.equal(inMs(30 * MINUTE, soon.getTime()));
      // An explicit opening in the past opens it as well, however far the start is.
      const explicit = await createSession(client, scene, { startAt: inMs(3 * HOUR), opensAt: inMs(-1000) });
      expect(explicit.state).to.equal(SessionState.SESSION_STATE_OPEN);
    });

    it('the tenant’s lead and no-show window apply; an explicit opening (up to the start itself) is kept', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { leadMs: 5 * MINUTE, noShowMs: 10 * MINUTE });
      const start = inMs(2 * HOUR);
      const s = await createSession(client, scene, { startAt: start });
      expect(s.waitingRoomOpensAt).to.deep.equal(inMs(-5 * MINUTE, start.getTime()));
      expect(s.expiresAt).to.deep.equal(inMs(10 * MINUTE, start.getTime()));
      const early = await createSession(client, scene, { startAt: start, opensAt: inMs(-HOUR, start.getTime()) });
      expect(early.waitingRoomOpensAt).to.deep.equal(inMs(-HOUR, start.getTime()));
      expect(early.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
      const atStart = await createSession(client, scene, { startAt: start, opensAt: start });
      expect(atStart.waitingRoomOpensAt).to.deep.equal(start);
      // Another tenant keeps the defaults.
      const other = await sessionScene();
      expect((await createSession(client, other, { startAt: start })).waitingRoomOpensAt).to.deep.equal(
        inMs(-15 * MINUTE, start.getTime()),
      );
    });

    it('staff and service creators do not take part; participants keep the order given', async () => {
      const scene = await sessionScene();
      for (const creator of [scene.staff, scene.service]) {
        const s = await createSession(client, scene, {
          creator,
          participants: [
            sessionParticipant(scene.patient.userId, PATIENT),
            sessionParticipant(scene.provider.userId, PROVIDER),
            sessionParticipant(scene.family.userId, FAMILY),
          ],
        });
        expect(
          s.participants.map((p) => [p.userId, p.role]),
          creator.userId,
        ).to.deep.equal([
          [scene.patient.userId, PATIENT],
          [scene.provider.userId, PROVIDER],
          [scene.family.userId, FAMILY],
        ]);
        expect(s.createdBy).to.equal(creator.userId);
        expect(s.participants.every((p) => p.invitedBy === creator.userId)).to.equal(true);
        expect((await listEvents(client, scene.staff, s.sessionId))[0]!.actorUserId).to.equal(creator.userId);
      }
      // A provider caller who lists itself keeps its place and is not added twice.
      const listed = await createSession(client, scene, {
        participants: [
          sessionParticipant(scene.patient.userId, PATIENT),
          sessionParticipant(scene.provider.userId, PROVIDER),
        ],
      });
      expect(listed.participants.map((p) => p.userId)).to.deep.equal([scene.patient.userId, scene.provider.userId]);
    });

    it('validation: INVALID_ARGUMENT naming the fields, and nothing is stored', async () => {
      const scene = await sessionScene();
      const start = inMs(2 * HOUR);
      const guests = (n: number) => Array.from({ length: n }, (_, i) => sessionParticipant(`guest-${i}`, FAMILY));
      const create = (user: TestUser, req: Partial<CreateSessionRequest>) =>
        call(
          client,
          client.createSession,
          {
            threadId: '',
            scheduledStartAt: start,
            scheduledEndAt: inMs(30 * MINUTE, start.getTime()),
            waitingRoomOpensAt: undefined,
            participants: [sessionParticipant(scene.patient.userId, PATIENT)],
            requestId: '',
            ...req,
          },
          user.md,
        );
      const asProvider = (req: Partial<CreateSessionRequest>) => create(scene.provider, req);
      await expectAll([
        [
          'missing scheduled_start_at',
          () => expectInvalid(asProvider({ scheduledStartAt: undefined }), ['scheduled_start_at'], 'no start'),
        ],
        [
          'missing scheduled_end_at',
          () => expectInvalid(asProvider({ scheduledEndAt: undefined }), ['scheduled_end_at'], 'no end'),
        ],
        ['end = start', () => expectInvalid(asProvider({ scheduledEndAt: start }), ['scheduled_end_at'], 'end=start')],
        [
          'end before start',
          () => expectInvalid(asProvider({ scheduledEndAt: inMs(-1, start.getTime()) }), ['scheduled_end_at'], 'end<'),
        ],
        [
          'end in the past',
          () =>
            expectInvalid(
              asProvider({ scheduledStartAt: inMs(-2 * HOUR), scheduledEndAt: inMs(-HOUR) }),
              ['scheduled_end_at'],
              'past end',
            ),
        ],
        [
          'longer than 8 hours',
          () =>
            expectInvalid(
              asProvider({ scheduledEndAt: inMs(8 * HOUR + 1000, start.getTime()) }),
              ['scheduled_end_at'],
              '8 h + 1 s',
            ),
        ],
        [
          'opening after the start',
          () =>
            expectInvalid(
              asProvider({ waitingRoomOpensAt: inMs(1000, start.getTime()) }),
              ['waiting_room_opens_at'],
              'opens after start',
            ),
        ],
        [
          '21 participants with the provider caller',
          () => expectInvalid(asProvider({ participants: guests(20) }), ['participants'], '20 + creator'),
        ],
        [
          '21 participants listed by staff',
          () =>
            expectInvalid(
              create(scene.staff, {
                participants: [sessionParticipant(scene.provider.userId, PROVIDER), ...guests(20)],
              }),
              ['participants'],
              '21 listed',
            ),
        ],
        [
          'duplicate user_id',
          () =>
            expectInvalid(
              asProvider({
                participants: [
                  sessionParticipant(scene.provider2.userId, PROVIDER),
                  sessionParticipant(scene.patient.userId, PATIENT),
                  sessionParticipant(scene.patient.userId, FAMILY),
                ],
              }),
              ['participants[2].user_id'],
              'duplicate',
            ),
        ],
        [
          'missing role',
          () =>
            expectInvalid(
              asProvider({
                participants: [
                  sessionParticipant(scene.patient.userId, PATIENT),
                  sessionParticipant(scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_UNSPECIFIED),
                ],
              }),
              ['participants[1].role'],
              'no role',
            ),
        ],
        [
          'unknown role value',
          () =>
            expectInvalid(
              asProvider({ participants: [sessionParticipant(scene.family.userId, 99 as ParticipantRole)] }),
              ['participants[0].role'],
              'role 99',
            ),
        ],
        [
          'empty user_id',
          () =>
            expectInvalid(
              asProvider({ participants: [sessionParticipant('', PATIENT)] }),
              ['participants[0].user_id'],
              'empty user',
            ),
        ],
        [
          'no PROVIDER participant (staff creator)',
          () => expectInvalid(create(scene.staff, {}), ['participants'], 'no provider'),
        ],
        [
          'no PROVIDER participant (service creator)',
          () => expectInvalid(create(scene.service, {}), ['participants'], 'no provider (service)'),
        ],
        [
          'a provider caller listed as PATIENT is no PROVIDER participant',
          () =>
            expectInvalid(
              asProvider({ participants: [sessionParticipant(scene.provider.userId, PATIENT)] }),
              ['participants'],
              'provider listed as patient',
            ),
        ],
        ['bad thread_id', () => expectInvalid(asProvider({ threadId: 'thread-1' }), ['thread_id'], 'thread id')],
        [
          'request_id over 128 characters',
          () => expectInvalid(asProvider({ requestId: 'r'.repeat(129) }), ['request_id'], 'long request id'),
        ],
        [
          'several violations at once',
          () =>
            expectInvalid(
              asProvider({ scheduledStartAt: undefined, threadId: 'x', requestId: 'r'.repeat(129) }),
              ['scheduled_start_at', 'thread_id', 'request_id'],
              'three at once',
            ),
        ],
      ]);
      expect(await storedSessions(scene.tenantId), 'nothing stored').to.equal(0);
      const listed = await call(
        client,
        client.listSessions,
        {
          pageSize: 0,
          pageToken: '',
          state: 0,
          threadId: '',
          participantUserId: '',
          scheduledStartFrom: undefined,
          scheduledStartUntil: undefined,
        },
        scene.staff.md,
      );
      expect(listed.sessions).to.deep.equal([]);

      // The limits themselves are accepted.
      const atLimits = await create(scene.provider, {
        scheduledEndAt: inMs(8 * HOUR, start.getTime()),
        waitingRoomOpensAt: start,
        participants: guests(19),
        requestId: 'r'.repeat(128),
      });
      expect(atLimits.session!.participants).to.have.length(20);
      expect(await storedSessions(scene.tenantId)).to.equal(1);
    });

    it('a thread link needs a thread the caller sees (NOT_FOUND THREAD_NOT_FOUND), nothing stored', async () => {
      const scene = await sessionScene();
      const notMine = await createThread(threads, scene.outsiderProvider);
      const foreignThread = await createThread(threads, await newUser(newTenant(), 'provider'));
      for (const threadId of [notMine.threadId, foreignThread.threadId, uuidv7()]) {
        const { info } = await expectError(
          createSession(client, scene, { threadId }),
          status.NOT_FOUND,
          'THREAD_NOT_FOUND',
        );
        expect(info!.metadata.thread_id).to.equal(threadId);
      }
      expect(await storedSessions(scene.tenantId)).to.equal(0);

      const mine = await createThread(threads, scene.provider, {
        participants: [participant(scene.patient.userId, PATIENT)],
      });
      const linked = await createSession(client, scene, { threadId: mine.threadId });
      expect(linked.threadId).to.equal(mine.threadId);
      // Staff see (and so may link) every thread of the tenant.
      const byStaff = await createSession(client, scene, {
        creator: scene.staff,
        threadId: notMine.threadId,
        participants: [sessionParticipant(scene.provider.userId, PROVIDER)],
      });
      expect(byStaff.threadId).to.equal(notMine.threadId);
    });
  });

  describe('CreateSession idempotency (request_id)', () => {
    it('a retry with the same request_id returns the first session, whatever the other fields say', async () => {
      const scene = await sessionScene();
      const first = await createSession(client, scene, { requestId: 'visit-42' });
      const retry = await createSession(client, scene, {
        requestId: 'visit-42',
        startAt: inMs(5 * HOUR),
        participants: [sessionParticipant(scene.patient.userId, PATIENT)],
      });
      expect(retry).to.deep.equal(first);
      expect(await storedSessions(scene.tenantId)).to.equal(1);
      expect(await listEvents(client, scene.staff, first.sessionId)).to.have.length(5);
      // The key is the caller's: another provider with the same key creates its own session.
      const other = await createSession(client, scene, { creator: scene.provider2, requestId: 'visit-42' });
      expect(other.sessionId).to.not.equal(first.sessionId);
      expect(await storedSessions(scene.tenantId)).to.equal(2);
    });

    it('20 concurrent calls with one request_id create exactly one session and all answer it', async () => {
      const scene = await sessionScene();
      const results = await Promise.all(
        Array.from({ length: 20 }, () => createSession(client, scene, { requestId: 'concurrent-1' })),
      );
      expect(new Set(results.map((s) => s.sessionId)).size).to.equal(1);
      expect(results.every((s) => s.etag === '"1"')).to.equal(true);
      expect(await storedSessions(scene.tenantId)).to.equal(1);
      const events = await listEvents(client, scene.staff, results[0]!.sessionId);
      expect(events.filter((e) => e.kind === SessionEventKind.SESSION_EVENT_KIND_CREATED)).to.have.length(1);
      expect(events).to.have.length(5);
    });

    it('racing retries leave one room open at the realtime provider, the stored session’s', async () => {
      const scene = await sessionScene();
      const results = await Promise.all(
        Array.from({ length: 20 }, () => createSession(client, scene, { requestId: 'concurrent-rooms' })),
      );
      // Each losing call opened a room before its insert lost the race; it closes it again.
      const { rows } = await db().query<{ room_id: string }>(
        'select room_id from sandbox_room where tenant_id = $1 and closed_at is null',
        [scene.tenantId],
      );
      expect(rows.map((r) => r.room_id)).to.deep.equal([results[0]!.providerRoomId]);
    });
  });

  describe('GetSession and ListSessions', () => {
    const list = (user: TestUser, req: Partial<ListSessionsRequest> = {}) =>
      call(
        client,
        client.listSessions,
        {
          pageSize: 0,
          pageToken: '',
          state: SessionState.SESSION_STATE_UNSPECIFIED,
          threadId: '',
          participantUserId: '',
          scheduledStartFrom: undefined,
          scheduledStartUntil: undefined,
          ...req,
        },
        user.md,
      );
    const ids = async (user: TestUser, req: Partial<ListSessionsRequest> = {}) =>
      (await list(user, { pageSize: 200, ...req })).sessions.map((s) => s.sessionId);

    it('earliest scheduled start first, ties by session_id; page_size 2 walks 5 sessions without gap or duplicate', async () => {
      const scene = await sessionScene();
      const base = Date.now() + HOUR;
      // Created out of order; two share a start.
      const offsets = [3, 1, 2, 1, 4].map((h) => base + h * HOUR);
      const created: VirtualSession[] = [];
      for (const start of offsets) created.push(await createSession(client, scene, { startAt: new Date(start) }));
      const expected = [...created]
        .sort(
          (a, b) =>
            a.scheduledStartAt!.getTime() - b.scheduledStartAt!.getTime() || a.sessionId.localeCompare(b.sessionId),
        )
        .map((s) => s.sessionId);

      const pages: string[][] = [];
      let pageToken = '';
      do {
        const page = await list(scene.patient, { pageSize: 2, pageToken });
        pages.push(page.sessions.map((s) => s.sessionId));
        pageToken = page.nextPageToken;
      } while (pageToken !== '' && pages.length < 10);
      expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 1]);
      expect(pages.flat()).to.deep.equal(expected);

      // page_size 0 means the default (50): one page.
      const all = await list(scene.patient);
      expect(all.sessions.map((s) => s.sessionId)).to.deep.equal(expected);
      expect(all.nextPageToken).to.equal('');
      // A listed session is exactly what GetSession returns.
      expect(all.sessions[0]).to.deep.equal(await getSession(client, scene.patient, expected[0]!));
    });

    it('page_size 0 is 50; negative page_size and a token of another filter are INVALID_ARGUMENT', async () => {
      const scene = await sessionScene();
      await Promise.all(
        Array.from({ length: 51 }, (_, i) =>
          createSession(client, scene, {
            creator: scene.staff,
            startAt: inMs(HOUR + i * MINUTE),
            participants: [sessionParticipant(scene.provider.userId, PROVIDER)],
          }),
        ),
      );
      const first = await list(scene.staff);
      expect(first.sessions).to.have.length(50);
      expect(first.nextPageToken).to.not.equal('');
      const rest = await list(scene.staff, { pageToken: first.nextPageToken });
      expect(rest.sessions).to.have.length(1);
      expect(rest.nextPageToken).to.equal('');

      await expectInvalid(list(scene.staff, { pageSize: -1 }), ['page_size'], 'negative page size');
      const page = await list(scene.staff, { pageSize: 2 });
      await expectAll([
        [
          'token with another state',
          () =>
            expectInvalid(
              list(scene.staff, { pageToken: page.nextPageToken, state: SessionState.SESSION_STATE_SCHEDULED }),
              ['page_token'],
              'other state',
            ),
        ],
        [
          'token with another participant',
          () =>
            expectInvalid(
              list(scene.staff, { pageToken: page.nextPageToken, participantUserId: scene.provider.userId }),
              ['page_token'],
              'other participant',
            ),
        ],
        [
          'token with a lower bound',
          () =>
            expectInvalid(
              list(scene.staff, { pageToken: page.nextPageToken, scheduledStartFrom: new Date() }),
              ['page_token'],
              'other from',
            ),
        ],
        ['garbage token', () => expectInvalid(list(scene.staff, { pageToken: 'abc' }), ['page_token'], 'garbage')],
        ['bad thread_id', () => expectInvalid(list(scene.staff, { threadId: 'nope' }), ['thread_id'], 'thread id')],
        ['unknown state', () => expectInvalid(list(scene.staff, { state: 99 as SessionState }), ['state'], 'state')],
      ]);
      // The same token with the same filter goes on.
      expect((await list(scene.staff, { pageSize: 2, pageToken: page.nextPageToken })).sessions).to.have.length(2);
    });

    it('filters: state, thread_id, participant_user_id, scheduled_start_from (inclusive) and _until (exclusive)', async () => {
      const scene = await sessionScene();
      const thread = await createThread(threads, scene.provider, {
        participants: [participant(scene.patient.userId, PATIENT)],
      });
      const t1 = new Date(Date.now() + HOUR);
      const t2 = new Date(t1.getTime() + HOUR);
      const t3 = new Date(t2.getTime() + HOUR);
      const a = await createSession(client, scene, { startAt: t1, threadId: thread.threadId });
      const b = await createSession(client, scene, { startAt: t2 });
      await transition(client, scene.provider, b.sessionId, CANCEL);
      const c = await createSession(client, scene, {
        startAt: t3,
        participants: [sessionParticipant(scene.family.userId, FAMILY)],
      });
      const S = SessionState;
      await expectAll(
        (
          [
            ['every state', {}, [a, b, c]],
            ['CANCELLED', { state: S.SESSION_STATE_CANCELLED }, [b]],
            ['SCHEDULED', { state: S.SESSION_STATE_SCHEDULED }, [a, c]],
            ['OPEN', { state: S.SESSION_STATE_OPEN }, []],
            ['thread', { threadId: thread.threadId }, [a]],
            ['thread (upper case)', { threadId: thread.threadId.toUpperCase() }, [a]],
            ['patient', { participantUserId: scene.patient.userId }, [a, b]],
            ['family', { participantUserId: scene.family.userId }, [a, b, c]],
            ['from t2', { scheduledStartFrom: t2 }, [b, c]],
            ['until t2', { scheduledStartUntil: t2 }, [a]],
            ['from t2 until t3', { scheduledStartFrom: t2, scheduledStartUntil: t3 }, [b]],
            [
              'patient, from t2, SCHEDULED',
              { participantUserId: scene.patient.userId, scheduledStartFrom: t2, state: S.SESSION_STATE_SCHEDULED },
              [],
            ],
          ] as [string, Partial<ListSessionsRequest>, VirtualSession[]][]
        ).map(([what, filter, want]): [string, () => Promise<void>] => [
          what,
          async () => {
            expect(await ids(scene.staff, filter), what).to.deep.equal(want.map((s) => s.sessionId));
          },
        ]),
      );
    });

    it('participants list only their sessions; staff and service every session of the tenant; as_of is set', async () => {
      const scene = await sessionScene();
      const a = await createSession(client, scene);
      const b = await createSession(client, scene, {
        startAt: inMs(HOUR),
        participants: [sessionParticipant(scene.patient.userId, PATIENT)],
      });
      const c = await createSession(client, scene, {
        creator: scene.staff,
        startAt: inMs(2 * HOUR),
        participants: [sessionParticipant(scene.provider2.userId, PROVIDER)],
      });
      // Another tenant's session never shows.
      const foreign = await sessionScene();
      await createSession(client, foreign);
      expect(await ids(scene.patient)).to.deep.equal([a.sessionId, b.sessionId]);
      expect(await ids(scene.patient, { participantUserId: scene.patient.userId })).to.deep.equal([
        a.sessionId,
        b.sessionId,
      ]);
      expect(await ids(scene.family)).to.deep.equal([a.sessionId]);
      expect(await ids(scene.provider)).to.deep.equal([a.sessionId, b.sessionId]);
      expect(await ids(scene.provider2)).to.deep.equal([a.sessionId, c.sessionId]);
      expect(await ids(scene.outsiderProvider)).to.deep.equal([]);
      expect(await ids(scene.outsiderPatient)).to.deep.equal([]);
      for (const governor of [scene.staff, scene.service]) {
        expect(await ids(governor), governor.userId).to.deep.equal([a.sessionId, b.sessionId, c.sessionId]);
        expect(await ids(governor, { participantUserId: scene.provider2.userId })).to.deep.equal([
          a.sessionId,
          c.sessionId,
        ]);
      }
      const before = new Date();
      const page = await list(scene.patient);
      expectWithin(page.asOf, before, new Date(), 'as_of');
    });
  });

  describe('UpdateSession', () => {
    it('etag: required (INVALID_ARGUMENT); stale → ABORTED ETAG_MISMATCH and nothing changes', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: inMs(2 * HOUR) });
      const before = await observe(client, scene, s.sessionId);
      const later = { scheduledEndAt: inMs(3 * HOUR) };
      await expectInvalid(update(client, scene.staff, s, ['scheduled_end_at'], later, ''), ['etag'], 'no etag');
      for (const etag of ['"0"', '"2"', '1', 'W/"1"']) {
        const { info } = await expectError(
          update(client, scene.staff, s, ['scheduled_end_at'], later, etag),
          status.ABORTED,
          'ETAG_MISMATCH',
        );
        expect(info!.metadata.current_etag, etag).to.equal('"1"');
      }
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
      // After a change, the etag read before it is stale.
      const changed = (await update(client, scene.staff, s, ['scheduled_end_at'], later)).session!;
      expect(changed.etag).to.equal('"2"');
      const after = await observe(client, scene, s.sessionId);
      await expectError(
        update(client, scene.provider, s, ['scheduled_end_at'], { scheduledEndAt: inMs(4 * HOUR) }),
        status.ABORTED,
        'ETAG_MISMATCH',
      );
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(after);
    });

    it('update_mask and values are validated (INVALID_ARGUMENT naming the field), nothing changes', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: inMs(2 * HOUR) });
      const before = await observe(client, scene, s.sessionId);
      const start = s.scheduledStartAt!;
      const upd = (paths: string[], values: Partial<VirtualSession> = {}) =>
        update(client, scene.staff, s, paths, values);
      await expectAll([
        ['empty mask', () => expectInvalid(upd([]), ['update_mask'], 'empty mask')],
        ['unknown path', () => expectInvalid(upd(['state']), ['update_mask'], 'state path')],
        ['output-only path', () => expectInvalid(upd(['expires_at']), ['update_mask'], 'expires_at path')],
        [
          'a good and a bad path',
          () => expectInvalid(upd(['scheduled_end_at', 'participants']), ['update_mask'], 'mixed paths'),
        ],
        [
          'start named but unset',
          () =>
            expectInvalid(
              upd(['scheduled_start_at'], { scheduledStartAt: undefined }),
              ['session.scheduled_start_at'],
              'unset start',
            ),
        ],
        [
          'end not after start',
          () =>
            expectInvalid(upd(['scheduled_end_at'], { scheduledEndAt: start }), ['session.scheduled_end_at'], 'end'),
        ],
        [
          'end in the past',
          () =>
            expectInvalid(
              upd(['scheduled_start_at', 'scheduled_end_at'], {
                scheduledStartAt: inMs(-2 * HOUR),
                scheduledEndAt: inMs(-HOUR),
              }),
              ['session.scheduled_end_at'],
              'past end',
            ),
        ],
        [
          'over 8 hours',
          () =>
            expectInvalid(
              upd(['scheduled_end_at'], { scheduledEndAt: inMs(8 * HOUR + 1000, start.getTime()) }),
              ['session.scheduled_end_at'],
              '8 h',
            ),
        ],
        [
          'opening after start',
          () =>
            expectInvalid(
              upd(['waiting_room_opens_at'], { waitingRoomOpensAt: inMs(1000, start.getTime()) }),
              ['session.waiting_room_opens_at'],
              'opening',
            ),
        ],
        [
          'bad thread_id',
          () => expectInvalid(upd(['thread_id'], { threadId: 'nope' }), ['session.thread_id'], 'thread id'),
        ],
      ]);
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
    });

    it('SCHEDULED: rescheduling keeps the waiting room’s lead, records RESCHEDULED and moves the etag', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { leadMs: 10 * MINUTE });
      const start = inMs(2 * HOUR);
      const s = await createSession(client, scene, { startAt: start, opensAt: inMs(-40 * MINUTE, start.getTime()) });
      const newStart = inMs(HOUR, start.getTime());
      const before = new Date();
      const moved = (
        await update(client, scene.provider, s, ['scheduled_start_at', 'scheduled_end_at'], {
          scheduledStartAt: newStart,
          scheduledEndAt: inMs(30 * MINUTE, newStart.getTime()),
          // Not in the mask: ignored.
          waitingRoomOpensAt: inMs(-5 * HOUR, newStart.getTime()),
          threadId: uuidv7(),
        })
      ).session!;
      expect(moved.scheduledStartAt).to.deep.equal(newStart);
      expect(moved.scheduledEndAt).to.deep.equal(inMs(30 * MINUTE, newStart.getTime()));
      expect(moved.waitingRoomOpensAt, 'keeps its 40 min lead').to.deep.equal(inMs(-40 * MINUTE, newStart.getTime()));
      expect(moved.threadId).to.equal('');
      expect(moved.expiresAt).to.deep.equal(inMs(30 * MINUTE, newStart.getTime()));
      expect(moved.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
      expect(moved.stateReason).to.equal('CREATED');
      expect(moved.etag).to.equal('"2"');
      expectWithin(moved.updatedAt, before, new Date(), 'updated_at');
      expect(await getSession(client, scene.staff, s.sessionId)).to.deep.equal(moved);
      const events = await listEvents(client, scene.staff, s.sessionId);
      expect(events.map(summary).at(-1)).to.deep.equal(['RESCHEDULED', 'RESCHEDULED']);
      expect(events.at(-1)).to.deep.include({
        fromState: SessionState.SESSION_STATE_SCHEDULED,
        toState: SessionState.SESSION_STATE_SCHEDULED,
        transition: SessionTransition.SESSION_TRANSITION_UNSPECIFIED,
        actorUserId: scene.provider.userId,
        subjectUserId: '',
      });

      // waiting_room_opens_at in the mask but unset: back to the tenant's default lead (10 min here).
      const byDefault = (
        await update(client, scene.staff, moved, ['waiting_room_opens_at'], { waitingRoomOpensAt: undefined })
      ).session!;
      expect(byDefault.waitingRoomOpensAt).to.deep.equal(inMs(-10 * MINUTE, newStart.getTime()));
      expect(byDefault.etag).to.equal('"3"');
      // An explicit opening in the mask is taken as given.
      const explicit = (
        await update(client, scene.service, byDefault, ['waiting_room_opens_at'], {
          waitingRoomOpensAt: inMs(-HOUR, newStart.getTime()),
        })
      ).session!;
      expect(explicit.waitingRoomOpensAt).to.deep.equal(inMs(-HOUR, newStart.getTime()));
      const after = await listEvents(client, scene.staff, s.sessionId);
      expect(after.slice(events.length).map((e) => [summary(e), e.actorUserId])).to.deep.equal([
        [['RESCHEDULED', 'RESCHEDULED'], scene.staff.userId],
        [['RESCHEDULED', 'RESCHEDULED'], scene.service.userId],
      ]);
    });

    it('unchanged values change nothing: no event, same etag', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: inMs(2 * HOUR) });
      const before = await observe(client, scene, s.sessionId);
      const same = (
        await update(
          client,
          scene.staff,
          s,
          ['scheduled_start_at', 'scheduled_end_at', 'waiting_room_opens_at', 'thread_id'],
          {},
        )
      ).session!;
      expect(same).to.deep.equal(before.session);
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
    });

    it('rescheduled so that the waiting room opening has passed: OPEN (WAITING_ROOM_OPENED) at once', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: inMs(2 * HOUR) });
      const start = inMs(5 * MINUTE);
      const res = (
        await update(client, scene.staff, s, ['scheduled_start_at', 'scheduled_end_at'], {
          scheduledStartAt: start,
          scheduledEndAt: inMs(30 * MINUTE, start.getTime()),
        })
      ).session!;
      expect(res.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(res.stateReason).to.equal('WAITING_ROOM_OPENED');
      expect(res.waitingRoomOpensAt).to.deep.equal(inMs(-15 * MINUTE, start.getTime()));
      expect(res.openedAt).to.be.instanceOf(Date);
      expect(res.etag).to.equal('"2"');
      const events = await listEvents(client, scene.staff, s.sessionId);
      expect(events.slice(5).map(summary)).to.deep.equal([
        ['RESCHEDULED', 'RESCHEDULED'],
        ['TRANSITIONED', 'WAITING_ROOM_OPENED'],
      ]);
      expect(events[6]).to.deep.include({
        fromState: SessionState.SESSION_STATE_SCHEDULED,
        toState: SessionState.SESSION_STATE_OPEN,
        transition: SessionTransition.SESSION_TRANSITION_UNSPECIFIED,
      });
      // The patient may now wait.
      const joined = await joinSession(client, scene.patient, s.sessionId);
      expect(joined.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_WAITING);
    });

    it('OPEN and IN_PROGRESS: start and opening → SESSION_NOT_SCHEDULED; end and thread_id may change', async () => {
      const scene = await sessionScene();
      const thread = await createThread(threads, scene.provider);
      for (const state of ['OPEN', 'IN_PROGRESS'] as const) {
        const s = await reach(client, scene, state);
        const before = await observe(client, scene, s.sessionId);
        for (const [paths, values] of [
          [['scheduled_start_at'], { scheduledStartAt: inMs(5 * MINUTE) }],
          [['waiting_room_opens_at'], { waitingRoomOpensAt: inMs(-MINUTE) }],
          [['scheduled_end_at', 'scheduled_start_at'], { scheduledStartAt: s.scheduledStartAt }],
        ] as [string[], Partial<VirtualSession>][]) {
          const { info } = await expectError(
            update(client, scene.staff, s, paths, values),
            status.FAILED_PRECONDITION,
            'SESSION_NOT_SCHEDULED',
          );
          expect(info!.metadata.state, `${state} ${paths.join()}`).to.equal(`SESSION_STATE_${state}`);
        }
        expect(await observe(client, scene, s.sessionId), state).to.deep.equal(before);

        const newEnd = inMs(2 * HOUR);
        const ended = (await update(client, scene.provider, s, ['scheduled_end_at'], { scheduledEndAt: newEnd }))
          .session!;
        expect(ended.scheduledEndAt).to.deep.equal(newEnd);
        expect(ended.state).to.equal(s.state);
        expect(ended.etag).to.not.equal(s.etag);
        if (state === 'IN_PROGRESS') {
          // The latest end follows the new planned end (plus the 30 min overrun; under the 4 h maximum).
          expect(ended.latestEndAt).to.deep.equal(inMs(30 * MINUTE, newEnd.getTime()));
        }
        const linked = (await update(client, scene.staff, ended, ['thread_id'], { threadId: thread.threadId }))
          .session!;
        expect(linked.threadId).to.equal(thread.threadId);
        const unlinked = (await update(client, scene.staff, linked, ['thread_id'], { threadId: '' })).session!;
        expect(unlinked.threadId).to.equal('');
        const events = await listEvents(client, scene.staff, s.sessionId);
        expect(events.slice(before.events.length).map(summary), state).to.deep.equal([
          ['RESCHEDULED', 'RESCHEDULED'],
          ['RESCHEDULED', 'RESCHEDULED'],
          ['RESCHEDULED', 'RESCHEDULED'],
        ]);
      }
    });

    it('a thread the caller cannot see: NOT_FOUND THREAD_NOT_FOUND, nothing changes', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: inMs(2 * HOUR) });
      const notMine = await createThread(threads, scene.outsiderProvider);
      const before = await observe(client, scene, s.sessionId);
      for (const threadId of [notMine.threadId, uuidv7()]) {
        await expectError(
          update(client, scene.provider, s, ['thread_id'], { threadId }),
          status.NOT_FOUND,
          'THREAD_NOT_FOUND',
        );
      }
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
    });

    it('a closed session cannot change: FAILED_PRECONDITION SESSION_CLOSED, nothing changes', async () => {
      const scene = await sessionScene();
      for (const state of ['CANCELLED', 'ENDED'] as const) {
        const s = await reach(client, scene, state);
        const before = await observe(client, scene, s.sessionId);
        const { info } = await expectError(
          update(client, scene.staff, s, ['scheduled_end_at'], { scheduledEndAt: inMs(5 * HOUR) }),
          status.FAILED_PRECONDITION,
          'SESSION_CLOSED',
        );
        expect(info!.metadata.state).to.equal(`SESSION_STATE_${state}`);
        expect(await observe(client, scene, s.sessionId), state).to.deep.equal(before);
      }
    });
  });

  describe('UpdateSession on the server’s clock', () => {
    const clocked = useClockApp();
    let c: VirtualSessionServiceClient;
    before(() => (c = sessionClient(clocked.address)));
    after(() => c.close());

    it('changing only the end or the thread of an open ad-hoc visit does not move its no-show expiry', async () => {
      const scene = await sessionScene();
      const t0 = clocked.clock.now();
      const s = await createSession(c, scene, {
        now: t0,
        startAt: inMs(-10 * MINUTE, t0.getTime()),
        endAt: inMs(HOUR, t0.getTime()),
      });
      expect(s.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(s.expiresAt).to.deep.equal(inMs(30 * MINUTE, t0.getTime()));
      clocked.clock.advance(20 * MINUTE);
      const res = (
        await update(c, scene.staff, s, ['scheduled_end_at'], { scheduledEndAt: inMs(2 * HOUR, t0.getTime()) })
      ).session!;
      expect(res.expiresAt, 'expires_at after changing scheduled_end_at').to.deep.equal(s.expiresAt);
    });

    it('an overrunning visit (planned end passed) may still get a thread link', async () => {
      const scene = await sessionScene();
      const thread = await createThread(threads, scene.provider);
      const t0 = clocked.clock.now();
      const s = await createSession(c, scene, { now: t0, startAt: t0, endAt: inMs(30 * MINUTE, t0.getTime()) });
      await joinSession(c, scene.provider, s.sessionId);
      await joinSession(c, scene.patient, s.sessionId);
      const started = (await admit(c, scene.provider, s.sessionId, scene.patient.userId)).session!;
      expect(started.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      // 40 minutes in: the planned end has passed, the latest end (end + 30 min overrun) has not.
      clocked.clock.advance(40 * MINUTE);
      const res = (await update(c, scene.staff, started, ['thread_id'], { threadId: thread.threadId })).session!;
      expect(res.threadId).to.equal(thread.threadId);
      expect(res.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
    });
  });

  describe('RequestTransition: the server’s decisions', () => {
    type Decision = string; // '→ STATE' accepted and moved; 'unchanged' accepted as is; else the rejection reason
    // Providers of the session, staff and service (proto: RequestTransition).
    // prettier-ignore
    const GOVERNING: [Reachable, Record<'OPEN' | 'END' | 'CANCEL', Decision>][] = [
      ['SCHEDULED',   { OPEN: '→ OPEN',                  END: 'SESSION_NOT_STARTED', CANCEL: '→ CANCELLED' }],
      ['OPEN',        { OPEN: 'unchanged',               END: 'SESSION_NOT_STARTED', CANCEL: '→ CANCELLED' }],
      ['IN_PROGRESS', { OPEN: 'SESSION_ALREADY_STARTED', END: '→ ENDED',             CANCEL: 'SESSION_ALREADY_STARTED' }],
      ['ENDED',       { OPEN: 'SESSION_CLOSED',          END: 'unchanged',           CANCEL: 'SESSION_CLOSED' }],
      ['CANCELLED',   { OPEN: 'SESSION_CLOSED',          END: 'SESSION_CLOSED',      CANCEL: 'unchanged' }],
    ];
    // Any other participant: OPEN and CANCEL are not theirs to suggest; their END means "I leave".
    const PARTICIPANT: Record<'OPEN' | 'END' | 'CANCEL', Decision> = {
      OPEN: 'ROLE_NOT_ALLOWED',
      END: 'CALLER_LEFT_ONLY',
      CANCEL: 'ROLE_NOT_ALLOWED',
    };
    const VERB = { OPEN: 'OPENED', END: 'ENDED', CANCEL: 'CANCELLED' } as const;
    const CALLERS = [
      ['provider', 'PROVIDER'],
      ['staff', 'STAFF'],
      ['service', 'SERVICE'],
      ['patient', undefined],
    ] as const;

    for (const [from, decisions] of GOVERNING) {
      describe(`in ${from}`, () => {
        let scene: SessionScene;
        before(async () => (scene = await sessionScene()));

        for (const [who, role] of CALLERS) {
          for (const t of ['OPEN', 'END', 'CANCEL'] as const) {
            const decision = role ? decisions[t] : PARTICIPANT[t];
            it(`${t} by ${who}: ${decision}`, async () => {
              const caller = scene[who];
              const s = await reach(client, scene, from);
              const before = await observe(client, scene, s.sessionId);
              const res = await transition(
                client,
                caller,
                s.sessionId,
                SessionTransition[`SESSION_TRANSITION_${t}`],
                'why',
              );
              const after = await observe(client, scene, s.sessionId);
              const added = after.events.slice(before.events.length);
              expect(res.session).to.deep.equal(after.session);
              expect(res.state).to.equal(after.session.state);
              // The caller's entry: set for participants, unset for staff and service.
              const takesPart = who === 'provider' || who === 'patient';
              expect(res.participant?.userId, 'participant').to.equal(takesPart ? caller.userId : undefined);

              if (decision.startsWith('→ ')) {
                const to = decision.slice(2);
                const code = `${VERB[t]}_BY_${role}`;
                expect([res.accepted, stateName(res.state), res.rejectionReason]).to.deep.equal([true, to, '']);
                expect(after.session.stateReason).to.equal(code);
                expect(after.session.etag).to.not.equal(before.session.etag);
                expect(added[0]).to.deep.include({
                  kind: SessionEventKind.SESSION_EVENT_KIND_TRANSITIONED,
                  fromState: before.session.state,
                  toState: res.state,
                  transition: SessionTransition[`SESSION_TRANSITION_${t}`],
                  reasonCode: code,
                  reason: 'why',
                  actorUserId: caller.userId,
                  subjectUserId: '',
                });
                // Closing a running visit: whoever is in the room leaves (SESSION_CLOSED); nothing else.
                const inRoom = before.session.participants.filter(
                  (p) => p.admitState === AdmitState.ADMIT_STATE_ADMITTED,
                );
                expect(added.slice(1).map(summary)).to.deep.equal(inRoom.map(() => ['LEFT', 'SESSION_CLOSED']));
                if (to === 'ENDED' || to === 'CANCELLED') expect(after.session.endedAt).to.be.instanceOf(Date);
                if (to === 'OPEN') expect(after.session.openedAt).to.be.instanceOf(Date);
              } else if (decision === 'unchanged') {
                expect([res.accepted, stateName(res.state), res.rejectionReason]).to.deep.equal([true, from, '']);
                expect(after, 'an accepted suggestion that changes nothing records nothing').to.deep.equal(before);
              } else {
                expect([res.accepted, stateName(res.state), res.rejectionReason]).to.deep.equal([
                  false,
                  from,
                  decision,
                ]);
                expect(added[0]).to.deep.include({
                  kind: SessionEventKind.SESSION_EVENT_KIND_TRANSITION_REJECTED,
                  fromState: before.session.state,
                  toState: before.session.state,
                  transition: SessionTransition[`SESSION_TRANSITION_${t}`],
                  reasonCode: decision,
                  reason: 'why',
                  actorUserId: caller.userId,
                });
                const wasIn = [AdmitState.ADMIT_STATE_ADMITTED, AdmitState.ADMIT_STATE_WAITING];
                const leaves =
                  decision === 'CALLER_LEFT_ONLY' &&
                  wasIn.includes(participantOf(before.session, caller.userId).admitState);
                if (leaves) {
                  expect(added.slice(1).map(summary)).to.deep.equal([['LEFT', 'CALLER_LEFT_ONLY']]);
                  expect(res.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_LEFT);
                  expect(after.session.state).to.equal(before.session.state);
                } else {
                  expect(added, 'only the rejection is recorded').to.have.length(1);
                  expect(after.session, 'the session is unchanged').to.deep.equal(before.session);
                }
              }
            });
          }
        }
      });
    }

    it('a patient’s END during the visit: rejected CALLER_LEFT_ONLY, the patient LEFT, the visit goes on', async () => {
      const scene = await sessionScene();
      const s = await reach(client, scene, 'IN_PROGRESS');
      const before = await listEvents(client, scene.staff, s.sessionId);
      const res = await transition(client, scene.patient, s.sessionId, END, 'bad connection');
      expect(res.accepted).to.equal(false);
      expect(res.rejectionReason).to.equal('CALLER_LEFT_ONLY');
      expect(res.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(res.participant).to.deep.include({
        userId: scene.patient.userId,
        admitState: AdmitState.ADMIT_STATE_LEFT,
        admitStateChangedBy: scene.patient.userId,
      });
      expect(res.participant!.leftAt).to.be.instanceOf(Date);
      expect(res.participant!.rejoinExpiresAt, 'the default policy allows a rejoin').to.be.instanceOf(Date);
      expect(participantOf(res.session!, scene.provider.userId).admitState).to.equal(AdmitState.ADMIT_STATE_ADMITTED);
      const added = (await listEvents(client, scene.staff, s.sessionId)).slice(before.length);
      expect(added.map(summary)).to.deep.equal([
        ['TRANSITION_REJECTED', 'CALLER_LEFT_ONLY'],
        ['LEFT', 'CALLER_LEFT_ONLY'],
      ]);
      expect(added[1]).to.deep.include({
        subjectUserId: scene.patient.userId,
        fromAdmitState: AdmitState.ADMIT_STATE_ADMITTED,
        toAdmitState: AdmitState.ADMIT_STATE_LEFT,
        actorUserId: scene.patient.userId,
        reason: 'bad connection',
      });
      // Asking again: rejected again (recorded), the patient stays LEFT.
      const again = await transition(client, scene.patient, s.sessionId, END);
      expect(again.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_LEFT);
      expect(again.session!.etag).to.equal(res.session!.etag);
    });

    it('a retry of an accepted suggestion records nothing; state_reason names who decided', async () => {
      const scene = await sessionScene();
      const s = await reach(client, scene, 'SCHEDULED');
      const opened = await transition(client, scene.provider, s.sessionId, OPEN);
      expect(opened.session!.stateReason).to.equal('OPENED_BY_PROVIDER');
      const before = await observe(client, scene, s.sessionId);
      for (const user of [scene.provider, scene.provider2, scene.staff, scene.service]) {
        const again = await transition(client, user, s.sessionId, OPEN);
        expect([again.accepted, again.state]).to.deep.equal([true, SessionState.SESSION_STATE_OPEN]);
      }
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
      const cancelled = await transition(client, scene.service, s.sessionId, CANCEL);
      expect(cancelled.session!.stateReason).to.equal('CANCELLED_BY_SERVICE');
      const ended = await reach(client, scene, 'IN_PROGRESS');
      const byStaff = await transition(client, scene.staff, ended.sessionId, END);
      expect(byStaff.session!.stateReason).to.equal('ENDED_BY_STAFF');
      expect(byStaff.session!.latestEndAt).to.equal(undefined);
    });

    it('transition UNSPECIFIED or unknown, or a reason over 1000 characters: INVALID_ARGUMENT, nothing recorded', async () => {
      const scene = await sessionScene();
      const s = await reach(client, scene, 'OPEN');
      const before = await observe(client, scene, s.sessionId);
      await expectAll([
        [
          'UNSPECIFIED',
          () =>
            expectInvalid(
              transition(client, scene.staff, s.sessionId, SessionTransition.SESSION_TRANSITION_UNSPECIFIED),
              ['transition'],
              'unspecified',
            ),
        ],
        [
          'value 99',
          () =>
            expectInvalid(
              transition(client, scene.staff, s.sessionId, 99 as SessionTransition),
              ['transition'],
              'unknown',
            ),
        ],
        [
          'reason too long',
          () =>
            expectInvalid(transition(client, scene.staff, s.sessionId, CANCEL, 'r'.repeat(1001)), ['reason'], 'long'),
        ],
        [
          'bad session id',
          () => expectInvalid(transition(client, scene.staff, 'visit-1', CANCEL), ['session_id'], 'session id'),
        ],
      ]);
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
      // A reason of exactly 1000 characters is recorded as given.
      await transition(client, scene.staff, s.sessionId, CANCEL, 'r'.repeat(1000));
      expect((await listEvents(client, scene.staff, s.sessionId)).at(-1)!.reason).to.have.length(1000);
    });
  });

  describe('InviteParticipant', () => {
    const invite = (user: TestUser, sessionId: string, userId: string, role: ParticipantRole) =>
      call(client, client.inviteParticipant, { sessionId, participant: sessionParticipant(userId, role) }, user.md);

    it('a new participant: INVITED at the end of the list, with an INVITED event; the etag moves', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const interpreter = `interp-${uuidv7()}`;
      const before = new Date();
      const res = await invite(scene.staff, s.sessionId, interpreter, ParticipantRole.PARTICIPANT_ROLE_INTERPRETER);
      expect(res.participant).to.deep.include({
        userId: interpreter,
        role: ParticipantRole.PARTICIPANT_ROLE_INTERPRETER,
        admitState: AdmitState.ADMIT_STATE_INVITED,
        invitedBy: scene.staff.userId,
        admitStateChangedBy: scene.staff.userId,
      });
      expectWithin(res.participant!.invitedAt, before, new Date(), 'invited_at');
      expect(res.session!.participants.map((p) => p.userId)).to.deep.equal([
        ...s.participants.map((p) => p.userId),
        interpreter,
      ]);
      expect(res.session!.etag).to.equal('"2"');
      const last = (await listEvents(client, scene.staff, s.sessionId)).at(-1)!;
      expect(last).to.deep.include({
        kind: SessionEventKind.SESSION_EVENT_KIND_INVITED,
        reasonCode: 'INVITED',
        subjectUserId: interpreter,
        fromAdmitState: AdmitState.ADMIT_STATE_UNSPECIFIED,
        toAdmitState: AdmitState.ADMIT_STATE_INVITED,
        actorUserId: scene.staff.userId,
      });
      // A provider of the session and a service caller may invite too.
      expect((await invite(scene.provider2, s.sessionId, 'guest-a', FAMILY)).participant!.invitedBy).to.equal(
        scene.provider2.userId,
      );
      expect((await invite(scene.service, s.sessionId, 'guest-b', FAMILY)).participant!.invitedBy).to.equal(
        scene.service.userId,
      );
    });

    it('someone who takes part in any other state: unchanged, nothing recorded', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.provider, s.sessionId); // ADMITTED
      await joinSession(client, scene.patient, s.sessionId); // WAITING
      const before = await observe(client, scene, s.sessionId);
      for (const [user, role] of [
        [scene.provider, PROVIDER],
        [scene.patient, PATIENT],
        [scene.family, FAMILY],
      ] as const) {
        const res = await invite(scene.staff, s.sessionId, user.userId, role);
        expect(res.participant, user.userId).to.deep.equal(participantOf(before.session, user.userId));
        expect(res.session).to.deep.equal(before.session);
      }
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
    });

    it('DENIED or REMOVED: back to INVITED (recorded), and may join again', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.patient, s.sessionId);
      await deny(client, scene.provider, s.sessionId, scene.patient.userId);
      await removeParticipant(client, scene.provider, s.sessionId, scene.family.userId);
      for (const [user, role, from] of [
        [scene.patient, PATIENT, AdmitState.ADMIT_STATE_DENIED],
        [scene.family, FAMILY, AdmitState.ADMIT_STATE_REMOVED],
      ] as const) {
        const before = await getSession(client, scene.staff, s.sessionId);
        expect(participantOf(before, user.userId).admitState).to.equal(from);
        const res = await invite(scene.provider2, s.sessionId, user.userId, role);
        expect(res.participant).to.deep.include({
          admitState: AdmitState.ADMIT_STATE_INVITED,
          invitedBy: scene.provider2.userId,
          admitStateChangedBy: scene.provider2.userId,
        });
        expect(res.session!.etag).to.not.equal(before.etag);
        const last = (await listEvents(client, scene.staff, s.sessionId)).at(-1)!;
        expect(last).to.deep.include({
          kind: SessionEventKind.SESSION_EVENT_KIND_INVITED,
          reasonCode: 'INVITED',
          subjectUserId: user.userId,
          fromAdmitState: from,
          toAdmitState: AdmitState.ADMIT_STATE_INVITED,
          actorUserId: scene.provider2.userId,
        });
        const joined = await joinSession(client, user, s.sessionId);
        expect(joined.participant!.admitState, user.userId).to.equal(AdmitState.ADMIT_STATE_WAITING);
      }
    });

    it('a different role → PARTICIPANT_ROLE_CONFLICT; a 21st → SESSION_FULL; closed → SESSION_CLOSED; nothing changes', async () => {
      const scene = await sessionScene();
      const guests = Array.from({ length: 16 }, (_, i) => sessionParticipant(`guest-${i}`, FAMILY));
      const s = await createSession(client, scene, {
        participants: [
          sessionParticipant(scene.provider2.userId, PROVIDER),
          sessionParticipant(scene.patient.userId, PATIENT),
          ...guests,
        ],
      });
      expect(s.participants).to.have.length(19);
      const before = await observe(client, scene, s.sessionId);
      const conflict = await expectError(
        invite(scene.staff, s.sessionId, scene.patient.userId, FAMILY),
        status.FAILED_PRECONDITION,
        'PARTICIPANT_ROLE_CONFLICT',
      );
      expect(conflict.info!.metadata).to.include({
        user_id: scene.patient.userId,
        admit_state: 'ADMIT_STATE_INVITED',
      });
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);

      const twentieth = await invite(scene.staff, s.sessionId, scene.family.userId, FAMILY);
      expect(twentieth.session!.participants).to.have.length(20);
      const full = await observe(client, scene, s.sessionId);
      const { info } = await expectError(
        invite(scene.staff, s.sessionId, 'one-too-many', FAMILY),
        status.FAILED_PRECONDITION,
        'SESSION_FULL',
      );
      expect(info!.metadata.max_participants).to.equal('20');
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(full);
      // Inviting someone who already takes part is still fine at 20.
      await invite(scene.staff, s.sessionId, 'guest-3', FAMILY);

      await transition(client, scene.staff, s.sessionId, CANCEL);
      const closed = await observe(client, scene, s.sessionId);
      const refused = await expectError(
        invite(scene.staff, s.sessionId, scene.family.userId, FAMILY),
        status.FAILED_PRECONDITION,
        'SESSION_CLOSED',
      );
      expect(refused.info!.metadata.state).to.equal('SESSION_STATE_CANCELLED');
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(closed);
    });

    it('validation: user_id and role are required', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const before = await observe(client, scene, s.sessionId);
      await expectAll([
        [
          'no participant',
          () =>
            expectInvalid(
              call(
                client,
                client.inviteParticipant,
                { sessionId: s.sessionId, participant: undefined },
                scene.staff.md,
              ),
              ['participant.user_id', 'participant.role'],
              'no participant',
            ),
        ],
        [
          'no role',
          () =>
            expectInvalid(
              invite(scene.staff, s.sessionId, 'guest', ParticipantRole.PARTICIPANT_ROLE_UNSPECIFIED),
              ['participant.role'],
              'no role',
            ),
        ],
        [
          'user_id too long',
          () =>
            expectInvalid(invite(scene.staff, s.sessionId, 'u'.repeat(129), FAMILY), ['participant.user_id'], 'long'),
        ],
      ]);
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
    });
  });

  describe('ListSessionEvents', () => {
    const page = (user: TestUser, sessionId: string, pageSize: number, pageToken = '', subjectUserId = '') =>
      call(client, client.listSessionEvents, { sessionId, pageSize, pageToken, subjectUserId }, user.md);

    it('oldest first; page_size 2 walks the history without gap or duplicate; subject_user_id filters', async () => {
      const scene = await sessionScene();
      const s = await reach(client, scene, 'IN_PROGRESS');
      await transition(client, scene.provider, s.sessionId, END);
      const all = await listEvents(client, scene.staff, s.sessionId);
      expect(all.map(summary)).to.deep.equal([
        ['CREATED', 'CREATED_OPEN'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
        ['INVITED', 'INVITED'],
        ['JOINED', 'JOINED_ADMITTED'],
        ['JOINED', 'JOINED_WAITING'],
        ['ADMITTED', 'ADMITTED'],
        ['TRANSITIONED', 'FIRST_PARTICIPANT_ADMITTED'],
        ['TRANSITIONED', 'ENDED_BY_PROVIDER'],
        ['LEFT', 'SESSION_CLOSED'],
        ['LEFT', 'SESSION_CLOSED'],
      ]);
      const order = all.map((e) => [e.occurredAt!.getTime(), e.eventId] as const);
      const sorted = [...order].sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1]));
      expect(order).to.deep.equal(sorted);
      expect(all.every((e) => e.sessionId === s.sessionId)).to.equal(true);

      const pages: string[][] = [];
      let token = '';
      do {
        const res = await page(scene.provider, s.sessionId, 2, token);
        pages.push(res.events.map((e) => e.eventId));
        token = res.nextPageToken;
      } while (token !== '' && pages.length < 20);
      expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 2, 2, 2, 2]);
      expect(pages.flat()).to.deep.equal(all.map((e) => e.eventId));

      const aboutPatient = await listEvents(client, scene.service, s.sessionId, scene.patient.userId);
      expect(aboutPatient.map(summary)).to.deep.equal([
        ['INVITED', 'INVITED'],
        ['JOINED', 'JOINED_WAITING'],
        ['ADMITTED', 'ADMITTED'],
        ['LEFT', 'SESSION_CLOSED'],
      ]);
      expect(aboutPatient.every((e) => e.subjectUserId === scene.patient.userId)).to.equal(true);
      expect(aboutPatient[2]!.actorUserId).to.equal(scene.provider.userId);
      expect(await listEvents(client, scene.staff, s.sessionId, 'nobody')).to.deep.equal([]);
      // page_size 0 is the default (50): the whole history.
      const whole = await page(scene.staff, s.sessionId, 0);
      expect(whole.events).to.deep.equal(all);
      expect(whole.nextPageToken).to.equal('');
    });

    it('negative page_size, a token of another filter, a bad session id: INVALID_ARGUMENT', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const first = await page(scene.staff, s.sessionId, 2);
      const other = await createSession(client, scene);
      await expectAll([
        ['negative', () => expectInvalid(page(scene.staff, s.sessionId, -1), ['page_size'], 'negative')],
        [
          'token with a subject',
          () =>
            expectInvalid(
              page(scene.staff, s.sessionId, 2, first.nextPageToken, scene.patient.userId),
              ['page_token'],
              'subject',
            ),
        ],
        [
          'token of another session',
          () => expectInvalid(page(scene.staff, other.sessionId, 2, first.nextPageToken), ['page_token'], 'session'),
        ],
        ['bad session id', () => expectInvalid(page(scene.staff, 'visit', 2), ['session_id'], 'session id')],
      ]);
    });
  });
});
