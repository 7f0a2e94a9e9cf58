import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  AdmitState,
  type SessionEvent,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import type { App } from '../../src/app.js';
import { expectError } from '../support/clients.js';
import { startTestApp } from '../support/hooks.js';
import {
  admit,
  createSession,
  getSession,
  joinSession,
  leaveSession,
  listEvents,
  participantOf,
  type SessionScene,
  sessionClient,
  sessionScene,
  sessionSettings,
  useClockApp,
} from '../support/sessions.js';
import { db } from '../support/threads.js';
import { until } from '../support/wait.js';

const MINUTE = 60_000;
const K = SessionEventKind;
const S = SessionState;
const A = AdmitState;

const at = (d: Date, ms: number) => new Date(d.getTime() + ms);

/** A compact line per event: kind, subject, states, actor, reason code. */
function line(e: SessionEvent): string {
  const kind = K[e.kind].replace('SESSION_EVENT_KIND_', '');
  const states =
    e.subjectUserId === ''
      ? `${S[e.fromState].replace('SESSION_STATE_', '')}>${S[e.toState].replace('SESSION_STATE_', '')}`
      : `${A[e.fromAdmitState].replace('ADMIT_STATE_', '')}>${A[e.toAdmitState].replace('ADMIT_STATE_', '')}`;
  return `${kind} ${e.subjectUserId || '-'} ${states} by:${e.actorUserId || '-'} ${e.reasonCode}`;
}

/** The WAITING_EXPIRED intents of a session, straight from the table. */
async function waitingExpiredIntents(tenantId: string, sessionId: string) {
  const { rows } = await db().query<{ recipient_user_id: string; event_id: string; urgent: boolean }>(
    `select recipient_user_id, event_id, urgent from notification_intent
      where tenant_id = $1 and session_id = $2 and kind = 'waiting_expired' order by recipient_user_id`,
    [tenantId, sessionId],
  );
  return rows;
}

