import { Migrator } from '@mikro-orm/migrations';
import { MikroORM, type Options } from '@mikro-orm/postgresql';
import { Message } from '../../domain/message/message.entity.js';
import { Thread, ThreadParticipant } from '../../domain/thread/thread.entity.js';
import { migrationsList } from './migrations/index.js';

/** Every entity of the service. */
export const entities = [Thread, ThreadParticipant, Message];

/** MikroORM options for a database URL. */
export function ormOptions(clientUrl: string, poolMax: number, statementTimeoutMs: number, role = ''): Options {
  return {
    clientUrl,
    entities,
    extensions: [Migrator],
    migrations: {
      migrationsList,
      tableName: 'mikro_orm_migrations',
      transactional: true,
      allOrNothing: true,
      silent: true,
    },
    pool: { min: 0, max: poolMax, idleTimeoutMillis: 30_000 },
    // Every connection caps its statements (pg sends it as a startup parameter); shorter client
    // deadlines lower it per transaction (src/domain/db.ts).
    // With `role`, every connection runs as that role from its start (`-c role=…`): the service's normal
    // role, which lacks the rights governance keeps from it (migration 20261202000000).
    driverOptions: { statement_timeout: statementTimeoutMs, ...(role ? { options: `-c role=${role}` } : {}) },
    // The global EntityManager is never used: every call forks its own.
    allowGlobalContext: false,
    forceUtcTimezone: true,
    ensureDatabase: false,
    debug: false,
  };
}

/**
 * Applies pending migrations as the login user (the schema's owner), then opens the service's pool,
 * whose connections run as `role` (DB_ROLE; empty: the login user).
 */
export async function openDatabase(
  clientUrl: string,
  poolMax: number,
  statementTimeoutMs: number,
  role: string,
): Promise<MikroORM> {
  const owner = await MikroORM.init(ormOptions(clientUrl, 1, statementTimeoutMs));
  try {
    await owner.migrator.up();
  } finally {
    await owner.close(true);
  }
  return MikroORM.init(ormOptions(clientUrl, poolMax, statementTimeoutMs, role));
}
