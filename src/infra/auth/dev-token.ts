import { SignJWT } from 'jose';
import type { Permission, Role } from '../../domain/actor.js';
import { PERMISSIONS_CLAIM, ROLES_CLAIM, TENANT_CLAIM } from './authenticator.js';

/** Signs an HS256 token for development and tests. */
export async function signDevToken(
  secret: string,
  claims: {
    sub: string;
    tenant: string;
    roles: readonly Role[];
    permissions?: readonly Permission[];
    issuer: string;
    audience: string;
    ttlSeconds?: number;
  },
): Promise<string> {
  return new SignJWT({
    [TENANT_CLAIM]: claims.tenant,
    [ROLES_CLAIM]: [...claims.roles],
    ...(claims.permissions?.length ? { [PERMISSIONS_CLAIM]: [...claims.permissions] } : {}),
  })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.sub)
    .setIssuer(claims.issuer)
    .setAudience(claims.audience)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + (claims.ttlSeconds ?? 3600))
    .sign(new TextEncoder().encode(secret));
}