describe('sessions: the server clock (timers)', () => {
  const holder = useClockApp();
  let client: VirtualSessionServiceClient;
  before(() => (client = sessionClient(holder.address)));
  after(() => client.close());

  const runDue = (scene: SessionScene) => holder.app.sessionTimers.runDue(scene.tenantId);

  /** Provider joins, patient joins and is admitted: the visit runs. */
  async function startVisit(scene: SessionScene, sessionId: string) {
    await joinSession(client, scene.provider, sessionId);
    await joinSession(client, scene.patient, sessionId);
    const res = await admit(client, scene.provider, sessionId, scene.patient.userId);
    expect(res.session!.state).to.equal(S.SESSION_STATE_IN_PROGRESS);
    return res.session!;
  }

  it('opens the waiting room at waiting_room_opens_at, not a millisecond before', async () => {
    const scene = await sessionScene();
    const t0 = holder.clock.now();
    const opensAt = at(t0, 10 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt: at(t0, 20 * MINUTE), opensAt });
    expect(created.state).to.equal(S.SESSION_STATE_SCHEDULED);
    expect(created.stateReason).to.equal('CREATED');
    expect(created.waitingRoomOpensAt).to.deep.equal(opensAt);
    const id = created.sessionId;

    holder.clock.set(at(opensAt, -1));
    expect(await runDue(scene), 'nothing due a millisecond before').to.equal(0);
    const before = await getSession(client, scene.staff, id);
    expect(before.state).to.equal(S.SESSION_STATE_SCHEDULED);
    expect(before.etag).to.equal(created.etag);
    const early = await expectError(
      joinSession(client, scene.patient, id),
      status.FAILED_PRECONDITION,
      'WAITING_ROOM_NOT_OPEN',
    );
    expect(early.info?.metadata.waiting_room_opens_at).to.equal(opensAt.toISOString());

    holder.clock.set(opensAt);
    expect(await runDue(scene)).to.equal(1);
    const opened = await getSession(client, scene.staff, id);
    expect(opened.state).to.equal(S.SESSION_STATE_OPEN);
    expect(opened.stateReason).to.equal('WAITING_ROOM_OPENED');
    expect(opened.openedAt).to.deep.equal(opensAt);
    expect(opened.expiresAt).to.deep.equal(created.expiresAt);
    expect(opened.etag).to.not.equal(created.etag);

    const transitions = (await listEvents(client, scene.staff, id)).filter(
      (e) => e.kind === K.SESSION_EVENT_KIND_TRANSITIONED,
    );
    expect(transitions.map(line)).to.deep.equal([`TRANSITIONED - SCHEDULED>OPEN by:- WAITING_ROOM_OPENED`]);
    expect(transitions[0]!.transition).to.equal(SessionTransition.SESSION_TRANSITION_UNSPECIFIED);
    expect(transitions[0]!.occurredAt).to.deep.equal(opensAt);

    const joined = await joinSession(client, scene.patient, id);
    expect(joined.participant!.admitState).to.equal(A.ADMIT_STATE_WAITING);
  });

  it('expires a SCHEDULED session nobody joined at expires_at (NO_SHOW)', async () => {
    const scene = await sessionScene();
    const t0 = holder.clock.now();
    const startAt = at(t0, 20 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt });
    expect(created.state).to.equal(S.SESSION_STATE_SCHEDULED);
    // Default no-show window: 30 minutes after the scheduled start.
    const expiresAt = at(startAt, 30 * MINUTE);
    expect(created.expiresAt).to.deep.equal(expiresAt);

    holder.clock.set(expiresAt);
    expect(await runDue(scene)).to.equal(1);
    const expired = await getSession(client, scene.staff, created.sessionId);
    expect(expired.state).to.equal(S.SESSION_STATE_EXPIRED);
    expect(expired.stateReason).to.equal('NO_SHOW');
    expect(expired.endedAt).to.deep.equal(expiresAt);
    expect(expired.expiresAt).to.equal(undefined);
    for (const p of expired.participants) expect(p.admitState, p.userId).to.equal(A.ADMIT_STATE_INVITED);
    const events = await listEvents(client, scene.staff, created.sessionId);
    expect(events.filter((e) => e.kind === K.SESSION_EVENT_KIND_TRANSITIONED).map(line)).to.deep.equal([
      'TRANSITIONED - SCHEDULED>EXPIRED by:- NO_SHOW',
    ]);
    expect(await waitingExpiredIntents(scene.tenantId, created.sessionId)).to.deep.equal([]);
  });

  it('expires an OPEN session at expires_at: waiting → EXPIRED with a WAITING_EXPIRED intent each, admitted → LEFT', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: 2 * 3_600_000 });
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0 });
    expect(created.state).to.equal(S.SESSION_STATE_OPEN);
    const id = created.sessionId;
    const expiresAt = at(t0, 30 * MINUTE);
    expect(created.expiresAt).to.deep.equal(expiresAt);
    await joinSession(client, scene.patient, id);
    await joinSession(client, scene.family, id);
    const providerIn = await joinSession(client, scene.provider2, id);
    expect(providerIn.session!.state).to.equal(S.SESSION_STATE_OPEN);
    const eventsBefore = await listEvents(client, scene.staff, id);

    holder.clock.set(at(expiresAt, -1));
    expect(await runDue(scene)).to.equal(0);
    expect(await listEvents(client, scene.staff, id)).to.have.length(eventsBefore.length);

    holder.clock.set(expiresAt);
    expect(await runDue(scene)).to.equal(1);
    const expired = await getSession(client, scene.staff, id);
    expect(expired.state).to.equal(S.SESSION_STATE_EXPIRED);
    expect(expired.stateReason).to.equal('NO_SHOW');
    expect(expired.endedAt).to.deep.equal(expiresAt);
    for (const u of [scene.patient, scene.family]) {
      const p = participantOf(expired, u.userId);
      expect(p.admitState).to.equal(A.ADMIT_STATE_EXPIRED);
      expect(p.admitStateChangedBy).to.equal('');
      expect(p.waitingExpiresAt).to.equal(undefined);
    }
    expect(participantOf(expired, scene.provider2.userId).admitState).to.equal(A.ADMIT_STATE_LEFT);
    expect(participantOf(expired, scene.provider.userId).admitState).to.equal(A.ADMIT_STATE_INVITED);

    const added = (await listEvents(client, scene.staff, id)).slice(eventsBefore.length);
    expect(added.map(line)[0]).to.equal('TRANSITIONED - OPEN>EXPIRED by:- NO_SHOW');
    expect(added.slice(1).map(line)).to.have.members([
      `LEFT ${scene.provider2.userId} ADMITTED>LEFT by:- SESSION_CLOSED`,
      `EXPIRED ${scene.patient.userId} WAITING>EXPIRED by:- SESSION_CLOSED`,
      `EXPIRED ${scene.family.userId} WAITING>EXPIRED by:- SESSION_CLOSED`,
    ]);
    expect(added.slice(1)).to.have.length(3);

    const expiredEvent = (u: string) =>
      added.find((e) => e.kind === K.SESSION_EVENT_KIND_EXPIRED && e.subjectUserId === u)!;
    const intents = await waitingExpiredIntents(scene.tenantId, id);
    expect(intents).to.have.deep.members([
      { recipient_user_id: scene.patient.userId, event_id: expiredEvent(scene.patient.userId).eventId, urgent: false },
      { recipient_user_id: scene.family.userId, event_id: expiredEvent(scene.family.userId).eventId, urgent: false },
    ]);
    expect(intents).to.have.length(2);
    expect(await holder.app.rooms.connect(providerIn.credential!.token)).to.deep.equal({
      ok: false,
      reason: 'ROOM_CLOSED',
    });
  });

  it('ends a visit at latest_end_at = started + max duration when that comes first (MAX_DURATION_REACHED)', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { maxDurationMs: 10 * MINUTE, overrunMs: 30 * MINUTE });
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0, endAt: at(t0, 30 * MINUTE) });
    const started = await startVisit(scene, created.sessionId);
    const latest = at(started.startedAt!, 10 * MINUTE);
    expect(started.latestEndAt).to.deep.equal(latest);
    expect(started.expiresAt).to.equal(undefined);
    const eventsBefore = await listEvents(client, scene.staff, created.sessionId);

    holder.clock.set(at(latest, -1));
    expect(await runDue(scene)).to.equal(0);
    expect((await getSession(client, scene.staff, created.sessionId)).state).to.equal(S.SESSION_STATE_IN_PROGRESS);

    holder.clock.set(latest);
    expect(await runDue(scene)).to.equal(1);
    const ended = await getSession(client, scene.staff, created.sessionId);
    expect(ended.state).to.equal(S.SESSION_STATE_ENDED);
    expect(ended.stateReason).to.equal('MAX_DURATION_REACHED');
    expect(ended.endedAt).to.deep.equal(latest);
    expect(ended.latestEndAt).to.equal(undefined);
    expect(participantOf(ended, scene.provider.userId).admitState).to.equal(A.ADMIT_STATE_LEFT);
    expect(participantOf(ended, scene.patient.userId).admitState).to.equal(A.ADMIT_STATE_LEFT);
    const added = (await listEvents(client, scene.staff, created.sessionId)).slice(eventsBefore.length);
    expect(added.map(line)).to.deep.equal([
      'TRANSITIONED - IN_PROGRESS>ENDED by:- MAX_DURATION_REACHED',
      `LEFT ${scene.provider.userId} ADMITTED>LEFT by:- SESSION_CLOSED`,
      `LEFT ${scene.patient.userId} ADMITTED>LEFT by:- SESSION_CLOSED`,
    ]);
  });

  it('sets latest_end_at = scheduled end + overrun when that comes first, and ends the visit then', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { maxDurationMs: 4 * 3_600_000, overrunMs: 5 * MINUTE });
    const t0 = holder.clock.now();
    const endAt = at(t0, 30 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt: t0, endAt });
    const started = await startVisit(scene, created.sessionId);
    const latest = at(endAt, 5 * MINUTE);
    expect(started.latestEndAt).to.deep.equal(latest);

    holder.clock.set(at(latest, -1));
    expect(await runDue(scene)).to.equal(0);
    holder.clock.set(latest);
    expect(await runDue(scene)).to.equal(1);
    const ended = await getSession(client, scene.staff, created.sessionId);
    expect(ended.state).to.equal(S.SESSION_STATE_ENDED);
    expect(ended.stateReason).to.equal('MAX_DURATION_REACHED');
    expect(ended.endedAt).to.deep.equal(latest);
  });

  it('counts the overrun from the start when the visit starts after its scheduled end', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, {
      maxDurationMs: 4 * 3_600_000,
      overrunMs: 5 * MINUTE,
      noShowMs: 2 * 3_600_000,
    });
    const t0 = holder.clock.now();
    const endAt = at(t0, 10 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt: t0, endAt });
    holder.clock.set(at(t0, 20 * MINUTE));
    const started = await startVisit(scene, created.sessionId);
    expect(started.startedAt).to.deep.equal(at(t0, 20 * MINUTE));
    const latest = at(started.startedAt!, 5 * MINUTE);
    expect(started.latestEndAt).to.deep.equal(latest);

    holder.clock.set(at(latest, -1));
    expect(await runDue(scene)).to.equal(0);
    holder.clock.set(latest);
    expect(await runDue(scene)).to.equal(1);
    expect((await getSession(client, scene.staff, created.sessionId)).stateReason).to.equal('MAX_DURATION_REACHED');
  });

  it('ends a visit whose last provider left once the provider grace period is over (LAST_PROVIDER_LEFT)', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { providerGraceMs: 5 * MINUTE });
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0 });
    await startVisit(scene, created.sessionId);
    const leftAt = holder.clock.advance(MINUTE);
    await leaveSession(client, scene.provider, created.sessionId);

    holder.clock.set(at(leftAt, 5 * MINUTE - 1));
    expect(await runDue(scene)).to.equal(0);
    holder.clock.set(at(leftAt, 5 * MINUTE));
    expect(await runDue(scene)).to.equal(1);
    const ended = await getSession(client, scene.staff, created.sessionId);
    expect(ended.state).to.equal(S.SESSION_STATE_ENDED);
    expect(ended.stateReason).to.equal('LAST_PROVIDER_LEFT');
    expect(participantOf(ended, scene.patient.userId).admitState).to.equal(A.ADMIT_STATE_LEFT);
  });

  it('expires a waiting entry at waiting_expires_at (WAITING_TIMED_OUT), tells the person, and lets them join again', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: 5 * MINUTE });
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0 });
    const id = created.sessionId;
    const joined = await joinSession(client, scene.patient, id);
    const waitingExpiresAt = at(t0, 5 * MINUTE);
    expect(joined.participant!.waitingExpiresAt).to.deep.equal(waitingExpiresAt);

    holder.clock.set(at(waitingExpiresAt, -1));
    expect(await runDue(scene)).to.equal(0);
    expect(participantOf(await getSession(client, scene.staff, id), scene.patient.userId).admitState).to.equal(
      A.ADMIT_STATE_WAITING,
    );

    holder.clock.set(waitingExpiresAt);
    expect(await runDue(scene)).to.equal(1);
    const after = await getSession(client, scene.staff, id);
    expect(after.state).to.equal(S.SESSION_STATE_OPEN);
    const p = participantOf(after, scene.patient.userId);
    expect(p.admitState).to.equal(A.ADMIT_STATE_EXPIRED);
    expect(p.admitStateChangedBy).to.equal('');
    expect(p.admitStateChangedAt).to.deep.equal(waitingExpiresAt);
    expect(p.waitingExpiresAt).to.equal(undefined);

    const mine = await listEvents(client, scene.staff, id, scene.patient.userId);
    expect(mine.map(line)).to.deep.equal([
      `INVITED ${scene.patient.userId} UNSPECIFIED>INVITED by:${scene.provider.userId} INVITED`,
      `JOINED ${scene.patient.userId} INVITED>WAITING by:${scene.patient.userId} JOINED_WAITING`,
      `EXPIRED ${scene.patient.userId} WAITING>EXPIRED by:- WAITING_TIMED_OUT`,
    ]);
    expect(await waitingExpiredIntents(scene.tenantId, id)).to.deep.equal([
      { recipient_user_id: scene.patient.userId, event_id: mine[2]!.eventId, urgent: false },
    ]);

    const again = await joinSession(client, scene.patient, id);
    expect(again.participant!.admitState).to.equal(A.ADMIT_STATE_WAITING);
    expect(again.participant!.waitingExpiresAt).to.deep.equal(at(waitingExpiresAt, 5 * MINUTE));
    expect((await listEvents(client, scene.staff, id, scene.patient.userId)).map(line).at(-1)).to.equal(
      `JOINED ${scene.patient.userId} EXPIRED>WAITING by:${scene.patient.userId} JOINED_WAITING`,
    );
  });

  it('applies each due change once: a second runDue (and a tick) changes nothing', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: 5 * MINUTE });
    const t0 = holder.clock.now();
    const opensAt = at(t0, 5 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt: at(t0, 10 * MINUTE), opensAt });
    const id = created.sessionId;

    holder.clock.set(opensAt);
    expect(await runDue(scene)).to.equal(1);
    const afterFirst = await getSession(client, scene.staff, id);
    const eventsFirst = await listEvents(client, scene.staff, id);
    expect(await runDue(scene)).to.equal(0);
    expect(await holder.app.sessionTimers.tick(scene.tenantId, id)).to.equal(false);
    expect((await getSession(client, scene.staff, id)).etag).to.equal(afterFirst.etag);
    expect(await listEvents(client, scene.staff, id)).to.deep.equal(eventsFirst);

    await joinSession(client, scene.patient, id);
    holder.clock.advance(5 * MINUTE);
    expect(await runDue(scene)).to.equal(1);
    expect(await runDue(scene)).to.equal(0);
    const events = await listEvents(client, scene.staff, id);
    expect(events.filter((e) => e.reasonCode === 'WAITING_ROOM_OPENED')).to.have.length(1);
    expect(events.filter((e) => e.reasonCode === 'WAITING_TIMED_OUT')).to.have.length(1);
    expect(await waitingExpiredIntents(scene.tenantId, id)).to.have.length(1);
  });

  it('lets a command apply what is due first: a join after the waiting room opened enters the waiting room', async () => {
    const scene = await sessionScene();
    const t0 = holder.clock.now();
    const opensAt = at(t0, 5 * MINUTE);
    const created = await createSession(client, scene, { now: t0, startAt: at(t0, 10 * MINUTE), opensAt });
    holder.clock.set(at(opensAt, 1000));
    const joined = await joinSession(client, scene.patient, created.sessionId);
    expect(joined.participant!.admitState).to.equal(A.ADMIT_STATE_WAITING);
    expect(joined.session!.state).to.equal(S.SESSION_STATE_OPEN);
    const events = (await listEvents(client, scene.staff, created.sessionId)).slice(4);
    expect(events.map(line).slice(-2)).to.deep.equal([
      'TRANSITIONED - SCHEDULED>OPEN by:- WAITING_ROOM_OPENED',
      `JOINED ${scene.patient.userId} INVITED>WAITING by:${scene.patient.userId} JOINED_WAITING`,
    ]);
    expect(await runDue(scene)).to.equal(0);
  });

  it('lets a command apply what is due first: a join after expires_at answers SESSION_CLOSED and NO_SHOW is recorded', async () => {
    const scene = await sessionScene();
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0 });
    const expiresAt = created.expiresAt!;
    holder.clock.set(at(expiresAt, 1000));

    const { info } = await expectError(
      joinSession(client, scene.patient, created.sessionId),
      status.FAILED_PRECONDITION,
      'SESSION_CLOSED',
    );
    expect(info?.metadata.state).to.equal('SESSION_STATE_EXPIRED');
    const events = await listEvents(client, scene.staff, created.sessionId);
    expect(events.filter((e) => e.kind === K.SESSION_EVENT_KIND_TRANSITIONED).map(line)).to.deep.equal([
      'TRANSITIONED - OPEN>EXPIRED by:- NO_SHOW',
    ]);
    const stored = await getSession(client, scene.staff, created.sessionId);
    expect(stored.state).to.equal(S.SESSION_STATE_EXPIRED);
    expect(await runDue(scene), 'already applied by the command').to.equal(0);
  });

  it('lets a command apply what is due first: admitting an entry past its waiting time answers PARTICIPANT_NOT_WAITING (EXPIRED) and records the expiry', async () => {
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: 5 * MINUTE });
    const t0 = holder.clock.now();
    const created = await createSession(client, scene, { now: t0, startAt: t0 });
    const id = created.sessionId;
    await joinSession(client, scene.provider, id);
    await joinSession(client, scene.patient, id);
    holder.clock.advance(5 * MINUTE);

    const { info } = await expectError(
      admit(client, scene.provider, id, scene.patient.userId),
      status.FAILED_PRECONDITION,
      'PARTICIPANT_NOT_WAITING',
    );
    expect(info?.metadata.admit_state).to.equal('ADMIT_STATE_EXPIRED');
    const mine = await listEvents(client, scene.staff, id, scene.patient.userId);
    expect(mine.map(line).at(-1)).to.equal(`EXPIRED ${scene.patient.userId} WAITING>EXPIRED by:- WAITING_TIMED_OUT`);
    expect(await waitingExpiredIntents(scene.tenantId, id)).to.have.length(1);
    expect(await runDue(scene)).to.equal(0);
  });
});

