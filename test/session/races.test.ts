import { status, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  AdmitState,
  type SessionEvent,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { call, errorDetails, type TestUser } from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  admit,
  createSession,
  deny,
  getSession,
  joinSession,
  listEvents,
  participantOf,
  sessionClient,
  type SessionScene,
  sessionScene,
  sessionSettings,
  useClockApp,
} from '../support/sessions.js';
import { db } from '../support/threads.js';

// Racing commands on one session resolve on the server (proto: "exactly one change is recorded and every
// caller learns the final state"). Each scenario runs ROUNDS times on a fresh session, so an ordering that
// breaks the rule shows up as a failing round.
const ROUNDS = 25;
/** Rounds run this many at a time (different sessions, so they do not wait on each other's row lock). */
const BATCH = 5;

/**
 * Runs `body` for rounds 0 … ROUNDS-1, BATCH at a time, each on its own fresh session. A failing batch
 * is waited for to the end (no round of a failed test runs on into the next test), then fails the test.
 */
async function rounds(body: (round: number) => Promise<void>): Promise<void> {
  for (let first = 0; first < ROUNDS; first += BATCH) {
    const batch = Array.from({ length: Math.min(BATCH, ROUNDS - first) }, (_, i) => body(first + i));
    const failed = (await Promise.allSettled(batch)).find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}
const K = SessionEventKind;
const { ADMIT_STATE_WAITING: WAITING, ADMIT_STATE_ADMITTED: ADMITTED, ADMIT_STATE_DENIED: DENIED } = AdmitState;

function count(events: SessionEvent[], kind: SessionEventKind, reasonCode?: string, subject?: string): number {
  return events.filter(
    (e) =>
      e.kind === kind &&
      (reasonCode === undefined || e.reasonCode === reasonCode) &&
      (subject === undefined || e.subjectUserId === subject),
  ).length;
}

async function intents(tenantId: string, sessionId: string, kind: string): Promise<Record<string, unknown>[]> {
  const { rows } = await db().query(
    `select recipient_user_id, event_id from notification_intent
      where tenant_id = $1 and kind = $2 and session_id = $3 order by recipient_user_id`,
    [tenantId, kind, sessionId],
  );
  return rows as Record<string, unknown>[];
}

/** The ErrorInfo reason and metadata of a rejected call. */
function failure(reason: unknown): { code: number; reason: string; metadata: Record<string, string> } {
  const err = reason as ServiceError;
  const info = errorDetails(err).info;
  return { code: err.code, reason: info?.reason ?? '', metadata: info?.metadata ?? {} };
}

function end(client: VirtualSessionServiceClient, by: TestUser, sessionId: string, t: SessionTransition) {
  return call(client, client.requestTransition, { sessionId, transition: t, reason: `by ${by.userId}` }, by.md);
}

/** An OPEN session with the patient WAITING (nobody in the room). */
async function withPatientWaiting(client: VirtualSessionServiceClient, scene: SessionScene) {
  const s = await createSession(client, scene);
  await joinSession(client, scene.patient, s.sessionId);
  return s.sessionId;
}

describe('sessions: racing commands', function () {
  this.timeout(120_000);
  let client: VirtualSessionServiceClient;
  before(() => (client = sessionClient()));
  after(() => client.close());

  it('20 concurrent admits by both providers: all answer ADMITTED, one event, one notification', async () => {
    const scene = await sessionScene();
    await rounds(async (round) => {
      const id = await withPatientWaiting(client, scene);
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          admit(client, i % 2 === 0 ? scene.provider : scene.provider2, id, scene.patient.userId),
        ),
      );
      const admittedBy = new Set(results.map((r) => r.participant!.admittedBy));
      for (const r of results) expect(r.participant!.admitState, `round ${round}`).to.equal(ADMITTED);
      expect(admittedBy.size, `round ${round}: one admitter in every answer`).to.equal(1);
      const events = await listEvents(client, scene.staff, id);
      expect(count(events, K.SESSION_EVENT_KIND_ADMITTED), `round ${round}`).to.equal(1);
      const ev = events.find((e) => e.kind === K.SESSION_EVENT_KIND_ADMITTED)!;
      expect(ev.actorUserId).to.equal([...admittedBy][0]);
      const notes = await intents(scene.tenantId, id, 'participant_admitted');
      expect(notes, `round ${round}`).to.deep.equal([
        { recipient_user_id: scene.patient.userId, event_id: ev.eventId },
      ]);
      const stored = participantOf(await getSession(client, scene.staff, id), scene.patient.userId);
      expect(stored.admittedBy).to.equal(ev.actorUserId);
    });
  });

  it('an admit racing a deny: exactly one wins, the other learns the winner’s state', async () => {
    const scene = await sessionScene();
    const wins = { admit: 0, deny: 0 };
    await rounds(async (round) => {
      const id = await withPatientWaiting(client, scene);
      const calls = [
        () => admit(client, scene.provider, id, scene.patient.userId),
        () => deny(client, scene.provider2, id, scene.patient.userId),
      ];
      const started = round % 2 === 0 ? [calls[0]!(), calls[1]!()] : [calls[1]!(), calls[0]!()].reverse();
      const [a, d] = await Promise.allSettled(started);
      expect(
        [a!.status, d!.status].filter((x) => x === 'fulfilled'),
        `round ${round}: one winner`,
      ).to.have.length(1);
      const winner = a!.status === 'fulfilled' ? 'admit' : 'deny';
      wins[winner]++;
      const winnerState = winner === 'admit' ? ADMITTED : DENIED;
      const loser = failure(
        winner === 'admit' ? (d as PromiseRejectedResult).reason : (a as PromiseRejectedResult).reason,
      );
      expect(loser, `round ${round}: the loser (${winner === 'admit' ? 'deny' : 'admit'}) fails`).to.deep.include({
        code: status.FAILED_PRECONDITION,
        reason: 'PARTICIPANT_NOT_WAITING',
      });
      expect(loser.metadata.admit_state).to.equal(winner === 'admit' ? 'ADMIT_STATE_ADMITTED' : 'ADMIT_STATE_DENIED');
      const won =
        a!.status === 'fulfilled' ? a!.value : (d as PromiseFulfilledResult<Awaited<ReturnType<typeof deny>>>).value;
      expect(won.participant!.admitState).to.equal(winnerState);

      const stored = participantOf(await getSession(client, scene.staff, id), scene.patient.userId);
      expect(stored.admitState, `round ${round}: the row matches the winner`).to.equal(winnerState);
      const events = await listEvents(client, scene.staff, id);
      const admitted = count(events, K.SESSION_EVENT_KIND_ADMITTED);
      const denied = count(events, K.SESSION_EVENT_KIND_DENIED);
      expect([admitted, denied], `round ${round}`).to.deep.equal(winner === 'admit' ? [1, 0] : [0, 1]);
      expect((await intents(scene.tenantId, id, 'participant_admitted')).length).to.equal(admitted);
    });
    expect(wins.admit + wins.deny).to.equal(ROUNDS);
  });

  it('20 concurrent joins by one patient record one JOINED event and one set of notifications', async () => {
    const scene = await sessionScene();
    await rounds(async (round) => {
      const s = await createSession(client, scene);
      const results = await Promise.all(
        Array.from({ length: 20 }, () => joinSession(client, scene.patient, s.sessionId)),
      );
      const first = results[0]!.participant!;
      for (const r of results) {
        expect(r.participant!.admitState, `round ${round}`).to.equal(WAITING);
        expect(r.credential).to.equal(undefined);
        expect(r.participant!.joinedAt!.getTime(), 'one join time in every answer').to.equal(first.joinedAt!.getTime());
      }
      const events = await listEvents(client, scene.staff, s.sessionId);
      expect(count(events, K.SESSION_EVENT_KIND_JOINED, undefined, scene.patient.userId), `round ${round}`).to.equal(1);
      const joined = events.find((e) => e.kind === K.SESSION_EVENT_KIND_JOINED)!;
      expect(await intents(scene.tenantId, s.sessionId, 'patient_waiting'), `round ${round}`).to.deep.equal(
        [scene.provider.userId, scene.provider2.userId]
          .sort()
          .map((u) => ({ recipient_user_id: u, event_id: joined.eventId })),
      );
    });
  });

  it('joins of both providers and the patient with an admit: the visit starts exactly once', async () => {
    const scene = await sessionScene();
    await rounds(async (round) => {
      const id = await withPatientWaiting(client, scene);
      const ops: (() => Promise<unknown>)[] = [
        () => joinSession(client, scene.provider, id),
        () => joinSession(client, scene.provider2, id),
        () => admit(client, scene.provider, id, scene.patient.userId),
        () => joinSession(client, scene.patient, id),
        () => joinSession(client, scene.family, id),
      ];
      // Vary who goes first.
      const order = ops.map((_, i) => ops[(i + round) % ops.length]!);
      const settled = await Promise.allSettled(order.map((op) => op()));
      expect(
        settled.filter((r) => r.status === 'rejected').map((r) => failure((r as PromiseRejectedResult).reason)),
        `round ${round}`,
      ).to.deep.equal([]);
      const events = await listEvents(client, scene.staff, id);
      expect(
        count(events, K.SESSION_EVENT_KIND_TRANSITIONED, 'FIRST_PARTICIPANT_ADMITTED'),
        `round ${round}: visit starts`,
      ).to.equal(1);
      const session = await getSession(client, scene.staff, id);
      expect(session.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
      expect(participantOf(session, scene.patient.userId).admitState).to.equal(ADMITTED);
      expect(participantOf(session, scene.family.userId).admitState).to.equal(WAITING);
      expect(count(events, K.SESSION_EVENT_KIND_ADMITTED)).to.equal(1);
      expect(count(events, K.SESSION_EVENT_KIND_JOINED)).to.equal(4);
    });
  });

  it('END by a provider and by staff at once: both accepted, one transition to ENDED', async () => {
    const scene = await sessionScene();
    await rounds(async (round) => {
      const s = await createSession(client, scene);
      const id = s.sessionId;
      await joinSession(client, scene.provider, id);
      await joinSession(client, scene.patient, id);
      await admit(client, scene.provider, id, scene.patient.userId);
      const [p, st] = await Promise.all([
        end(client, scene.provider, id, SessionTransition.SESSION_TRANSITION_END),
        end(client, scene.staff, id, SessionTransition.SESSION_TRANSITION_END),
      ]);
      for (const r of [p, st]) {
        expect(r, `round ${round}`).to.include({
          accepted: true,
          state: SessionState.SESSION_STATE_ENDED,
          rejectionReason: '',
        });
      }
      const events = await listEvents(client, scene.staff, id);
      const ended = events.filter(
        (e) => e.kind === K.SESSION_EVENT_KIND_TRANSITIONED && e.toState === SessionState.SESSION_STATE_ENDED,
      );
      expect(ended, `round ${round}`).to.have.length(1);
      const byProvider = ended[0]!.actorUserId === scene.provider.userId;
      expect(ended[0]!.reasonCode).to.equal(byProvider ? 'ENDED_BY_PROVIDER' : 'ENDED_BY_STAFF');
      expect(ended[0]!.actorUserId).to.equal(byProvider ? scene.provider.userId : scene.staff.userId);
      expect(count(events, K.SESSION_EVENT_KIND_TRANSITION_REJECTED)).to.equal(0);
      expect(count(events, K.SESSION_EVENT_KIND_LEFT, 'SESSION_CLOSED')).to.equal(2);
      const session = await getSession(client, scene.staff, id);
      expect(session.stateReason).to.equal(ended[0]!.reasonCode);
    });
  });

  it('CANCEL racing the admit or join that starts the visit: CANCELLED or IN_PROGRESS, never both', async () => {
    const scene = await sessionScene();
    const outcomes = { cancelled: 0, started: 0 };
    await rounds(async (round) => {
      const s = await createSession(client, scene);
      const id = s.sessionId;
      await joinSession(client, scene.patient, id);
      let start: () => Promise<unknown>;
      if (round % 2 === 0) {
        // provider2 in the room; the provider's admit of the patient starts the visit.
        await joinSession(client, scene.provider2, id);
        start = () => admit(client, scene.provider, id, scene.patient.userId);
      } else {
        // the patient admitted with no provider in the room; the provider's join starts the visit.
        await admit(client, scene.provider2, id, scene.patient.userId);
        start = () => joinSession(client, scene.provider, id);
      }
      const [c, st] = await Promise.allSettled([
        end(client, scene.staff, id, SessionTransition.SESSION_TRANSITION_CANCEL),
        start(),
      ]);
      expect(c!.status, `round ${round}: a rejection is an answer`).to.equal('fulfilled');
      const decision = (c as PromiseFulfilledResult<Awaited<ReturnType<typeof end>>>).value;
      const session = await getSession(client, scene.staff, id);
      const events = await listEvents(client, scene.staff, id);
      const toCancelled = events.filter(
        (e) => e.toState === SessionState.SESSION_STATE_CANCELLED && e.kind === K.SESSION_EVENT_KIND_TRANSITIONED,
      );
      const started = count(events, K.SESSION_EVENT_KIND_TRANSITIONED, 'FIRST_PARTICIPANT_ADMITTED');
      if (decision.accepted) {
        outcomes.cancelled++;
        expect(decision.state).to.equal(SessionState.SESSION_STATE_CANCELLED);
        expect(session.state, `round ${round}`).to.equal(SessionState.SESSION_STATE_CANCELLED);
        expect(st!.status).to.equal('rejected');
        const f = failure((st as PromiseRejectedResult).reason);
        expect(f).to.deep.include({ code: status.FAILED_PRECONDITION, reason: 'SESSION_CLOSED' });
        expect(f.metadata.state).to.equal('SESSION_STATE_CANCELLED');
        expect([toCancelled.length, started]).to.deep.equal([1, 0]);
        expect(toCancelled[0]!.reasonCode).to.equal('CANCELLED_BY_STAFF');
      } else {
        outcomes.started++;
        expect(decision).to.include({
          state: SessionState.SESSION_STATE_IN_PROGRESS,
          rejectionReason: 'SESSION_ALREADY_STARTED',
        });
        expect(st!.status, `round ${round}`).to.equal('fulfilled');
        expect(session.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
        expect([toCancelled.length, started]).to.deep.equal([0, 1]);
        expect(count(events, K.SESSION_EVENT_KIND_TRANSITION_REJECTED, 'SESSION_ALREADY_STARTED')).to.equal(1);
      }
      expect(session.stateReason).to.equal(decision.accepted ? 'CANCELLED_BY_STAFF' : 'FIRST_PARTICIPANT_ADMITTED');
    });
    expect(outcomes.cancelled + outcomes.started).to.equal(ROUNDS);
  });

  describe('the server’s clock racing itself', () => {
    const holder = useClockApp();
    /** Moves the manual clock to `at` (default: real now) unless it is past that already; never back. */
    const catchUp = (at = Date.now()) => holder.clock.set(new Date(Math.max(at, holder.clock.now().getTime())));

    it('20 concurrent ticks after the waiting time: one EXPIRED event, one notification', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { waitingMs: 60_000 });
      await rounds(async (round) => {
        const id = await withPatientWaiting(client, scene);
        const waiting = participantOf(await getSession(client, scene.staff, id), scene.patient.userId);
        expect(waiting.admitState).to.equal(WAITING);
        catchUp(waiting.waitingExpiresAt!.getTime());
        const ticks = await Promise.all(
          Array.from({ length: 20 }, () => holder.app.sessionTimers.tick(scene.tenantId, id)),
        );
        expect(ticks.filter(Boolean), `round ${round}: one tick changed it`).to.have.length(1);
        const events = await listEvents(client, scene.staff, id);
        expect(count(events, K.SESSION_EVENT_KIND_EXPIRED), `round ${round}`).to.equal(1);
        expect(count(events, K.SESSION_EVENT_KIND_EXPIRED, 'WAITING_TIMED_OUT', scene.patient.userId)).to.equal(1);
        expect(await intents(scene.tenantId, id, 'waiting_expired')).to.have.length(1);
        expect(participantOf(await getSession(client, scene.staff, id), scene.patient.userId).admitState).to.equal(
          AdmitState.ADMIT_STATE_EXPIRED,
        );
      });
    });

    it('ticks from two instances when due by both clocks: one EXPIRED event', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { waitingMs: 1 });
      await rounds(async (round) => {
        const id = await withPatientWaiting(client, scene);
        const due = participantOf(await getSession(client, scene.staff, id), scene.patient.userId).waitingExpiresAt!;
        expect(Date.now(), 'due by real time').to.be.greaterThan(due.getTime());
        catchUp();
        const ticks = await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            (i % 2 === 0 ? env.app : holder.app).sessionTimers.tick(scene.tenantId, id),
          ),
        );
        expect(ticks.filter(Boolean), `round ${round}: one tick changed it`).to.have.length(1);
        const events = await listEvents(client, scene.staff, id);
        expect(
          count(events, K.SESSION_EVENT_KIND_EXPIRED, 'WAITING_TIMED_OUT', scene.patient.userId),
          `round ${round}`,
        ).to.equal(1);
        expect(await intents(scene.tenantId, id, 'waiting_expired')).to.have.length(1);
      });
    });

    it('a tick racing an admit of an entry past its waiting time: expired once, never admitted', async () => {
      const scene = await sessionScene();
      await sessionSettings(scene.tenantId, { waitingMs: 1 });
      await rounds(async (round) => {
        const id = await withPatientWaiting(client, scene);
        catchUp();
        const [t, a] = await Promise.allSettled([
          holder.app.sessionTimers.tick(scene.tenantId, id),
          admit(client, scene.provider, id, scene.patient.userId),
        ]);
        expect(t!.status).to.equal('fulfilled');
        // Due by real time already: whichever goes first, the admit finds the entry expired.
        expect(a!.status, `round ${round}`).to.equal('rejected');
        const f = failure((a as PromiseRejectedResult).reason);
        expect(f).to.deep.include({ code: status.FAILED_PRECONDITION, reason: 'PARTICIPANT_NOT_WAITING' });
        expect(f.metadata.admit_state).to.equal('ADMIT_STATE_EXPIRED');
        // Recorded once: by the tick, or by the admit (a refused command keeps what the clock made due).
        const again = await holder.app.sessionTimers.tick(scene.tenantId, id);
        expect(again, `round ${round}: nothing left to do`).to.equal(false);
        const events = await listEvents(client, scene.staff, id);
        expect(count(events, K.SESSION_EVENT_KIND_EXPIRED), `round ${round}`).to.equal(1);
        expect(count(events, K.SESSION_EVENT_KIND_ADMITTED)).to.equal(0);
        expect(await intents(scene.tenantId, id, 'waiting_expired')).to.have.length(1);
        expect(await intents(scene.tenantId, id, 'participant_admitted')).to.deep.equal([]);
      });
    });
  });
});
