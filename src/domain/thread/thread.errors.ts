import { DomainError, PermissionDenied } from '../errors.js';

/** The thread does not exist, or the caller may not see it (the two are indistinguishable on purpose). */
export class ThreadNotFound extends DomainError {
  constructor(threadId: string) {
    super('not_found', 'THREAD_NOT_FOUND', `thread ${threadId} not found`, { thread_id: threadId });
  }
}

/** The thread is archived and the operation needs an active one. */
export class ThreadArchived extends DomainError {
  constructor(threadId: string) {
    super('failed_precondition', 'THREAD_ARCHIVED', `thread ${threadId} is archived`, { thread_id: threadId });
  }
}

/** The caller may see the thread but not do this to it. */
export class ThreadPermissionDenied extends PermissionDenied {
  constructor(threadId: string, action: string) {
    super('THREAD_PERMISSION_DENIED', `not allowed to ${action} thread ${threadId}`, {
      thread_id: threadId,
      action,
    });
  }
}

/** A participant change (add or remove) that would leave the thread in a state the policy forbids. */
export class ParticipantChangeRefused extends DomainError {
  constructor(threadId: string, userId: string, why: string, reason: string) {
    super('failed_precondition', reason, `participant ${userId} of thread ${threadId}: ${why}`, {
      thread_id: threadId,
      user_id: userId,
    });
  }
}

/** The participant to remove does not take part in the thread. */
export class ParticipantNotFound extends DomainError {
  constructor(threadId: string, userId: string) {
    super('not_found', 'PARTICIPANT_NOT_FOUND', `${userId} does not take part in thread ${threadId}`, {
      thread_id: threadId,
      user_id: userId,
    });
  }
}

/** The caller was removed from the thread (or can no longer see it): its feed of the thread ends. */
export class ThreadAccessRevoked extends PermissionDenied {
  constructor(threadId: string) {
    super('THREAD_ACCESS_REVOKED', `no longer allowed to watch thread ${threadId}`, { thread_id: threadId });
  }
}
