import { Metadata, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import type { FeedServiceClient } from '../../gen/comms/v1/feed.js';
import {
  AdmitState,
  type ListSessionsRequest,
  SessionEventKind,
  SessionState,
  SessionTransition,
  type VirtualSession,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { call, expectError, newUser, type TestUser } from '../support/clients.js';
import { feedClient, watchSession } from '../support/feeds.js';
import { db, sameSubjectIn } from '../support/threads.js';
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
} from '../support/sessions.js';

const MINUTE = 60_000;
const {
  PARTICIPANT_ROLE_PROVIDER: PROVIDER,
  PARTICIPANT_ROLE_PATIENT: PATIENT,
  PARTICIPANT_ROLE_FAMILY: FAMILY,
} = ParticipantRole;

/**
 * The callers of the matrix, seen from one session that `provider` created with `provider2` (PROVIDER),
 * `patient` (PATIENT), `family` (FAMILY), `patientAsProvider` (a patient-role token listed as PROVIDER),
 * `providerAsPatient` (a provider-role token listed as PATIENT) and `target` (PATIENT, the subject of
 * admit/deny/remove). Staff and service of the tenant take no part; the outsiders of the tenant and the
 * callers of another tenant cannot see the session.
 */
const CALLERS = [
  'provider',
  'provider2',
  'patient',
  'family',
  'patientAsProvider',
  'providerAsPatient',
  'staff',
  'service',
  'outsiderProvider',
  'outsiderPatient',
  'foreignStaff',
  'foreignService',
] as const;
type Caller = (typeof CALLERS)[number];

/** Providers of the session: token role provider AND listed as PROVIDER. */
const PROVIDERS_OF_SESSION: readonly Caller[] = ['provider', 'provider2'];
const PARTICIPANTS: readonly Caller[] = [
  'provider',
  'provider2',
  'patient',
  'family',
  'patientAsProvider',
  'providerAsPatient',
];

const OK = 'ok';
const NOT_FOUND = 'NOT_FOUND SESSION_NOT_FOUND';
const ROLE = 'PERMISSION_DENIED ROLE_NOT_ALLOWED';
const NOT_PARTICIPANT = 'PERMISSION_DENIED NOT_A_PARTICIPANT';
/** RequestTransition answers (no error) but rejects the suggestion with ROLE_NOT_ALLOWED. */
const REJECTED = 'rejected ROLE_NOT_ALLOWED';
type Outcome = typeof OK | typeof NOT_FOUND | typeof ROLE | typeof NOT_PARTICIPANT | typeof REJECTED;

type Rpc =
  | 'GetSession'
  | 'ListSessions'
  | 'WatchSession'
  | 'UpdateSession'
  | 'RequestTransition'
  | 'InviteParticipant'
  | 'ListSessionEvents'
  | 'JoinSession'
  | 'LeaveSession'
  | 'AdmitParticipant'
  | 'DenyParticipant'
  | 'RemoveSessionParticipant';

const O = OK;
const NF = NOT_FOUND;

/**
 * Who may do what with a session (docs: proto/comms/v1/session.proto and /work/issue7-design.md "Roles").
 * ListSessions: OK = the session is listed, NOT_FOUND = it is not. RequestTransition suggests CANCEL.
 */
// prettier-ignore
const MATRIX: Record<Rpc, readonly Outcome[]> = {
  //                          providers of session | other participants (incl. mislisted tokens)  | tenant governors        | cannot see the session
  //                          provider  provider2  | patient  family  patAsProv  provAsPat         | staff    service        | outProv outPat fStaff fService
  GetSession:               [ O,        O,           O,       O,      O,         O,                O,       O,               NF,     NF,    NF,    NF ],
  ListSessions:             [ O,        O,           O,       O,      O,         O,                O,       O,               NF,     NF,    NF,    NF ],
  WatchSession:             [ O,        O,           O,       O,      O,         O,                O,       O,               NF,     NF,    NF,    NF ],
  UpdateSession:            [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             O,       O,               NF,     NF,    NF,    NF ],
  RequestTransition:        [ O,        O,           REJECTED,REJECTED,REJECTED, REJECTED,         O,       O,               NF,     NF,    NF,    NF ],
  InviteParticipant:        [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             O,       O,               NF,     NF,    NF,    NF ],
  ListSessionEvents:        [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             O,       O,               NF,     NF,    NF,    NF ],
  JoinSession:              [ O,        O,           O,       O,      O,         O,                NOT_PARTICIPANT, NOT_PARTICIPANT, NF, NF, NF,  NF ],
  LeaveSession:             [ O,        O,           O,       O,      O,         O,                NOT_PARTICIPANT, NOT_PARTICIPANT, NF, NF, NF,  NF ],
  AdmitParticipant:         [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             ROLE,    ROLE,            NF,     NF,    NF,    NF ],
  DenyParticipant:          [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             ROLE,    ROLE,            NF,     NF,    NF,    NF ],
  RemoveSessionParticipant: [ O,        O,           ROLE,    ROLE,   ROLE,      ROLE,             ROLE,    ROLE,            NF,     NF,    NF,    NF ],
};

/** The matrix's scene: a SessionScene plus the mislisted tokens and the target participant. */
interface Scene extends SessionScene {
  readonly patientAsProvider: TestUser;
  readonly providerAsPatient: TestUser;
  readonly target: TestUser;
}

async function matrixScene(): Promise<Scene> {
  const scene = await sessionScene();
  const [patientAsProvider, providerAsPatient, target] = await Promise.all([
    newUser(scene.tenantId, 'patient'),
    newUser(scene.tenantId, 'provider'),
    newUser(scene.tenantId, 'patient'),
  ]);
  return { ...scene, patientAsProvider, providerAsPatient, target };
}

/** A fresh OPEN session of the scene with every participant the matrix names. */
function matrixSession(client: VirtualSessionServiceClient, scene: Scene): Promise<VirtualSession> {
  return createSession(client, scene, {
    participants: [
      sessionParticipant(scene.provider2.userId, PROVIDER),
      sessionParticipant(scene.patient.userId, PATIENT),
      sessionParticipant(scene.family.userId, FAMILY),
      sessionParticipant(scene.patientAsProvider.userId, PROVIDER),
      sessionParticipant(scene.providerAsPatient.userId, PATIENT),
      sessionParticipant(scene.target.userId, PATIENT),
    ],
  });
}

/** The session and its history as staff read them: "nothing changed" compares two of these. */
async function observe(client: VirtualSessionServiceClient, scene: SessionScene, sessionId: string) {
  return {
    session: await getSession(client, scene.staff, sessionId),
    events: await listEvents(client, scene.staff, sessionId),
  };
}

const listRequest = (req: Partial<ListSessionsRequest> = {}): ListSessionsRequest => ({
  pageSize: 200,
  pageToken: '',
  state: SessionState.SESSION_STATE_UNSPECIFIED,
  threadId: '',
  participantUserId: '',
  scheduledStartFrom: undefined,
  scheduledStartUntil: undefined,
  ...req,
});

/** Opens WatchSession and resolves with its first response, or rejects with the error it ended with. */
async function firstWatched(feeds: FeedServiceClient, md: Metadata, sessionId: string) {
  const stream = watchSession(feeds, md, sessionId);
  try {
    await stream.waitFor((rs) => rs.length > 0, 10_000, 'a first response').catch(() => undefined);
    if (stream.responses.length > 0) return stream.responses[0]!;
    throw (await stream.ended) ?? new Error('the stream ended OK without a response');
  } finally {
    stream.cancel();
  }
}

interface Ctx {
  readonly client: VirtualSessionServiceClient;
  readonly feeds: FeedServiceClient;
  readonly scene: Scene;
  readonly session: VirtualSession;
}

/**
 * Each RPC of the matrix: `setup` prepares the session for the call (as the caller would find it),
 * `run` makes the call as `md`, `ok` checks a successful answer; `write` marks calls that must change
 * nothing when refused.
 */
const RPCS: Record<
  Rpc,
  {
    readonly write: boolean;
    setup?(ctx: Ctx, who: Caller): Promise<unknown>;
    run(ctx: Ctx, md: Metadata): Promise<unknown>;
    ok(ctx: Ctx, who: Caller, res: unknown): void | Promise<void>;
  }
> = {
  GetSession: {
    write: false,
    run: ({ client, session }, md) => call(client, client.getSession, { sessionId: session.sessionId }, md),
    ok: ({ session }, _who, res) => {
      expect((res as { session: VirtualSession }).session.sessionId).to.equal(session.sessionId);
    },
  },
  ListSessions: {
    write: false,
    run: ({ client }, md) => call(client, client.listSessions, listRequest(), md),
    ok: () => undefined, // judged by the runner: listed or not
  },
  WatchSession: {
    write: false,
    run: ({ feeds, session }, md) => firstWatched(feeds, md, session.sessionId),
    ok: ({ session }, _who, res) => {
      const first = res as Awaited<ReturnType<typeof firstWatched>>;
      expect(first.event?.$case).to.equal('sessionChanged');
      expect((first.event?.value as VirtualSession).sessionId).to.equal(session.sessionId);
    },
  },
  UpdateSession: {
    write: true,
    run: ({ client, session }, md) =>
      call(
        client,
        client.updateSession,
        {
          sessionId: session.sessionId,
          session: { ...session, scheduledEndAt: new Date(session.scheduledEndAt!.getTime() + 15 * MINUTE) },
          updateMask: ['scheduled_end_at'],
          etag: session.etag,
        },
        md,
      ),
    ok: ({ session }, _who, res) => {
      const updated = (res as { session: VirtualSession }).session;
      expect(updated.scheduledEndAt!.getTime() - session.scheduledEndAt!.getTime()).to.equal(15 * MINUTE);
      expect(updated.etag).to.not.equal(session.etag);
    },
  },
  RequestTransition: {
    write: true,
    run: ({ client, session }, md) =>
      call(
        client,
        client.requestTransition,
        { sessionId: session.sessionId, transition: SessionTransition.SESSION_TRANSITION_CANCEL, reason: '' },
        md,
      ),
    ok: (_ctx, who, res) => {
      const r = res as { accepted: boolean; state: SessionState; session: VirtualSession };
      expect(r.accepted).to.equal(true);
      expect(r.state).to.equal(SessionState.SESSION_STATE_CANCELLED);
      const by = PROVIDERS_OF_SESSION.includes(who) ? 'PROVIDER' : who.toUpperCase();
      expect(r.session.stateReason).to.equal(`CANCELLED_BY_${by}`);
    },
  },
  InviteParticipant: {
    write: true,
    run: ({ client, session }, md) =>
      call(
        client,
        client.inviteParticipant,
        { sessionId: session.sessionId, participant: sessionParticipant('invited-guest', FAMILY) },
        md,
      ),
    ok: (_ctx, _who, res) => {
      const r = res as { participant: { userId: string; admitState: AdmitState } };
      expect(r.participant.userId).to.equal('invited-guest');
      expect(r.participant.admitState).to.equal(AdmitState.ADMIT_STATE_INVITED);
    },
  },
  ListSessionEvents: {
    write: false,
    run: ({ client, session }, md) =>
      call(
        client,
        client.listSessionEvents,
        { sessionId: session.sessionId, pageSize: 0, pageToken: '', subjectUserId: '' },
        md,
      ),
    ok: (_ctx, _who, res) => {
      const events = (res as { events: { kind: SessionEventKind }[] }).events;
      expect(events[0]?.kind).to.equal(SessionEventKind.SESSION_EVENT_KIND_CREATED);
    },
  },
  JoinSession: {
    write: true,
    run: ({ client, session }, md) => call(client, client.joinSession, { sessionId: session.sessionId }, md),
    ok: (_ctx, who, res) => {
      const r = res as { participant: { admitState: AdmitState }; credential: unknown };
      // Only providers of the session join ADMITTED; a mislisted token waits like any patient.
      const admitted = PROVIDERS_OF_SESSION.includes(who);
      expect(r.participant.admitState).to.equal(
        admitted ? AdmitState.ADMIT_STATE_ADMITTED : AdmitState.ADMIT_STATE_WAITING,
      );
      expect(r.credential === undefined).to.equal(!admitted);
    },
  },
  LeaveSession: {
    write: true,
    setup: async ({ client, scene, session }, who) => {
      if (PARTICIPANTS.includes(who)) await joinSession(client, scene[who], session.sessionId);
    },
    run: ({ client, session }, md) =>
      call(client, client.leaveSession, { sessionId: session.sessionId, reason: '' }, md),
    ok: (_ctx, _who, res) => {
      expect((res as { participant: { admitState: AdmitState } }).participant.admitState).to.equal(
        AdmitState.ADMIT_STATE_LEFT,
      );
    },
  },
  AdmitParticipant: {
    write: true,
    setup: ({ client, scene, session }) => joinSession(client, scene.target, session.sessionId),
    run: ({ client, scene, session }, md) =>
      call(
        client,
        client.admitParticipant,
        { sessionId: session.sessionId, userId: scene.target.userId, reason: '' },
        md,
      ),
    ok: (_ctx, _who, res) => {
      expect((res as { participant: { admitState: AdmitState } }).participant.admitState).to.equal(
        AdmitState.ADMIT_STATE_ADMITTED,
      );
    },
  },
  DenyParticipant: {
    write: true,
    setup: ({ client, scene, session }) => joinSession(client, scene.target, session.sessionId),
    run: ({ client, scene, session }, md) =>
      call(
        client,
        client.denyParticipant,
        { sessionId: session.sessionId, userId: scene.target.userId, reason: '' },
        md,
      ),
    ok: (_ctx, _who, res) => {
      expect((res as { participant: { admitState: AdmitState } }).participant.admitState).to.equal(
        AdmitState.ADMIT_STATE_DENIED,
      );
    },
  },
  RemoveSessionParticipant: {
    write: true,
    run: ({ client, scene, session }, md) =>
      call(
        client,
        client.removeSessionParticipant,
        { sessionId: session.sessionId, userId: scene.target.userId, reason: '' },
        md,
      ),
    ok: (_ctx, _who, res) => {
      expect((res as { participant: { admitState: AdmitState } }).participant.admitState).to.equal(
        AdmitState.ADMIT_STATE_REMOVED,
      );
    },
  },
};

describe('sessions: who may do what (VirtualSessionService and FeedService.WatchSession)', () => {
  let client: VirtualSessionServiceClient;
  let feeds: FeedServiceClient;
  before(() => {
    client = sessionClient();
    feeds = feedClient();
  });
  after(() => {
    client.close();
    feeds.close();
  });

  for (const rpc of Object.keys(MATRIX) as Rpc[]) {
    describe(rpc, () => {
      let scene: Scene;
      before(async () => (scene = await matrixScene()));

      CALLERS.forEach((who, i) => {
        const outcome = MATRIX[rpc][i]!;
        const spec = RPCS[rpc];
        it(`${who}: ${outcome}${spec.write && outcome !== OK ? ', nothing changes' : ''}`, async () => {
          const ctx: Ctx = { client, feeds, scene, session: await matrixSession(client, scene) };
          await spec.setup?.(ctx, who);
          const before = await observe(client, scene, ctx.session.sessionId);
          const attempt = spec.run({ ...ctx, session: before.session }, scene[who].md);

          if (rpc === 'ListSessions') {
            const listed = ((await attempt) as { sessions: VirtualSession[] }).sessions.map((s) => s.sessionId);
            expect(listed.includes(ctx.session.sessionId), `listed for ${who}`).to.equal(outcome === OK);
            return;
          }
          if (outcome === OK) {
            await spec.ok({ ...ctx, session: before.session }, who, await attempt);
            return;
          }
          if (outcome === REJECTED) {
            const r = (await attempt) as { accepted: boolean; rejectionReason: string };
            expect([r.accepted, r.rejectionReason]).to.deep.equal([false, 'ROLE_NOT_ALLOWED']);
            const after = await observe(client, scene, ctx.session.sessionId);
            expect(after.session, 'session unchanged').to.deep.equal(before.session);
            const added = after.events.slice(before.events.length);
            expect(added.map((e) => [e.kind, e.reasonCode, e.actorUserId])).to.deep.equal([
              [SessionEventKind.SESSION_EVENT_KIND_TRANSITION_REJECTED, 'ROLE_NOT_ALLOWED', scene[who].userId],
            ]);
            return;
          }
          const [code, reason] = outcome.split(' ') as [keyof typeof status, string];
          const { info } = await expectError(attempt, status[code], reason);
          expect(info!.metadata.session_id).to.equal(ctx.session.sessionId);
          expect(await observe(client, scene, ctx.session.sessionId), 'nothing changed').to.deep.equal(before);
        });
      });
    });
  }

  describe('CreateSession', () => {
    it('providers, staff and service create; a patient gets PERMISSION_DENIED (ROLE_NOT_ALLOWED), nothing stored', async () => {
      const scene = await sessionScene();
      const withProvider = [sessionParticipant(scene.provider2.userId, PROVIDER)];
      for (const creator of [scene.provider, scene.staff, scene.service]) {
        const s = await createSession(client, scene, { creator, participants: withProvider });
        expect(s.createdBy).to.equal(creator.userId);
      }
      const count = async () =>
        (
          await db().query<{ n: number }>('select count(*)::int as n from virtual_session where tenant_id = $1', [
            scene.tenantId,
          ])
        ).rows[0]!.n;
      expect(await count()).to.equal(3);
      for (const participants of [withProvider, [sessionParticipant(scene.patient.userId, PROVIDER)]]) {
        await expectError(
          createSession(client, scene, { creator: scene.patient, participants }),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
      }
      expect(await count()).to.equal(3);
      // Another tenant's callers create in their own tenant only.
      const theirs = await createSession(client, scene, { creator: scene.foreignStaff, participants: withProvider });
      expect(await count()).to.equal(3);
      await expectError(getSession(client, scene.staff, theirs.sessionId), status.NOT_FOUND, 'SESSION_NOT_FOUND');
      expect((await getSession(client, scene.foreignService, theirs.sessionId)).sessionId).to.equal(theirs.sessionId);
    });
  });

  describe('ListSessions of another user', () => {
    it('naming another participant: staff and service only; others PERMISSION_DENIED (ROLE_NOT_ALLOWED)', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      const naming = (user: TestUser, participantUserId: string) =>
        call(client, client.listSessions, listRequest({ participantUserId }), user.md);
      for (const user of [scene.provider, scene.provider2, scene.patient, scene.outsiderProvider]) {
        await expectError(naming(user, scene.family.userId), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
      }
      for (const user of [scene.staff, scene.service]) {
        expect((await naming(user, scene.family.userId)).sessions.map((x) => x.sessionId)).to.deep.equal([s.sessionId]);
      }
      // Another tenant's staff may name the user, but sees nothing of this tenant.
      expect((await naming(scene.foreignStaff, scene.family.userId)).sessions).to.deep.equal([]);
    });
  });

  describe('no sight of the session', () => {
    it('the same subject in another tenant, and a session id that never existed: NOT_FOUND', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      for (const twin of [
        await sameSubjectIn(scene.foreignStaff.tenantId, scene.patient),
        await sameSubjectIn(scene.foreignStaff.tenantId, scene.provider),
      ]) {
        await expectError(getSession(client, twin, s.sessionId), status.NOT_FOUND, 'SESSION_NOT_FOUND');
        await expectError(joinSession(client, twin, s.sessionId), status.NOT_FOUND, 'SESSION_NOT_FOUND');
      }
      const never = uuidv7();
      const { info } = await expectError(getSession(client, scene.staff, never), status.NOT_FOUND, 'SESSION_NOT_FOUND');
      expect(info!.metadata.session_id).to.equal(never);
      await expectError(
        admit(client, scene.provider, never, scene.patient.userId),
        status.NOT_FOUND,
        'SESSION_NOT_FOUND',
      );
    });

    it('DENIED and REMOVED participants still see the session (get, list, watch) but cannot act as others', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.patient, s.sessionId);
      await deny(client, scene.provider, s.sessionId, scene.patient.userId);
      await removeParticipant(client, scene.provider, s.sessionId, scene.family.userId);
      for (const [user, state] of [
        [scene.patient, AdmitState.ADMIT_STATE_DENIED],
        [scene.family, AdmitState.ADMIT_STATE_REMOVED],
      ] as const) {
        const got = await getSession(client, user, s.sessionId);
        expect(participantOf(got, user.userId).admitState).to.equal(state);
        const listed = await call(client, client.listSessions, listRequest(), user.md);
        expect(listed.sessions.map((x) => x.sessionId)).to.deep.equal([s.sessionId]);
        const first = await firstWatched(feeds, user.md, s.sessionId);
        expect(first.event?.$case).to.equal('sessionChanged');
        await expectError(
          call(
            client,
            client.listSessionEvents,
            { sessionId: s.sessionId, pageSize: 0, pageToken: '', subjectUserId: '' },
            user.md,
          ),
          status.PERMISSION_DENIED,
          'ROLE_NOT_ALLOWED',
        );
      }
      // A REMOVED provider of the session is still a provider of it (any admit_state), e.g. for history.
      await removeParticipant(client, scene.provider, s.sessionId, scene.provider2.userId);
      expect(await listEvents(client, scene.provider2, s.sessionId)).to.not.deep.equal([]);
    });

    it('a provider who left still governs; leaving twice changes nothing the second time', async () => {
      const scene = await sessionScene();
      const s = await createSession(client, scene);
      await joinSession(client, scene.provider, s.sessionId);
      await leaveSession(client, scene.provider, s.sessionId);
      const before = await observe(client, scene, s.sessionId);
      const again = await leaveSession(client, scene.provider, s.sessionId);
      expect(again.participant!.admitState).to.equal(AdmitState.ADMIT_STATE_LEFT);
      expect(await observe(client, scene, s.sessionId)).to.deep.equal(before);
      const cancelled = await call(
        client,
        client.requestTransition,
        { sessionId: s.sessionId, transition: SessionTransition.SESSION_TRANSITION_CANCEL, reason: '' },
        scene.provider.md,
      );
      expect(cancelled.session!.stateReason).to.equal('CANCELLED_BY_PROVIDER');
    });
  });

  describe('unauthenticated', () => {
    const anonymous = new Metadata();
    it('every RPC (and WatchSession) without a token: UNAUTHENTICATED, nothing changes', async () => {
      const scene = await matrixScene();
      const ctx: Ctx = { client, feeds, scene, session: await matrixSession(client, scene) };
      const before = await observe(client, scene, ctx.session.sessionId);
      const failed: string[] = [];
      for (const rpc of Object.keys(RPCS) as Rpc[]) {
        await expectError(RPCS[rpc].run(ctx, anonymous), status.UNAUTHENTICATED, 'UNAUTHENTICATED').catch(
          (err: Error) => failed.push(`${rpc}: ${err.message}`),
        );
      }
      await expectError(
        call(
          client,
          client.createSession,
          {
            threadId: '',
            scheduledStartAt: new Date(),
            scheduledEndAt: new Date(Date.now() + 30 * MINUTE),
            waitingRoomOpensAt: undefined,
            participants: [sessionParticipant(scene.provider.userId, PROVIDER)],
            requestId: '',
          },
          anonymous,
        ),
        status.UNAUTHENTICATED,
        'UNAUTHENTICATED',
      ).catch((err: Error) => failed.push(`CreateSession: ${err.message}`));
      expect(failed).to.deep.equal([]);
      expect(await observe(client, scene, ctx.session.sessionId)).to.deep.equal(before);
    });
  });
});
