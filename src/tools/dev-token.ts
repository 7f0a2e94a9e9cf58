import { parseArgs } from 'node:util';
import { PERMISSIONS, type Permission, ROLES, type Role } from '../domain/actor.js';
import { signDevToken } from '../infra/auth/dev-token.js';
import { ConfigError, loadConfig } from '../infra/config/config.js';

/**
 * Prints a development token signed with the configured HS256 secret (the built-in development secret
 * when none is set). Usage: npm run token -- --sub alice --tenant acme --roles patient,provider
 * [--permissions audit.read,holds.manage]
 */
async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sub: { type: 'string', default: 'dev-user' },
      tenant: { type: 'string', default: 'dev-tenant' },
      roles: { type: 'string', default: 'provider' },
      permissions: { type: 'string', default: '' },
      ttl: { type: 'string', default: '3600' },
    },
  });
  const roles = values.roles.split(',').map((r) => r.trim());
  const unknown = roles.filter((r) => !ROLES.includes(r as Role));
  if (unknown.length > 0) throw new Error(`unknown roles: ${unknown.join(', ')} (known: ${ROLES.join(', ')})`);
  const permissions = values.permissions === '' ? [] : values.permissions.split(',').map((p) => p.trim());
  const unknownPermissions = permissions.filter((p) => !PERMISSIONS.includes(p as Permission));
  if (unknownPermissions.length > 0) {
    throw new Error(`unknown permissions: ${unknownPermissions.join(', ')} (known: ${PERMISSIONS.join(', ')})`);
  }
  const config = loadConfig();
  if (!config.jwt.secret) throw new Error('JWT_JWKS_URL is set: tokens come from your identity provider');
  const token = await signDevToken(config.jwt.secret, {
    sub: values.sub,
    tenant: values.tenant,
    roles: roles as Role[],
    permissions: permissions as Permission[],
    issuer: config.jwt.issuer,
    audience: config.jwt.audience,
    ttlSeconds: Number(values.ttl),
  });
  process.stdout.write(`${token}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof ConfigError || err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
