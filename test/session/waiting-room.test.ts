import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import {
  AdmitState,
  type SessionEvent,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { call, expectError, newUser, type TestUser } from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  admit,
  createSession,
  deny,
  getSession,
  joinSession,
  leaveSession,
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
import { expectWithin } from '../support/threads.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const {
  ADMIT_STATE_INVITED: INVITED,
  ADMIT_STATE_WAITING: WAITING,
  ADMIT_STATE_ADMITTED: ADMITTED,
  ADMIT_STATE_DENIED: DENIED,
  ADMIT_STATE_REMOVED: REMOVED,
  ADMIT_STATE_LEFT: LEFT,
  ADMIT_STATE_EXPIRED: EXPIRED,
} = AdmitState;
const K = SessionEventKind;

/** An event as `KIND:REASON_CODE` (kind without its prefix), for compact history assertions. */
function brief(e: SessionEvent): string {
  return `${K[e.kind].replace('SESSION_EVENT_KIND_', '')}:${e.reasonCode}`;
}

/** Events recorded after the first `skip` ones, as `KIND:REASON_CODE`. */
async function newEvents(client: VirtualSessionServiceClient, scene: SessionScene, id: string, skip: number) {
  return (await listEvents(client, scene.staff, id)).slice(skip).map(brief);
}

/** The single event of `kind` about `subject` with `reasonCode`; fails if there is not exactly one. */
function onlyEvent(events: SessionEvent[], kind: SessionEventKind, reasonCode: string, subject = ''): SessionEvent {
  const found = events.filter((e) => e.kind === kind && e.reasonCode === reasonCode && e.subjectUserId === subject);
  expect(found, `one ${K[kind]} ${reasonCode} ${subject}`).to.have.length(1);
  return found[0]!;
}

function invite(client: VirtualSessionServiceClient, by: TestUser, sessionId: string, userId: string, role: number) {
  return call(client, client.inviteParticipant, { sessionId, participant: sessionParticipant(userId, role) }, by.md);
}

function transition(client: VirtualSessionServiceClient, by: TestUser, sessionId: string, t: SessionTransition) {
  return call(client, client.requestTransition, { sessionId, transition: t, reason: 'test' }, by.md);
}

