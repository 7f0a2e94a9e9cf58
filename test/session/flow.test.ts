import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  AdmitState,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { call, expectError } from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  admit,
  createSession,
  joinSession,
  listEvents,
  participantOf,
  sessionClient,
  sessionScene,
} from '../support/sessions.js';

describe('sessions: a visit from start to end', () => {
  let client: VirtualSessionServiceClient;
  before(() => (client = sessionClient()));
  after(() => client.close());

  it('opens, waits, admits, starts, ends; records every step; credentials only for the admitted', async () => {
    const scene = await sessionScene();
    const created = await createSession(client, scene);
    expect(created.state).to.equal(SessionState.SESSION_STATE_OPEN);
    expect(created.stateReason).to.equal('CREATED_OPEN');
    expect(created.participants.map((p) => p.userId)).to.deep.equal([
      scene.provider.userId,
      scene.provider2.userId,
      scene.patient.userId,
      scene.family.userId,
    ]);
    const id = created.sessionId;

    const waiting = await joinSession(client, scene.patient, id);
    expect(waiting.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_WAITING);
    expect(waiting.credential).to.equal(undefined);
    expect(waiting.participant!.waitingExpiresAt).to.be.instanceOf(Date);

    const providerIn = await joinSession(client, scene.provider, id);
    expect(providerIn.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_ADMITTED);
    expect(providerIn.credential?.token).to.be.a('string').and.not.equal('');
    expect(providerIn.session!.state).to.equal(SessionState.SESSION_STATE_OPEN);

    const admitted = await admit(client, scene.provider, id, scene.patient.userId);
    expect(admitted.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_ADMITTED);
    expect(admitted.session!.state).to.equal(SessionState.SESSION_STATE_IN_PROGRESS);
    expect(admitted.session!.latestEndAt).to.be.instanceOf(Date);

    const patientIn = await joinSession(client, scene.patient, id);
    expect(patientIn.credential).to.not.equal(undefined);
    expect((await env.app.rooms.connect(patientIn.credential!.token)).ok).to.equal(true);

    const end = await call(
      client,
      client.requestTransition,
      { sessionId: id, transition: SessionTransition.SESSION_TRANSITION_END, reason: 'done' },
      scene.provider.md,
    );
    expect(end.accepted).to.equal(true);
    expect(end.state).to.equal(SessionState.SESSION_STATE_ENDED);
    expect(participantOf(end.session!, scene.patient.userId).admitState).to.equal(AdmitState.ADMIT_STATE_LEFT);
    const refused = await env.app.rooms.connect(patientIn.credential!.token);
    expect(refused).to.deep.equal({ ok: false, reason: 'ROOM_CLOSED' });

    await expectError(joinSession(client, scene.patient, id), status.FAILED_PRECONDITION, 'SESSION_CLOSED');
    const events = await listEvents(client, scene.staff, id);
    expect(events.map((e) => [SessionEventKind[e.kind], e.reasonCode])).to.deep.equal([
      ['SESSION_EVENT_KIND_CREATED', 'CREATED_OPEN'],
      ['SESSION_EVENT_KIND_INVITED', 'INVITED'],
      ['SESSION_EVENT_KIND_INVITED', 'INVITED'],
      ['SESSION_EVENT_KIND_INVITED', 'INVITED'],
      ['SESSION_EVENT_KIND_INVITED', 'INVITED'],
      ['SESSION_EVENT_KIND_JOINED', 'JOINED_WAITING'],
      ['SESSION_EVENT_KIND_JOINED', 'JOINED_ADMITTED'],
      ['SESSION_EVENT_KIND_ADMITTED', 'ADMITTED'],
      ['SESSION_EVENT_KIND_TRANSITIONED', 'FIRST_PARTICIPANT_ADMITTED'],
      ['SESSION_EVENT_KIND_TRANSITIONED', 'ENDED_BY_PROVIDER'],
      ['SESSION_EVENT_KIND_LEFT', 'SESSION_CLOSED'],
      ['SESSION_EVENT_KIND_LEFT', 'SESSION_CLOSED'],
    ]);
  });
});
