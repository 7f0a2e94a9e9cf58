/** The roles a token may carry. */
export const ROLES = ['patient', 'provider', 'staff', 'service'] as const;
export type Role = (typeof ROLES)[number];

/**
 * The authenticated caller, as every domain operation receives it: who (subject), in which tenant, with
 * which roles. Built once per call from the verified token; never from request fields.
 */
export interface Actor {
  readonly tenantId: string;
  readonly userId: string;
  readonly roles: ReadonlySet<Role>;
}

/** True when the actor carries the role. */
export function hasRole(actor: Actor, role: Role): boolean {
  return actor.roles.has(role);
}

/** Staff and service callers govern every thread and session of their tenant. */
export function governsTenant(actor: Actor): boolean {
  return actor.roles.has('staff') || actor.roles.has('service');
}
