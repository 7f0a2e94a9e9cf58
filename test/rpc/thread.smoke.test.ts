import { expect } from 'chai';
import { ParticipantRole, ThreadServiceClient, ThreadState } from '../../gen/comms/v1/thread.js';
import { call, newTenant, newUser, threadClient } from '../support/clients.js';

describe('ThreadService smoke', () => {
  let client: ThreadServiceClient;
  before(() => (client = threadClient()));
  after(() => client.close());

  it('creates a thread and reads it back', async () => {
    const tenant = newTenant();
    const provider = await newUser(tenant, 'provider');
    const patient = await newUser(tenant, 'patient');
    const created = await call(
      client,
      client.createThread,
      {
        subject: 'Lab results',
        participants: [
          { userId: patient.userId, role: ParticipantRole.PARTICIPANT_ROLE_PATIENT, addedAt: undefined, addedBy: '' },
        ],
        requestId: '',
      },
      provider.md,
    );
    expect(created.thread?.state).to.equal(ThreadState.THREAD_STATE_ACTIVE);
    const got = await call(client, client.getThread, { threadId: created.thread!.threadId }, patient.md);
    expect(got.thread?.participants.map((p) => p.userId)).to.have.members([provider.userId, patient.userId]);
  });
});
