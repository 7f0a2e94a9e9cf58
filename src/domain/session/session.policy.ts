import { type Actor, governsTenant, hasRole } from '../actor.js';

/**
 * The virtual session state machine (issue 7): the one table of transitions the server makes, and its
 * decision on a client's suggested transition (RequestTransition), as proto/comms/v1/session.proto
 * defines them. Pure: no database, no wire.
 */

export const SESSION_STATES = ['scheduled', 'open', 'in_progress', 'ended', 'cancelled', 'expired'] as const;
export type SessionState = (typeof SESSION_STATES)[number];

/** States a session never leaves. */
export const CLOSED_STATES: ReadonlySet<SessionState> = new Set(['ended', 'cancelled', 'expired']);

/** What clients may suggest (SessionTransition). */
export const SUGGESTIONS = ['open', 'end', 'cancel'] as const;
export type Suggestion = (typeof SUGGESTIONS)[number];

/** What moves a session: a suggestion the server accepts, something that happened, or the clock. */
export type Trigger =
  | Suggestion
  /** The waiting room's opening time came. */
  | 'waiting_room_opens'
  /** A provider of the session joined. */
  | 'provider_joined'
  /** A provider and at least one other participant are ADMITTED. */
  | 'visit_started'
  /** Nobody showed within the no-show window. */
  | 'no_show'
  /** The visit ran for the maximum duration. */
  | 'max_duration'
  /** The last provider left and none came back within the grace period. */
  | 'last_provider_gone';

/** Every state change the server makes, and what causes it. Anything not listed does not happen. */
export const TRANSITIONS: readonly {
  readonly from: SessionState;
  readonly trigger: Trigger;
  readonly to: SessionState;
}[] = [
  { from: 'scheduled', trigger: 'open', to: 'open' },
  { from: 'scheduled', trigger: 'waiting_room_opens', to: 'open' },
  { from: 'scheduled', trigger: 'provider_joined', to: 'open' },
  { from: 'open', trigger: 'visit_started', to: 'in_progress' },
  { from: 'in_progress', trigger: 'end', to: 'ended' },
  { from: 'in_progress', trigger: 'max_duration', to: 'ended' },
  { from: 'in_progress', trigger: 'last_provider_gone', to: 'ended' },
  { from: 'scheduled', trigger: 'cancel', to: 'cancelled' },
  { from: 'open', trigger: 'cancel', to: 'cancelled' },
  { from: 'scheduled', trigger: 'no_show', to: 'expired' },
  { from: 'open', trigger: 'no_show', to: 'expired' },
];

/** The state `trigger` moves a session in `from` to, or undefined when the table has no such move. */
export function transition(from: SessionState, trigger: Trigger): SessionState | undefined {
  return TRANSITIONS.find((t) => t.from === from && t.trigger === trigger)?.to;
}

/** The state each suggestion asks for. */
export const SUGGESTION_TARGET: Readonly<Record<Suggestion, SessionState>> = {
  open: 'open',
  end: 'ended',
  cancel: 'cancelled',
};

/**
 * The server's answer to a suggestion. Accepted: the session is in the target state (`changed` when the
 * suggestion moved it). Rejected: the reason code; `callerLeaves` when a non-provider's END means they
 * leave (their admit_state becomes LEFT, as by LeaveSession).
 */
export type SuggestionDecision =
  | { readonly accepted: true; readonly state: SessionState; readonly changed: boolean }
  | { readonly accepted: false; readonly state: SessionState; readonly reason: string; readonly callerLeaves: boolean };

/**
 * Decides a suggestion. `governs`: the caller is a provider of the session, staff or service; anyone
 * else is a participant (patient, family, interpreter, guest).
 */
export function decideSuggestion(state: SessionState, suggestion: Suggestion, governs: boolean): SuggestionDecision {
  const reject = (reason: string, callerLeaves = false): SuggestionDecision => ({
    accepted: false,
    state,
    reason,
    callerLeaves,
  });
  if (!governs) return suggestion === 'end' ? reject('CALLER_LEFT_ONLY', true) : reject('ROLE_NOT_ALLOWED');
  const target = SUGGESTION_TARGET[suggestion];
  if (state === target) return { accepted: true, state, changed: false };
  const to = transition(state, suggestion);
  if (to) return { accepted: true, state: to, changed: true };
  if (CLOSED_STATES.has(state)) return reject('SESSION_CLOSED');
  if (suggestion === 'end') return reject('SESSION_NOT_STARTED');
  return reject('SESSION_ALREADY_STARTED');
}

