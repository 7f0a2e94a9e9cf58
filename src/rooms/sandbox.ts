import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { MikroORM } from '@mikro-orm/postgresql';
import { pgArray, sqlDateOrNull } from '../domain/db.js';
import type { RoomCredential, RoomProvider } from '../domain/session/session.room.js';

/** What the sandbox provider answers when a client connects with a credential. */
export type ConnectResult =
  | { readonly ok: true; readonly tenantId: string; readonly roomId: string; readonly userId: string }
  | { readonly ok: false; readonly reason: 'BAD_TOKEN' | 'EXPIRED' | 'ROOM_CLOSED' | 'REVOKED' };

interface Claims {
  readonly t: string;
  readonly r: string;
  readonly u: string;
  /** The session version that admitted the user. */
  readonly g: number;
  /** Issued at, epoch milliseconds. */
  readonly iat: number;
  readonly exp: number;
}

/**
 * The `sandbox` realtime provider (development and tests): rooms and revocations live in its own tables
 * (`sandbox_room`, `sandbox_room_revocation`); credentials are HMAC-signed claims of tenant, room, user and
 * lifetime. `connect` plays the provider's side of a client connecting, so tests can prove that only an
 * admitted participant's fresh credential gets in.
 */
export class SandboxRoomProvider implements RoomProvider {
  readonly name = 'sandbox';
  readonly #key: Buffer;

  constructor(
    private readonly orm: MikroORM,
    secret: string,
    private readonly ttlSeconds: number,
  ) {
    this.#key = createHash('sha256').update(`sandbox-room:${secret}`).digest();
  }

  async createRoom(tenantId: string, sessionId: string, at: Date): Promise<string> {
    const roomId = `sandbox-${sessionId}`;
    await this.orm.em
      .fork()
      .execute(
        'insert into sandbox_room (tenant_id, room_id, created_at) values (?, ?, ?::timestamptz) on conflict do nothing',
        [tenantId, roomId, at],
      );
    return roomId;
  }

  credential(tenantId: string, roomId: string, userId: string, generation: number, now: Date): RoomCredential {
    const claims: Claims = {
      t: tenantId,
      r: roomId,
      u: userId,
      g: generation,
      iat: now.getTime(),
      exp: now.getTime() + this.ttlSeconds * 1000,
    };
    const body = Buffer.from(JSON.stringify(claims)).toString('base64url');
    return { token: `${body}.${this.#sign(body)}`, expiresAt: new Date(claims.exp) };
  }

  async revoke(tenantId: string, roomId: string, userIds: readonly string[], generation: number): Promise<void> {
    if (userIds.length === 0) return;
    await this.orm.em.fork().execute(
      `insert into sandbox_room_revocation as r (tenant_id, room_id, user_id, revoked_generation)
       select ?, ?, u, ? from unnest(?::text[]) as u
       on conflict (tenant_id, room_id, user_id) do update
         set revoked_generation = greatest(r.revoked_generation, excluded.revoked_generation)`,
      [tenantId, roomId, generation, pgArray(userIds)],
    );
  }

  async closeRoom(tenantId: string, roomId: string, at: Date): Promise<void> {
    await this.orm.em
      .fork()
      .execute(
        'update sandbox_room set closed_at = coalesce(closed_at, ?::timestamptz) where tenant_id = ? and room_id = ?',
        [at, tenantId, roomId],
      );
  }

  /** The provider's check when a client connects with `token` at `now`. */
  async connect(token: string, now = new Date()): Promise<ConnectResult> {
    const [body, signature] = token.split('.');
    if (!body || !signature) return { ok: false, reason: 'BAD_TOKEN' };
    const expected = Buffer.from(this.#sign(body));
    const given = Buffer.from(signature);
    if (expected.length !== given.length || !timingSafeEqual(expected, given))
      return { ok: false, reason: 'BAD_TOKEN' };
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as Claims;
    if (now.getTime() >= claims.exp) return { ok: false, reason: 'EXPIRED' };
    const rows: Record<string, unknown>[] = await this.orm.em.fork().execute(
      `select r.closed_at, v.revoked_generation from sandbox_room r
         left join sandbox_room_revocation v on v.tenant_id = r.tenant_id and v.room_id = r.room_id and v.user_id = ?
        where r.tenant_id = ? and r.room_id = ?`,
      [claims.u, claims.t, claims.r],
    );
    const row = rows[0];
    if (!row || sqlDateOrNull(row.closed_at)) return { ok: false, reason: 'ROOM_CLOSED' };
    const revoked = row.revoked_generation === null ? undefined : Number(row.revoked_generation);
    if (revoked !== undefined && claims.g < revoked) return { ok: false, reason: 'REVOKED' };
    return { ok: true, tenantId: claims.t, roomId: claims.r, userId: claims.u };
  }

  #sign(body: string): string {
    return createHmac('sha256', this.#key).update(body).digest('base64url');
  }
}
