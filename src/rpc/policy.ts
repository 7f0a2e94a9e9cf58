import type { Permission, Role } from '../domain/actor.js';

/** Who may call an RPC, and whether it writes. */
export interface RpcPolicy {
  /**
   * The roles a caller may hold to get past access control when it takes part in the resource the call
   * is about (its thread, session, own notifications or preferences); every other role is refused with
   * PERMISSION_DENIED. Which rows a caller of an allowed role reaches is decided by the aggregate's
   * policy (participants see their own; staff and service govern the tenant).
   */
  readonly roles: readonly Role[];
  /**
   * The role alone decides (the proto says every other role gets PERMISSION_DENIED `ROLE_NOT_ALLOWED`):
   * the adapter refuses other roles before the handler runs. Otherwise the aggregate decides, after
   * looking at the resource (and answers NOT_FOUND for what the caller may not see).
   */
  readonly gate: boolean;
  /** The call changes something: it counts against the caller's write rate limit. */
  readonly write: boolean;
  /** The rule in words, as the proto states it. */
  readonly rule: string;
  /**
   * A governance permission the token must also carry (claim `permissions`): staff need it; service
   * callers need it unless `service` is true. Checked with the gate, before the handler runs.
   */
  readonly permission?: { readonly name: Permission; readonly service: boolean };
}

const ALL: readonly Role[] = ['patient', 'provider', 'staff', 'service'];
const GOVERNING: readonly Role[] = ['provider', 'staff', 'service'];

/**
 * Who may do what: every RPC of comms.v1, keyed by its full method path. The server refuses to start
 * when an RPC is missing here (server.ts), the adapter enforces `gate` and `write`, and
 * test/rpc/policy.test.ts generates the role × RPC matrix from this table and checks it against the
 * running service.
 */
