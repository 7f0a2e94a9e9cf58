import type { EntityManager } from '@mikro-orm/postgresql';
import { DeadlineExceeded } from './errors.js';

/**
 * A use case's database handle: the call's own EntityManager fork, and the caller's deadline so that
 * work the caller will no longer wait for (a row lock held elsewhere, say) is cut off in the database.
 */
export interface Db {
  readonly em: EntityManager;
  readonly deadline: Date | undefined;
}

/**
 * Inside a transaction: bounds every following statement by the time left until the deadline
 * (`SET LOCAL statement_timeout`), so a call that has timed out for its client cannot commit later.
 */
export async function boundByDeadline(em: EntityManager, deadline: Date | undefined): Promise<void> {
  if (!deadline) return;
  const remaining = deadline.getTime() - Date.now();
  if (remaining <= 0) throw new DeadlineExceeded();
  await em.execute(`select set_config('statement_timeout', ?, true)`, [String(Math.ceil(remaining))]);
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