describe('sessions: timer jobs run on some replica, exactly once', () => {
  let replicas: App[] = [];
  let client: VirtualSessionServiceClient;
  before(async function () {
    this.timeout(60_000);
    replicas = await Promise.all([
      startTestApp({ SESSION_TIMERS: 'true', NOTIFY_POLL_MS: '500' }),
      startTestApp({ SESSION_TIMERS: 'true', NOTIFY_POLL_MS: '500' }),
    ]);
    // The shared server (SESSION_TIMERS=false) takes the commands; the replicas only run the jobs.
    client = sessionClient();
  });
  after(async function () {
    this.timeout(60_000);
    client?.close();
    await Promise.all(replicas.map((r) => r.shutdown()));
  });

  /** Resolves once no job of the session is due and unfinished (every due tick ran). */
  const jobsSettled = (sessionId: string) =>
    until(`timer jobs of ${sessionId} done`, async () => {
      const { rows } = await db().query<{ n: number }>(
        `select count(*)::int as n from pgboss.job where name = 'session-timer' and singleton_key = $1
            and state in ('created', 'retry', 'active') and start_after <= now()`,
        [sessionId],
      );
      return rows[0]!.n === 0;
    });

  const completedJobs = async (sessionId: string) => {
    const { rows } = await db().query<{ n: number }>(
      `select count(*)::int as n from pgboss.job where name = 'session-timer' and singleton_key = $1
          and state = 'completed'`,
      [sessionId],
    );
    return rows[0]!.n;
  };

  it('expires a waiting entry by itself, once, not before its time', async function () {
    this.timeout(40_000);
    const scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: 1500 });
    const created = await createSession(client, scene);
    const joined = await joinSession(client, scene.patient, created.sessionId);
    const waitingExpiresAt = joined.participant!.waitingExpiresAt!;

    const expired = await until(
      'participant EXPIRED',
      async () => {
        const s = await getSession(client, scene.staff, created.sessionId);
        return participantOf(s, scene.patient.userId).admitState === A.ADMIT_STATE_EXPIRED && s;
      },
      20_000,
    );
    expect(expired.state).to.equal(S.SESSION_STATE_OPEN);
    await jobsSettled(created.sessionId);
    const events = (await listEvents(client, scene.staff, created.sessionId)).filter(
      (e) => e.kind === K.SESSION_EVENT_KIND_EXPIRED,
    );
    expect(events.map(line)).to.deep.equal([`EXPIRED ${scene.patient.userId} WAITING>EXPIRED by:- WAITING_TIMED_OUT`]);
    expect(events[0]!.occurredAt!.getTime()).to.be.at.least(waitingExpiresAt.getTime());
    expect(await waitingExpiredIntents(scene.tenantId, created.sessionId)).to.have.length(1);
    expect(await completedJobs(created.sessionId)).to.be.at.least(1);
  });

  it('opens a waiting room by itself, once, not before its time', async function () {
    this.timeout(40_000);
    const scene = await sessionScene();
    const now = new Date();
    const opensAt = at(now, 1500);
    const created = await createSession(client, scene, { startAt: at(now, 10 * MINUTE), opensAt });
    expect(created.state).to.equal(S.SESSION_STATE_SCHEDULED);

    const opened = await until(
      'session OPEN',
      async () => {
        const s = await getSession(client, scene.staff, created.sessionId);
        return s.state === S.SESSION_STATE_OPEN && s;
      },
      20_000,
    );
    expect(opened.openedAt!.getTime()).to.be.at.least(opensAt.getTime());
    await jobsSettled(created.sessionId);
    const transitions = (await listEvents(client, scene.staff, created.sessionId)).filter(
      (e) => e.kind === K.SESSION_EVENT_KIND_TRANSITIONED,
    );
    expect(transitions.map(line)).to.deep.equal(['TRANSITIONED - SCHEDULED>OPEN by:- WAITING_ROOM_OPENED']);
    expect(await completedJobs(created.sessionId)).to.be.at.least(1);
  });
});
