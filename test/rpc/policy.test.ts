import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ListDirection, type Message } from '../../gen/comms/v1/message.js';
import {
  Channel,
  DeliveryStatus,
  type Notification,
  NotificationKind,
  NotificationPreferences,
} from '../../gen/comms/v1/notification.js';
import {
  AdmitState,
  SessionState,
  SessionTransition,
  VirtualParticipant,
  VirtualSession,
} from '../../gen/comms/v1/session.js';
import { EscalationLevel, ParticipantRole, type Thread, ThreadState } from '../../gen/comms/v1/thread.js';
import { type Role, ROLES } from '../../src/domain/actor.js';
import { RPC_POLICY } from '../../src/rpc/policy.js';
import { errorDetails, newTenant, newUser } from '../support/clients.js';
import { newKey } from '../support/messages.js';
import {
  METHODS,
  type Outcome,
  policyScene,
  type PolicyScene,
  pooled,
  RpcCaller,
  type SceneNeeds,
  SERVICE_DEFINITIONS,
  tenantFingerprint,
} from '../support/policy-scene.js';
import { newUserId, participant } from '../support/threads.js';

// Issue 8: the role × RPC matrix, generated from the one access-policy table (src/rpc/policy.ts) and
// checked against the running service. Every cell is a fresh tenant in which a fresh caller holding
// exactly one role takes part in the resource the call is about; the test titles are the documentation.

const MINUTE = 60_000;

/** How one RPC is exercised by the matrix. */
interface CellSpec {
  /** What the scene holds besides the users. */
  readonly needs: SceneNeeds;
  /** One valid request (a partial: omitted fields keep their proto3 defaults). */
  request(s: PolicyScene): Record<string, unknown>;
  /**
   * The ErrorInfo reason of the PERMISSION_DENIED a role outside `roles` gets from the aggregate, for
   * entries without a gate (a gate always answers ROLE_NOT_ALLOWED).
   */
  readonly refusedWith?: string;
  /** What an allowed caller's (first) response says, checked precisely. */
  check?(res: never, s: PolicyScene): void;
}

const thread = (s: PolicyScene): Thread => s.thread!;
const message = (s: PolicyScene): Message => s.message!;
const session = (s: PolicyScene): VirtualSession => s.session!;
const notification = (s: PolicyScene): Notification => s.notification!;
const governs = (role: Role) => role !== 'patient';
const participantState = (res: { participant?: VirtualParticipant }) => res.participant?.admitState;