export const RPC_POLICY: Readonly<Record<string, RpcPolicy>> = {
  '/comms.v1.ThreadService/CreateThread': { roles: ALL, gate: false, write: true, rule: 'any role' },
  '/comms.v1.ThreadService/GetThread': { roles: ALL, gate: false, write: false, rule: 'participants; staff, service' },
  '/comms.v1.ThreadService/ListThreads': { roles: ALL, gate: false, write: false, rule: 'the caller’s own threads' },
  '/comms.v1.ThreadService/AddParticipant': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers who take part; staff, service',
  },
  '/comms.v1.ThreadService/RemoveParticipant': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers who take part; staff, service',
  },
  '/comms.v1.ThreadService/EscalateThread': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers who take part; staff, service',
  },
  '/comms.v1.ThreadService/ArchiveThread': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers who take part; staff, service',
  },
  '/comms.v1.ThreadService/ReopenThread': {
    roles: ALL,
    gate: false,
    write: true,
    rule: 'participants; staff, service',
  },
  '/comms.v1.MessageService/SendMessage': { roles: ALL, gate: false, write: true, rule: 'participants only' },
  '/comms.v1.MessageService/GetMessage': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'participants; staff, service',
  },
  '/comms.v1.MessageService/ListMessages': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'participants; staff, service',
  },
  '/comms.v1.ReadReceiptService/MarkRead': { roles: ALL, gate: false, write: true, rule: 'participants only' },
  '/comms.v1.ReadReceiptService/MarkThreadRead': { roles: ALL, gate: false, write: true, rule: 'participants only' },
  '/comms.v1.ReadReceiptService/ListReadReceipts': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'participants; staff, service',
  },
  '/comms.v1.FeedService/WatchThread': { roles: ALL, gate: false, write: false, rule: 'participants; staff, service' },
  '/comms.v1.FeedService/WatchInbox': { roles: ALL, gate: false, write: false, rule: 'the caller’s own inbox' },
  '/comms.v1.FeedService/WatchSession': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'participants; staff, service',
  },
  '/comms.v1.NotificationService/GetNotification': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'the recipient; staff, service',
  },
  '/comms.v1.NotificationService/ListNotifications': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'the caller’s own; staff and service any recipient',
  },
  '/comms.v1.NotificationService/RequestNotification': {
    roles: ['service'],
    gate: true,
    write: true,
    rule: 'service only',
  },
  '/comms.v1.NotificationService/ReportDelivery': { roles: ['service'], gate: true, write: true, rule: 'service only' },
  '/comms.v1.NotificationService/GetNotificationPreferences': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'the user; staff and service anyone’s',
  },
  '/comms.v1.NotificationService/UpdateNotificationPreferences': {
    roles: ALL,
    gate: false,
    write: true,
    rule: 'the user; service anyone’s',
  },
  '/comms.v1.VirtualSessionService/CreateSession': {
    roles: GOVERNING,
    gate: true,
    write: true,
    rule: 'providers, staff, service',
  },
  '/comms.v1.VirtualSessionService/GetSession': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'participants; staff, service',
  },
  '/comms.v1.VirtualSessionService/ListSessions': {
    roles: ALL,
    gate: false,
    write: false,
    rule: 'the caller’s own sessions; staff and service every session',
  },
  '/comms.v1.VirtualSessionService/UpdateSession': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers of the session; staff, service',
  },
  '/comms.v1.VirtualSessionService/RequestTransition': {
    roles: ALL,
    gate: false,
    write: true,
    rule: 'participants and the roles that govern it (the decision depends on who asks)',
  },
  '/comms.v1.VirtualSessionService/InviteParticipant': {
    roles: GOVERNING,
    gate: false,
    write: true,
    rule: 'providers of the session; staff, service',
  },
  '/comms.v1.VirtualSessionService/JoinSession': { roles: ALL, gate: false, write: true, rule: 'participants only' },
  '/comms.v1.VirtualSessionService/LeaveSession': { roles: ALL, gate: false, write: true, rule: 'participants only' },
  '/comms.v1.VirtualSessionService/AdmitParticipant': {
    roles: ['provider'],
    gate: false,
    write: true,
    rule: 'providers of the session only',
  },
  '/comms.v1.VirtualSessionService/DenyParticipant': {
    roles: ['provider'],
    gate: false,
    write: true,
    rule: 'providers of the session only',
  },
  '/comms.v1.VirtualSessionService/RemoveSessionParticipant': {
    roles: ['provider'],
    gate: false,
    write: true,
    rule: 'providers of the session only',
  },
  '/comms.v1.VirtualSessionService/ListSessionEvents': {
    roles: GOVERNING,
    gate: false,
    write: false,
    rule: 'providers of the session; staff, service',
  },
  '/comms.v1.MessageService/RetractMessage': {
    roles: ALL,
    gate: false,
    write: true,
    rule: 'the sender within the retraction window; staff with messages.moderate',
  },
  '/comms.v1.GovernanceService/QueryAudit': {
    roles: ['staff', 'service'],
    gate: true,
    write: false,
    rule: 'staff with audit.read; service',
    permission: { name: 'audit.read', service: true },
  },
  '/comms.v1.GovernanceService/GetAuditedMessage': {
    roles: ['staff', 'service'],
    gate: true,
    write: false,
    rule: 'staff with audit.read; service',
    permission: { name: 'audit.read', service: true },
  },
  '/comms.v1.GovernanceService/GetRetentionPolicy': {
    roles: ['staff', 'service'],
    gate: true,
    write: false,
    rule: 'staff with retention.manage; service',
    permission: { name: 'retention.manage', service: true },
  },
  '/comms.v1.GovernanceService/UpdateRetentionPolicy': {
    roles: ['staff'],
    gate: true,
    write: true,
    rule: 'staff with retention.manage',
    permission: { name: 'retention.manage', service: false },
  },
  '/comms.v1.GovernanceService/PlaceLegalHold': {
    roles: ['staff'],
    gate: true,
    write: true,
    rule: 'staff with holds.manage',
    permission: { name: 'holds.manage', service: false },
  },
  '/comms.v1.GovernanceService/ReleaseLegalHold': {
    roles: ['staff'],
    gate: true,
    write: true,
    rule: 'staff with holds.manage',
    permission: { name: 'holds.manage', service: false },
  },
  '/comms.v1.GovernanceService/ListLegalHolds': {
    roles: ['staff'],
    gate: true,
    write: false,
    rule: 'staff with holds.manage',
    permission: { name: 'holds.manage', service: false },
  },
  '/comms.v1.GovernanceService/ExportThread': {
    roles: ['staff', 'service'],
    gate: true,
    write: false,
    rule: 'staff with records.export; service',
    permission: { name: 'records.export', service: true },
  },
};

/** The policy of `path`; throws for an RPC the table does not list (a bug, caught at start). */
export function policyOf(path: string): RpcPolicy {
  const policy = RPC_POLICY[path];
  if (!policy) throw new Error(`no access policy for ${path} (src/rpc/policy.ts)`);
  return policy;
}