/** Where a participant stands with respect to the room (AdmitState). */
export const ADMIT_STATES = ['invited', 'waiting', 'admitted', 'denied', 'removed', 'left', 'expired'] as const;
export type AdmitState = (typeof ADMIT_STATES)[number];

/**
 * Every admit_state change the server makes. Joining: INVITED, LEFT or EXPIRED → WAITING (or ADMITTED for a
 * provider of the session, or a rejoin within the grace period); admit and deny act on WAITING; removal on
 * anything but REMOVED; leaving on WAITING and ADMITTED; a new invite brings DENIED or REMOVED back; the
 * clock (or the session closing) expires WAITING entries; closing makes ADMITTED participants LEFT.
 * Migration 20261201000000's trigger refuses any other change (test/session/guards.test.ts checks the two
 * agree).
 */
export const ADMIT_TRANSITIONS: readonly { readonly from: AdmitState; readonly to: AdmitState }[] = [
  { from: 'invited', to: 'waiting' },
  { from: 'invited', to: 'admitted' },
  { from: 'invited', to: 'removed' },
  { from: 'waiting', to: 'admitted' },
  { from: 'waiting', to: 'denied' },
  { from: 'waiting', to: 'removed' },
  { from: 'waiting', to: 'left' },
  { from: 'waiting', to: 'expired' },
  { from: 'admitted', to: 'left' },
  { from: 'admitted', to: 'removed' },
  { from: 'denied', to: 'invited' },
  { from: 'denied', to: 'removed' },
  { from: 'removed', to: 'invited' },
  { from: 'left', to: 'waiting' },
  { from: 'left', to: 'admitted' },
  { from: 'left', to: 'removed' },
  { from: 'expired', to: 'waiting' },
  { from: 'expired', to: 'admitted' },
  { from: 'expired', to: 'removed' },
];

/** True when the admit-state table allows `from` → `to`. */
export function admitAllowed(from: AdmitState, to: AdmitState): boolean {
  return ADMIT_TRANSITIONS.some((t) => t.from === from && t.to === to);
}

/** A tenant's session timings and rejoin policy (`session_settings`; tenant '' holds the defaults). */
export interface SessionSettings {
  /** Default lead of the waiting room before the scheduled start. */
  readonly leadMs: number;
  /** A session that has not started this long after its scheduled start expires (NO_SHOW). */
  readonly noShowMs: number;
  /** A waiting entry nobody admits expires after this long. */
  readonly waitingMs: number;
  /** A participant who left after being admitted may rejoin ADMITTED within the grace period. */
  readonly rejoinAllowed: boolean;
  readonly rejoinGraceMs: number;
  /** A visit with no admitted provider for this long ends (LAST_PROVIDER_LEFT). */
  readonly providerGraceMs: number;
  /** A visit ends at the latest this long after it started, */
  readonly maxDurationMs: number;
  /** … or this long after its scheduled end, whichever comes first. */
  readonly overrunMs: number;
}

/** Limits of the session aggregate. */
export const SESSION_LIMITS = {
  maxParticipants: 20,
  maxScheduledMs: 8 * 3_600_000,
  reasonMaxChars: 1000,
} as const;

/** What a caller may do with a session, from its roles and its participant entry (if any). */
export interface SessionAccess {
  /** The session exists for the caller (otherwise NOT_FOUND). */
  readonly see: boolean;
  /** Token role provider and a participant with role PROVIDER: admits, denies, removes. */
  readonly providerOfSession: boolean;
  /** Provider of the session, staff or service: edits, invites, transitions, reads the history. */
  readonly governs: boolean;
  /** The caller takes part (joins and leaves). */
  readonly participant: boolean;
}

/**
 * The session access rules in one place. Staff and service callers govern every session of their tenant;
 * participants see theirs; providers of the session govern it and alone admit, deny and remove.
 */
export function sessionAccess(actor: Actor, participants: readonly { userId: string; role: string }[]): SessionAccess {
  const me = participants.find((p) => p.userId === actor.userId);
  const providerOfSession = me !== undefined && me.role === 'provider' && hasRole(actor, 'provider');
  const tenant = governsTenant(actor);
  return {
    see: tenant || me !== undefined,
    providerOfSession,
    governs: tenant || providerOfSession,
    participant: !!me,
  };
}

/** Roles that may create sessions. */
export function mayCreateSession(actor: Actor): boolean {
  return hasRole(actor, 'provider') || governsTenant(actor);
}
