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
