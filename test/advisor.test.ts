import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { z } from 'zod';
import { inspectTable } from '../src/advisor/inspect';
import { recommend, startCommand, timestampRole, type AdviceOptions, type Recommendation, type TableFacts } from '../src/advisor/recommend';
import { BackfillInput, CdcInput, FullRefreshInput, IncrementalInput } from '../src/inputs';
import type { AdvisedWorkflow } from '../src/advisor/recommend';
import type { FullRefreshResult } from '../src/workflows/full-refresh';
import { count, requireEnv, testStack, type TestStack } from './helpers';

const SCHEMAS: Partial<Record<AdvisedWorkflow, z.ZodType>> = {
  cdcWorkflow: CdcInput,
  fullRefreshWorkflow: FullRefreshInput,
  incrementalWorkflow: IncrementalInput,
  backfillWorkflow: BackfillInput,
};

/** Takes the JSON back out of a printed `temporal workflow start ... --input '...'` command, as a shell would. */
function inputOfCommand(command: string): unknown {
  const match = /--input '((?:[^']|'\\'')*)'$/.exec(command);
  assert.ok(match, `no --input '...' at the end of: ${command}`);
  return JSON.parse(match[1]!.replace(/'\\''/g, "'"));
}

/** The printed command must start a workflow its schema accepts, with the input the advice carries. */
function assertRunnable(advice: Recommendation): void {
  assert.match(advice.command, new RegExp(`^temporal workflow start --type ${advice.workflowType} --task-queue \\S+ --workflow-id \\S+ --input '`));
  const input = inputOfCommand(advice.command);
  assert.deepEqual(input, advice.input);
  const schema = SCHEMAS[advice.workflowType]!;
  const parsed = schema.safeParse(input);
  assert.ok(parsed.success, `${advice.workflowType} input is invalid: ${parsed.success ? '' : JSON.stringify(parsed.error.issues)}`);
}

const options: AdviceOptions = { connection: 'SOURCE_DATABASE_URL', today: '2024-06-30' };
const facts = (over: Partial<TableFacts>): TableFacts => ({
  schema: 'public',
  table: 'orders',
  rows: 5_000_000,
  rowsFrom: 'estimate',
  primaryKey: ['id'],
  timestampColumns: [],
  walLevel: 'replica',
  ...over,
});
const updatedAt = { name: 'updated_at', type: 'timestamp with time zone', role: 'updated', leadingIndex: 'orders_updated_at_idx' } as const;
const createdAt = {
  name: 'created_at',
  type: 'timestamp with time zone',
  role: 'created',
  leadingIndex: 'orders_created_at_idx',
  minDay: '2021-03-01',
  maxDay: '2024-06-29',
} as const;

describe('load-strategy decision (pure)', () => {
  test('column names map to timestamp roles', () => {
    assert.equal(timestampRole('updated_at'), 'updated');
    assert.equal(timestampRole('last_modified'), 'updated');
    assert.equal(timestampRole('created_at'), 'created');
    assert.equal(timestampRole('inserted_on'), 'created');
    assert.equal(timestampRole('shipped_at'), 'other');
  });

  test('a small table gets a full refresh', () => {
    const advice = recommend(facts({ rows: 42_000, rowsFrom: 'count', timestampColumns: [updatedAt] }), options);
    assert.equal(advice.pattern, 'full-refresh');
    assert.equal(advice.workflowType, 'fullRefreshWorkflow');
    assert.match(advice.reasons[0]!, /small \(42,000 rows, under 100,000\)/);
    assertRunnable(advice);
  });

  test('a large table with updated_at gets a timestamp incremental that merges on the primary key', () => {
    const advice = recommend(facts({ timestampColumns: [createdAt, updatedAt] }), options);
    assert.equal(advice.pattern, 'incremental');
    assert.equal(advice.workflowType, 'incrementalWorkflow');
    assert.deepEqual(advice.input.cursor, { column: 'updated_at' });
    assert.deepEqual(advice.input.resource, { name: 'orders', writeDisposition: 'merge', primaryKey: ['id'] });
    assert.equal(advice.cdc.available, false);
    assert.match(advice.cdc.why, /wal_level is replica/);
    assert.ok(!advice.notes.some((n) => /create index/.test(n)), 'updated_at is indexed');
    assertRunnable(advice);
  });

  test('an unindexed cursor and a missing primary key are called out', () => {
    const advice = recommend(facts({ primaryKey: [], timestampColumns: [{ ...updatedAt, leadingIndex: null }] }), options);
    assert.equal(advice.pattern, 'incremental');
    assert.deepEqual(advice.input.resource, { name: 'orders', writeDisposition: 'append' });
    assert.ok(advice.notes.some((n) => n.includes('create index on public.orders (updated_at)')));
    assert.ok(advice.notes.some((n) => n.startsWith('no primary key')));
    assertRunnable(advice);
  });

  test('CDC-ready large tables get cdcWorkflow, with the exact command', () => {
    const advice = recommend(facts({ walLevel: 'logical', timestampColumns: [updatedAt] }), options);
    assert.equal(advice.cdc.available, true);
    assert.equal(advice.workflowType, 'cdcWorkflow');
    assert.match(advice.reasons[0]!, /wal_level is logical and the table has a primary key \(id\)/);
    assert.deepEqual(advice.input.source, { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['public.orders'] });
    assertRunnable(advice);
  });

  test('a large table without timestamps gets a full refresh and the way to do better', () => {
    const advice = recommend(facts({}), options);
    assert.equal(advice.pattern, 'full-refresh');
    assert.match(advice.reasons[0]!, /no timestamp column/);
    assert.ok(advice.notes.some((n) => /add an updated_at column/.test(n)));
    assertRunnable(advice);
  });

  test('a one-time historical load is a parallel backfill on created_at over the data range', () => {
    const advice = recommend(facts({ timestampColumns: [updatedAt, createdAt] }), { ...options, historical: true });
    assert.equal(advice.pattern, 'backfill');
    assert.equal(advice.workflowType, 'backfillWorkflow');
    assert.equal(advice.input.partitionColumn, 'created_at');
    assert.equal(advice.input.start, '2021-03-01');
    assert.equal(advice.input.end, '2024-06-29');
    assert.equal(advice.input.granularity, 'month', '5M rows over 3 years: ~120K rows a month');
    assertRunnable(advice);
    const noRange = recommend(facts({ timestampColumns: [{ ...createdAt, minDay: undefined, maxDay: undefined }] }), { ...options, historical: true });
    assert.equal(noRange.input.start, '2023-07-01');
    assert.equal(noRange.input.end, '2024-06-30');
    assert.ok(noRange.notes.some((n) => n.includes('adjust "start" and "end"')));
    assertRunnable(noRange);
  });

  test('a critical table gets the swap, even when large', () => {
    const advice = recommend(facts({ timestampColumns: [updatedAt] }), { ...options, critical: true, destinationSchema: 'raw' });
    assert.equal(advice.pattern, 'swap');
    assert.equal(advice.workflowType, 'fullRefreshWorkflow');
    assert.deepEqual(advice.input.destination, { connection: 'DATABASE_URL', schema: 'raw' });
    assert.ok(advice.notes.some((n) => n.includes('incrementalWorkflow on updated_at')));
    assertRunnable(advice);
  });

  test('the command survives quotes in names', () => {
    const command = startCommand('fullRefreshWorkflow', 'sluice', "full-refresh-public.o'brien", { source: { table: "public.o'brien" } });
    assert.deepEqual(inputOfCommand(command), { source: { table: "public.o'brien" } });
    assert.match(command, /--workflow-id 'full-refresh-public\.o'\\''brien'/);
  });
});

describe('load-strategy advisor on PostgreSQL', () => {
  let stack: TestStack;
  let client: pg.Client;
  const threshold = 1_000; // "large" means 1,000 rows here, so no test inserts millions
  before(async () => {
    stack = await testStack('advisor');
    const s = stack.sourceSchema;
    await stack.db.query(`
      create table ${s}.small_orders (id bigint primary key, amount numeric, updated_at timestamptz not null);
      insert into ${s}.small_orders select i, i, now() from generate_series(1, 500) i;
      create table ${s}.events (id bigint primary key, kind text, created_at timestamptz not null, updated_at timestamptz not null);
      insert into ${s}.events
        select i, 'k' || (i % 7), timestamptz '2023-01-01 00:00:00+00' + i * interval '1 hour', timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
        from generate_series(1, 5000) i;
      create index events_updated_at_idx on ${s}.events (updated_at);
      create index events_created_at_idx on ${s}.events (created_at);
      analyze ${s}.events;
      create table ${s}.no_ts (code text, payload text);
      insert into ${s}.no_ts select 'c' || i, repeat('x', 20) from generate_series(1, 5000) i;
      analyze ${s}.no_ts;
      create table ${s}.unanalyzed (id bigint primary key, modified_on date) with (autovacuum_enabled = false);
      insert into ${s}.unanalyzed select i, date '2024-01-01' + (i % 100) from generate_series(1, 3000) i;`);
    client = new pg.Client({ connectionString: requireEnv('SOURCE_DATABASE_URL') });
    await client.connect();
  });
  after(async () => {
    await client.end();
    await stack.close();
  });

  test('facts come from the catalog: size, primary key, timestamp columns and their indexes, wal_level', async () => {
    const events = await inspectTable(client, `${stack.sourceSchema}.events`, { smallTableRows: threshold });
    assert.equal(events.rowsFrom, 'estimate', 'analyzed and large: pg_class.reltuples');
    assert.equal(events.rows, 5000);
    assert.deepEqual(events.primaryKey, ['id']);
    assert.deepEqual(
      events.timestampColumns.map((c) => [c.name, c.type, c.role, c.leadingIndex, c.minDay, c.maxDay]),
      [
        ['created_at', 'timestamp with time zone', 'created', 'events_created_at_idx', '2023-01-01', '2023-07-28'],
        ['updated_at', 'timestamp with time zone', 'updated', 'events_updated_at_idx', '2024-01-01', '2024-01-04'],
      ],
    );
    assert.equal(events.walLevel, 'logical', 'test/run.ts starts PostgreSQL with wal_level=logical');

    const unanalyzed = await inspectTable(client, `${stack.sourceSchema}.unanalyzed`, { smallTableRows: threshold });
    assert.equal(unanalyzed.rowsFrom, 'count', 'never analyzed: counted');
    assert.equal(unanalyzed.rows, 3000);
    assert.deepEqual(unanalyzed.timestampColumns.map((c) => [c.name, c.role, c.leadingIndex]), [['modified_on', 'updated', null]]);

    await assert.rejects(inspectTable(client, `${stack.sourceSchema}.nope`), /does not exist/);
  });

  test('a small table: full refresh, and the printed input really runs', async () => {
    const facts = await inspectTable(client, `${stack.sourceSchema}.small_orders`, { smallTableRows: threshold });
    assert.equal(facts.rowsFrom, 'count');
    assert.equal(facts.rows, 500);
    const advice = recommend(facts, { ...options, smallTableRows: threshold, destinationSchema: stack.schema });
    assert.equal(advice.workflowType, 'fullRefreshWorkflow');
    assertRunnable(advice);
    const result = (await stack.withWorker(() =>
      stack.client.workflow.execute(advice.workflowType, {
        taskQueue: stack.taskQueue,
        workflowId: `${advice.workflowId}-${stack.schema}`,
        args: [inputOfCommand(advice.command)],
      }),
    )) as FullRefreshResult;
    assert.equal(result.rows, 500);
    assert.equal(await count(stack.db, `${stack.schema}.small_orders`), 500);
  });

  test('a large table with updated_at on a logical-replication server: cdcWorkflow', async () => {
    const facts = await inspectTable(client, `${stack.sourceSchema}.events`, { smallTableRows: threshold });
    const advice = recommend(facts, { ...options, smallTableRows: threshold });
    assert.equal(advice.workflowType, 'cdcWorkflow');
    assert.equal(advice.cdc.available, true);
    assertRunnable(advice);
    const historical = recommend(facts, { ...options, smallTableRows: threshold, historical: true });
    assert.equal(historical.workflowType, 'backfillWorkflow');
    assert.deepEqual([historical.input.partitionColumn, historical.input.start, historical.input.end], ['created_at', '2023-01-01', '2023-07-28']);
    assertRunnable(historical);
  });

  test('a large table without timestamps: full refresh, with what would allow an incremental', async () => {
    const facts = await inspectTable(client, `${stack.sourceSchema}.no_ts`, { smallTableRows: threshold });
    assert.deepEqual(facts.primaryKey, []);
    assert.deepEqual(facts.timestampColumns, []);
    const advice = recommend(facts, { ...options, smallTableRows: threshold });
    assert.equal(advice.workflowType, 'fullRefreshWorkflow');
    assert.match(advice.reasons[0]!, /no timestamp column/);
    assert.equal(advice.cdc.available, false);
    assertRunnable(advice);
  });

  test('npm run advise prints the facts, the pattern, the reason and a command that parses', async () => {
    const run = promisify(execFile);
    const { stdout } = await run(
      process.execPath,
      ['--import', 'tsx', join(__dirname, '..', 'src', 'advisor', 'cli.ts'), '--source', 'SOURCE_DATABASE_URL', '--table', `${stack.sourceSchema}.events`, '--small-table-rows', String(threshold)],
      { env: { ...process.env, SOURCE_DATABASE_URL: requireEnv('SOURCE_DATABASE_URL') } },
    );
    assert.match(stdout, /size: +~5,000 rows \(pg_class estimate\)/);
    assert.match(stdout, /primary key: id/);
    assert.match(stdout, /updated_at timestamp with time zone \[updated, leads index events_updated_at_idx\]/);
    assert.match(stdout, /Recommended: CDC events -> cdcWorkflow/);
    const command = stdout.split('\n').map((l) => l.trim()).find((l) => l.startsWith('temporal workflow start'));
    assert.ok(command, stdout);
    assert.match(command, /--task-queue sluice /);
    const parsed = CdcInput.safeParse(inputOfCommand(command));
    assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));

    const bad = await run(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'src', 'advisor', 'cli.ts'), '--source', 'postgres://u:p@h/db', '--table', 'public.x']).catch(
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal((bad as { code: number }).code, 2);
    assert.match((bad as { stderr: string }).stderr, /--source takes the NAME of an environment variable/);
  });
});
