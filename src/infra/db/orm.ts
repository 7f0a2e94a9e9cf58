import { Migrator } from '@mikro-orm/migrations';
import { MikroORM, type Options } from '@mikro-orm/postgresql';
import { Message } from '../../domain/message/message.entity.js';
import { Thread, ThreadParticipant } from '../../domain/thread/thread.entity.js';
import { migrationsList } from './migrations/index.js';

/** Every entity of the service. */
export const entities = [Thread, ThreadParticipant, Message];

/** MikroORM options for a database URL. */
export function ormOptions(clientUrl: string, poolMax: number, statementTimeoutMs: number): Options {
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
    driverOptions: { statement_timeout: statementTimeoutMs },
    // The global EntityManager is never used: every call forks its own.
    allowGlobalContext: false,
    forceUtcTimezone: true,
    ensureDatabase: false,
    debug: false,
  };
}

/** Connects and applies pending migrations. */
export async function openDatabase(clientUrl: string, poolMax: number, statementTimeoutMs: number): Promise<MikroORM> {
  const orm = await MikroORM.init(ormOptions(clientUrl, poolMax, statementTimeoutMs));
  await orm.migrator.up();
  return orm;
}
