import { DomainError } from '../errors.js';

/** The virtual session does not exist, or the caller may not see it (indistinguishable on purpose). */
export class SessionNotFound extends DomainError {
  constructor(sessionId: string) {
    super('not_found', 'SESSION_NOT_FOUND', `session ${sessionId} not found`, { session_id: sessionId });
  }
}
