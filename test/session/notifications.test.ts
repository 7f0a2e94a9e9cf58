import { randomUUID } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  type Notification,
  NotificationKind,
  type NotificationServiceClient,
  NotificationStatus,
} from '../../gen/comms/v1/notification.js';
import {
  type SessionEvent,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { newId } from '../../src/domain/ids.js';
import { call, expectError, newUser, type TestUser } from '../support/clients.js';
import {
  listAll,
  notificationClient,
  requestNotification,
  storedIntents,
  tenantPlans,
  useDispatcher,
  waitForNotification,
} from '../support/notifications.js';
import {
  admit,
  createSession,
  deny,
  joinSession,
  leaveSession,
  listEvents,
  removeParticipant,
  type SessionScene,
  sessionClient,
  sessionParticipant,
  sessionScene,
} from '../support/sessions.js';
import { newUserId } from '../support/threads.js';

const MINUTE = 60_000;
const K = NotificationKind;
const NS = NotificationStatus;
const R = ParticipantRole;

/** The stored intents of one session (any recipient), as (kind, recipient, event) triples. */
async function storedOf(tenantId: string, sessionId: string) {
  return (await storedIntents(tenantId))
    .filter((i) => i.session_id === sessionId)
    .map((i) => ({ kind: i.kind as string, recipient: i.recipient_user_id as string, event: i.event_id as string }));
}

/** The last event of `kind` about `userId`. */
function lastEvent(events: readonly SessionEvent[], kind: SessionEventKind, userId: string): SessionEvent {
  const e = events.filter((x) => x.kind === kind && x.subjectUserId === userId).at(-1);
  expect(e, `${SessionEventKind[kind]} event of ${userId}`).to.not.equal(undefined);
  return e!;
}

describe('sessions: notifications the changes cause', () => {
  let sessions: VirtualSessionServiceClient;
  let notifications: NotificationServiceClient;
  before(() => {
    sessions = sessionClient();
    notifications = notificationClient();
  });
  after(() => {
    sessions.close();
    notifications.close();
  });

  /** The intents of `recipient` about `sessionId`, read as staff through NotificationService. */
  async function intentsFor(scene: SessionScene, recipient: string, sessionId: string): Promise<Notification[]> {
    return (await listAll(notifications, scene.staff, recipient)).filter((n) => n.source?.sessionId === sessionId);
  }

  it('tells every PROVIDER participant but the joiner, the denied and the removed that a patient waits', async () => {
    const scene = await sessionScene();
    // A PROVIDER participant whose token is not a provider's waits like a patient (and can be denied).
    const pseudo = await newUser(scene.tenantId, 'patient');
    const removedProvider = newUserId('prov');
    const now = new Date();
    const created = await createSession(sessions, scene, {
      startAt: new Date(now.getTime() + 10 * MINUTE),
      opensAt: now,
      participants: [
        sessionParticipant(scene.provider2.userId, R.PARTICIPANT_ROLE_PROVIDER),
        sessionParticipant(pseudo.userId, R.PARTICIPANT_ROLE_PROVIDER),
        sessionParticipant(removedProvider, R.PARTICIPANT_ROLE_PROVIDER),
        sessionParticipant(scene.patient.userId, R.PARTICIPANT_ROLE_PATIENT),
        sessionParticipant(scene.family.userId, R.PARTICIPANT_ROLE_FAMILY),
      ],
    });
    expect(created.state).to.equal(SessionState.SESSION_STATE_OPEN);
    const id = created.sessionId;

    await joinSession(sessions, pseudo, id);
    let events = await listEvents(sessions, scene.staff, id);
    const pseudoJoined = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_JOINED, pseudo.userId);
    expect((await storedOf(scene.tenantId, id)).filter((i) => i.event === pseudoJoined.eventId)).to.have.deep.members([
      { kind: 'patient_waiting', recipient: scene.provider.userId, event: pseudoJoined.eventId },
      { kind: 'patient_waiting', recipient: scene.provider2.userId, event: pseudoJoined.eventId },
      { kind: 'patient_waiting', recipient: removedProvider, event: pseudoJoined.eventId },
    ]);

    await deny(sessions, scene.provider, id, pseudo.userId);
    await removeParticipant(sessions, scene.provider, id, removedProvider);
    await joinSession(sessions, scene.patient, id);
    events = await listEvents(sessions, scene.staff, id);
    const joined = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_JOINED, scene.patient.userId);
    const stored = (await storedOf(scene.tenantId, id)).filter((i) => i.event === joined.eventId);
    expect(stored.map((i) => i.recipient)).to.have.members([scene.provider.userId, scene.provider2.userId]);
    expect(stored).to.have.length(2);

    for (const provider of [scene.provider, scene.provider2]) {
      const mine = (await intentsFor(scene, provider.userId, id)).filter((n) => n.source!.eventId === joined.eventId);
      expect(mine, provider.userId).to.have.length(1);
      const n = mine[0]!;
      expect(n.kind).to.equal(K.NOTIFICATION_KIND_PATIENT_WAITING);
      expect(n.recipientUserId).to.equal(provider.userId);
      expect(n.source!.sessionId).to.equal(id);
      expect(n.source!.threadId).to.equal('');
      expect(n.deepLink).to.equal(`comms://sessions/${id}`);
      expect(n.urgent, 'the visit has not started yet').to.equal(false);
    }
  });

  it('marks PATIENT_WAITING urgent once the scheduled start has passed', async () => {
    const scene = await sessionScene();
    const created = await createSession(sessions, scene, { startAt: new Date() });
    const joined = await joinSession(sessions, scene.patient, created.sessionId);
    expect(joined.participant!.joinedAt!.getTime()).to.be.at.least(created.scheduledStartAt!.getTime());
    const intents = [
      ...(await intentsFor(scene, scene.provider.userId, created.sessionId)),
      ...(await intentsFor(scene, scene.provider2.userId, created.sessionId)),
    ];
    expect(intents.map((n) => [K[n.kind], n.urgent])).to.deep.equal([
      ['NOTIFICATION_KIND_PATIENT_WAITING', true],
      ['NOTIFICATION_KIND_PATIENT_WAITING', true],
    ]);
  });

  it('tells an admitted participant (PARTICIPANT_ADMITTED) and one whose wait ended with the session (WAITING_EXPIRED)', async () => {
    const scene = await sessionScene();
    const created = await createSession(sessions, scene);
    const id = created.sessionId;
    await joinSession(sessions, scene.provider, id);
    await joinSession(sessions, scene.patient, id);
    await joinSession(sessions, scene.family, id);
    await admit(sessions, scene.provider, id, scene.patient.userId);
    let events = await listEvents(sessions, scene.staff, id);
    const admitted = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_ADMITTED, scene.patient.userId);

    const patientIntents = await intentsFor(scene, scene.patient.userId, id);
    expect(patientIntents.map((n) => [K[n.kind], n.source!.eventId, n.deepLink, n.urgent])).to.deep.equal([
      ['NOTIFICATION_KIND_PARTICIPANT_ADMITTED', admitted.eventId, `comms://sessions/${id}`, false],
    ]);
    // Nobody else is told of the admit (the provider who joined ADMITTED included).
    expect((await storedOf(scene.tenantId, id)).filter((i) => i.kind === 'participant_admitted')).to.have.length(1);

    const end = await call(
      sessions,
      sessions.requestTransition,
      { sessionId: id, transition: SessionTransition.SESSION_TRANSITION_END, reason: '' },
      scene.provider.md,
    );
    expect(end.state).to.equal(SessionState.SESSION_STATE_ENDED);
    events = await listEvents(sessions, scene.staff, id);
    const expired = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_EXPIRED, scene.family.userId);
    expect(expired.reasonCode).to.equal('SESSION_CLOSED');
    const familyIntents = (await intentsFor(scene, scene.family.userId, id)).filter(
      (n) => n.kind === K.NOTIFICATION_KIND_WAITING_EXPIRED,
    );
    expect(familyIntents.map((n) => [n.source!.eventId, n.recipientUserId, n.urgent])).to.deep.equal([
      [expired.eventId, scene.family.userId, false],
    ]);
    // The patient left (admitted → LEFT): no WAITING_EXPIRED for them.
    expect((await storedOf(scene.tenantId, id)).filter((i) => i.kind === 'waiting_expired')).to.have.length(1);
  });

  it('RequestNotification with a session_id: accepted for a session of the tenant, NOT_FOUND otherwise', async () => {
    const scene = await sessionScene();
    const created = await createSession(sessions, scene);
    const n = await requestNotification(notifications, scene.service, {
      recipientUserId: scene.patient.userId,
      sessionId: created.sessionId,
    });
    expect(n.kind).to.equal(K.NOTIFICATION_KIND_SERVICE_EVENT);
    expect(n.source!.sessionId).to.equal(created.sessionId);
    expect(n.deepLink).to.equal(`comms://sessions/${created.sessionId}`);

    await expectError(
      requestNotification(notifications, scene.service, { recipientUserId: scene.patient.userId, sessionId: newId() }),
      status.NOT_FOUND,
      'SESSION_NOT_FOUND',
    );
    await expectError(
      requestNotification(notifications, scene.foreignService, {
        recipientUserId: scene.patient.userId,
        sessionId: created.sessionId,
      }),
      status.NOT_FOUND,
      'SESSION_NOT_FOUND',
    );
    await expectError(
      requestNotification(notifications, scene.service, {
        recipientUserId: scene.patient.userId,
        sessionId: randomUUID(),
      }),
      status.NOT_FOUND,
      'SESSION_NOT_FOUND',
    );
  });
});

