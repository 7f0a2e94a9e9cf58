import { credentials, type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { EscalationLevel, ParticipantRole, type Thread, ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { call, errorDetails, newTenant, newUser, type TestUser } from '../support/clients.js';
import { env } from '../support/hooks.js';
import {
  archive,
  createThread,
  db,
  escalate,
  getThread,
  newUserId,
  participant,
  storedThread,
  tenantRowCounts,
  threadScene,
} from '../support/threads.js';

const ROUNDS = 3;
const LEVELS = [
  EscalationLevel.ESCALATION_LEVEL_ELEVATED,
  EscalationLevel.ESCALATION_LEVEL_URGENT,
  EscalationLevel.ESCALATION_LEVEL_EMERGENCY,
];

/** Splits settled calls into the one winner and the refused rest; asserts exactly one won. */
function oneWinner<T>(results: PromiseSettledResult<T>[]): { winner: T; index: number; losers: ServiceError[] } {
  const won = results.flatMap((r, index) => (r.status === 'fulfilled' ? [{ value: r.value, index }] : []));
  const losers = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as ServiceError] : []));
  expect(won, 'exactly one call wins').to.have.length(1);
  return { winner: won[0]!.value, index: won[0]!.index, losers };
}

/** Asserts every loser was refused with ABORTED ETAG_MISMATCH naming the winner's etag. */
function expectEtagMismatches(losers: ServiceError[], winnerEtag: string): void {
  for (const err of losers) {
    expect(err.code, `code (message: ${err.details})`).to.equal(status.ABORTED);
    const { info } = errorDetails(err);
    expect(info?.reason).to.equal('ETAG_MISMATCH');
    expect(info?.metadata.current_etag).to.equal(winnerEtag);
  }
}

