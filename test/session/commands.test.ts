import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { AdmitState, type VirtualSessionServiceClient } from '../../gen/comms/v1/session.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { ADMIT_STATES, type AdmitState as DomainAdmitState } from '../../src/domain/session/session.policy.js';
import { call, callError, errorDetails } from '../support/clients.js';
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
  type SessionScene,
  sessionClient,
  sessionParticipant,
  sessionScene,
  sessionSettings,
  useClockApp,
} from '../support/sessions.js';

type Command = 'join' | 'leave' | 'admit' | 'deny' | 'remove' | 'invite';

/**
 * Every participant command on a patient in every admit_state of an OPEN session, as the proto words
 * them: the admit_state afterwards (`=` marks "unchanged, nothing recorded"), or the refusal's reason.
 * The provider of the session admits, denies, removes and invites; the patient joins and leaves.
 */
const EXPECTED: Record<DomainAdmitState, Record<Command, string>> = {
  invited: {
    join: 'waiting',
    leave: '=',
    admit: 'PARTICIPANT_NOT_WAITING',
    deny: 'PARTICIPANT_NOT_WAITING',
    remove: 'removed',
    invite: '=',
  },
  waiting: { join: '=', leave: 'left', admit: 'admitted', deny: 'denied', remove: 'removed', invite: '=' },
  admitted: {
    join: '=',
    leave: 'left',
    admit: '=',
    deny: 'PARTICIPANT_NOT_WAITING',
    remove: 'removed',
    invite: '=',
  },
  denied: {
    join: 'PARTICIPANT_DENIED',
    leave: '=',
    admit: 'PARTICIPANT_NOT_WAITING',
    deny: '=',
    remove: 'removed',
    invite: 'invited',
  },
  removed: {
    join: 'PARTICIPANT_REMOVED',
    leave: '=',
    admit: 'PARTICIPANT_NOT_WAITING',
    deny: 'PARTICIPANT_NOT_WAITING',
    remove: '=',
    invite: 'invited',
  },
  // Left after being admitted, within the rejoin grace: back in without a new admit.
  left: {
    join: 'admitted',
    leave: '=',
    admit: 'PARTICIPANT_NOT_WAITING',
    deny: 'PARTICIPANT_NOT_WAITING',
    remove: 'removed',
    invite: '=',
  },
  expired: {
    join: 'waiting',
    leave: '=',
    admit: 'PARTICIPANT_NOT_WAITING',
    deny: 'PARTICIPANT_NOT_WAITING',
    remove: 'removed',
    invite: '=',
  },
};

const COMMANDS: readonly Command[] = ['join', 'leave', 'admit', 'deny', 'remove', 'invite'];
const WAITING_MS = 10 * 60_000;

describe('sessions: every participant command in every admit_state', () => {
  const holder = useClockApp();
  let client: VirtualSessionServiceClient;
  let scene: SessionScene;
  before(async () => {
    client = sessionClient(holder.address);
    scene = await sessionScene();
    await sessionSettings(scene.tenantId, { waitingMs: WAITING_MS, rejoinAllowed: true, rejoinGraceMs: 3_600_000 });
  });
  after(() => client.close());

  /** A fresh OPEN session with the patient brought into `state` through the API (and the clock). */
  async function patientIn(state: DomainAdmitState): Promise<string> {
    const session = await createSession(client, scene, {
      now: holder.clock.now(),
      participants: [sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    const id = session.sessionId;
    const patient = scene.patient.userId;
    if (state === 'invited') return id;
    if (state === 'removed') {
      await removeParticipant(client, scene.provider, id, patient);
      return id;
    }
    await joinSession(client, scene.patient, id);
    if (state === 'denied') await deny(client, scene.provider, id, patient);
    if (state === 'admitted' || state === 'left') await admit(client, scene.provider, id, patient);
    if (state === 'left') await leaveSession(client, scene.patient, id);
    if (state === 'expired') {
      holder.clock.advance(WAITING_MS);
      await holder.app.sessionTimers.tick(scene.tenantId, id);
    }
    const now = participantOf(await getSession(client, scene.staff, id), patient).admitState;
    expect(AdmitState[now], `setup reached ${state}`).to.equal(`ADMIT_STATE_${state.toUpperCase()}`);
    return id;
  }

  function run(command: Command, sessionId: string): Promise<unknown> {
    const patient = scene.patient.userId;
    switch (command) {
      case 'join':
        return joinSession(client, scene.patient, sessionId);
      case 'leave':
        return leaveSession(client, scene.patient, sessionId);
      case 'admit':
        return admit(client, scene.provider, sessionId, patient);
      case 'deny':
        return deny(client, scene.provider, sessionId, patient);
      case 'remove':
        return removeParticipant(client, scene.provider, sessionId, patient);
      case 'invite':
        return call(
          client,
          client.inviteParticipant,
          {
            sessionId,
            participant: sessionParticipant(patient, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
          },
          scene.provider.md,
        );
    }
  }

  for (const state of ADMIT_STATES) {
    for (const command of COMMANDS) {
      const expected = EXPECTED[state][command];
      it(`${state} × ${command} → ${expected === '=' ? 'unchanged' : expected}`, async () => {
        const id = await patientIn(state);
        const before = await getSession(client, scene.staff, id);
        const eventsBefore = (await listEvents(client, scene.staff, id, scene.patient.userId)).length;
        if (/^[A-Z_]+$/.test(expected)) {
          const err = await callError(run(command, id));
          expect(err.code).to.equal(status.FAILED_PRECONDITION);
          const { info } = errorDetails(err);
          expect(info?.reason).to.equal(expected);
          expect(info?.metadata.admit_state).to.equal(`ADMIT_STATE_${state.toUpperCase()}`);
        } else {
          await run(command, id);
        }
        const after = await getSession(client, scene.staff, id);
        const eventsAfter = (await listEvents(client, scene.staff, id, scene.patient.userId)).length;
        const target = expected === '=' || /^[A-Z_]+$/.test(expected) ? state : expected;
        expect(AdmitState[participantOf(after, scene.patient.userId).admitState]).to.equal(
          `ADMIT_STATE_${target.toUpperCase()}`,
        );
        if (target === state) {
          // Nothing changed: no event about the patient, the same etag.
          expect(eventsAfter, 'events about the patient').to.equal(eventsBefore);
          expect(after.etag).to.equal(before.etag);
        } else {
          expect(eventsAfter, 'one event about the patient').to.equal(eventsBefore + 1);
          expect(after.etag).to.not.equal(before.etag);
        }
      });
    }
  }
});
