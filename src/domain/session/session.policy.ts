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
