/** A short-lived credential for one participant and one room, signed locally (no call to the provider). */
export interface RoomCredential {
  readonly token: string;
  readonly expiresAt: Date;
}

/**
 * The realtime (video) provider that holds a session's room. Credentials are signed locally, as real
 * providers' SDKs do, so they are issued inside the transaction that decided the participant is ADMITTED
 * (a later revocation always postdates them); creating, revoking and closing are calls to the provider,
 * made outside transactions.
 */
export interface RoomProvider {
  /** Configured adapter name, e.g. `sandbox`. */
  readonly name: string;
  /** Creates the room for a session; returns the provider's room id. Idempotent per session. */
  createRoom(tenantId: string, sessionId: string, at: Date): Promise<string>;
  /** A credential for `userId` in the room, valid from `now` for the configured lifetime. */
  credential(tenantId: string, roomId: string, userId: string, now: Date): RoomCredential;
  /** Revokes the users' access: credentials issued at or before `before` are refused from now on. */
  revoke(tenantId: string, roomId: string, userIds: readonly string[], before: Date): Promise<void>;
  /** Closes the room: every credential is refused from now on. */
  closeRoom(tenantId: string, roomId: string, at: Date): Promise<void>;
}
