import type { Actor } from '../domain/actor.js';
import type { Db } from '../domain/db.js';
import { Violations } from '../domain/errors.js';
import { SessionNotFound } from '../domain/session/session.errors.js';
import { checkUuid } from '../domain/validation.js';
import type { FeedHub } from './hub.js';
import type { FeedOutput } from './watch.js';

/**
 * WatchSession's feed. The virtual-session aggregate arrives with issue 7: it will check access, send
 * the snapshot on a fresh subscribe, and render the `session_changed` / `participant_changed` events it
 * appends to stream `s:<session_id>` with FeedRepository.append (numbered like a thread's). Reading it is
 * `watch()` over `seqLog()` (logs.ts), exactly as WatchThread does, so the log, the fan-out and the stream
 * lifecycle are already there. Until then no session exists, so every subscription is NOT_FOUND after
 * validating its input.
 */
export function watchSession(
  _hub: FeedHub,
  _actor: Actor,
  _db: Db & { readonly signal: AbortSignal; readonly expiresAt: Date },
  input: { sessionId: string; resumeToken: string; heartbeatMs: number },
): AsyncIterable<FeedOutput<never>> {
  const v = new Violations();
  const sessionId = checkUuid(v, 'session_id', input.sessionId);
  v.throwIfAny();
  throw new SessionNotFound(sessionId);
}
