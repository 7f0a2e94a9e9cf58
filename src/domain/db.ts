import type { EntityManager } from '@mikro-orm/postgresql';
import { DeadlineExceeded } from './errors.js';

/**
 * A use case's database handle: the call's own EntityManager fork, and the caller's deadline so that
 * work the caller will no longer wait for (a row lock held elsewhere, say) is cut off in the database.
 */
export interface Db {
  readonly em: EntityManager;
  readonly deadline: Date | undefined;
  /** The statement timeout every pooled connection starts with (DB_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs: number;
}

/**
 * Inside a transaction: bounds every following statement by the time left until the deadline
 * (`SET LOCAL statement_timeout`) when that is tighter than the connection's own statement timeout, so a
 * call that has timed out for its client cannot commit later.
 */
export async function boundByDeadline(em: EntityManager, db: Db): Promise<void> {
  if (!db.deadline) return;
  const remaining = db.deadline.getTime() - Date.now();
  if (remaining <= 0) throw new DeadlineExceeded();
  // The connection's own statement timeout is the tighter bound already.
  if (remaining >= db.statementTimeoutMs) return;
  await em.execute(`select set_config('statement_timeout', ?, true)`, [String(Math.ceil(remaining))]);
}

/**
 * Runs `work` (one statement, or several that must commit together) so that it cannot outlive the
 * caller's deadline. Every pooled connection already caps statements at `statementTimeoutMs`
 * (DB_STATEMENT_TIMEOUT_MS); when the deadline is nearer than that, the work runs in a transaction that
 * lowers the cap to the time left (`SET LOCAL statement_timeout`), so a call that timed out for its
 * client never commits afterwards. Otherwise it runs as is: one round trip for a one-statement write.
 */
export async function withinDeadline<T>(db: Db, work: (em: EntityManager) => Promise<T>): Promise<T> {
  if (!db.deadline || db.deadline.getTime() - Date.now() >= db.statementTimeoutMs) return work(db.em);
  return db.em.transactional(async (em) => {
    await boundByDeadline(em, db);
    return work(em);
  });
}

/**
 * A timestamptz as raw queries return it (`2026-11-29 21:58:12.263121+00`, MikroORM keeps the driver's
 * text) or as a Date, as a Date.
 */
export function sqlDate(value: unknown): Date {
  if (value instanceof Date) return value;
  return new Date(
    String(value)
      .replace(' ', 'T')
      .replace(/([+-]\d\d)$/, '$1:00'),
  );
}

/** A nullable timestamptz column. */
export function sqlDateOrNull(value: unknown): Date | null {
  return value === null || value === undefined ? null : sqlDate(value);
}

/**
 * `buf` in memory of its own. Node hands out small Buffers as slices of shared 64 KiB slabs, and a slice
 * keeps its whole slab alive: a Buffer kept for long (a cached feed event) must not be such a slice.
 */
export function unpooled(buf: Buffer): Buffer {
  const own = Buffer.allocUnsafeSlow(buf.length);
  buf.copy(own);
  return own;
}

/**
 * A PostgreSQL array literal of ids, texts, numbers or ISO timestamps, for a `?::type[]` parameter
 * (MikroORM expands JavaScript arrays into value lists). Elements are quoted, quotes and backslashes
 * escaped.
 */
export function pgArray(values: readonly (string | number)[]): string {
  return `{${values.map((v) => `"${String(v).replace(/["\\]/g, (c) => `\\${c}`)}"`).join(',')}}`;
}