describe('sessions: dispatch drops session notifications that are no longer relevant', () => {
  useDispatcher();
  let sessions: VirtualSessionServiceClient;
  let notifications: NotificationServiceClient;
  before(() => {
    sessions = sessionClient();
    notifications = notificationClient();
  });
  after(() => {
    sessions.close();
    notifications.close();
  });

  const intentOf = async (scene: SessionScene, recipient: TestUser, eventId: string) => {
    const found = (await listAll(notifications, scene.staff, recipient.userId)).filter(
      (n) => n.source?.eventId === eventId,
    );
    expect(found, `intent of ${recipient.userId} for ${eventId}`).to.have.length(1);
    return found[0]!;
  };
  const final = (scene: SessionScene, n: Notification) =>
    waitForNotification(notifications, scene.staff, n.notificationId, undefined, 20_000);

  it('cancels PATIENT_WAITING once the patient was admitted before its first step; delivers it while they still wait', async function () {
    this.timeout(40_000);
    const scene = await sessionScene();
    await tenantPlans(scene.tenantId, {
      patient_waiting: [{ channel: 'push', delay_ms: 5000, condition: 'always' }],
      participant_admitted: [{ channel: 'push', delay_ms: 0, condition: 'always' }],
    });
    const created = await createSession(sessions, scene);
    const id = created.sessionId;
    await joinSession(sessions, scene.provider, id);
    await joinSession(sessions, scene.patient, id);
    await joinSession(sessions, scene.family, id);
    await admit(sessions, scene.provider, id, scene.patient.userId);
    const events = await listEvents(sessions, scene.staff, id);
    const patientJoined = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_JOINED, scene.patient.userId);
    const familyJoined = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_JOINED, scene.family.userId);
    const admitted = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_ADMITTED, scene.patient.userId);

    const pending = await intentOf(scene, scene.provider2, patientJoined.eventId);
    expect(pending.status).to.equal(NS.NOTIFICATION_STATUS_PENDING);

    const [cancelled1, cancelled2, waiting1, waiting2, admittedIntent] = await Promise.all([
      final(scene, pending),
      final(scene, await intentOf(scene, scene.provider, patientJoined.eventId)),
      final(scene, await intentOf(scene, scene.provider, familyJoined.eventId)),
      final(scene, await intentOf(scene, scene.provider2, familyJoined.eventId)),
      final(scene, await intentOf(scene, scene.patient, admitted.eventId)),
    ]);
    for (const n of [cancelled1, cancelled2]) {
      expect([NS[n.status], n.statusReason], n.recipientUserId).to.deep.equal([
        'NOTIFICATION_STATUS_CANCELLED',
        'NO_LONGER_RELEVANT',
      ]);
      expect(n.dispatchRecords).to.have.length(0);
    }
    for (const n of [waiting1, waiting2, admittedIntent]) {
      expect(NS[n.status], `${K[n.kind]} to ${n.recipientUserId}`).to.equal('NOTIFICATION_STATUS_DELIVERED');
    }
  });

  it('cancels PATIENT_WAITING of a patient who left, and PARTICIPANT_ADMITTED once the session closed', async function () {
    this.timeout(40_000);
    const scene = await sessionScene();
    await tenantPlans(scene.tenantId, {
      patient_waiting: [{ channel: 'push', delay_ms: 3000, condition: 'always' }],
      participant_admitted: [{ channel: 'push', delay_ms: 3000, condition: 'always' }],
    });
    const created = await createSession(sessions, scene);
    const id = created.sessionId;
    await joinSession(sessions, scene.provider, id);
    await joinSession(sessions, scene.family, id);
    await leaveSession(sessions, scene.family, id);
    await joinSession(sessions, scene.patient, id);
    await admit(sessions, scene.provider, id, scene.patient.userId);
    await call(
      sessions,
      sessions.requestTransition,
      { sessionId: id, transition: SessionTransition.SESSION_TRANSITION_END, reason: '' },
      scene.provider.md,
    );
    const events = await listEvents(sessions, scene.staff, id);
    const familyJoined = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_JOINED, scene.family.userId);
    const admitted = lastEvent(events, SessionEventKind.SESSION_EVENT_KIND_ADMITTED, scene.patient.userId);
    const [left, admittedIntent] = await Promise.all([
      final(scene, await intentOf(scene, scene.provider2, familyJoined.eventId)),
      final(scene, await intentOf(scene, scene.patient, admitted.eventId)),
    ]);
    for (const n of [left, admittedIntent]) {
      expect([NS[n.status], n.statusReason], K[n.kind]).to.deep.equal([
        'NOTIFICATION_STATUS_CANCELLED',
        'NO_LONGER_RELEVANT',
      ]);
    }
  });
});