describe('ThreadService under concurrency (real PostgreSQL)', () => {
  // Several channels with their own connections, so the calls really arrive side by side.
  let clients: ThreadServiceClient[];
  const clientFor = (i: number) => clients[i % clients.length]!;
  before(() => {
    clients = Array.from(
      { length: 4 },
      () => new ThreadServiceClient(env.address, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
    );
  });
  after(() => clients.forEach((c) => c.close()));

  it('20 concurrent EscalateThread with the same etag: one wins, 19 ABORTED, the winner is the final state', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const s = await threadScene(clientFor(0));
      const staff = await Promise.all(Array.from({ length: 20 }, () => newUser(s.tenantId, 'staff')));
      const before = await storedThread(s.tenantId, s.thread.threadId);
      const results = await Promise.allSettled(
        staff.map((user, i) =>
          escalate(clientFor(i), user, s.thread.threadId, {
            level: LEVELS[i % LEVELS.length],
            assigneeUserId: `nurse-${round}-${i}`,
            reason: `reason ${i}`,
            etag: s.thread.etag,
          }),
        ),
      );
      const { winner, index, losers } = oneWinner(results);
      expect(losers).to.have.length(19);
      expectEtagMismatches(losers, winner.etag);

      expect(winner.escalation).to.deep.include({
        level: LEVELS[index % LEVELS.length],
        assigneeUserId: `nurse-${round}-${index}`,
        reason: `reason ${index}`,
        escalatedBy: staff[index]!.userId,
      });
      const final = await getThread(clientFor(0), s.staff, s.thread.threadId);
      expect(final).to.deep.equal(winner);
      const after = await storedThread(s.tenantId, s.thread.threadId);
      expect(after!.row.version).to.equal((before!.row.version as number) + 1);
      expect(after!.row.escalation_assignee).to.equal(`nurse-${round}-${index}`);
      expect(after!.participants.map((p) => p.user_id)).to.have.members([
        ...before!.participants.map((p) => p.user_id),
        `nurse-${round}-${index}`,
      ]);
    }
  });

  it('20 concurrent AddParticipant with the same etag: exactly one user is added', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const s = await threadScene(clientFor(0));
      const newcomers = Array.from({ length: 20 }, () => newUserId('newcomer'));
      const before = await storedThread(s.tenantId, s.thread.threadId);
      const results = await Promise.allSettled(
        newcomers.map((userId, i) =>
          call(
            clientFor(i),
            clientFor(i).addParticipant,
            {
              threadId: s.thread.threadId,
              participant: participant(userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
              etag: s.thread.etag,
            },
            i % 2 === 0 ? s.staff.md : s.provider.md,
          ),
        ),
      );
      const { winner, index, losers } = oneWinner(results);
      expectEtagMismatches(losers, winner.thread!.etag);
      expect(winner.thread!.participants.map((p) => p.userId)).to.include(newcomers[index]);

      expect(await getThread(clientFor(0), s.staff, s.thread.threadId)).to.deep.equal(winner.thread);
      const after = await storedThread(s.tenantId, s.thread.threadId);
      expect(after!.participants.map((p) => p.user_id)).to.have.members([
        ...before!.participants.map((p) => p.user_id),
        newcomers[index],
      ]);
      expect(after!.row.version).to.equal((before!.row.version as number) + 1);
    }
  });

  it('20 concurrent mixed mutations with the same etag: one wins, the rest ABORTED', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const s = await threadScene(clientFor(0));
      const etag = s.thread.etag;
      const id = s.thread.threadId;
      const attempts: (() => Promise<Thread>)[] = Array.from({ length: 20 }, (_, i) => {
        const c = clientFor(i);
        switch (i % 4) {
          case 0:
            return () => escalate(c, s.staff, id, { assigneeUserId: `nurse-${i}`, etag });
          case 1:
            return async () =>
              (
                await call(
                  c,
                  c.addParticipant,
                  { threadId: id, participant: participant(`m-${i}`, ParticipantRole.PARTICIPANT_ROLE_FAMILY), etag },
                  s.provider.md,
                )
              ).thread!;
          case 2:
            return async () =>
              (await call(c, c.removeParticipant, { threadId: id, userId: s.familyUserId, etag }, s.staff.md)).thread!;
          default:
            return () => archive(c, s.provider, id, etag);
        }
      });
      const { winner, losers } = oneWinner(await Promise.allSettled(attempts.map((attempt) => attempt())));
      expectEtagMismatches(losers, winner.etag);
      expect(await getThread(clientFor(0), s.staff, id)).to.deep.equal(winner);
    }
  });

  it('20 concurrent EscalateThread without an etag all apply, one after another, none lost', async () => {
    const s = await threadScene(clientFor(0));
    const before = await storedThread(s.tenantId, s.thread.threadId);
    const assignees = Array.from({ length: 20 }, (_, i) => `nurse-${i}`);
    const results = await Promise.all(
      assignees.map((assigneeUserId, i) => escalate(clientFor(i), s.staff, s.thread.threadId, { assigneeUserId })),
    );
    const etags = new Set(results.map((t) => t.etag));
    expect(etags.size, 'every change got its own version').to.equal(20);
    const after = await storedThread(s.tenantId, s.thread.threadId);
    expect(after!.row.version).to.equal((before!.row.version as number) + 20);
    expect(after!.participants.map((p) => p.user_id)).to.include.members(assignees);
    expect(after!.participants).to.have.length(before!.participants.length + 20);
    const final = await getThread(clientFor(0), s.staff, s.thread.threadId);
    const last = results.find((t) => t.etag === final.etag);
    expect(last, 'the final state is one of the responses').to.not.equal(undefined);
    expect(final).to.deep.equal(last);
  });

  it('10 concurrent CreateThread with the same request_id: one thread, every call gets its id', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const tenant = newTenant();
      const provider: TestUser = await newUser(tenant, 'provider');
      const patientId = newUserId('patient');
      const requestId = `create-${round}`;
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          createThread(clientFor(i), provider, {
            subject: `attempt ${i}`,
            participants: [participant(patientId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
            requestId,
          }),
        ),
      );
      const ids = new Set(results.map((t) => t.threadId));
      expect(ids.size, 'one thread id for every call').to.equal(1);
      expect(new Set(results.map((t) => t.etag)).size).to.equal(1);
      expect(new Set(results.map((t) => t.subject)).size, 'every call sees the same thread').to.equal(1);
      const { rows } = await db().query<{ n: string }>(
        'select count(*) as n from thread where tenant_id = $1 and created_by = $2 and create_request_id = $3',
        [tenant, provider.userId, requestId],
      );
      expect(Number(rows[0]!.n)).to.equal(1);
      expect(await tenantRowCounts(tenant)).to.deep.equal({ threads: 1, participants: 2 });
    }
  });
});
