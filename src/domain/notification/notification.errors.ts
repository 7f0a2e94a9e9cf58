import { DomainError, PermissionDenied } from '../errors.js';

/** The intent does not exist, or the caller may not see it (indistinguishable on purpose). */
export class NotificationNotFound extends DomainError {
  constructor(notificationId: string) {
    super('not_found', 'NOTIFICATION_NOT_FOUND', `notification ${notificationId} not found`, {
      notification_id: notificationId,
    });
  }
}

/** The caller's roles do not allow this call (or this call about another user). */
export class RoleNotAllowed extends PermissionDenied {
  constructor(action: string) {
    super('ROLE_NOT_ALLOWED', `the caller's roles do not allow ${action}`, { action });
  }
}

/** RequestNotification named a template the tenant does not have. */
export class UnknownTemplate extends DomainError {
  constructor(templateKey: string) {
    super('invalid_argument', 'UNKNOWN_TEMPLATE', `template_key: no template named "${templateKey}"`, {
      template_key: templateKey,
    });
  }
}

/** ReportDelivery named a provider this service does not use. */
export class UnknownProvider extends DomainError {
  constructor(provider: string) {
    super('invalid_argument', 'UNKNOWN_PROVIDER', `provider: no channel provider named "${provider}"`, { provider });
  }
}
