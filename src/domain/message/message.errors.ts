import { DomainError } from '../errors.js';

/** The message does not exist, or the caller may not read its thread. */
export class MessageNotFound extends DomainError {
  constructor(messageId: string) {
    super('not_found', 'MESSAGE_NOT_FOUND', `message ${messageId} not found`, { message_id: messageId });
  }
}

/** The sender used a client_mutation_id before for a different message (another thread or body). */
export class IdempotencyKeyReused extends DomainError {
  constructor(clientMutationId: string, messageId: string) {
    super(
      'already_exists',
      'IDEMPOTENCY_KEY_REUSED',
      `client_mutation_id ${clientMutationId} was already used for another message; use a new key per message`,
      { client_mutation_id: clientMutationId, message_id: messageId },
    );
  }
}

/** Someone other than the sender (and not a moderator) tried to retract a message. */
export class NotSender extends DomainError {
  constructor(messageId: string) {
    super(
      'permission_denied',
      'NOT_SENDER',
      `only the sender (within the retraction window) or a moderator may retract message ${messageId}`,
      { message_id: messageId },
    );
  }
}

/** The sender's retraction window for this message has passed. */
export class RetractionWindowPassed extends DomainError {
  constructor(messageId: string, windowMs: number) {
    super(
      'failed_precondition',
      'RETRACTION_WINDOW_PASSED',
      `message ${messageId} can no longer be retracted by its sender (window: ${Math.round(windowMs / 1000)} s); ask a moderator`,
      { message_id: messageId, window_seconds: String(Math.round(windowMs / 1000)) },
    );
  }
}
