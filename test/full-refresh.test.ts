import assert from 'node:assert/strict';
import { PermanentError } from '../src/errors';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import pg from 'pg';
import type { Progress } from '../src/inputs';
import { registerSource } from '../src/sources/registered';
import type { FullRefreshResult } from '../src/workflows/full-refresh';
import { adminUrl, count, saveHistory, testStack, type TestStack } from './helpers';

const OLD_ROWS = 200_000;
const NEW_ROWS = 210_000;

/**
 * Counts the table and a view on it in a loop on its own connection, as a dashboard would,
 * until stopped: every answer and every error is kept.
 */
function startReader(table: string, view: string) {
  const counts = new Map<number, number>();
  const errors: string[] = [];
  let queries = 0;
  let slowestMs = 0;
  let stopped = false;
  const client = new pg.Client({ connectionString: adminUrl() });
  const loop = (async () => {
    await client.connect();
    try {
      while (!stopped) {
        for (const relation of [table, view]) {
          const t0 = Date.now();
          try {
            const r = await client.query<{ n: string }>(`select count(*) as n from ${relation}`);
            const n = Number(r.rows[0]!.n);
            counts.set(n, (counts.get(n) ?? 0) + 1);
          } catch (err) {
            errors.push(`${relation}: ${(err as Error).message}`);
          }
          slowestMs = Math.max(slowestMs, Date.now() - t0);
          queries++;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      await client.end();
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return { counts, errors, queries, slowestMs };
    },
  };
}

/** Temp tables live in pg_temp_N schemas; none may be left behind by a failed load. */
async function stagingTables(db: pg.Pool): Promise<number> {
  const r = await db.query<{ n: string }>(`select count(*) as n from pg_class where relname = '_sluice_stage'`);
  return Number(r.rows[0]!.n);
}

describe('fullRefreshWorkflow', () => {
  let stack: TestStack;
  let source: string;
  let target: string;
  const role = `sluice_reader_${randomBytes(4).toString('hex')}`;
  const input = () => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: source },
    resource: { name: 'orders', primaryKey: ['id'] },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
  });
  const liveLoadIds = async () =>
    (await stack.db.query<{ id: string }>(`select distinct _sluice_load_id as id from ${target}`)).rows.map((r) => r.id);

  before(async () => {
    stack = await testStack('full_refresh');
    source = `${stack.sourceSchema}.orders`;
    target = `${stack.schema}.orders`;
    await stack.db.query(`
      create table ${source} (id bigint primary key, customer text not null, amount numeric(12,2), updated_at timestamptz not null);
      insert into ${source}
        select i, 'customer ' || (i % 997), (i % 1000) / 10.0, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
        from generate_series(1, ${OLD_ROWS}) i;
      create role ${role} nologin;`);
  });
  after(async () => {
    await stack.db.query(`drop owned by ${role}; drop role if exists ${role}`).catch(() => undefined);
    await stack.close();
  });

  test('a refresh swaps in the new rows: concurrent readers see the old count or the new one, views and grants survive', async () => {
    const workflowId = `full-refresh-orders-${stack.schema}`;
    await stack.withWorker(async () => {
      // First run creates the table.
      const first = (await stack.client.workflow.execute('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId,
        args: [input()],
      })) as FullRefreshResult;
      assert.equal(first.rows, OLD_ROWS);
      assert.equal(first.table, `${stack.schema}.orders`);
      assert.equal(await count(stack.db, target), OLD_ROWS);

      await stack.db.query(`
        create view ${stack.schema}.big_orders as select id, customer, amount from ${target} where amount >= 50;
        grant usage on schema ${stack.schema} to ${role};
        grant select on ${target} to ${role};
        grant select on ${stack.schema}.big_orders to ${role};
        insert into ${source}
          select i, 'customer ' || (i % 997), 99.99, timestamptz '2024-06-01 00:00:00+00' + i * interval '1 minute'
          from generate_series(${OLD_ROWS + 1}, ${NEW_ROWS}) i;
        update ${source} set amount = 0 where id <= 1000;`);
      const oldView = await count(stack.db, `${stack.schema}.big_orders`);

      const reader = startReader(target, `${stack.schema}.big_orders`);
      await new Promise((r) => setTimeout(r, 300)); // the reader is counting before the refresh starts
      // Second run under the same workflow id: a new run is a new refresh, not a no-op.
      const handle = await stack.client.workflow.start('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId,
        args: [input()],
      });
      const second = (await handle.result()) as FullRefreshResult;
      await new Promise((r) => setTimeout(r, 300));
      const seen = await reader.stop();

      assert.equal(second.rows, NEW_ROWS);
      assert.deepEqual(seen.errors, [], 'readers never get an error');
      const newView = await count(stack.db, `${stack.schema}.big_orders`);
      const allowed = new Set([OLD_ROWS, NEW_ROWS, oldView, newView]);
      for (const n of seen.counts.keys()) assert.ok(allowed.has(n), `a reader saw ${n} rows: neither the old nor the new count`);
      assert.ok(!seen.counts.has(0), 'a reader never sees an empty table');
      assert.ok(seen.counts.get(OLD_ROWS), 'the reader ran before the swap');
      assert.ok(seen.counts.get(NEW_ROWS), 'the reader ran after the swap');
      assert.ok(seen.queries > 20, `the reader kept reading (${seen.queries} queries, slowest ${seen.slowestMs} ms)`);
      console.log(`reader: ${seen.queries} counts, ${JSON.stringify([...seen.counts])}, slowest ${seen.slowestMs} ms`);

      assert.equal(await count(stack.db, target), NEW_ROWS);
      assert.equal(newView, await count(stack.db, source, 'amount >= 50'), 'the view shows the new rows');
      assert.notEqual(newView, oldView);
      assert.deepEqual(await liveLoadIds(), [second.loadId], 'every live row comes from the new load');
      const diff = await stack.db.query(`
        (select id, customer, amount, updated_at from ${source} except all select id, customer, amount, updated_at from ${target})
        union all
        (select id, customer, amount, updated_at from ${target} except all select id, customer, amount, updated_at from ${source})`);
      assert.equal(diff.rowCount, 0, 'the live table equals the source exactly');
      const grants = await stack.db.query<{ t: boolean; v: boolean }>(
        `select has_table_privilege($1, $2, 'select') as t, has_table_privilege($1, $3, 'select') as v`,
        [role, target, `${stack.schema}.big_orders`],
      );
      assert.deepEqual(grants.rows[0], { t: true, v: true }, 'grants on the table and the view survive');
      assert.equal(await stagingTables(stack.db), 0);

      const progress = await handle.query<Progress>('progress');
      assert.deepEqual(
        { done: progress.done, failed: progress.failed, inFlight: progress.inFlight, total: progress.total, rows: progress.rows },
        { done: 1, failed: 0, inFlight: 0, total: 1, rows: NEW_ROWS },
      );
      const details = await currentDetails(handle);
      assert.match(details, /completed/);
      assert.match(details, /210,000 rows swapped in/);
      await saveHistory(handle, 'full-refresh-swap');
    });
  });

  /**
   * Runs a refresh that must fail before the swap while a reader counts the live table, and
   * checks that nothing changed: same rows, same load id, no staging table, no reader error.
   */
  async function refreshFailsBeforeSwap(sourceInput: Record<string, unknown>, error: RegExp, scenario?: string) {
    const before = await liveLoadIds();
    const liveCount = await count(stack.db, target);
    assert.ok(liveCount > 0);
    await stack.withWorker(async () => {
      const reader = startReader(target, target);
      const started = Date.now();
      const handle = await stack.client.workflow.start('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `full-refresh-fails-${String(sourceInput.kind)}-${stack.schema}`,
        args: [{ ...input(), source: sourceInput }],
      });
      const err = await handle.result().catch((e: unknown) => e);
      const seen = await reader.stop();
      assert.ok(err instanceof WorkflowFailedError, `expected the workflow to fail, got ${String(err)}`);
      assert.match(rootCause(err), error);
      assert.ok(Date.now() - started < 30_000, 'a permanent source error fails at once, not after retries');
      assert.deepEqual(seen.errors, [], 'readers never get an error');
      assert.deepEqual([...seen.counts.keys()], [liveCount], 'readers only ever see the old rows');
      assert.equal(await count(stack.db, target), liveCount, 'the live table keeps its rows');
      assert.deepEqual(await liveLoadIds(), before, 'the live table keeps the rows of the last good refresh');
      assert.equal(await stagingTables(stack.db), 0, 'no staging table is left behind');
      const progress = await handle.query<Progress>('progress');
      assert.equal(progress.failed, 1);
      assert.match(await currentDetails(handle), /the live table is unchanged/);
      const load = await stack.db.query(`select status from ${stack.schema}._sluice_loads where workflow_id = $1`, [handle.workflowId]);
      assert.deepEqual(load.rows, [{ status: 'failed' }], 'the failed refresh is recorded in _sluice_loads');
      if (scenario) await saveHistory(handle, scenario);
    });
  }

  test('a refresh whose source query errors midway leaves the live table untouched and no staging table', async () => {
    await refreshFailsBeforeSwap(
      {
        kind: 'postgres',
        connection: 'SOURCE_DATABASE_URL',
        // Fails at row 150,000 of 210,000, after most rows were staged.
        query: `select id, customer, amount, updated_at, 1 / (case when id = 150000 then 0 else 1 end) as ok from ${source}`,
      },
      /division by zero/,
      'full-refresh-fails-before-swap',
    );
  });

  test('a refresh whose registered source throws midway leaves the live table untouched and no staging table', async () => {
    registerSource({
      name: 'fr_test',
      resources: [
        {
          name: 'breaks_midway',
          async *extract() {
            for (let i = 1; i <= 30_000; i++) yield { id: i, customer: `c${i}`, amount: 1 };
            // A page that will not heal: without PermanentError the refresh would retry it without end, as any unknown error.
            throw new PermanentError('page 31 of the upstream API is malformed');
          },
        },
      ],
    });
    await refreshFailsBeforeSwap({ kind: 'registered', name: 'fr_test.breaks_midway' }, /page 31 of the upstream API is malformed/);
  });

  test(
    'a refresh of a source that became empty empties the live table',
    // loadResource returns before the write disposition when a load has no rows and the table
    // exists, so "replace" with zero rows keeps the old rows (issue 6 note).
    async () => {
      await stack.db.query(`create table ${stack.sourceSchema}.empty_orders (like ${source})`);
      await stack.withWorker(() =>
        stack.client.workflow.execute('fullRefreshWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `full-refresh-empty-${stack.schema}`,
          args: [{ ...input(), source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.empty_orders` } }],
        }),
      );
      assert.equal(await count(stack.db, target), 0);
    },
  );

  test(
    'a REPEATABLE READ reader whose snapshot predates the swap still sees the old rows',
    // TRUNCATE is not MVCC-safe: a transaction whose snapshot was taken before the swap sees the
    // table empty afterwards (pg_dump runs in such a transaction). DELETE instead of TRUNCATE in
    // the loader's replace fixes it (issue 6 note).
    async () => {
      const small = {
        ...input(),
        source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', query: `select * from ${source} where id <= 1000` },
        resource: { name: 'orders_rr' },
      };
      const reader = new pg.Client({ connectionString: adminUrl() });
      await stack.withWorker(async () => {
        const run = (n: number) =>
          stack.client.workflow.execute('fullRefreshWorkflow', { taskQueue: stack.taskQueue, workflowId: `full-refresh-rr${n}-${stack.schema}`, args: [small] });
        await run(1);
        await reader.connect();
        await reader.query('begin isolation level repeatable read');
        await reader.query('select 1 from pg_class limit 1'); // the snapshot is taken here, before the swap
        await run(2);
      });
      try {
        const seen = await reader.query<{ n: string }>(`select count(*) as n from ${stack.schema}.orders_rr`);
        assert.equal(Number(seen.rows[0]!.n), 1000);
      } finally {
        await reader.query('commit').catch(() => undefined);
        await reader.end();
      }
    },
  );

  test('a missing source table fails at once, non-retryably, with a hint', async () => {
    await stack.withWorker(async () => {
      const started = Date.now();
      const err = await stack.client.workflow
        .execute('fullRefreshWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `full-refresh-missing-${stack.schema}`,
          args: [{ ...input(), source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.nope` } }],
        })
        .catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError);
      assert.match(rootCause(err), /nope.*does not exist.*hint: check source\.table/);
      assert.ok(Date.now() - started < 20_000);
    });
  });

  test('invalid input fails at once naming the field', async () => {
    await stack.withWorker(async () => {
      const err = await stack.client.workflow
        .execute('fullRefreshWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `full-refresh-bad-${stack.schema}`,
          args: [{ source: { kind: 'files', path: '/tmp', format: 'csv' }, resource: { name: 'x' } }],
        })
        .catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError);
      const cause = err.cause as Error & { type?: string; nonRetryable?: boolean };
      assert.equal(cause.type, 'InvalidInput');
      assert.equal(cause.nonRetryable, true);
      assert.match(cause.message, /source\.kind/);
    });
  });
});

function rootCause(err: unknown): string {
  let current = err as { message?: string; cause?: unknown } | undefined;
  while (current?.cause) current = current.cause as typeof current;
  return current?.message ?? String(err);
}

/** What the Temporal UI shows as the workflow's current details. */
async function currentDetails(handle: WorkflowHandle): Promise<string> {
  const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  return metadata.currentDetails ?? '';
}
