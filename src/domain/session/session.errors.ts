import { DomainError, PermissionDenied } from '../errors.js';

/** The virtual session does not exist, or the caller may not see it (indistinguishable on purpose). */
export class SessionNotFound extends DomainError {
  constructor(sessionId: string) {
    super('not_found', 'SESSION_NOT_FOUND', `session ${sessionId} not found`, { session_id: sessionId });
  }
}

/** The caller sees the session, but its role does not allow this command. */
export class SessionRoleNotAllowed extends PermissionDenied {
  constructor(sessionId: string, action: string) {
    super('ROLE_NOT_ALLOWED', `not allowed to ${action} session ${sessionId}`, { session_id: sessionId, action });
  }
}

/** Only participants join or leave; staff and service callers who do not take part cannot. */
export class NotAParticipant extends PermissionDenied {
  constructor(sessionId: string) {
    super('NOT_A_PARTICIPANT', `the caller does not take part in session ${sessionId}`, { session_id: sessionId });
  }
}

/** A precondition on the session or a participant does not hold; `reason` says which. */
export class SessionPreconditionFailed extends DomainError {
  constructor(reason: string, message: string, metadata: Record<string, string>) {
    super('failed_precondition', reason, message, metadata);
  }
}

/** The session is ENDED, CANCELLED or EXPIRED. */
export function sessionClosed(sessionId: string, state: string): SessionPreconditionFailed {
  return new SessionPreconditionFailed('SESSION_CLOSED', `session ${sessionId} is closed (${state})`, {
    session_id: sessionId,
    state: `SESSION_STATE_${state.toUpperCase()}`,
  });
}

/** The user does not take part in the session. */
export class SessionParticipantNotFound extends DomainError {
  constructor(sessionId: string, userId: string) {
    super('not_found', 'PARTICIPANT_NOT_FOUND', `user ${userId} does not take part in session ${sessionId}`, {
      session_id: sessionId,
      user_id: userId,
    });
  }
}

/** A participant-level precondition, naming the participant's current admit_state. */
export function participantPrecondition(
  reason: string,
  sessionId: string,
  userId: string,
  admitState: string,
  why: string,
): SessionPreconditionFailed {
  return new SessionPreconditionFailed(reason, `participant ${userId} of session ${sessionId}: ${why}`, {
    session_id: sessionId,
    user_id: userId,
    admit_state: `ADMIT_STATE_${admitState.toUpperCase()}`,
  });
}
