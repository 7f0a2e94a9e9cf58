/** The roles a token may carry. */
export const ROLES = ['patient', 'provider', 'staff', 'service'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Permissions a token may carry besides its roles (claim `permissions`), each unlocking one governance
 * capability for staff: reading the access audit, retracting anyone's message, setting the tenant's
 * retention policy, placing and releasing legal holds, exporting threads.
 */
export const PERMISSIONS = [
  'audit.read',
  'messages.moderate',
  'retention.manage',
  'holds.manage',
  'records.export',
] as const;
export type Permission = (typeof PERMISSIONS)[number];

/**
 * The authenticated caller, as every domain operation receives it: who (subject), in which tenant, with
 * which roles. Built once per call from the verified token; never from request fields.
 */
export interface Actor {
  readonly tenantId: string;
  readonly userId: string;
  readonly roles: ReadonlySet<Role>;
  /** Governance permissions from the token (unknown ones are ignored); none when absent. */
  readonly permissions?: ReadonlySet<Permission>;
}

/** True when the actor's token carries the permission. */
export function hasPermission(actor: Actor, permission: Permission): boolean {
  return actor.permissions?.has(permission) ?? false;
}

/** True when the actor carries the role. */
export function hasRole(actor: Actor, role: Role): boolean {
  return actor.roles.has(role);
}

/** Staff and service callers govern every thread and session of their tenant. */
export function governsTenant(actor: Actor): boolean {
  return actor.roles.has('staff') || actor.roles.has('service');
}
