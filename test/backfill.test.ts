import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import type { Progress } from '../src/inputs';
import { registerSource } from '../src/sources/registered';
import type { BackfillResult } from '../src/workflows/backfill';
import { probe, testSource } from './fixtures/sources';
import { count, killHard, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

describe('backfillWorkflow', () => {
  let stack: TestStack;
  before(async () => {
    registerSource(testSource);
    stack = await testStack('backfill');
    await stack.db.query(`
      create table ${stack.sourceSchema}.orders (
        id bigint primary key, created_at timestamptz not null, amount numeric(12,2), note text);
      insert into ${stack.sourceSchema}.orders
        select i, timestamptz '2024-01-01 00:00:00+00' + (i * interval '37 minutes'), (i % 1000) / 10.0, 'order ' || i
        from generate_series(1, 3000) i;
      insert into ${stack.sourceSchema}.orders values
        (100001, '2023-12-31 23:59:59.999999+00', 1, 'just before the start'),
        (100002, '2024-01-01 00:00:00+00', 1, 'the first instant'),
        (100003, '2024-01-30 23:59:59.999999+00', 1, 'the last microsecond of the end date'),
        (100004, '2024-01-31 00:00:00+00', 1, 'the first instant after the end');`);
  });
  after(() => stack.close());

  const ordersInput = (extra: Record<string, unknown> = {}) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.orders` },
    resource: { name: 'orders', writeDisposition: 'append' },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
    partitionColumn: 'created_at',
    start: '2024-01-01',
    end: '2024-01-30',
    parallel: 4,
    ...extra,
  });

  async function sameRows(table: string, where: string) {
    const diff = await stack.db.query(`
      (select id, created_at, amount, note from ${stack.sourceSchema}.orders where ${where}
       except all select id, created_at, amount, note from ${stack.schema}.${table})
      union all
      (select id, created_at, amount, note from ${stack.schema}.${table}
       except all select id, created_at, amount, note from ${stack.sourceSchema}.orders where ${where})`);
    return diff.rowCount === 0;
  }

  test('loads a 30-day range from PostgreSQL, one partition per day: exact copy, boundaries included and excluded', async () => {
    const handle = await stack.client.workflow.start('backfillWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `backfill-orders-${stack.schema}`,
      args: [ordersInput()],
    });
    const result = (await stack.withWorker(() => handle.result())) as BackfillResult;
    const where = `created_at >= '2024-01-01' and created_at < '2024-01-31'`;
    assert.equal(result.partitions, 30);
    assert.equal(result.succeeded, 30);
    assert.deepEqual(result.failed, []);
    assert.equal(result.rows, await count(stack.db, `${stack.sourceSchema}.orders`, where));
    assert.ok(await sameRows('orders', where), 'destination equals the source range exactly');
    const edges = await stack.db.query(`select id::int from ${stack.schema}.orders where id > 100000 order by id`);
    assert.deepEqual(edges.rows.map((r) => r.id), [100002, 100003], 'midnight and the last microsecond in, the instants outside out');
    const types = await stack.db.query(
      `select column_name, data_type, numeric_scale from information_schema.columns where table_schema = $1 and table_name = 'orders' order by ordinal_position`,
      [stack.schema],
    );
    assert.deepEqual(types.rows.map((r) => `${r.column_name}:${r.data_type}`), [
      'id:bigint', 'created_at:timestamp with time zone', 'amount:numeric', 'note:text', '_sluice_load_id:text',
    ]);
    assert.equal(types.rows[2].numeric_scale, 2, 'numeric(12,2) keeps its scale');
    const loads = await stack.db.query(`select status, count(*)::int as n from ${stack.schema}._sluice_loads group by status`);
    assert.deepEqual(loads.rows, [{ status: 'completed', n: 30 }]);
    const listed = await waitFor('the run in the visibility store', async () => {
      for await (const w of stack.client.workflow.list({ query: `SluiceResource = 'orders' AND SluiceStatus = 'completed' AND WorkflowId = '${handle.workflowId}'` })) return w;
      return undefined;
    });
    assert.equal(listed.workflowId, handle.workflowId, 'searchable by resource and status');
    await saveHistory(handle, 'backfill-postgres-30-days');

    // Re-running the same range (a new workflow) replaces each partition: no duplicates.
    await stack.withWorker(() =>
      stack.client.workflow.execute('backfillWorkflow', { taskQueue: stack.taskQueue, workflowId: `backfill-orders-again-${stack.schema}`, args: [ordersInput()] }),
    );
    assert.ok(await sameRows('orders', where), 'a second run leaves exactly one copy of each row');
  });

  test('90 daily partitions at parallel 4: never more than 4 in flight, continue-as-new on a long history', async () => {
    probe.max = 0;
    probe.started.length = 0;
    const handle = await stack.client.workflow.start('backfillWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `backfill-probe-${stack.schema}`,
      args: [{
        source: { kind: 'registered', name: 'test.probe', options: { delayMs: 40, perHour: 1 } },
        resource: { name: 'probe', writeDisposition: 'merge', primaryKey: ['id'] },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        partitionColumn: 'at',
        start: '2024-01-01',
        end: '2024-03-30',
        parallel: 4,
      }],
    });
    const result = (await stack.withWorker(() => handle.result())) as BackfillResult;
    assert.equal(result.partitions, 90);
    assert.equal(result.succeeded, 90);
    assert.equal(result.rows, 90 * 24);
    assert.equal(probe.max, 4, 'the window filled up to, and never beyond, parallel');
    assert.equal(new Set(probe.started).size, 90);
    assert.equal(await count(stack.db, `${stack.schema}.probe`), 90 * 24);
    const description = await handle.describe();
    assert.notEqual(description.runId, handle.firstExecutionRunId, 'the backfill continued as new at least once');
    await saveHistory(handle, 'backfill-continued-as-new');
  });

  test('a partition that fails for good is reported; a transient failure is retried; the rest complete', async () => {
    const handle = await stack.client.workflow.start('backfillWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `backfill-flaky-${stack.schema}`,
      args: [{
        source: { kind: 'registered', name: 'test.flaky', options: { brokenPartitions: ['2024-01-03'], transientPartitions: ['2024-01-05'], run: stack.schema } },
        resource: { name: 'flaky', writeDisposition: 'append' },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        partitionColumn: 'at',
        start: '2024-01-01',
        end: '2024-01-07',
        parallel: 3,
      }],
    });
    const result = (await stack.withWorker(() => handle.result())) as BackfillResult;
    assert.equal(result.succeeded, 6);
    assert.equal(result.failed.length, 1);
    assert.equal(result.failed[0]!.partition, '2024-01-03');
    assert.match(result.failed[0]!.error, /corrupt at the source/);
    assert.equal(result.rows, 6 * 24);
    const history = await handle.fetchHistory();
    const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
    assert.ok(attempts.every((a) => a === 1 || a === 2), 'the permanent failure was not retried; the transient one once');
    const failedLoad = await stack.db.query(`select status, error from ${stack.schema}._sluice_loads where resource = 'flaky' and partition = '2024-01-03'`);
    assert.equal(failedLoad.rows[0].status, 'failed');
    await saveHistory(handle, 'backfill-partition-fails');

    // Re-run only the failed partition once the source is fixed.
    const rerun = (await stack.withWorker(() =>
      stack.client.workflow.execute('backfillWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `backfill-flaky-rerun-${stack.schema}`,
        args: [{
          source: { kind: 'registered', name: 'test.flaky', options: { run: stack.schema } },
          resource: { name: 'flaky', writeDisposition: 'append' },
          destination: { connection: 'DATABASE_URL', schema: stack.schema },
          partitionColumn: 'at', start: '2024-01-01', end: '2024-01-07',
          onlyPartitions: result.failed.map((f) => f.partition),
        }],
      }),
    )) as BackfillResult;
    assert.deepEqual([rerun.partitions, rerun.succeeded, rerun.rows], [1, 1, 24]);
    assert.equal(await count(stack.db, `${stack.schema}.flaky`), 7 * 24);
  });

  test('pause, resume and a parallelism change while running', async () => {
    probe.max = 0;
    let details = '';
    const handle = await stack.client.workflow.start('backfillWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `backfill-steer-${stack.schema}`,
      args: [{
        source: { kind: 'registered', name: 'test.probe', options: { delayMs: 150 } },
        resource: { name: 'steer', writeDisposition: 'merge', primaryKey: ['id'] },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        partitionColumn: 'at', start: '2024-01-01', end: '2024-01-20', parallel: 1,
      }],
    });
    const result = (await stack.withWorker(async () => {
      await waitFor('two partitions done', async () => ((await handle.query<Progress>('progress')).done >= 2));
      await handle.signal('pause');
      await waitFor('in-flight work to drain', async () => (await handle.query<Progress>('progress')).inFlight === 0);
      const pausedAt = (await handle.query<Progress>('progress')).done;
      await new Promise((r) => setTimeout(r, 1_000));
      const stillPaused = await handle.query<Progress>('progress');
      assert.equal(stillPaused.done, pausedAt, 'nothing is scheduled while paused');
      assert.equal(stillPaused.paused, true);
      assert.equal(probe.max, 1);
      await handle.signal('setParallel', 4);
      await handle.signal('resume');
      const done = await handle.result();
      details = (await handle.query<{ currentDetails: string }>('__temporal_workflow_metadata')).currentDetails;
      return done;
    })) as BackfillResult;
    assert.equal(result.succeeded, 20);
    assert.equal(probe.max, 4, 'the new parallelism took effect');
    assert.match(details, /backfill \*\*steer\*\* \(merge\) from test\.probe, 2024-01-01 \.\. 2024-01-20 by day/);
    assert.match(details, /20\/20 partitions, 480 rows, 0 failed, parallel 4/);
    await saveHistory(handle, 'backfill-pause-resume-parallel');
  });

  test('SIGKILL of the worker process mid-run: a new worker finishes and the destination is exact', async () => {
    const taskQueue = `${stack.taskQueue}-kill`;
    const handle = await stack.client.workflow.start('backfillWorkflow', {
      taskQueue,
      workflowId: `backfill-kill-${stack.schema}`,
      args: [{
        source: { kind: 'registered', name: 'test.slow', options: { delayMs: 400, perHour: 40 } },
        resource: { name: 'killed', writeDisposition: 'append' },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        partitionColumn: 'at', start: '2024-01-01', end: '2024-01-30', parallel: 4,
      }],
    });
    const first = await spawnWorker(taskQueue);
    const beforeKill = await waitFor('a few partitions', async () => {
      const p = await handle.query<Progress>('progress');
      return p.done >= 5 && p.inFlight > 0 && p;
    }, 120_000);
    await killHard(first);
    assert.ok(beforeKill.done < 30, 'killed in the middle of the run, with partitions in flight');
    const second = await spawnWorker(taskQueue);
    try {
      const result = (await handle.result()) as BackfillResult;
      assert.equal(result.succeeded, 30);
      assert.equal(result.rows, 30 * 24 * 40);
    } finally {
      await killHard(second);
    }
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.killed`);
    assert.deepEqual(rows.rows[0], { n: 30 * 24 * 40, d: 30 * 24 * 40 }, 'nothing lost, nothing duplicated');
    await saveHistory(handle, 'backfill-worker-killed');
  });

  test('two worker processes on one task queue share the partitions', async () => {
    const taskQueue = `${stack.taskQueue}-scale`;
    // Two activity slots each: a single worker cannot take all eight partitions in flight.
    const workers = await Promise.all([spawnWorker(taskQueue, { SLUICE_MAX_ACTIVITIES: '2' }), spawnWorker(taskQueue, { SLUICE_MAX_ACTIVITIES: '2' })]);
    try {
      const handle = await stack.client.workflow.start('backfillWorkflow', {
        taskQueue,
        workflowId: `backfill-scale-${stack.schema}`,
        args: [{
          source: { kind: 'registered', name: 'test.slow', options: { delayMs: 200, perHour: 2 } },
          resource: { name: 'scaled', writeDisposition: 'append' },
          destination: { connection: 'DATABASE_URL', schema: stack.schema },
          partitionColumn: 'at', start: '2024-01-01', end: '2024-01-16', parallel: 8,
        }],
      });
      const result = (await handle.result()) as BackfillResult;
      assert.equal(result.succeeded, 16);
      const history = await handle.fetchHistory();
      const identities = new Set(history.events!.flatMap((e) => e.activityTaskStartedEventAttributes?.identity ?? []));
      assert.equal(identities.size, 2, `activities ran on both workers: ${[...identities].join(', ')}`);
      await saveHistory(handle, 'backfill-two-workers');
    } finally {
      await Promise.all(workers.map(killHard));
    }
    assert.equal(await count(stack.db, `${stack.schema}.scaled`), 16 * 24 * 2);
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

  test('a missing source table fails the run once, before any partition, naming the table', async () => {
    const err = await stack.withWorker(() =>
      stack.client.workflow
        .execute('backfillWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `backfill-missing-${stack.schema}`,
          args: [ordersInput({ source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.nope` }, end: '2024-01-02' })],
        })
        .catch((e: unknown) => e),
    );
    assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${err}`);
    assert.match((err.cause as Error).message, /source\.table: .*nope/);
  });
});
