/**
 * Shared test plumbing. test/run.ts starts one Temporal dev server and one PostgreSQL; each
 * test gets its own schema, task queue and workflow ids on them.
 */
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import type { ApplicationFailure } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DefaultLogger, NativeConnection, Runtime, type Worker } from '@temporalio/worker';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { workerLaunch } from '../src/dev/worker-launch';
import { createSluiceWorker } from '../src/worker';
import { destinationSchemaSql, grantSourceReadSql } from './roles';

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

/** The superuser URL the test itself sets up and checks with (the worker loads as test/roles.ts's roles). */
export function adminUrl(): string {
  return process.env.SLUICE_TEST_ADMIN_URL ?? requireEnv('DATABASE_URL');
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
  // The test itself sets up and checks as the admin; the worker reads and loads as the
  // least-privilege roles test/run.ts created (test/roles.ts), through the usual variables.
  const admin = adminUrl();
  if (process.env.SLUICE_TEST_LOADER_URL && process.env.SLUICE_TEST_SOURCE_URL) {
    process.env.DATABASE_URL = process.env.SLUICE_TEST_LOADER_URL;
    process.env.SOURCE_DATABASE_URL = process.env.SLUICE_TEST_SOURCE_URL;
  }
  const databaseUrl = requireEnv('DATABASE_URL');
  // Sources in tests live in the same server, in their own schema, behind their own variable.
  process.env.SOURCE_DATABASE_URL ??= databaseUrl;
  const schema = uniqueName(`t_${name}`);
  const sourceSchema = uniqueName(`src_${name}`);
  const taskQueue = uniqueName(`tq-${name}`);
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  const db = new pg.Pool({ connectionString: admin, max: 5 });
  await db.query(`create schema ${sourceSchema}; ${grantSourceReadSql(sourceSchema)}`);
  if (process.env.SLUICE_TEST_LOADER_URL) await db.query(destinationSchemaSql(schema));
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
        config: { temporalAddress: address, namespace: 'default', taskQueue, databaseUrl, maxActivities: 100 },
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

/**
 * With SLUICE_RECORD_HISTORIES=1 (`npm run record:histories`), writes the workflow's history to
 * test/histories/<scenario>.json for the replay tests. Name the scenario after the workflow
 * type and what it captures: backfill-partition-fails, pipeline-skips-downstream.
 *
 * Fixtures are history: one that exists is never rewritten (running workflows recorded it, and
 * today's code must still replay it), unless SLUICE_RECORD_OVERWRITE=1
 * (`npm run record:histories -- --overwrite`) says so explicitly.
 */
export async function saveHistory(handle: WorkflowHandle, scenario: string): Promise<void> {
  if (!process.env.SLUICE_RECORD_HISTORIES) return;
  const path = join(__dirname, 'histories', `${scenario}.json`);
  if (existsSync(path) && process.env.SLUICE_RECORD_OVERWRITE !== '1') return;
  const history = await handle.fetchHistory();
  // The workflow id is not part of a history, but replay needs it: child workflow ids derive from it.
  const fixture = { workflowId: handle.workflowId, history: JSON.parse(historyToJSON(history)) as unknown };
  await writeFile(path, JSON.stringify(fixture) + '\n');
}

/**
 * A real worker process (`src/worker.ts`), for tests that SIGKILL it mid-run. Resolves once it
 * polls the task queue.
 */
export async function spawnWorker(taskQueue: string, env: NodeJS.ProcessEnv = {}): Promise<ChildProcess> {
  // Started as `npm run worker` starts it (package.json), so tests run its loader and flags.
  const launch = workerLaunch();
  const child = spawn(process.execPath, launch.args, {
    env: { ...process.env, ...launch.env, SLUICE_TASK_QUEUE: taskQueue, SLUICE_SOURCES: join(__dirname, 'fixtures', 'sources.ts'), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  await new Promise<void>((resolveReady, reject) => {
    const onData = (d: Buffer) => {
      output += d.toString();
      if (output.includes('polling task queue')) resolveReady();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`worker exited with ${code}:\n${output}`)));
  });
  return child;
}

export function killHard(child: ChildProcess): Promise<void> {
  return new Promise((resolveExit) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolveExit();
    child.once('exit', () => resolveExit());
    child.kill('SIGKILL');
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A run that ended FAILED because parts of it failed: its failure (type, message) and the result
 * object that travels in the failure's details.
 */
export async function failedRun<T>(run: Promise<unknown>): Promise<{ type: string | undefined; message: string; nonRetryable: boolean; result: T }> {
  const err = await run.then(
    (value) => {
      throw new Error(`expected the run to fail, it completed with ${JSON.stringify(value)}`);
    },
    (e: unknown) => e,
  );
  if (!(err instanceof WorkflowFailedError)) throw err;
  const cause = err.cause as ApplicationFailure;
  return { type: cause.type ?? undefined, message: cause.message, nonRetryable: cause.nonRetryable === true, result: cause.details?.[0] as T };
}
