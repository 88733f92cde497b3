/**
 * Shared test plumbing. test/run.ts starts one Temporal dev server and one PostgreSQL; each
 * test gets its own schema, task queue and workflow ids on them.
 */
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createSluiceWorker } from '../src/worker';

let runtimeInstalled = false;
function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  Runtime.install({ logger: new DefaultLogger('WARN') });
}

export function requireEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests through \`npm test\` (test/run.ts starts the servers)`);
  return value;
}

export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export interface TestStack {
  schema: string;
  sourceSchema: string;
  taskQueue: string;
  client: Client;
  db: pg.Pool;
  /** Runs an in-process worker on this test's task queue while `fn` runs. */
  withWorker<T>(fn: (worker: Worker) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export async function testStack(name: string): Promise<TestStack> {
  installQuietRuntime();
  const address = requireEnv('TEMPORAL_ADDRESS');
  const databaseUrl = requireEnv('DATABASE_URL');
  // Sources in tests live in the same server, in their own schema, behind their own variable.
  process.env.SOURCE_DATABASE_URL ??= databaseUrl;
  const schema = uniqueName(`t_${name}`);
  const sourceSchema = uniqueName(`src_${name}`);
  const taskQueue = uniqueName(`tq-${name}`);
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  const db = new pg.Pool({ connectionString: databaseUrl, max: 5 });
  await db.query(`create schema ${sourceSchema}`);
  return {
    schema,
    sourceSchema,
    taskQueue,
    client,
    db,
    async withWorker(fn) {
      const native = await NativeConnection.connect({ address });
      const { worker } = await createSluiceWorker({
        connection: native,
        config: { temporalAddress: address, namespace: 'default', taskQueue, databaseUrl },
      });
      try {
        return await worker.runUntil(() => fn(worker));
      } finally {
        await native.close();
      }
    },
    async close() {
      await db.end();
      await connection.close();
    },
  };
}

export async function count(db: pg.Pool, table: string, where = 'true'): Promise<number> {
  const r = await db.query<{ n: string }>(`select count(*) as n from ${table} where ${where}`);
  return Number(r.rows[0]!.n);
}
