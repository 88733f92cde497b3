import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import type { BackfillResult } from '../src/workflows/backfill';
import { count, testStack, type TestStack } from './helpers';

describe('backfillWorkflow', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('backfill');
    await stack.db.query(`
      create table ${stack.sourceSchema}.orders (
        id bigint primary key, created_at timestamptz not null, amount numeric(12,2), note text);
      insert into ${stack.sourceSchema}.orders
        select i, timestamptz '2024-01-01 00:00:00+00' + (i * interval '37 minutes'), (i % 1000) / 10.0, 'order ' || i
        from generate_series(1, 3000) i;`);
  });
  after(() => stack.close());

  test('loads a 30-day range from PostgreSQL, one partition per day, exact copy of the source', async () => {
    const result = await stack.withWorker(() =>
      stack.client.workflow.execute('backfillWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `backfill-orders-${stack.schema}`,
        args: [
          {
            source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.orders` },
            resource: { name: 'orders', writeDisposition: 'append' },
            destination: { connection: 'DATABASE_URL', schema: stack.schema },
            partitionColumn: 'created_at',
            start: '2024-01-01',
            end: '2024-01-30',
            parallel: 4,
          },
        ],
      }),
    ) as BackfillResult;
    const expected = await count(stack.db, `${stack.sourceSchema}.orders`, `created_at < '2024-01-31'`);
    assert.equal(result.partitions, 30);
    assert.equal(result.succeeded, 30);
    assert.deepEqual(result.failed, []);
    assert.equal(result.rows, expected);
    const diff = await stack.db.query(`
      (select id, created_at, amount, note from ${stack.sourceSchema}.orders where created_at < '2024-01-31'
       except all select id, created_at, amount, note from ${stack.schema}.orders)
      union all
      (select id, created_at, amount, note from ${stack.schema}.orders
       except all select id, created_at, amount, note from ${stack.sourceSchema}.orders)`);
    assert.equal(diff.rowCount, 0, 'destination equals the source range exactly');
    const types = await stack.db.query(
      `select column_name, data_type, numeric_precision, numeric_scale from information_schema.columns
        where table_schema = $1 and table_name = 'orders' order by ordinal_position`,
      [stack.schema],
    );
    assert.deepEqual(
      types.rows.map((r) => `${r.column_name}:${r.data_type}`),
      ['id:bigint', 'created_at:timestamp with time zone', 'amount:numeric', 'note:text', '_sluice_load_id:text'],
    );
    assert.equal(types.rows[2].numeric_scale, 2, 'numeric(12,2) keeps its scale');
    const loads = await stack.db.query(`select status, count(*)::int as n from ${stack.schema}._sluice_loads group by status`);
    assert.deepEqual(loads.rows, [{ status: 'completed', n: 30 }]);
  });

  test('invalid input fails at once, non-retryably, naming the field', async () => {
    await stack.withWorker(async () => {
      const err = await stack.client.workflow
        .execute('backfillWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `backfill-bad-${stack.schema}`,
          args: [{ source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: 'x' }, resource: { name: 'x', writeDisposition: 'upsert' }, partitionColumn: 'd', start: '2024-01-01', end: '2024-01-02' }],
        })
        .catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${err}`);
      const cause = err.cause as Error & { type?: string; nonRetryable?: boolean };
      assert.equal(cause.type, 'InvalidInput');
      assert.equal(cause.nonRetryable, true);
      assert.match(cause.message, /resource\.writeDisposition/);
    });
  });
});