/** A session with the provider in the room, the patient admitted: IN_PROGRESS. */
async function runningVisit(client: VirtualSessionServiceClient, scene: SessionScene, now?: Date) {
  const s = await createSession(client, scene, now ? { now } : {});
  await joinSession(client, scene.provider, s.sessionId);
  await joinSession(client, scene.patient, s.sessionId);
  const res = await admit(client, scene.provider, s.sessionId, scene.patient.userId);
  expect(res.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
  return res.session!;
}

describe('sessions: the waiting room', () => {
  let client: VirtualSessionServiceClient;
  before(() => (client = sessionClient()));
  after(() => client.close());

  describe('JoinSession', () => {
    it('refuses a non-provider before the waiting room opens, naming when it opens; records nothing', async () => {
      const scene = await sessionScene();
      const start = new Date(Date.now() + 2 * HOUR);
      const s = await createSession(client, scene, { startAt: start });
      expect(s.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
      for (const who of [scene.patient, scene.family]) {
        const { info } = await expectError(
          joinSession(client, who, s.sessionId),
          status.FAILED_PRECONDITION,
          'WAITING_ROOM_NOT_OPEN',
        );
        expect(info!.metadata.waiting_room_opens_at).to.equal(s.waitingRoomOpensAt!.toISOString());
        expect(new Date(info!.metadata.waiting_room_opens_at!).getTime()).to.equal(start.getTime() - 15 * MINUTE);
      }
      const after = await getSession(client, scene.staff, s.sessionId);
      expect(after.etag).to.equal(s.etag);
      expect(after.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
      expect(participantOf(after, scene.patient.userId).admitState).to.equal(INVITED);
      expect(await newEvents(client, scene, s.sessionId, 5)).to.deep.equal([]);
    });

    it('opens a SCHEDULED session when a provider of it joins, and admits that provider with a credential', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, { startAt: new Date(Date.now() + 2 * HOUR) });
      const t0 = new Date();
      const res = await joinSession(client, scene.provider, s.sessionId);
      const t1 = new Date();
      expect(res.session!.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(res.session!.stateReason).to.equal('PROVIDER_JOINED');
      expectWithin(res.session!.openedAt, t0, t1, 'opened_at');
      const me = res.participant!;
      expect(me.userId).to.equal(scene.provider.userId);
      expect(me.admitState).to.equal(ADMITTED);
      expect(me.admittedBy).to.equal(scene.provider.userId);
      expect(me.admitStateChangedBy).to.equal(scene.provider.userId);
      expectWithin(me.joinedAt, t0, t1, 'joined_at');
      expectWithin(me.admittedAt, t0, t1, 'admitted_at');
      expect(me.waitingExpiresAt).to.equal(undefined);
      const cred = res.credential!;
      expect(cred.token).to.be.a('string').and.not.equal('');
      expect(cred.provider).to.equal('sandbox');
      expect(cred.providerRoomId).to.equal(s.providerRoomId).and.equal(`sandbox-${s.sessionId}`);
      expect(cred.expiresAt!.getTime()).to.be.within(t0.getTime() + 299_000, t1.getTime() + 300_000);
      expect(await env.app.rooms.connect(cred.token)).to.deep.equal({
        ok: true,
        tenantId: scene.tenantId,
        roomId: s.providerRoomId,
        userId: scene.provider.userId,
      });

      const events = (await listEvents(client, scene.staff, s.sessionId)).slice(5);
      expect(events.map(brief)).to.deep.equal(['TRANSITIONED:PROVIDER_JOINED', 'JOINED:JOINED_ADMITTED']);
      expect(events[0]).to.include({
        fromState: SessionState.SESSION_STATE_SCHEDULED,
        toState: SessionState.SESSION_STATE_OPEN,
        transition: SessionTransition.SESSION_TRANSITION_UNSPECIFIED,
      });
      expect(events[1]).to.include({
        subjectUserId: scene.provider.userId,
        fromAdmitState: INVITED,
        toAdmitState: ADMITTED,
        actorUserId: scene.provider.userId,
      });
      expectWithin(events[1]!.occurredAt, t0, t1, 'occurred_at');

      // Now open: the patient gets in line.
      expect((await joinSession(client, scene.patient, s.sessionId)).participant!.admitState).to.equal(WAITING);
    });

    it('puts a patient who joins an OPEN session in WAITING (no provider there), with no credential', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { waitingMs: 7 * MINUTE });
      const s = await createSession(client, scene);
      expect(s.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(s.participants.every((p) => p.admitState === INVITED)).to.equal(true);
      const t0 = new Date();
      const res = await joinSession(client, scene.patient, s.sessionId);
      const t1 = new Date();
      expect(res.credential).to.equal(undefined);
      const me = res.participant!;
      expect(me.admitState).to.equal(WAITING);
      expect(me.admitStateChangedBy).to.equal(scene.patient.userId);
      expect(me.admittedBy).to.equal('');
      expect(me.admittedAt).to.equal(undefined);
      expectWithin(me.joinedAt, t0, t1, 'joined_at');
      expect(me.waitingExpiresAt!.getTime() - me.joinedAt!.getTime()).to.equal(7 * MINUTE);
      expect(res.session!.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(participantOf(res.session!, scene.provider.userId).admitState).to.equal(INVITED);

      const joined = onlyEvent(
        await listEvents(client, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_JOINED,
        'JOINED_WAITING',
        scene.patient.userId,
      );
      expect(joined).to.include({ fromAdmitState: INVITED, toAdmitState: WAITING, actorUserId: scene.patient.userId });
      expect(joined.occurredAt!.getTime()).to.equal(me.joinedAt!.getTime());
    });

    it('changes nothing when a WAITING participant joins again', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const first = await joinSession(client, scene.patient, s.sessionId);
      const count = (await listEvents(client, scene.staff, s.sessionId)).length;
      const again = await joinSession(client, scene.patient, s.sessionId);
      expect(again.participant).to.deep.equal(first.participant);
      expect(again.credential).to.equal(undefined);
      expect(again.session!.etag).to.equal(first.session!.etag);
      expect(await newEvents(client, scene, s.sessionId, count)).to.deep.equal([]);
    });

    it('gives an ADMITTED participant a fresh credential on every join, recording nothing', async () => {
      const scene = await sessionScene();
      const s = await runningVisit(client, scene);
      const a = await joinSession(client, scene.patient, s.sessionId);
      const count = (await listEvents(client, scene.staff, s.sessionId)).length;
      const b = await joinSession(client, scene.patient, s.sessionId);
      expect(b.participant).to.deep.equal(a.participant);
      expect(b.participant!.admitState).to.equal(ADMITTED);
      expect(b.participant!.admittedBy).to.equal(scene.provider.userId);
      expect(b.session!.etag).to.equal(a.session!.etag);
      expect(b.credential!.token).to.not.equal(a.credential!.token);
      expect(b.credential!.expiresAt!.getTime()).to.be.at.least(a.credential!.expiresAt!.getTime());
      for (const cred of [a.credential!, b.credential!]) {
        expect((await env.app.rooms.connect(cred.token)).ok).to.equal(true);
      }
      expect(await newEvents(client, scene, s.sessionId, count)).to.deep.equal([]);
    });

    it('refuses staff and service who take no part (NOT_A_PARTICIPANT); others do not see it', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      for (const who of [scene.staff, scene.service]) {
        await expectError(joinSession(client, who, s.sessionId), status.PERMISSION_DENIED, 'NOT_A_PARTICIPANT');
      }
      for (const who of [scene.outsiderProvider, scene.outsiderPatient, scene.foreignStaff]) {
        await expectError(joinSession(client, who, s.sessionId), status.NOT_FOUND, 'SESSION_NOT_FOUND');
      }
      expect((await getSession(client, scene.staff, s.sessionId)).etag).to.equal(s.etag);
    });

    it('refuses DENIED and REMOVED participants until invited again; then they wait again', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      await deny(client, scene.provider, id, scene.patient.userId);
      await joinSession(client, scene.family, id);
      await admit(client, scene.provider, id, scene.family.userId);
      await removeParticipant(client, scene.provider, id, scene.family.userId);

      const denied = await expectError(
        joinSession(client, scene.patient, id),
        status.FAILED_PRECONDITION,
        'PARTICIPANT_DENIED',
      );
      expect(denied.info!.metadata).to.include({ admit_state: 'ADMIT_STATE_DENIED', user_id: scene.patient.userId });
      const removed = await expectError(
        joinSession(client, scene.family, id),
        status.FAILED_PRECONDITION,
        'PARTICIPANT_REMOVED',
      );
      expect(removed.info!.metadata).to.include({ admit_state: 'ADMIT_STATE_REMOVED', user_id: scene.family.userId });
      const count = (await listEvents(client, scene.staff, id)).length;

      await invite(client, scene.provider, id, scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
      await invite(client, scene.provider2, id, scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY);
      const p = await joinSession(client, scene.patient, id);
      const f = await joinSession(client, scene.family, id);
      expect(p.participant!.admitState).to.equal(WAITING);
      expect(p.credential).to.equal(undefined);
      expect(f.participant!.admitState).to.equal(WAITING);
      expect(f.credential).to.equal(undefined);
      expect(await newEvents(client, scene, id, count)).to.deep.equal([
        'INVITED:INVITED',
        'INVITED:INVITED',
        'JOINED:JOINED_WAITING',
        'JOINED:JOINED_WAITING',
      ]);
    });

    it('refuses joining a closed session (SESSION_CLOSED, naming the state)', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const cancelled = await transition(
        client,
        scene.provider,
        s.sessionId,
        SessionTransition.SESSION_TRANSITION_CANCEL,
      );
      expect(cancelled.state).to.equal(SessionState.SESSION_STATE_CANCELLED);
      for (const who of [scene.patient, scene.provider]) {
        const { info } = await expectError(
          joinSession(client, who, s.sessionId),
          status.FAILED_PRECONDITION,
          'SESSION_CLOSED',
        );
        expect(info!.metadata.state).to.equal('SESSION_STATE_CANCELLED');
      }
    });

    it('makes a PROVIDER-listed participant whose token is not a provider wait like a patient', async () => {
      const scene = await sessionScene();
      const participants = [
        sessionParticipant(scene.provider2.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
        sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
      ];
      const scheduled = await createSession(client, scene, { participants, startAt: new Date(Date.now() + HOUR) });
      await expectError(
        joinSession(client, scene.patient, scheduled.sessionId),
        status.FAILED_PRECONDITION,
        'WAITING_ROOM_NOT_OPEN',
      );
      expect((await getSession(client, scene.staff, scheduled.sessionId)).state).to.equal(
        SessionState.SESSION_STATE_SCHEDULED,
      );

      const open = await createSession(client, scene, { participants });
      const res = await joinSession(client, scene.patient, open.sessionId);
      expect(res.participant!.role).to.equal(ParticipantRole.PARTICIPANT_ROLE_PROVIDER);
      expect(res.participant!.admitState).to.equal(WAITING);
      expect(res.credential).to.equal(undefined);
      // Nor may it admit anyone.
      await expectError(
        admit(client, scene.patient, open.sessionId, scene.patient.userId),
        status.PERMISSION_DENIED,
        'ROLE_NOT_ALLOWED',
      );
      const admitted = await admit(client, scene.provider, open.sessionId, scene.patient.userId);
      expect(admitted.participant!.admitState).to.equal(ADMITTED);
    });
  });

  describe('no lobby bypass: room credentials', () => {
    it('gives none to a WAITING caller; a removed participant’s credential is refused, a fresh one works', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const id = s.sessionId;
      expect((await joinSession(client, scene.patient, id)).credential).to.equal(undefined);
      await admit(client, scene.provider, id, scene.patient.userId);
      const old = (await joinSession(client, scene.patient, id)).credential!;
      expect((await env.app.rooms.connect(old.token)).ok).to.equal(true);

      await removeParticipant(client, scene.provider, id, scene.patient.userId);
      expect(await env.app.rooms.connect(old.token)).to.deep.equal({ ok: false, reason: 'REVOKED' });

      await invite(client, scene.provider, id, scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
      const waiting = await joinSession(client, scene.patient, id);
      expect(waiting.participant!.admitState).to.equal(WAITING);
      expect(waiting.credential).to.equal(undefined);
      await admit(client, scene.provider, id, scene.patient.userId);
      const fresh = (await joinSession(client, scene.patient, id)).credential!;
      expect(await env.app.rooms.connect(fresh.token)).to.include({ ok: true, userId: scene.patient.userId });
      expect(await env.app.rooms.connect(old.token)).to.deep.equal({ ok: false, reason: 'REVOKED' });
    });

    it('revokes room access on leaving; a rejoin gets a fresh credential that works', async () => {
      const scene = await sessionScene();
      const s = await runningVisit(client, scene);
      const cred = (await joinSession(client, scene.patient, s.sessionId)).credential!;
      await leaveSession(client, scene.patient, s.sessionId);
      expect(await env.app.rooms.connect(cred.token)).to.deep.equal({ ok: false, reason: 'REVOKED' });
      const back = await joinSession(client, scene.patient, s.sessionId);
      expect(back.participant!.admitState).to.equal(ADMITTED);
      expect((await env.app.rooms.connect(back.credential!.token)).ok).to.equal(true);
    });

    it('closes the room when the session closes', async () => {
      const scene = await sessionScene();
      const s = await runningVisit(client, scene);
      const patient = (await joinSession(client, scene.patient, s.sessionId)).credential!;
      const provider = (await joinSession(client, scene.provider, s.sessionId)).credential!;
      await transition(client, scene.staff, s.sessionId, SessionTransition.SESSION_TRANSITION_END);
      for (const cred of [patient, provider]) {
        expect(await env.app.rooms.connect(cred.token)).to.deep.equal({ ok: false, reason: 'ROOM_CLOSED' });
      }
    });

    it('refuses tampered and expired tokens', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const cred = (await joinSession(client, scene.provider, s.sessionId)).credential!;
      const [body, signature] = cred.token.split('.') as [string, string];
      const claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as Record<string, unknown>;
      expect(claims.u).to.equal(scene.provider.userId);
      const forged = Buffer.from(JSON.stringify({ ...claims, u: scene.patient.userId })).toString('base64url');
      const flipped = signature.slice(0, -1) + (signature.endsWith('A') ? 'B' : 'A');
      for (const token of [`${forged}.${signature}`, `${body}.${flipped}`, body, '', 'x.y']) {
        expect(await env.app.rooms.connect(token), token).to.deep.equal({ ok: false, reason: 'BAD_TOKEN' });
      }
      const exp = cred.expiresAt!.getTime();
      expect((await env.app.rooms.connect(cred.token, new Date(exp - 1))).ok).to.equal(true);
      expect(await env.app.rooms.connect(cred.token, new Date(exp))).to.deep.equal({ ok: false, reason: 'EXPIRED' });
      expect(await env.app.rooms.connect(cred.token, new Date(exp + HOUR))).to.deep.equal({
        ok: false,
        reason: 'EXPIRED',
      });
    });
  });

  describe('AdmitParticipant, DenyParticipant, RemoveSessionParticipant', () => {
    it('admits a WAITING participant once: admitted_by, an ADMITTED event with actor and reason', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      const t0 = new Date();
      const res = await call(
        client,
        client.admitParticipant,
        { sessionId: id, userId: scene.patient.userId, reason: 'identity checked' },
        scene.provider2.md,
      );
      const t1 = new Date();
      const p = res.participant!;
      expect(p.admitState).to.equal(ADMITTED);
      expect(p.admittedBy).to.equal(scene.provider2.userId);
      expect(p.admitStateChangedBy).to.equal(scene.provider2.userId);
      expectWithin(p.admittedAt, t0, t1, 'admitted_at');
      expect(p.waitingExpiresAt).to.equal(undefined);
      const event = onlyEvent(
        await listEvents(client, scene.staff, id),
        K.SESSION_EVENT_KIND_ADMITTED,
        'ADMITTED',
        scene.patient.userId,
      );
      expect(event).to.include({
        fromAdmitState: WAITING,
        toAdmitState: ADMITTED,
        actorUserId: scene.provider2.userId,
        reason: 'identity checked',
      });
      expectWithin(event.occurredAt, t0, t1, 'occurred_at');

      const count = (await listEvents(client, scene.staff, id)).length;
      const again = await admit(client, scene.provider, id, scene.patient.userId);
      expect(again.participant).to.deep.equal(p);
      expect(again.session!.etag).to.equal(res.session!.etag);
      expect(await newEvents(client, scene, id, count)).to.deep.equal([]);
    });

    it('refuses to admit or deny a participant who is not waiting, naming its admit_state', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, {
        participants: [
          sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          sessionParticipant(scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
          sessionParticipant(scene.outsiderPatient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        ],
      });
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      await deny(client, scene.provider, id, scene.patient.userId);
      await joinSession(client, scene.outsiderPatient, id);
      await leaveSession(client, scene.outsiderPatient, id);
      const before = await getSession(client, scene.staff, id);
      const cases: [TestUser, string][] = [
        [scene.family, 'ADMIT_STATE_INVITED'],
        [scene.patient, 'ADMIT_STATE_DENIED'],
        [scene.outsiderPatient, 'ADMIT_STATE_LEFT'],
      ];
      for (const [who, state] of cases) {
        const { info } = await expectError(
          admit(client, scene.provider, id, who.userId),
          status.FAILED_PRECONDITION,
          'PARTICIPANT_NOT_WAITING',
        );
        expect(info!.metadata).to.include({ admit_state: state, user_id: who.userId });
      }
      for (const who of [scene.family, scene.outsiderPatient]) {
        await expectError(
          deny(client, scene.provider, id, who.userId),
          status.FAILED_PRECONDITION,
          'PARTICIPANT_NOT_WAITING',
        );
      }
      expect(await getSession(client, scene.staff, id)).to.deep.equal(before);
    });

    it('answers PARTICIPANT_NOT_FOUND for a user who takes no part', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      for (const act of [admit, deny, removeParticipant]) {
        await expectError(
          act(client, scene.provider, s.sessionId, scene.outsiderPatient.userId),
          status.NOT_FOUND,
          'PARTICIPANT_NOT_FOUND',
        );
      }
    });

    it('lets only providers of the session admit, deny and remove (others: ROLE_NOT_ALLOWED)', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.patient, s.sessionId);
      for (const who of [scene.staff, scene.service, scene.family, scene.patient]) {
        for (const act of [admit, deny, removeParticipant]) {
          await expectError(
            act(client, who, s.sessionId, scene.patient.userId),
            status.PERMISSION_DENIED,
            'ROLE_NOT_ALLOWED',
          );
        }
      }
      expect(
        participantOf(await getSession(client, scene.staff, s.sessionId), scene.patient.userId).admitState,
      ).to.equal(WAITING);
    });

    it('denies a WAITING participant once, with an event; a second deny records nothing', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.patient, s.sessionId);
      const res = await call(
        client,
        client.denyParticipant,
        { sessionId: s.sessionId, userId: scene.patient.userId, reason: 'wrong visit' },
        scene.provider.md,
      );
      expect(res.participant!.admitState).to.equal(DENIED);
      expect(res.participant!.admitStateChangedBy).to.equal(scene.provider.userId);
      expect(res.participant!.waitingExpiresAt).to.equal(undefined);
      const event = onlyEvent(
        await listEvents(client, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_DENIED,
        'DENIED',
        scene.patient.userId,
      );
      expect(event).to.include({
        fromAdmitState: WAITING,
        toAdmitState: DENIED,
        actorUserId: scene.provider.userId,
        reason: 'wrong visit',
      });
      const count = (await listEvents(client, scene.staff, s.sessionId)).length;
      const again = await deny(client, scene.provider2, s.sessionId, scene.patient.userId);
      expect(again.participant).to.deep.equal(res.participant);
      expect(again.session!.etag).to.equal(res.session!.etag);
      expect(await newEvents(client, scene, s.sessionId, count)).to.deep.equal([]);
    });

    it('removes a participant in any state, idempotently; a provider cannot remove itself', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, {
        participants: [
          sessionParticipant(scene.provider2.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
          sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          sessionParticipant(scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
          sessionParticipant(scene.outsiderPatient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        ],
      });
      const id = s.sessionId;
      const waiting = await newUserIn(scene, id, ParticipantRole.PARTICIPANT_ROLE_INTERPRETER);
      const denied = await newUserIn(scene, id, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
      await joinSession(client, scene.patient, id);
      await admit(client, scene.provider, id, scene.patient.userId); // ADMITTED
      await joinSession(client, scene.outsiderPatient, id);
      await leaveSession(client, scene.outsiderPatient, id); // LEFT
      await joinSession(client, waiting, id); // WAITING
      await joinSession(client, denied, id);
      await deny(client, scene.provider, id, denied.userId); // DENIED
      const from: [string, AdmitState][] = [
        [scene.family.userId, INVITED],
        [scene.provider2.userId, INVITED],
        [scene.patient.userId, ADMITTED],
        [scene.outsiderPatient.userId, LEFT],
        [waiting.userId, WAITING],
        [denied.userId, DENIED],
      ];
      for (const [userId, state] of from) {
        const count = (await listEvents(client, scene.staff, id)).length;
        const t0 = new Date();
        const res = await call(
          client,
          client.removeSessionParticipant,
          { sessionId: id, userId, reason: `bye ${userId}` },
          scene.provider.md,
        );
        const t1 = new Date();
        expect(res.participant!.admitState, userId).to.equal(REMOVED);
        expect(res.participant!.admitStateChangedBy).to.equal(scene.provider.userId);
        const events = (await listEvents(client, scene.staff, id)).slice(count);
        expect(events.map(brief), userId).to.deep.equal(['REMOVED:REMOVED']);
        expect(events[0]).to.include({
          subjectUserId: userId,
          fromAdmitState: state,
          toAdmitState: REMOVED,
          actorUserId: scene.provider.userId,
          reason: `bye ${userId}`,
        });
        expectWithin(events[0]!.occurredAt, t0, t1, 'occurred_at');
        const again = await removeParticipant(client, scene.provider, id, userId);
        expect(again.participant).to.deep.equal(res.participant);
        expect(again.session!.etag).to.equal(res.session!.etag);
        expect(await newEvents(client, scene, id, count + 1), userId).to.deep.equal([]);
      }
      await expectError(
        removeParticipant(client, scene.provider, id, scene.provider.userId),
        status.FAILED_PRECONDITION,
        'CANNOT_REMOVE_SELF',
      );
    });

    it('refuses admit and remove on a closed session (SESSION_CLOSED)', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.patient, s.sessionId);
      const res = await transition(client, scene.staff, s.sessionId, SessionTransition.SESSION_TRANSITION_CANCEL);
      expect(participantOf(res.session!, scene.patient.userId).admitState).to.equal(EXPIRED);
      for (const act of [admit, removeParticipant]) {
        const { info } = await expectError(
          act(client, scene.provider, s.sessionId, scene.patient.userId),
          status.FAILED_PRECONDITION,
          'SESSION_CLOSED',
        );
        expect(info!.metadata.state).to.equal('SESSION_STATE_CANCELLED');
      }
      expect((await getSession(client, scene.staff, s.sessionId)).etag).to.equal(res.session!.etag);
    });
  });

  describe('the visit starts', () => {
    it('OPEN → IN_PROGRESS exactly when a PROVIDER participant and one other are ADMITTED', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      await joinSession(client, scene.family, id);
      // Two non-providers in the room, no provider: not started.
      expect((await admit(client, scene.provider, id, scene.patient.userId)).session!.state).to.equal(
        SessionState.SESSION_STATE_OPEN,
      );
      const both = await admit(client, scene.provider, id, scene.family.userId);
      expect(both.session!.state).to.equal(SessionState.SESSION_STATE_OPEN);
      expect(both.session!.startedAt).to.equal(undefined);
      expect(both.session!.expiresAt).to.be.instanceOf(Date);
      const t0 = new Date();
      const res = await joinSession(client, scene.provider2, id);
      const t1 = new Date();
      const started = res.session!;
      expect(started.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(started.stateReason).to.equal('FIRST_PARTICIPANT_ADMITTED');
      expectWithin(started.startedAt, t0, t1, 'started_at');
      expect(started.latestEndAt).to.be.instanceOf(Date);
      expect(started.expiresAt).to.equal(undefined);
      const events = await listEvents(client, scene.staff, id);
      const ev = onlyEvent(events, K.SESSION_EVENT_KIND_TRANSITIONED, 'FIRST_PARTICIPANT_ADMITTED');
      expect(ev).to.include({
        fromState: SessionState.SESSION_STATE_OPEN,
        toState: SessionState.SESSION_STATE_IN_PROGRESS,
        actorUserId: scene.provider2.userId,
        transition: SessionTransition.SESSION_TRANSITION_UNSPECIFIED,
      });
      expect(events.map(brief).slice(-2)).to.deep.equal([
        'JOINED:JOINED_ADMITTED',
        'TRANSITIONED:FIRST_PARTICIPANT_ADMITTED',
      ]);
    });

    it('starts when a provider in the room admits the first participant (actor: the admitter)', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      expect((await joinSession(client, scene.provider, s.sessionId)).session!.state).to.equal(
        SessionState.SESSION_STATE_OPEN,
      );
      await joinSession(client, scene.patient, s.sessionId);
      const res = await admit(client, scene.provider2, s.sessionId, scene.patient.userId);
      expect(res.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      const ev = onlyEvent(
        await listEvents(client, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_TRANSITIONED,
        'FIRST_PARTICIPANT_ADMITTED',
      );
      expect(ev.actorUserId).to.equal(scene.provider2.userId);
    });

    it('starts with a provider and another provider', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      expect((await joinSession(client, scene.provider, s.sessionId)).session!.state).to.equal(
        SessionState.SESSION_STATE_OPEN,
      );
      const res = await joinSession(client, scene.provider2, s.sessionId);
      expect(res.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(res.session!.stateReason).to.equal('FIRST_PARTICIPANT_ADMITTED');
      onlyEvent(
        await listEvents(client, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_TRANSITIONED,
        'FIRST_PARTICIPANT_ADMITTED',
      );
    });
  });

  describe('LeaveSession and rejoining', () => {
    it('WAITING → LEFT with a LEFT event and the reason; other states do not change', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene, {
        participants: [
          sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          sessionParticipant(scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
          sessionParticipant(scene.outsiderPatient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        ],
      });
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      const t0 = new Date();
      const res = await leaveSession(client, scene.patient, id, 'no time today');
      const t1 = new Date();
      const p = res.participant!;
      expect(p.admitState).to.equal(LEFT);
      expectWithin(p.leftAt, t0, t1, 'left_at');
      expect(p.waitingExpiresAt).to.equal(undefined);
      expect(p.rejoinExpiresAt, 'no rejoin grace: never admitted').to.equal(undefined);
      const ev = onlyEvent(await listEvents(client, scene.staff, id), K.SESSION_EVENT_KIND_LEFT, 'LEFT', p.userId);
      expect(ev).to.include({
        fromAdmitState: WAITING,
        toAdmitState: LEFT,
        actorUserId: scene.patient.userId,
        reason: 'no time today',
      });
      expectWithin(ev.occurredAt, t0, t1, 'occurred_at');

      // INVITED, DENIED and LEFT stay as they are; nothing recorded.
      await joinSession(client, scene.outsiderPatient, id);
      await deny(client, scene.provider, id, scene.outsiderPatient.userId);
      const count = (await listEvents(client, scene.staff, id)).length;
      const etag = (await getSession(client, scene.staff, id)).etag;
      const cases: [TestUser, AdmitState][] = [
        [scene.family, INVITED],
        [scene.outsiderPatient, DENIED],
        [scene.patient, LEFT],
      ];
      for (const [who, state] of cases) {
        const r = await leaveSession(client, who, id, 'again');
        expect(r.participant!.admitState, who.userId).to.equal(state);
        expect(r.session!.etag).to.equal(etag);
      }
      expect(await newEvents(client, scene, id, count)).to.deep.equal([]);
      await expectError(leaveSession(client, scene.staff, id), status.PERMISSION_DENIED, 'NOT_A_PARTICIPANT');
    });

    it('ADMITTED → LEFT with a rejoin grace; joining within it readmits without an admit', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { rejoinGraceMs: 9 * MINUTE });
      const s = await runningVisit(client, scene);
      const id = s.sessionId;
      const before = participantOf(s, scene.patient.userId);
      const left = await leaveSession(client, scene.patient, id, 'network');
      const p = left.participant!;
      expect(p.admitState).to.equal(LEFT);
      expect(p.rejoinExpiresAt!.getTime() - p.leftAt!.getTime()).to.equal(9 * MINUTE);
      expect(left.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      const count = (await listEvents(client, scene.staff, id)).length;

      const t0 = new Date();
      const back = await joinSession(client, scene.patient, id);
      const t1 = new Date();
      const q = back.participant!;
      expect(q.admitState).to.equal(ADMITTED);
      expect(q.admittedBy).to.equal(before.admittedBy).and.equal(scene.provider.userId);
      expect(q.admitStateChangedBy).to.equal('');
      expect(q.rejoinExpiresAt).to.equal(undefined);
      expectWithin(q.joinedAt, t0, t1, 'joined_at');
      expect(back.credential!.token).to.not.equal('');
      const events = (await listEvents(client, scene.staff, id)).slice(count);
      expect(events.map(brief)).to.deep.equal(['JOINED:REJOINED_WITHIN_GRACE']);
      expect(events[0]).to.include({ fromAdmitState: LEFT, toAdmitState: ADMITTED, actorUserId: '' });
    });

    it('with rejoin_allowed=false: LEFT without rejoin_expires_at, and a join waits again', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { rejoinAllowed: false });
      const s = await runningVisit(client, scene);
      const left = await leaveSession(client, scene.patient, s.sessionId);
      expect(left.participant!.admitState).to.equal(LEFT);
      expect(left.participant!.rejoinExpiresAt).to.equal(undefined);
      const back = await joinSession(client, scene.patient, s.sessionId);
      expect(back.participant!.admitState).to.equal(WAITING);
      expect(back.credential).to.equal(undefined);
      const events = await listEvents(client, scene.staff, s.sessionId);
      expect(events.map(brief).at(-1)).to.equal('JOINED:JOINED_WAITING');
      expect(events.at(-1)).to.include({ fromAdmitState: LEFT, actorUserId: scene.patient.userId });
    });
  });

  describe('with the server’s clock moved by hand', () => {
    const holder = useClockApp();
    let clock: VirtualSessionServiceClient;
    before(() => (clock = sessionClient(holder.address)));
    after(() => clock.close());
    // The manual clock was made when the suite loaded; never let it lag real time.
    beforeEach(() => holder.clock.set(new Date(Math.max(Date.now(), holder.clock.now().getTime()))));

    it('after the rejoin grace a join waits again; just before it, it readmits', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { rejoinGraceMs: MINUTE });
      const s = await runningVisit(clock, scene, holder.clock.now());
      await joinSession(clock, scene.family, s.sessionId);
      await admit(clock, scene.provider, s.sessionId, scene.family.userId);
      const p = (await leaveSession(clock, scene.patient, s.sessionId)).participant!;
      const f = (await leaveSession(clock, scene.family, s.sessionId)).participant!;
      expect(p.leftAt!.getTime()).to.equal(holder.clock.now().getTime());
      expect(p.rejoinExpiresAt!.getTime()).to.equal(p.leftAt!.getTime() + MINUTE);
      expect(f.rejoinExpiresAt).to.deep.equal(p.rejoinExpiresAt);

      holder.clock.set(new Date(p.rejoinExpiresAt!.getTime() - 1));
      const family = await joinSession(clock, scene.family, s.sessionId);
      expect(family.participant!.admitState).to.equal(ADMITTED);
      holder.clock.set(new Date(p.rejoinExpiresAt!.getTime() + 1));
      const patient = await joinSession(clock, scene.patient, s.sessionId);
      expect(patient.participant!.admitState).to.equal(WAITING);
      expect(patient.credential).to.equal(undefined);
      expect(patient.participant!.admittedBy).to.equal(scene.provider.userId);
      const events = await listEvents(clock, scene.staff, s.sessionId);
      expect(events.map(brief).slice(-2)).to.deep.equal(['JOINED:REJOINED_WITHIN_GRACE', 'JOINED:JOINED_WAITING']);
    });

    it('orders credentials and revocations by the session, not the clock: all at one instant', async () => {
      // The clock does not move: a time-stamped revocation could not tell the credential issued before
      // the removal from the one issued after the new admit. The session version does.
      const scene = await sessionScene();
      const s = await runningVisit(clock, scene, holder.clock.now());
      const id = s.sessionId;
      const old = (await joinSession(clock, scene.patient, id)).credential!;
      await removeParticipant(clock, scene.provider, id, scene.patient.userId);
      await invite(clock, scene.provider, id, scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT);
      await joinSession(clock, scene.patient, id);
      await admit(clock, scene.provider, id, scene.patient.userId);
      const fresh = (await joinSession(clock, scene.patient, id)).credential!;
      const at = holder.clock.now();
      expect(await holder.app.rooms.connect(old.token, at)).to.deep.equal({ ok: false, reason: 'REVOKED' });
      expect(await holder.app.rooms.connect(fresh.token, at)).to.include({ ok: true, userId: scene.patient.userId });
    });

    it('expires a waiting entry after the tenant’s waiting time; the person may join again', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { waitingMs: 2 * MINUTE });
      const s = await createSession(clock, scene, { now: holder.clock.now() });
      const w = (await joinSession(clock, scene.patient, s.sessionId)).participant!;
      holder.clock.set(new Date(w.waitingExpiresAt!.getTime() - 1));
      expect(await holder.app.sessionTimers.runDue(scene.tenantId)).to.equal(0);
      holder.clock.advance(1);
      expect(await holder.app.sessionTimers.runDue(scene.tenantId)).to.equal(1);
      const after = participantOf(await getSession(clock, scene.staff, s.sessionId), scene.patient.userId);
      expect(after.admitState).to.equal(EXPIRED);
      expect(after.admitStateChangedBy).to.equal('');
      expect(after.waitingExpiresAt).to.equal(undefined);
      const ev = onlyEvent(
        await listEvents(clock, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_EXPIRED,
        'WAITING_TIMED_OUT',
        scene.patient.userId,
      );
      expect(ev).to.include({ fromAdmitState: WAITING, toAdmitState: EXPIRED, actorUserId: '' });
      expect(ev.occurredAt!.getTime()).to.equal(holder.clock.now().getTime());
      expect((await joinSession(clock, scene.patient, s.sessionId)).participant!.admitState).to.equal(WAITING);
    });

    it('keeps a visit running when the last provider leaves and a provider comes back within the grace', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { providerGraceMs: 2 * MINUTE });
      const s = await runningVisit(clock, scene, holder.clock.now());
      const left = await leaveSession(clock, scene.provider, s.sessionId);
      expect(left.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(participantOf(left.session!, scene.patient.userId).admitState).to.equal(ADMITTED);
      holder.clock.advance(MINUTE);
      const back = await joinSession(clock, scene.provider2, s.sessionId);
      expect(back.participant!.admitState).to.equal(ADMITTED);
      holder.clock.advance(2 * MINUTE);
      await holder.app.sessionTimers.runDue(scene.tenantId);
      const now = await getSession(clock, scene.staff, s.sessionId);
      expect(now.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(participantOf(now, scene.patient.userId).admitState).to.equal(ADMITTED);
      const events = await listEvents(clock, scene.staff, s.sessionId);
      expect(events.filter((e) => e.reasonCode === 'LAST_PROVIDER_LEFT')).to.deep.equal([]);
    });

    it('ends a visit LAST_PROVIDER_LEFT once the provider grace passes; everyone admitted LEFT', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { providerGraceMs: 2 * MINUTE });
      const s = await runningVisit(clock, scene, holder.clock.now());
      await joinSession(clock, scene.family, s.sessionId);
      await admit(clock, scene.provider, s.sessionId, scene.family.userId);
      const left = await leaveSession(clock, scene.provider, s.sessionId, 'emergency');
      const leftAt = left.participant!.leftAt!.getTime();
      expect(left.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      const provEvent = onlyEvent(
        await listEvents(clock, scene.staff, s.sessionId),
        K.SESSION_EVENT_KIND_LEFT,
        'LEFT',
        scene.provider.userId,
      );
      expect(provEvent).to.include({ actorUserId: scene.provider.userId, reason: 'emergency' });

      holder.clock.set(new Date(leftAt + 2 * MINUTE - 1));
      await holder.app.sessionTimers.runDue(scene.tenantId);
      expect((await getSession(clock, scene.staff, s.sessionId)).state).to.equal(
        SessionState.SESSION_STATE_IN_PROGRESS,
      );
      holder.clock.advance(1);
      expect(await holder.app.sessionTimers.runDue(scene.tenantId)).to.equal(1);
      const ended = await getSession(clock, scene.staff, s.sessionId);
      expect(ended.state).to.equal(SessionState.SESSION_STATE_ENDED);
      expect(ended.stateReason).to.equal('LAST_PROVIDER_LEFT');
      expect(ended.endedAt!.getTime()).to.equal(leftAt + 2 * MINUTE);
      for (const who of [scene.patient, scene.family]) {
        const p = participantOf(ended, who.userId);
        expect(p.admitState, who.userId).to.equal(LEFT);
        expect(p.admitStateChangedBy).to.equal('');
        expect(p.rejoinExpiresAt).to.equal(undefined);
      }
      const events = await listEvents(clock, scene.staff, s.sessionId);
      const end = onlyEvent(events, K.SESSION_EVENT_KIND_TRANSITIONED, 'LAST_PROVIDER_LEFT');
      expect(end).to.include({
        fromState: SessionState.SESSION_STATE_IN_PROGRESS,
        toState: SessionState.SESSION_STATE_ENDED,
        actorUserId: '',
      });
      expect(events.map(brief).slice(-3)).to.deep.equal([
        'TRANSITIONED:LAST_PROVIDER_LEFT',
        'LEFT:SESSION_CLOSED',
        'LEFT:SESSION_CLOSED',
      ]);
      // Ticking again changes nothing.
      holder.clock.advance(MINUTE);
      expect(await holder.app.sessionTimers.tick(scene.tenantId, s.sessionId)).to.equal(false);
    });
  });

  it('records every join, admit, deny, remove and leave with actor, time and reason', async () => {
    const scene = await sessionScene();
    const s = await createSession(client, scene);
    const id = s.sessionId;
    const md = (u: TestUser) => u.md;
    const steps: [string, () => Promise<unknown>, string, string, string][] = [
      [
        'JOINED:JOINED_WAITING',
        () => joinSession(client, scene.patient, id),
        scene.patient.userId,
        scene.patient.userId,
        '',
      ],
      [
        'JOINED:JOINED_WAITING',
        () => joinSession(client, scene.family, id),
        scene.family.userId,
        scene.family.userId,
        '',
      ],
      [
        'ADMITTED:ADMITTED',
        () =>
          call(
            client,
            client.admitParticipant,
            { sessionId: id, userId: scene.patient.userId, reason: 'r-admit' },
            md(scene.provider),
          ),
        scene.patient.userId,
        scene.provider.userId,
        'r-admit',
      ],
      [
        'DENIED:DENIED',
        () =>
          call(
            client,
            client.denyParticipant,
            { sessionId: id, userId: scene.family.userId, reason: 'r-deny' },
            md(scene.provider2),
          ),
        scene.family.userId,
        scene.provider2.userId,
        'r-deny',
      ],
      [
        'LEFT:LEFT',
        () => leaveSession(client, scene.patient, id, 'r-leave'),
        scene.patient.userId,
        scene.patient.userId,
        'r-leave',
      ],
      [
        'REMOVED:REMOVED',
        () =>
          call(
            client,
            client.removeSessionParticipant,
            { sessionId: id, userId: scene.patient.userId, reason: 'r-remove' },
            md(scene.provider),
          ),
        scene.patient.userId,
        scene.provider.userId,
        'r-remove',
      ],
    ];
    for (const [what, step, subject, actor, reason] of steps) {
      const count = (await listEvents(client, scene.staff, id)).length;
      const t0 = new Date();
      await step();
      const t1 = new Date();
      const events = (await listEvents(client, scene.staff, id)).slice(count);
      expect(events.map(brief), what).to.deep.equal([what]);
      expect(events[0], what).to.include({ sessionId: id, subjectUserId: subject, actorUserId: actor, reason });
      expect(events[0]!.eventId).to.match(/^[0-9a-f-]{36}$/);
      expectWithin(events[0]!.occurredAt, t0, t1, `${what} occurred_at`);
    }
    // The history about one participant, oldest first.
    const patient = await listEvents(client, scene.staff, id, scene.patient.userId);
    expect(patient.map(brief)).to.deep.equal([
      'INVITED:INVITED',
      'JOINED:JOINED_WAITING',
      'ADMITTED:ADMITTED',
      'LEFT:LEFT',
      'REMOVED:REMOVED',
    ]);
    expect(patient.map((e) => [e.fromAdmitState, e.toAdmitState])).to.deep.equal([
      [AdmitState.ADMIT_STATE_UNSPECIFIED, INVITED],
      [INVITED, WAITING],
      [WAITING, ADMITTED],
      [ADMITTED, LEFT],
      [LEFT, REMOVED],
    ]);
  });
});

/** A fresh patient-role user of the scene's tenant invited into the session with `role`. */
async function newUserIn(scene: SessionScene, sessionId: string, role: ParticipantRole): Promise<TestUser> {
  const user = await newUser(scene.tenantId, 'patient');
  const c = sessionClient();
  try {
    await invite(c, scene.provider, sessionId, user.userId, role);
  } finally {
    c.close();
  }
  return user;
}
