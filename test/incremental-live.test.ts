/**
 * incrementalWorkflow during long syncs: it continues as new in the middle of a sync (once and
 * every), `progress` and the UI move while one sync activity runs, and a load stuck on a lock
 * fails its attempt retryably and then succeeds.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { Progress } from '../src/inputs';
import { ensureMetadata } from '../src/destinations/postgres/loader';
import type { IncrementalResult } from '../src/workflows/incremental';
import { count, killHard, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

const T0 = '2024-03-01 00:00:00+00';

describe('incrementalWorkflow: long syncs', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('incrlive');
  });
  after(() => stack.close());

  async function createSource(table: string, rows: number, rowsPerValue = 1): Promise<string> {
    const name = `${stack.sourceSchema}.${table}`;
    await stack.db.query(`create table ${name} (id bigint primary key, updated_at timestamptz, v text);
      create index on ${name} (updated_at, id)`);
    await stack.db.query(
      `insert into ${name} select i, timestamptz '${T0}' + (i / ${rowsPerValue}) * interval '1 second', md5(i::text) from generate_series(1, ${rows}) i`,
    );
    return name;
  }

  const input = (table: string, extra: Record<string, unknown> = {}) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.${table}` },
    resource: { name: table, writeDisposition: 'append', primaryKey: ['id'] },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
    cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
    once: true,
    ...extra,
  });

  let runs = 0;
  function start(args: Record<string, unknown>, name: string, taskQueue = stack.taskQueue): Promise<WorkflowHandleWithFirstExecutionRunId> {
    return stack.client.workflow.start('incrementalWorkflow', { taskQueue, workflowId: `incr-${name}-${++runs}-${stack.schema}`, args: [args] });
  }

  async function exact(table: string, rows: number): Promise<void> {
    const r = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.${table}`);
    assert.deepEqual(r.rows[0], { n: rows, d: rows }, 'every source row once');
    const diff = await stack.db.query(
      `select count(*)::int as n from ((select id, updated_at, v from ${stack.sourceSchema}.${table} except all select id, updated_at, v from ${stack.schema}.${table})
        union all (select id, updated_at, v from ${stack.schema}.${table} except all select id, updated_at, v from ${stack.sourceSchema}.${table})) d`,
    );
    assert.equal(diff.rows[0].n, 0, 'the destination equals the source');
  }

  /** One sync call per page (SLUICE_SYNC_BUDGET=1ms), so a sync of many pages outgrows the test server's 400-event history limit. */
  async function withOnePagePerCall<T>(fn: () => Promise<T>): Promise<T> {
    process.env.SLUICE_SYNC_BUDGET = '1ms';
    try {
      return await fn();
    } finally {
      delete process.env.SLUICE_SYNC_BUDGET;
    }
  }

  test('once: a sync longer than one history continues as new mid-sync, carrying the position, and completes exact', async () => {
    await createSource('canonce', 1_000, 3);
    const handle = await start(input('canonce', { pageSize: 10 }), 'canonce');
    const result = (await withOnePagePerCall(() => stack.withWorker(() => handle.result()))) as IncrementalResult;
    assert.notEqual((await handle.describe()).runId, handle.firstExecutionRunId, 'the sync continued as new');
    assert.equal(result.rows, 1_000, 'the result counts the pages of the runs before');
    assert.equal(result.pages, 100);
    await exact('canonce', 1_000);
    await saveHistory(handle, 'own-retry-incremental-once-continued-mid-sync');
    const loads = await stack.db.query(`select count(*)::int as n, count(distinct load_id)::int as d from ${stack.schema}._sluice_loads where status = 'completed' and resource = 'canonce'`);
    assert.deepEqual(loads.rows[0], { n: 100, d: 100 }, 'each page committed once');
  });

  test('every: a sync longer than one history continues as new mid-sync and is not counted failed', async () => {
    await createSource('canevery', 1_000, 3);
    const handle = await start(input('canevery', { pageSize: 10, once: undefined, every: '1h' }), 'canevery');
    await withOnePagePerCall(() =>
      stack.withWorker(async () => {
        const p = await waitFor('the first sync', async () => {
          const q = await handle.query<Progress>('progress');
          return q.done >= 1 && q;
        }, 120_000);
        assert.equal(p.failed, 0, 'no sync failed');
        assert.equal(p.rows, 1_000);
        assert.equal(p.pages, 100);
        assert.equal(p.lastError, undefined);
        assert.notEqual((await handle.describe()).runId, handle.firstExecutionRunId, 'the sync continued as new');
        await handle.cancel();
        await handle.result().catch(() => undefined);
      }),
    );
    await exact('canevery', 1_000);
  });

  test('progress and the UI move during one long sync activity, before it returns', async () => {
    await createSource('livebig', 100_000);
    // The sync is held after its fifth page until progress has been seen, whatever the machine's
    // speed (a quick one loads the 200 pages before the first report is due): a trigger on the
    // load rows makes the sixth page wait for an advisory lock this test holds.
    await ensureMetadata(process.env.DATABASE_URL!, stack.schema);
    const hold = await stack.db.connect();
    const lockKey = 'sluice-test-hold-livebig';
    try {
      await hold.query('select pg_advisory_lock(hashtext($1))', [lockKey]);
      await stack.db.query(`
        create function ${stack.schema}.hold_livebig() returns trigger language plpgsql as $$
        begin
          if (select count(*) from ${stack.schema}._sluice_loads where resource = 'livebig' and status = 'completed') >= 5 then
            perform pg_advisory_xact_lock(hashtext('${lockKey}'));
          end if;
          return null;
        end $$;
        create trigger hold_livebig after insert on ${stack.schema}._sluice_loads
          for each row when (new.resource = 'livebig') execute function ${stack.schema}.hold_livebig()`);
      const handle = await start(input('livebig', { pageSize: 500 }), 'livebig');
      await stack.withWorker(async () => {
        // The whole sync is one activity call (default budget): only its reports can move progress.
        const seen = await waitFor(
          'progress rows moving while the sync runs',
          async () => {
            const p = await handle.query<Progress>('progress');
            return p.phase === 'syncing' && p.inFlight === 1 && p.rows > 0 && p.rows < 100_000 && p;
          },
          120_000,
        );
        const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        assert.match(meta.currentDetails ?? '', /sync 1 running: [1-9][\d,]* pages, [1-9][\d,]* rows so far/);
        await hold.query('select pg_advisory_unlock(hashtext($1))', [lockKey]);
        const later = await waitFor('more rows', async () => {
          const p = await handle.query<Progress>('progress');
          return (p.rows > seen.rows || p.phase === 'done') && p;
        }, 120_000);
        assert.ok(later.rows > seen.rows, `rows went on from ${seen.rows} to ${later.rows}`);
        const result = (await handle.result()) as IncrementalResult;
        assert.equal(result.rows, 100_000, 'reports never count a row twice');
        // A finished run is replayed to answer (preflight marker and all): its progress is the final one.
        const final = await handle.query<Progress>('progress');
        assert.equal(final.phase, 'done');
        assert.equal(final.rows, 100_000);
      });
      await checkLiveHistory(handle);
    } finally {
      await hold.query('select pg_advisory_unlock_all()').catch(() => undefined);
      hold.release();
      await stack.db.query(`drop trigger if exists hold_livebig on ${stack.schema}._sluice_loads; drop function if exists ${stack.schema}.hold_livebig()`);
    }
  });

  async function checkLiveHistory(handle: WorkflowHandleWithFirstExecutionRunId): Promise<void> {
    await saveHistory(handle, 'own-retry-incremental-live-progress');
    assert.equal(await count(stack.db, `${stack.schema}.livebig`), 100_000);
    const history = await handle.fetchHistory();
    const syncCalls = history.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'syncIncrementalPages').length;
    assert.equal(syncCalls, 1, 'one sync call: the progress came from its reports');
  }

  test('a load blocked on a row lock fails its attempt after SLUICE_STALL_TIMEOUT, retryably, and succeeds once the lock is gone', async () => {
    const table = await createSource('locked', 10);
    const args = input('locked', { resource: { name: 'locked', writeDisposition: 'merge', primaryKey: ['id'] } });
    const taskQueue = `${stack.taskQueue}-stall`;
    const worker = await spawnWorker(taskQueue, { SLUICE_STALL_TIMEOUT: '3s' });
    const holder = await stack.db.connect();
    try {
      await (await start(args, 'locked', taskQueue)).result();
      await stack.db.query(`update ${table} set v = 'new', updated_at = updated_at + interval '1 day' where id = 5`);
      await holder.query('begin');
      await holder.query(`select * from ${stack.schema}.locked where id = 5 for update`);
      const handle = await start(args, 'locked', taskQueue);
      const failure = await waitFor('a failed, retried attempt', async () => {
        const pending = (await handle.describe()).raw.pendingActivities?.[0];
        return (pending?.attempt ?? 0) >= 2 && (pending?.lastFailure ?? undefined);
      }, 120_000);
      assert.match(failure.message ?? '', /no progress for \d+ s|lock timeout/);
      assert.notEqual(failure.applicationFailureInfo?.nonRetryable, true);
      await holder.query('rollback');
      const result = (await handle.result()) as IncrementalResult;
      assert.equal(result.rows, 1);
      const p = await handle.query<Progress>('progress');
      assert.equal(p.failed, 0);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      await killHard(worker);
    }
    const row = await stack.db.query(`select count(*)::int as n, max(v) filter (where id = 5) as v from ${stack.schema}.locked`);
    assert.deepEqual(row.rows[0], { n: 10, v: 'new' });
  });
});
