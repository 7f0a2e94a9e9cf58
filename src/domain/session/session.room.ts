/** A short-lived credential for one participant and one room, signed locally (no call to the provider). */
export interface RoomCredential {
  readonly token: string;
  readonly expiresAt: Date;
}

/**
 * The realtime (video) provider that holds a session's room. Credentials are signed locally, as real
 * providers' SDKs do, and carry the session version (`generation`) that admitted the participant;
 * revoking a participant's access refuses every credential of an earlier generation, so the order is
 * the session's commit order, whatever the replicas' clocks say. Creating, revoking and closing are
 * calls to the provider, made after the change committed.
 */
export interface RoomProvider {
  /** Configured adapter name, e.g. `sandbox`. */
  readonly name: string;
  /** Creates the room for a session; returns the provider's room id. Idempotent per session. */
  createRoom(tenantId: string, sessionId: string, at: Date): Promise<string>;
  /** A credential for `userId` in the room, of session version `generation`, valid from `now` for a while. */
  credential(tenantId: string, roomId: string, userId: string, generation: number, now: Date): RoomCredential;
  /** Revokes the users' access: their credentials of a generation before `generation` are refused from now on. */
  revoke(tenantId: string, roomId: string, userIds: readonly string[], generation: number): Promise<void>;
  /** Closes the room: every credential is refused from now on. */
  closeRoom(tenantId: string, roomId: string, at: Date): Promise<void>;
}
