/**
 * A rolling deploy: two worker processes share the task queue, one of them is SIGTERMed while it
 * runs backfill partitions and an incremental sync, and a new one takes its place. Every run
 * completes, nothing is reported failed, and the destination is exact.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { after, before, describe, test } from 'node:test';
import type { Progress } from '../src/inputs';
import type { BackfillResult } from '../src/workflows/backfill';
import type { IncrementalResult } from '../src/workflows/incremental';
import { killHard, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

/** SIGTERM, as a deploy or `docker stop` sends it; resolves with the exit code. */
function terminate(child: ChildProcess): Promise<number | null> {
  return new Promise((resolveExit) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolveExit(child.exitCode);
    child.once('exit', (code) => resolveExit(code));
    child.kill('SIGTERM');
  });
}

describe('rolling deploy', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('deploy');
  });
  after(() => stack.close());

  test('SIGTERM of one of two workers mid-backfill and mid-sync: every run completes, nothing failed, destination exact', async () => {
    const source = `${stack.sourceSchema}.events`;
    const ROWS = 100_000;
    await stack.db.query(`create table ${source} (id bigint primary key, updated_at timestamptz, v text);
      insert into ${source} select i, timestamptz '2024-03-01 00:00:00+00' + (i / 7) * interval '1 second', md5(i::text) from generate_series(1, ${ROWS}) i;
      create index on ${source} (updated_at, id)`);
    const taskQueue = `${stack.taskQueue}-deploy`;
    // Three activity slots each: the sync takes one, so the backfill's four partitions in flight need both workers.
    // A short grace time: the sync (1,000 pages) outlasts it and is cut short, not finished, on the stopped worker.
    const env = { SLUICE_MAX_ACTIVITIES: '3', SLUICE_SHUTDOWN_GRACE: '1s' };
    const workers = await Promise.all([spawnWorker(taskQueue, env), spawnWorker(taskQueue, env)]);
    const replacements: ChildProcess[] = [];
    try {
      const backfill = await stack.client.workflow.start('backfillWorkflow', {
        taskQueue,
        workflowId: `deploy-backfill-${stack.schema}`,
        args: [{
          source: { kind: 'registered', name: 'test.slow', options: { delayMs: 600, perHour: 40 } },
          resource: { name: 'slow', writeDisposition: 'append' },
          destination: { connection: 'DATABASE_URL', schema: stack.schema },
          partitionColumn: 'at', start: '2024-01-01', end: '2024-01-30', parallel: 4,
        }],
      });
      const sync = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue,
        workflowId: `deploy-sync-${stack.schema}`,
        args: [{
          source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: source },
          resource: { name: 'events', writeDisposition: 'append', primaryKey: ['id'] },
          destination: { connection: 'DATABASE_URL', schema: stack.schema },
          cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
          pageSize: 100,
          once: true,
        }],
      });

      const pagesCommitted = async () =>
        Number((await stack.db.query(`select count(*) as n from ${stack.schema}._sluice_loads where resource = 'events' and status = 'completed'`).catch(() => ({ rows: [{ n: 0 }] }))).rows[0].n);
      // The worker that runs the sync, once it has committed some pages and the backfill is under way.
      const syncWorker = await waitFor('the sync and the backfill under way', async () => {
        const pending = (await sync.describe()).raw.pendingActivities?.[0];
        const p = await backfill.query<Progress>('progress');
        if (!pending?.lastWorkerIdentity || (await pagesCommitted()) < 5 || p.done < 2 || p.inFlight < 4) return undefined;
        return workers.find((w) => pending.lastWorkerIdentity === `${w.pid}@${hostname()}`);
      }, 120_000);
      const atTerm = await pagesCommitted();
      assert.ok(atTerm < 600, `SIGTERM in the middle of the sync (${atTerm} of 1000 pages committed)`);
      const terminatedIdentity = `${syncWorker.pid}@${hostname()}`;
      const code = await terminate(syncWorker);
      assert.equal(code, 0, 'the terminated worker shut down cleanly');
      // The new version of the worker comes up in its place.
      replacements.push(await spawnWorker(taskQueue, env));

      const [backfillResult, syncResult] = (await Promise.all([backfill.result(), sync.result()])) as [BackfillResult, IncrementalResult];
      assert.equal(backfillResult.succeeded, 30);
      assert.equal(backfillResult.failed.length, 0, 'no partition failed');
      assert.equal(backfillResult.rows, 30 * 24 * 40);
      assert.equal(syncResult.rows, ROWS);
      assert.equal((await sync.query<Progress>('progress')).failed, 0, 'no sync failed');

      const slow = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.slow`);
      assert.deepEqual(slow.rows[0], { n: 30 * 24 * 40, d: 30 * 24 * 40 }, 'backfill: nothing lost, nothing duplicated');
      const events = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.events`);
      assert.deepEqual(events.rows[0], { n: ROWS, d: ROWS }, 'sync: nothing lost, nothing duplicated');
      const diff = await stack.db.query(
        `select count(*)::int as n from ((select id, updated_at, v from ${source} except all select id, updated_at, v from ${stack.schema}.events)
          union all (select id, updated_at, v from ${stack.schema}.events except all select id, updated_at, v from ${source})) d`,
      );
      assert.equal(diff.rows[0].n, 0, 'the synced table equals the source');

      // Nothing failed for good; the sync, longer than the shutdown grace time, was cut short on
      // the terminated worker and retried on another (backfill partitions may finish in the grace time).
      for (const handle of [backfill, sync]) {
        const events = (await handle.fetchHistory()).events ?? [];
        assert.ok(!events.some((e) => e.activityTaskFailedEventAttributes), `${handle.workflowId}: no activity failed for good`);
      }
      const syncEvents = (await sync.fetchHistory()).events ?? [];
      const retried = syncEvents.flatMap((e) => ((e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1 ? [e.activityTaskStartedEventAttributes!] : []));
      assert.ok(retried.length > 0, 'the interrupted sync was retried');
      for (const started of retried) {
        assert.notEqual(started.identity, terminatedIdentity, 'the retry ran on another worker');
        assert.notEqual(started.lastFailure?.applicationFailureInfo?.nonRetryable, true);
      }
    } finally {
      await Promise.all([...workers, ...replacements].map(killHard));
    }
  });
});