/** One entry per RPC of comms.v1, keyed by path like RPC_POLICY. */
const CELLS: Readonly<Record<string, CellSpec>> = {
  // ---- ThreadService ----
  '/comms.v1.ThreadService/CreateThread': {
    needs: {},
    // A service caller does not take part, so it must name someone: the owner, for every role alike.
    request: (s) => ({
      subject: 'New question',
      participants: [participant(s.owner.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER)],
    }),
    check: (res: { thread: Thread }, s) => expect(res.thread.createdBy).to.equal(s.caller.userId),
  },
  '/comms.v1.ThreadService/GetThread': {
    needs: { thread: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    check: (res: { thread: Thread }, s) => expect(res.thread.threadId).to.equal(thread(s).threadId),
  },
  '/comms.v1.ThreadService/ListThreads': {
    needs: { thread: true },
    request: () => ({}),
    check: (res: { threads: Thread[] }, s) =>
      expect(res.threads.map((t) => t.threadId)).to.deep.equal([thread(s).threadId]),
  },
  '/comms.v1.ThreadService/AddParticipant': {
    needs: { thread: true },
    request: (s) => ({
      threadId: thread(s).threadId,
      participant: participant(newUserId('interpreter'), ParticipantRole.PARTICIPANT_ROLE_INTERPRETER),
    }),
    refusedWith: 'THREAD_PERMISSION_DENIED',
    check: (res: { thread: Thread }) => expect(res.thread.participants).to.have.length(5),
  },
  '/comms.v1.ThreadService/RemoveParticipant': {
    needs: { thread: true },
    request: (s) => ({ threadId: thread(s).threadId, userId: s.familyUserId }),
    refusedWith: 'THREAD_PERMISSION_DENIED',
    check: (res: { thread: Thread }, s) =>
      expect(res.thread.participants.map((p) => p.userId)).to.not.include(s.familyUserId),
  },
  '/comms.v1.ThreadService/EscalateThread': {
    needs: { thread: true },
    request: (s) => ({
      threadId: thread(s).threadId,
      level: EscalationLevel.ESCALATION_LEVEL_URGENT,
      assigneeUserId: s.owner.userId,
      reason: 'needs a call back',
    }),
    refusedWith: 'THREAD_PERMISSION_DENIED',
    check: (res: { thread: Thread }) =>
      expect(res.thread.escalation?.level).to.equal(EscalationLevel.ESCALATION_LEVEL_URGENT),
  },
  '/comms.v1.ThreadService/ArchiveThread': {
    needs: { thread: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    refusedWith: 'THREAD_PERMISSION_DENIED',
    check: (res: { thread: Thread }) => expect(res.thread.state).to.equal(ThreadState.THREAD_STATE_ARCHIVED),
  },
  '/comms.v1.ThreadService/ReopenThread': {
    needs: { thread: true, archived: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    check: (res: { thread: Thread }) => expect(res.thread.state).to.equal(ThreadState.THREAD_STATE_ACTIVE),
  },

  // ---- MessageService ----
  '/comms.v1.MessageService/SendMessage': {
    needs: { thread: true },
    request: (s) => ({ threadId: thread(s).threadId, clientMutationId: newKey('policy'), body: 'Thank you' }),
    check: (res: { message: Message }, s) => expect(res.message.senderUserId).to.equal(s.caller.userId),
  },
  '/comms.v1.MessageService/GetMessage': {
    needs: { message: true },
    request: (s) => ({ messageId: message(s).messageId }),
    check: (res: { message: Message }, s) => expect(res.message.messageId).to.equal(message(s).messageId),
  },
  '/comms.v1.MessageService/ListMessages': {
    needs: { message: true },
    request: (s) => ({ threadId: thread(s).threadId, direction: ListDirection.LIST_DIRECTION_BACKWARD }),
    check: (res: { messages: Message[] }, s) =>
      expect(res.messages.map((m) => m.messageId)).to.deep.equal([message(s).messageId]),
  },

  // ---- ReadReceiptService ----
  '/comms.v1.ReadReceiptService/MarkRead': {
    needs: { message: true },
    request: (s) => ({ messageIds: [message(s).messageId] }),
    check: (res: { receipts: { userId: string }[] }, s) =>
      expect(res.receipts.map((r) => r.userId)).to.deep.equal([s.caller.userId]),
  },
  '/comms.v1.ReadReceiptService/MarkThreadRead': {
    needs: { message: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    check: (res: { receiptsChanged: number }) => expect(res.receiptsChanged).to.equal(1),
  },
  '/comms.v1.ReadReceiptService/ListReadReceipts': {
    needs: { message: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    check: (res: { receipts: unknown[] }) => expect(res.receipts).to.deep.equal([]),
  },

  // ---- FeedService (streams: the first response, then cancel) ----
  '/comms.v1.FeedService/WatchThread': {
    needs: { thread: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    check: (res: { event?: { $case: string } }) => expect(res.event?.$case).to.equal('caughtUp'),
  },
  '/comms.v1.FeedService/WatchInbox': {
    needs: { thread: true },
    request: () => ({}),
    check: (res: { event?: { $case: string } }) => expect(res.event?.$case).to.equal('caughtUp'),
  },
  '/comms.v1.FeedService/WatchSession': {
    needs: { session: 'open' },
    request: (s) => ({ sessionId: session(s).sessionId }),
    // Without a resume token the first response is a snapshot of the session.
    check: (res: { event?: { $case: string; value: VirtualSession } }, s) => {
      expect(res.event?.$case).to.equal('sessionChanged');
      expect(res.event?.value.sessionId).to.equal(session(s).sessionId);
    },
  },

  // ---- NotificationService ----
  '/comms.v1.NotificationService/GetNotification': {
    needs: { notification: true },
    request: (s) => ({ notificationId: notification(s).notificationId }),
    check: (res: { notification: Notification }, s) =>
      expect(res.notification.recipientUserId).to.equal(s.caller.userId),
  },
  '/comms.v1.NotificationService/ListNotifications': {
    needs: { notification: true },
    request: () => ({}),
    check: (res: { notifications: Notification[] }, s) =>
      expect(res.notifications.map((n) => n.notificationId)).to.deep.equal([notification(s).notificationId]),
  },
  '/comms.v1.NotificationService/RequestNotification': {
    needs: {},
    request: (s) => ({ recipientUserId: s.other.userId, dedupeKey: newKey('policy'), templateKey: 'generic' }),
    check: (res: { notification: Notification }, s) => {
      expect(res.notification.kind).to.equal(NotificationKind.NOTIFICATION_KIND_SERVICE_EVENT);
      expect(res.notification.recipientUserId).to.equal(s.other.userId);
    },
  },
  '/comms.v1.NotificationService/ReportDelivery': {
    needs: {},
    request: () => ({
      provider: 'sandbox',
      providerMessageId: newKey('pm'),
      providerEventId: newKey('ev'),
      status: DeliveryStatus.DELIVERY_STATUS_DELIVERED,
      providerTimestamp: new Date(),
    }),
    // A report for an attempt not recorded (yet) is kept unlinked.
    check: (res: { record: { notificationId: string } }) => expect(res.record.notificationId).to.equal(''),
  },
  '/comms.v1.NotificationService/GetNotificationPreferences': {
    needs: {},
    request: () => ({}),
    check: (res: { preferences: NotificationPreferences }, s) =>
      expect(res.preferences.userId).to.equal(s.caller.userId),
  },
  '/comms.v1.NotificationService/UpdateNotificationPreferences': {
    needs: {},
    request: () => ({
      preferences: NotificationPreferences.fromPartial({
        kindChannels: [{ kind: NotificationKind.NOTIFICATION_KIND_MESSAGE_POSTED, channels: [Channel.CHANNEL_PUSH] }],
      }),
      updateMask: ['kind_channels'],
    }),
    check: (res: { preferences: NotificationPreferences }, s) => {
      expect(res.preferences.userId).to.equal(s.caller.userId);
      expect(res.preferences.kindChannels).to.have.length(1);
    },
  },

  // ---- VirtualSessionService ----
  '/comms.v1.VirtualSessionService/CreateSession': {
    needs: {},
    // A provider caller is added as PROVIDER by the server; staff and service name the owner.
    request: (s) => {
      const start = new Date(Date.now() + 60 * MINUTE);
      return {
        scheduledStartAt: start,
        scheduledEndAt: new Date(start.getTime() + 30 * MINUTE),
        participants: [
          VirtualParticipant.fromPartial({ userId: s.owner.userId, role: ParticipantRole.PARTICIPANT_ROLE_PROVIDER }),
          VirtualParticipant.fromPartial({ userId: s.other.userId, role: ParticipantRole.PARTICIPANT_ROLE_PATIENT }),
        ],
      };
    },
    check: (res: { session: VirtualSession }, s) => {
      expect(res.session.createdBy).to.equal(s.caller.userId);
      expect(res.session.state).to.equal(SessionState.SESSION_STATE_SCHEDULED);
    },
  },
  '/comms.v1.VirtualSessionService/GetSession': {
    needs: { session: 'open' },
    request: (s) => ({ sessionId: session(s).sessionId }),
    check: (res: { session: VirtualSession }, s) => expect(res.session.sessionId).to.equal(session(s).sessionId),
  },
  '/comms.v1.VirtualSessionService/ListSessions': {
    needs: { session: 'open' },
    request: () => ({}),
    check: (res: { sessions: VirtualSession[] }, s) =>
      expect(res.sessions.map((x) => x.sessionId)).to.deep.equal([session(s).sessionId]),
  },
  '/comms.v1.VirtualSessionService/UpdateSession': {
    needs: { session: 'open' },
    // While OPEN only scheduled_end_at and thread_id may change.
    request: (s) => ({
      sessionId: session(s).sessionId,
      session: VirtualSession.fromPartial({
        scheduledEndAt: new Date(session(s).scheduledStartAt!.getTime() + 45 * MINUTE),
      }),
      updateMask: ['scheduled_end_at'],
      etag: session(s).etag,
    }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    check: (res: { session: VirtualSession }, s) => expect(res.session.etag).to.not.equal(session(s).etag),
  },
  '/comms.v1.VirtualSessionService/RequestTransition': {
    needs: { session: 'scheduled' },
    request: (s) => ({ sessionId: session(s).sessionId, transition: SessionTransition.SESSION_TRANSITION_OPEN }),
    // Every role gets past access control, but the decision depends on who asks: the roles that govern
    // the session (staff and service of the tenant, a provider of the session) open the waiting room; a
    // patient's OPEN is an answer, not an error: rejected ROLE_NOT_ALLOWED, the session stays SCHEDULED.
    check: (res: { accepted: boolean; state: SessionState; rejectionReason: string }, s) => {
      if (governs(s.role)) {
        expect(res).to.include({ accepted: true, state: SessionState.SESSION_STATE_OPEN, rejectionReason: '' });
      } else {
        expect(res).to.include({
          accepted: false,
          state: SessionState.SESSION_STATE_SCHEDULED,
          rejectionReason: 'ROLE_NOT_ALLOWED',
        });
      }
    },
  },
  '/comms.v1.VirtualSessionService/InviteParticipant': {
    needs: { session: 'open' },
    request: (s) => ({
      sessionId: session(s).sessionId,
      participant: VirtualParticipant.fromPartial({
        userId: newUserId('family'),
        role: ParticipantRole.PARTICIPANT_ROLE_FAMILY,
      }),
    }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    check: (res) => expect(participantState(res)).to.equal(AdmitState.ADMIT_STATE_INVITED),
  },
  '/comms.v1.VirtualSessionService/JoinSession': {
    needs: { session: 'open' },
    request: (s) => ({ sessionId: session(s).sessionId }),
    // A provider of the session joins ADMITTED; everyone else (also staff and service taking part as
    // PATIENT) waits.
    check: (res, s) =>
      expect(participantState(res)).to.equal(
        s.role === 'provider' ? AdmitState.ADMIT_STATE_ADMITTED : AdmitState.ADMIT_STATE_WAITING,
      ),
  },
  '/comms.v1.VirtualSessionService/LeaveSession': {
    needs: { session: 'open', callerJoined: true },
    request: (s) => ({ sessionId: session(s).sessionId }),
    check: (res) => expect(participantState(res)).to.equal(AdmitState.ADMIT_STATE_LEFT),
  },
  '/comms.v1.VirtualSessionService/AdmitParticipant': {
    needs: { session: 'open', otherWaiting: true },
    request: (s) => ({ sessionId: session(s).sessionId, userId: s.other.userId }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    check: (res) => expect(participantState(res)).to.equal(AdmitState.ADMIT_STATE_ADMITTED),
  },
  '/comms.v1.VirtualSessionService/DenyParticipant': {
    needs: { session: 'open', otherWaiting: true },
    request: (s) => ({ sessionId: session(s).sessionId, userId: s.other.userId }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    check: (res) => expect(participantState(res)).to.equal(AdmitState.ADMIT_STATE_DENIED),
  },
  '/comms.v1.VirtualSessionService/RemoveSessionParticipant': {
    needs: { session: 'open', otherWaiting: true },
    request: (s) => ({ sessionId: session(s).sessionId, userId: s.other.userId }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    check: (res) => expect(participantState(res)).to.equal(AdmitState.ADMIT_STATE_REMOVED),
  },
  '/comms.v1.VirtualSessionService/ListSessionEvents': {
    needs: { session: 'open' },
    request: (s) => ({ sessionId: session(s).sessionId }),
    refusedWith: 'ROLE_NOT_ALLOWED',
    // CREATED_OPEN, then one INVITED per participant (the owner, the caller, the other patient).
    check: (res: { events: { reasonCode: string }[] }) =>
      expect(res.events.map((e) => e.reasonCode)).to.deep.equal(['CREATED_OPEN', 'INVITED', 'INVITED', 'INVITED']),
  },
};

/** The reason a role outside the entry's roles is refused with. */
function refusalReason(path: string): string | undefined {
  return RPC_POLICY[path]!.gate ? 'ROLE_NOT_ALLOWED' : CELLS[path]?.refusedWith;
}

function describeOutcome(outcome: Outcome): string {
  if (outcome.ok) return `OK ${JSON.stringify(outcome.res).slice(0, 300)}`;
  const { err } = outcome;
  let reason = '';
  try {
    reason = errorDetails(err).info?.reason ?? '';
  } catch {
    // No details: the code and message say enough.
  }
  return `${status[err.code]} ${reason} (${err.details})`;
}

const cellKey = (path: string, role: Role) => `${path} ${role}`;

describe('access policy: the role × RPC matrix from src/rpc/policy.ts', () => {
  let rpc: RpcCaller;
  before(() => {
    rpc = new RpcCaller();
  });
  after(() => rpc.close());

  describe('coverage', () => {
    it('every method of every comms.v1 service has an entry in RPC_POLICY', () => {
      const missing = [...METHODS.keys()].filter((path) => !(path in RPC_POLICY));
      expect(missing, 'methods without a policy').to.deep.equal([]);
      expect(Object.keys(SERVICE_DEFINITIONS)).to.have.length(6);
    });

    it('RPC_POLICY has no entry for a method that does not exist', () => {
      const unknown = Object.keys(RPC_POLICY).filter((path) => !METHODS.has(path));
      expect(unknown, 'policies of no method').to.deep.equal([]);
    });

    it('the matrix exercises every entry, and knows why each refused role is refused', () => {
      expect(Object.keys(CELLS).sort()).to.deep.equal(Object.keys(RPC_POLICY).sort());
      for (const [path, policy] of Object.entries(RPC_POLICY)) {
        const refused = ROLES.filter((role) => !policy.roles.includes(role));
        if (refused.length > 0) expect(refusalReason(path), `refusal reason of ${path}`).to.be.a('string');
        expect(policy.roles, `${path}: roles are known roles`).to.satisfy((rs: readonly Role[]) =>
          rs.every((r) => ROLES.includes(r)),
        );
      }
    });
  });

  describe('one valid request per role, as a caller who takes part in the resource', () => {
    const scenes = new Map<string, PolicyScene>();

    before(async function () {
      this.timeout(120_000);
      const cells = Object.keys(RPC_POLICY).flatMap((path) => ROLES.map((role) => ({ path, role })));
      const built = await pooled(cells, 16, ({ path, role }) => policyScene(rpc, role, CELLS[path]?.needs ?? {}));
      cells.forEach(({ path, role }, i) => scenes.set(cellKey(path, role), built[i]!));
    });

    for (const [path, policy] of Object.entries(RPC_POLICY)) {
      for (const role of ROLES) {
        const allowed = policy.roles.includes(role);
        const verdict = allowed ? 'allowed' : `refused, PERMISSION_DENIED ${refusalReason(path) ?? '?'}`;
        it(`${path} as ${role}: ${verdict} (${policy.rule})`, async () => {
          const spec = CELLS[path];
          const s = scenes.get(cellKey(path, role));
          expect(spec, `a request builder for ${path}`).to.not.equal(undefined);
          expect(s, 'scene built').to.not.equal(undefined);
          const before = allowed ? undefined : await tenantFingerprint(s!.tenantId);
          const outcome = await rpc.once(path, spec!.request(s!), s!.caller.md);
          if (allowed) {
            if (!outcome.ok) expect.fail(`expected OK, got ${describeOutcome(outcome)}`);
            spec!.check?.(outcome.res as never, s!);
          } else {
            if (outcome.ok) expect.fail(`expected PERMISSION_DENIED, got ${describeOutcome(outcome)}`);
            expect(outcome.err.code, describeOutcome(outcome)).to.equal(status.PERMISSION_DENIED);
            expect(errorDetails(outcome.err).info?.reason, describeOutcome(outcome)).to.equal(refusalReason(path));
            expect(await tenantFingerprint(s!.tenantId), 'nothing stored by the refused call').to.deep.equal(before);
          }
        });
      }
    }
  });

  describe('role gates run before validation (entries with gate: true)', () => {
    for (const [path, policy] of Object.entries(RPC_POLICY)) {
      if (!policy.gate) continue;
      for (const role of ROLES) {
        const allowed = policy.roles.includes(role);
        const verdict = allowed
          ? 'INVALID_ARGUMENT (past the gate, refused by validation)'
          : 'PERMISSION_DENIED ROLE_NOT_ALLOWED (the gate answers before validation)';
        it(`${path} as ${role} with an empty request: ${verdict}`, async () => {
          const tenantId = newTenant();
          const caller = await newUser(tenantId, role);
          const before = await tenantFingerprint(tenantId);
          const err = await rpc.empty(path, caller.md).then(
            (res) => expect.fail(`${path} as ${role}: an empty request succeeded: ${JSON.stringify(res)}`),
            (e: Parameters<typeof errorDetails>[0]) => e,
          );
          const got = describeOutcome({ ok: false, err });
          if (allowed) {
            expect(err.code, got).to.equal(status.INVALID_ARGUMENT);
          } else {
            expect(err.code, got).to.equal(status.PERMISSION_DENIED);
            expect(errorDetails(err).info?.reason, got).to.equal('ROLE_NOT_ALLOWED');
          }
          expect(await tenantFingerprint(tenantId), 'nothing stored').to.deep.equal(before);
        });
      }
    }
  });
});
