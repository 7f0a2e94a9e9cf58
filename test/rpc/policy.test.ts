import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import {
  AuditAction,
  type AuditRecord,
  type ExportThreadResponse,
  type LegalHold,
  type RetentionPolicy,
} from '../../gen/comms/v1/governance.js';
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
import { type Permission, PERMISSIONS, type Role, ROLES } from '../../src/domain/actor.js';
import { RPC_POLICY } from '../../src/rpc/policy.js';
import { errorDetails, newTenant, newUserWith } from '../support/clients.js';
import { env } from '../support/hooks.js';
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
// Issue 9: entries may also name a governance permission (claim `permissions`) that staff need and
// service callers may be exempt from; the matrix gives each caller the entry's permission (but a
// service caller an entry exempts), and checks staff without it apart.

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
  /**
   * Every request field is optional: an empty request from a caller past the gate is a valid one and
   * succeeds (for gate entries, whose empty requests are otherwise refused by validation).
   */
  readonly emptyIsValid?: boolean;
}

const thread = (s: PolicyScene): Thread => s.thread!;
const message = (s: PolicyScene): Message => s.message!;
const session = (s: PolicyScene): VirtualSession => s.session!;
const notification = (s: PolicyScene): Notification => s.notification!;
const hold = (s: PolicyScene): LegalHold => s.hold!;
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
  '/comms.v1.MessageService/RetractMessage': {
    // Every role that posts retracts its own message within the window (staff and service take part as
    // CARE_STAFF, as for SendMessage); anyone else's message is the aggregate's decision (NOT_SENDER,
    // or a moderator's), not the matrix's.
    needs: { ownMessage: true },
    request: (s) => ({ messageId: s.ownMessage!.messageId, reason: 'sent to the wrong thread' }),
    check: (res: { message: Message; replayed: boolean }, s) => {
      expect(res.replayed).to.equal(false);
      expect(res.message.messageId).to.equal(s.ownMessage!.messageId);
      expect(res.message.body).to.equal('');
      expect(res.message.retraction).to.include({ retractedByUserId: s.caller.userId, byModerator: false });
    },
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

  // ---- GovernanceService (the caller governs the tenant: taking part is not what lets it in) ----
  '/comms.v1.GovernanceService/QueryAudit': {
    needs: { message: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    emptyIsValid: true,
    // The scene's writes, newest first: the owner's SendMessage, then its CreateThread. No bodies.
    check: (res: { records: AuditRecord[] }, s) => {
      expect(res.records.map((r) => [r.method, r.actorUserId, r.action, r.messageIds])).to.deep.equal([
        [
          '/comms.v1.MessageService/SendMessage',
          s.owner.userId,
          AuditAction.AUDIT_ACTION_WRITE,
          [message(s).messageId],
        ],
        ['/comms.v1.ThreadService/CreateThread', s.owner.userId, AuditAction.AUDIT_ACTION_WRITE, []],
      ]);
      expect(JSON.stringify(res)).to.not.include(message(s).body);
    },
  },
  '/comms.v1.GovernanceService/GetAuditedMessage': {
    needs: { message: true },
    request: (s) => ({ messageId: message(s).messageId }),
    check: (res: { message: Message; retractionReason: string }, s) => {
      expect(res.message).to.include({ messageId: message(s).messageId, body: 'Your results are in' });
      expect(res.retractionReason).to.equal('');
    },
  },
  '/comms.v1.GovernanceService/GetRetentionPolicy': {
    needs: {},
    request: () => ({}),
    emptyIsValid: true,
    // A tenant that never set a policy keeps bodies for ever.
    check: (res: { policy: RetentionPolicy }) =>
      expect(res.policy).to.include({ bodyRetentionDays: 0, etag: '', updatedByUserId: '' }),
  },
  '/comms.v1.GovernanceService/UpdateRetentionPolicy': {
    needs: {},
    request: () => ({ bodyRetentionDays: 30 }),
    // Zero days (keep for ever) and no etag (overwrite) make a valid empty request.
    emptyIsValid: true,
    check: (res: { policy: RetentionPolicy }, s) => {
      expect(res.policy).to.include({ bodyRetentionDays: 30, updatedByUserId: s.caller.userId });
      expect(res.policy.etag).to.not.equal('');
    },
  },
  '/comms.v1.GovernanceService/PlaceLegalHold': {
    needs: { thread: true },
    request: (s) => ({ target: { $case: 'threadId', value: thread(s).threadId }, reason: 'Records request' }),
    check: (res: { hold: LegalHold; replayed: boolean }, s) => {
      expect(res.replayed).to.equal(false);
      expect(res.hold.target).to.deep.equal({ $case: 'threadId', value: thread(s).threadId });
      expect(res.hold).to.include({ placedByUserId: s.caller.userId, releasedByUserId: '' });
    },
  },
  '/comms.v1.GovernanceService/ReleaseLegalHold': {
    needs: { hold: true },
    request: (s) => ({ holdId: hold(s).holdId, reason: 'Matter closed' }),
    check: (res: { hold: LegalHold }, s) =>
      expect(res.hold).to.include({
        holdId: hold(s).holdId,
        releasedByUserId: s.caller.userId,
        releaseReason: 'Matter closed',
      }),
  },
  '/comms.v1.GovernanceService/ListLegalHolds': {
    needs: { hold: true },
    request: () => ({}),
    emptyIsValid: true,
    check: (res: { holds: LegalHold[] }, s) => expect(res.holds.map((h) => h.holdId)).to.deep.equal([hold(s).holdId]),
  },
  '/comms.v1.GovernanceService/ExportThread': {
    needs: { message: true },
    request: (s) => ({ threadId: thread(s).threadId }),
    // The stream's first item is its header: the thread and the one message the export holds.
    check: (res: ExportThreadResponse, s) => {
      expect(res.item?.$case).to.equal('header');
      const header = res.item?.$case === 'header' ? res.item.value : undefined;
      expect(header?.thread?.threadId).to.equal(thread(s).threadId);
      expect(header?.messageCount).to.equal('1');
      expect(header?.through?.messageId).to.equal(message(s).messageId);
    },
  },
};

/**
 * The governance permissions the matrix's caller of `role` carries for `path`: the entry's permission,
 * except for a service caller the entry exempts (that cell shows the exemption). Roles outside `roles`
 * carry it too: a permission never opens a role gate.
 */
function permissionsOf(path: string, role: Role): Permission[] {
  const needed = RPC_POLICY[path]!.permission;
  return needed && !(needed.service && role === 'service') ? [needed.name] : [];
}

/** ' with audit.read' for a caller carrying permissions, '' otherwise (for test titles). */
const withPermissions = (permissions: readonly Permission[]) =>
  permissions.length > 0 ? ` with ${permissions.join(', ')}` : '';

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
      expect(Object.keys(SERVICE_DEFINITIONS)).to.have.length(7);
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

    it('every permission an entry names is a known permission, and only service callers may be exempt', () => {
      for (const [path, policy] of Object.entries(RPC_POLICY)) {
        if (!policy.permission) continue;
        expect(PERMISSIONS, `${path}: permission`).to.include(policy.permission.name);
        // The permission is checked with the gate, and is for staff: staff must be an allowed role.
        expect(policy.gate, `${path}: gate`).to.equal(true);
        expect(policy.roles, `${path}: roles`).to.include('staff');
        if (policy.permission.service) expect(policy.roles, `${path}: roles`).to.include('service');
      }
    });
  });

  describe('one valid request per role, as a caller who takes part in the resource', () => {
    const scenes = new Map<string, PolicyScene>();

    before(async function () {
      this.timeout(120_000);
      const cells = Object.keys(RPC_POLICY).flatMap((path) => ROLES.map((role) => ({ path, role })));
      const built = await pooled(cells, 16, ({ path, role }) =>
        policyScene(rpc, role, CELLS[path]?.needs ?? {}, permissionsOf(path, role)),
      );
      cells.forEach(({ path, role }, i) => scenes.set(cellKey(path, role), built[i]!));
    });

    for (const [path, policy] of Object.entries(RPC_POLICY)) {
      for (const role of ROLES) {
        const allowed = policy.roles.includes(role);
        const verdict = allowed ? 'allowed' : `refused, PERMISSION_DENIED ${refusalReason(path) ?? '?'}`;
        const as = `${role}${withPermissions(permissionsOf(path, role))}`;
        it(`${path} as ${as}: ${verdict} (${policy.rule})`, async () => {
          const spec = CELLS[path];
          const s = scenes.get(cellKey(path, role));
          expect(spec, `a request builder for ${path}`).to.not.equal(undefined);
          expect(s, 'scene built').to.not.equal(undefined);
          // The scene's audit records are in the database before the call (QueryAudit reads them).
          await env.app.audit.flush();
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
      const emptyIsValid = CELLS[path]?.emptyIsValid ?? false;
      for (const role of ROLES) {
        const allowed = policy.roles.includes(role);
        const permissions = permissionsOf(path, role);
        const verdict = !allowed
          ? 'PERMISSION_DENIED ROLE_NOT_ALLOWED (the gate answers before validation)'
          : emptyIsValid
            ? 'OK (past the gate; every field is optional)'
            : 'INVALID_ARGUMENT (past the gate, refused by validation)';
        it(`${path} as ${role}${withPermissions(permissions)}, with an empty request: ${verdict}`, async () => {
          const tenantId = newTenant();
          const caller = await newUserWith(tenantId, permissions, role);
          const before = await tenantFingerprint(tenantId);
          const outcome: Outcome = await rpc.empty(path, caller.md).then(
            (res) => ({ ok: true, res }),
            (err: Parameters<typeof errorDetails>[0]) => ({ ok: false, err }),
          );
          const got = describeOutcome(outcome);
          if (allowed && emptyIsValid) {
            expect(outcome.ok, got).to.equal(true);
            // A valid empty write (UpdateRetentionPolicy: keep for ever) stores what it says.
            if (policy.write) return;
          } else {
            if (outcome.ok) expect.fail(`${path} as ${role}: an empty request succeeded: ${got}`);
            const { err } = outcome;
            if (allowed) {
              expect(err.code, got).to.equal(status.INVALID_ARGUMENT);
            } else {
              expect(err.code, got).to.equal(status.PERMISSION_DENIED);
              expect(errorDetails(err).info?.reason, got).to.equal('ROLE_NOT_ALLOWED');
            }
          }
          expect(await tenantFingerprint(tenantId), 'nothing stored').to.deep.equal(before);
        });
      }
    }
  });

  describe('governance permissions: staff without the entry’s permission (entries with a permission)', () => {
    const withPermission = Object.entries(RPC_POLICY).filter(([, policy]) => policy.permission);

    /** Asserts `outcome` is PERMISSION_DENIED PERMISSION_REQUIRED naming `permission`. */
    const expectPermissionRequired = (outcome: Outcome, permission: Permission) => {
      const got = describeOutcome(outcome);
      if (outcome.ok) expect.fail(`expected PERMISSION_DENIED, got ${got}`);
      expect(outcome.err.code, got).to.equal(status.PERMISSION_DENIED);
      const info = errorDetails(outcome.err).info;
      expect(info?.reason, got).to.equal('PERMISSION_REQUIRED');
      expect(info?.metadata, got).to.include({ permission });
    };

    for (const [path, policy] of withPermission) {
      const needed = policy.permission!.name;
      // Every other permission: they are not interchangeable.
      const others = PERMISSIONS.filter((p) => p !== needed);

      it(`${path} as staff with every permission but ${needed}: refused, PERMISSION_DENIED PERMISSION_REQUIRED (permission ${needed})`, async () => {
        const s = await policyScene(rpc, 'staff', CELLS[path]!.needs, others);
        const before = await tenantFingerprint(s.tenantId);
        expectPermissionRequired(await rpc.once(path, CELLS[path]!.request(s), s.caller.md), needed);
        expect(await tenantFingerprint(s.tenantId), 'nothing stored by the refused call').to.deep.equal(before);
      });

      it(`${path} as staff without permissions, with an empty request: PERMISSION_DENIED PERMISSION_REQUIRED (checked before validation)`, async () => {
        const tenantId = newTenant();
        const caller = await newUserWith(tenantId, [], 'staff');
        const before = await tenantFingerprint(tenantId);
        const outcome: Outcome = await rpc.empty(path, caller.md).then(
          (res) => ({ ok: true, res }),
          (err: Parameters<typeof errorDetails>[0]) => ({ ok: false, err }),
        );
        expectPermissionRequired(outcome, needed);
        expect(await tenantFingerprint(tenantId), 'nothing stored').to.deep.equal(before);
      });
    }
  });
});
