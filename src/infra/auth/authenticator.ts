import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { type Actor, PERMISSIONS, type Permission, ROLES, type Role } from '../../domain/actor.js';
import { PermissionDenied, Unauthenticated } from '../../domain/errors.js';
import type { Config } from '../config/config.js';

/** The claims a token must carry besides `sub`, `iss`, `aud` and `exp`. */
export const TENANT_CLAIM = 'tenant';
export const ROLES_CLAIM = 'roles';
/** Optional: governance permissions (src/domain/actor.ts PERMISSIONS). */
export const PERMISSIONS_CLAIM = 'permissions';

const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Verifies JWT bearer tokens with `jose`: HS256 with a shared secret (development, tests), or keys from a
 * JWKS URL (production; RS256/ES256/EdDSA). Only the listed algorithms are accepted, so `alg: none`
 * and algorithm-confusion tokens are refused. Issuer, audience and expiry are always checked.
 */
export class Authenticator {
  readonly #key: Uint8Array | JWTVerifyGetKey;
  readonly #algorithms: string[];
  /**
   * Tokens verified recently, by their exact text: clients send the same token on every call until it
   * expires, and a hit skips the signature check. An entry is used only before the token's `exp`.
   */
  readonly #verified = new Map<string, { actor: Actor; expiresAt: Date }>();
  static readonly CACHE_SIZE = 10_000;

  constructor(private readonly config: Config['jwt']) {
    if (config.jwksUrl) {
      this.#key = createRemoteJWKSet(new URL(config.jwksUrl));
      this.#algorithms = ['RS256', 'PS256', 'ES256', 'EdDSA'];
    } else if (config.secret) {
      this.#key = new TextEncoder().encode(config.secret);
      this.#algorithms = ['HS256'];
    } else {
      throw new Error('no JWT verification key configured');
    }
  }

  /** Turns an `authorization` metadata value into an Actor, or throws UNAUTHENTICATED. */
  async authenticate(authorization: string | undefined): Promise<{ actor: Actor; expiresAt: Date }> {
    if (!authorization) throw new Unauthenticated('missing authorization metadata (expected "Bearer <jwt>")');
    const match = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
    if (!match) throw new Unauthenticated('authorization metadata must be "Bearer <jwt>"');
    const token = match[1]!;
    const cached = this.#verified.get(token);
    if (cached) {
      if (cached.expiresAt.getTime() > Date.now()) return cached;
      this.#verified.delete(token);
    }
    const verified = await this.#verify(token);
    if (this.#verified.size >= Authenticator.CACHE_SIZE) {
      // Maps iterate in insertion order: drop the oldest entry.
      this.#verified.delete(this.#verified.keys().next().value!);
    }
    this.#verified.set(token, verified);
    return verified;
  }

  async #verify(token: string): Promise<{ actor: Actor; expiresAt: Date }> {
    let payload: JWTPayload;
    try {
      const verified =
        this.#key instanceof Uint8Array
          ? await jwtVerify(token, this.#key, this.#options())
          : await jwtVerify(token, this.#key, this.#options());
      payload = verified.payload;
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw new Unauthenticated('token expired');
      if (err instanceof joseErrors.JOSEError) throw new Unauthenticated(`invalid token: ${err.code}`);
      throw err;
    }
    const tenant = payload[TENANT_CLAIM];
    if (typeof payload.sub !== 'string' || payload.sub === '' || payload.sub.length > 128) {
      throw new Unauthenticated('token has no valid subject');
    }
    if (typeof tenant !== 'string' || !TENANT_PATTERN.test(tenant)) {
      throw new Unauthenticated(`token has no valid "${TENANT_CLAIM}" claim`);
    }
    if (payload.exp === undefined) throw new Unauthenticated('token has no expiry');
    const claimed = payload[ROLES_CLAIM];
    const roles = new Set<Role>(
      Array.isArray(claimed) ? claimed.filter((r): r is Role => ROLES.includes(r as Role)) : [],
    );
    if (roles.size === 0) {
      throw new PermissionDenied('NO_ROLE', `token carries none of the roles ${ROLES.join(', ')}`);
    }
    const granted = payload[PERMISSIONS_CLAIM];
    const permissions = new Set<Permission>(
      Array.isArray(granted) ? granted.filter((p): p is Permission => PERMISSIONS.includes(p as Permission)) : [],
    );
    return {
      actor: { tenantId: tenant, userId: payload.sub, roles, permissions },
      expiresAt: new Date(payload.exp * 1000),
    };
  }

  #options() {
    return {
      issuer: this.config.issuer,
      audience: this.config.audience,
      algorithms: this.#algorithms,
      requiredClaims: ['exp', 'sub'],
    };
  }
}
