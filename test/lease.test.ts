/**
 * One owner per resource (issue 10): the lease engine against a real PostgreSQL, and second
 * runs, takeovers and re-runs of real workflows.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Readable } from 'node:stream';
import type { WorkflowHandle } from '@temporalio/client';
import {
  acquireLease,
  leaseKey,
  LeaseHeldError,
  LeaseLostError,
  readLease,
  releaseLease,
  type LeaseHolder,
} from '../src/destinations/postgres/lease';
import { ensureMetadata, loadResource, readState } from '../src/destinations/postgres/loader';
import { Resource, type Progress } from '../src/inputs';
import type { Row } from '../src/sources/types';
import type { BackfillResult } from '../src/workflows/backfill';
import type { FilesResult } from '../src/workflows/files';
import type { IncrementalResult } from '../src/workflows/incremental';
import { registerSource } from '../src/sources/registered';
import { gate, testSource } from './fixtures/sources';
import type { FullRefreshResult } from '../src/workflows/full-refresh';
import { count, failedRun, saveHistory, testStack, waitFor, type TestStack } from './helpers';

describe('resource leases', () => {
  let stack: TestStack;
  let url: string;
  let root: string;
  before(async () => {
    registerSource(testSource);
    stack = await testStack('lease');
    url = process.env.DATABASE_URL!;
    await ensureMetadata(url, stack.schema);
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'lease-'));
  });
  after(async () => {
    await stack.close();
    await rm(root, { recursive: true, force: true });
  });

  const a: LeaseHolder = { workflowId: 'wf-a', chain: 'chain-a' };
  const b: LeaseHolder = { workflowId: 'wf-b', chain: 'chain-b' };
  const alive = async () => 'running' as const;
  const gone = async () => 'gone' as const;

  test('engine: a held lease refuses a second holder, keeps its token for its own chain, and fences a replaced holder out of every commit', async () => {
    const key = leaseKey('incremental', 'fenced');
    const resource = Resource.parse({ name: 'fenced' });
    const base = { key, resource: 'fenced' };
    const first = await acquireLease(url, stack.schema, { ...base, holder: a, isRunning: alive });
    assert.equal(first.token, 1);
    // The same chain again (continue-as-new, a retry): the same token.
    assert.equal((await acquireLease(url, stack.schema, { ...base, holder: { ...a, runId: 'next-run' }, isRunning: alive })).token, 1);

    const refused = await acquireLease(url, stack.schema, { ...base, holder: b, isRunning: alive }).catch((e: unknown) => e);
    assert.ok(refused instanceof LeaseHeldError, `expected LeaseHeldError, got ${String(refused)}`);
    assert.match(refused.message, /held by workflow wf-a/);
    assert.match(refused.hint!, /temporal workflow terminate --workflow-id wf-a/);

    const load = (loadId: string, token: number, ids: number[]) =>
      loadResource({
        url,
        schema: stack.schema,
        table: 'fenced',
        resource,
        loadId,
        data: { kind: 'rows', rows: Readable.from(ids.map((id): Row => ({ id }))) },
        state: { key: 'incremental:fenced', value: { cursor: ids.at(-1) } },
        lease: { key, token },
      });
    await load('a-1', 1, [1, 2]);

    // b takes over once a is gone; a, still running somewhere as a zombie, can commit nothing.
    const taken = await acquireLease(url, stack.schema, { ...base, holder: b, isRunning: gone });
    assert.equal(taken.token, 2);
    assert.deepEqual(taken.takenOverFrom, { ...a, runId: 'next-run' });
    await load('b-1', 2, [3, 4]);
    const zombie = await load('a-2', 1, [5]).catch((e: unknown) => e);
    assert.ok(zombie instanceof LeaseLostError, `expected LeaseLostError, got ${String(zombie)}`);
    assert.match(zombie.message, /now belongs to workflow wf-b \(token 2\)/);
    assert.deepEqual((await stack.db.query(`select id::int from ${stack.schema}.fenced order by id`)).rows.map((r) => r.id), [1, 2, 3, 4]);
    assert.deepEqual(await readState(url, stack.schema, 'incremental:fenced'), { cursor: 4 }, 'the cursor never moves backwards');
    const zombieLoad = await stack.db.query(`select status from ${stack.schema}._sluice_loads where load_id = 'a-2'`);
    assert.equal(zombieLoad.rows[0].status, 'failed');

    // Releasing a lease one no longer holds does nothing; the holder's release frees it, and the token only grows.
    assert.equal(await releaseLease(url, stack.schema, { key, token: 1 }), false);
    assert.equal(await releaseLease(url, stack.schema, { key, token: 2 }), true);
    assert.equal((await readLease(url, stack.schema, key))!.holder, null);
    assert.equal((await acquireLease(url, stack.schema, { ...base, holder: a, isRunning: alive })).token, 3);
    assert.equal(await readLease(url, 'no_such_schema', key), undefined);
  });

  test('engine: a holder silent for longer than takeOverAfterMs may be taken over; two racing acquirers get one lease', async () => {
    const key = leaseKey('files', 'silent');
    await acquireLease(url, stack.schema, { key, resource: 'silent', holder: a, isRunning: alive });
    await stack.db.query(
      `update ${stack.schema}._sluice_state set state = jsonb_set(state, '{renewedAt}', '"2020-01-01T00:00:00.000Z"') where resource = $1`,
      [key],
    );
    const refused = await acquireLease(url, stack.schema, { key, resource: 'silent', holder: b, isRunning: alive, takeOverAfterMs: 1e15 }).catch((e: unknown) => e);
    assert.ok(refused instanceof LeaseHeldError);
    assert.equal((await acquireLease(url, stack.schema, { key, resource: 'silent', holder: b, isRunning: alive, takeOverAfterMs: 60_000 })).token, 2);

    const raceKey = leaseKey('backfill', 'race');
    const holders = Array.from({ length: 8 }, (_, i): LeaseHolder => ({ workflowId: `wf-${i}`, chain: `chain-${i}` }));
    const outcomes = await Promise.allSettled(holders.map((holder) => acquireLease(url, stack.schema, { key: raceKey, resource: 'race', holder, isRunning: alive })));
    assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 1, 'exactly one acquirer wins');
    assert.ok(outcomes.every((o) => o.status === 'fulfilled' || o.reason instanceof LeaseHeldError));
  });

  async function incrementalSource(table: string, rows: number): Promise<string> {
    const name = `${stack.sourceSchema}.${table}`;
    await stack.db.query(`create table ${name} (id bigint primary key, updated_at timestamptz not null, v text)`);
    await stack.db.query(
      `insert into ${name} select i, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute', 'v' || i from generate_series(1, $1::int) i`,
      [rows],
    );
    return name;
  }

  const incrementalInput = (table: string, name: string, extra: Record<string, unknown>) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table },
    resource: { name, writeDisposition: 'append' },
    destination: { schema: stack.schema },
    cursor: { column: 'updated_at' },
    pageSize: 100,
    ...extra,
  });

  const progressOf = (handle: WorkflowHandle) => handle.query<Progress>('progress');

  test('two incrementalWorkflow runs on one append resource: the second fails at once naming the first; after terminate it takes over; rows exact, cursor never back', async () => {
    const table = await incrementalSource('events', 500);
    await stack.withWorker(async () => {
      const first = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-incr-a-${stack.schema}`,
        args: [incrementalInput(table, 'events', { every: '1h' })],
      });
      await waitFor('the first sync', async () => (await progressOf(first)).done >= 1);
      const cursorAfterFirst = await readState(url, stack.schema, 'incremental:events');

      const second = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-incr-b-${stack.schema}`,
        args: [incrementalInput(table, 'events', { once: true })],
      });
      const refused = await failedRun(second.result());
      assert.equal(refused.type, 'LeaseHeldError');
      assert.equal(refused.nonRetryable, true);
      assert.match(refused.message, new RegExp(`held by workflow ${first.workflowId}`));
      assert.match(refused.message, new RegExp(`temporal workflow terminate --workflow-id ${first.workflowId}`));
      assert.equal(await count(stack.db, `${stack.schema}.events`), 500);
      assert.deepEqual(await readState(url, stack.schema, 'incremental:events'), cursorAfterFirst);
      await saveHistory(second, 'lease-incremental-second-run-refused');

      // The holder is terminated (it cannot release): the next run sees it gone and takes over.
      await first.terminate('test: replaced');
      await stack.db.query(
        `insert into ${table} select i, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute', 'v' || i from generate_series(501, 650) i`,
      );
      const third = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-incr-c-${stack.schema}`,
        args: [incrementalInput(table, 'events', { once: true })],
      });
      const result = (await third.result()) as IncrementalResult;
      assert.equal(result.rows, 150);
      await saveHistory(third, 'lease-incremental-takeover-after-terminate');
      const lease = await readLease(url, stack.schema, leaseKey('incremental', 'events'));
      assert.equal(lease!.holder, null, 'released at the end of the run');
      assert.equal(lease!.token, 2);
      assert.equal(lease!.takenOverFrom?.workflowId, first.workflowId);
    });
    const diff = await stack.db.query(`select id from ${table} except all select id from ${stack.schema}.events
      union all select id from ${stack.schema}.events except all select id from ${table}`);
    assert.equal(diff.rowCount, 0, 'every source row exactly once');
  });

  test('two filesWorkflow runs: the second fails at once instead of loading every file again; after terminate it takes over', async () => {
    const dir = join(root, 'drops');
    await mkdir(dir, { recursive: true });
    for (let i = 1; i <= 5; i++) await writeFile(join(dir, `f${i}.csv`), `id,v\n${i},a\n${i + 100},b\n`);
    const input = (extra: Record<string, unknown>) => ({
      source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
      resource: { name: 'drops' },
      destination: { schema: stack.schema },
      ...extra,
    });
    await stack.withWorker(async () => {
      const first = await stack.client.workflow.start('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `lease-files-a-${stack.schema}`, args: [input({ every: '1h' })] });
      await waitFor('the first pass', async () => (await progressOf(first)).passes === 1);
      const second = await stack.client.workflow.start('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `lease-files-b-${stack.schema}`, args: [input({ once: true })] });
      const refused = await failedRun(second.result());
      assert.equal(refused.type, 'LeaseHeldError');
      assert.match(refused.message, new RegExp(`held by workflow ${first.workflowId}.*temporal workflow terminate --workflow-id ${first.workflowId}`));
      await saveHistory(second, 'lease-files-second-run-refused');
      assert.equal(await count(stack.db, `${stack.schema}.drops`), 10);

      await first.terminate('test: replaced');
      await writeFile(join(dir, 'f6.csv'), 'id,v\n6,a\n');
      const third = await stack.client.workflow.start('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `lease-files-c-${stack.schema}`, args: [input({ once: true })] });
      const result = (await third.result()) as FilesResult;
      assert.deepEqual([result.files, result.loaded, result.skipped], [6, 1, 5]);
    });
    assert.equal(await count(stack.db, `${stack.schema}.drops`), 11, 'no file loaded twice');
  });

  test('two backfills of the same range at once: one owns the table, the other fails at once; the destination is exact', async () => {
    const input = {
      // Two seconds per partition: the runs surely overlap.
      source: { kind: 'registered', name: 'test.probe', options: { delayMs: 2000 } },
      resource: { name: 'probed' },
      destination: { schema: stack.schema },
      partitionColumn: 'at',
      start: '2024-01-01',
      end: '2024-01-03',
      parallel: 1,
    };
    const outcomes = await stack.withWorker(async () => {
      const runs = await Promise.all(
        ['x', 'y'].map((id) => stack.client.workflow.start('backfillWorkflow', { taskQueue: stack.taskQueue, workflowId: `lease-backfill-${id}-${stack.schema}`, args: [input] })),
      );
      return Promise.allSettled(runs.map((r) => r.result()));
    });
    assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 1, 'one backfill ran');
    const loser = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
    assert.match(String((loser.reason as Error & { cause?: Error }).cause?.message), /held by workflow lease-backfill-[xy]-/);
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.probed`);
    assert.deepEqual(rows.rows[0], { n: 72, d: 72 });
  });

  test('re-runs: a backfill started again under the same workflow id reloads; skipLoaded skips what earlier runs committed and says so', async () => {
    const table = await incrementalSource('nightly', 3 * 24 * 60);
    const input = (extra: Record<string, unknown> = {}) => ({
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table },
      resource: { name: 'nightly' },
      destination: { schema: stack.schema },
      partitionColumn: 'updated_at',
      start: '2024-01-01',
      end: '2024-01-03',
      ...extra,
    });
    const workflowId = `rerun-nightly-${stack.schema}`;
    const run = (extra?: Record<string, unknown>) =>
      stack.client.workflow.start('backfillWorkflow', { taskQueue: stack.taskQueue, workflowId, args: [input(extra)] });
    await stack.withWorker(async () => {
      const first = (await (await run()).result()) as BackfillResult;
      assert.equal(first.rows, 3 * 24 * 60 - 1);
      await stack.db.query(`update ${table} set v = 'corrected' where updated_at < '2024-01-02 00:00:00+00'`);
      const again = await run();
      const second = (await again.result()) as BackfillResult;
      await saveHistory(again, 'rerun-backfill-same-workflow-id');
      assert.equal(second.rows, 3 * 24 * 60 - 1, 'the new run loaded every partition again');
      assert.equal(await count(stack.db, `${stack.schema}.nightly`, `v = 'corrected'`), 24 * 60 - 1);

      const loadsBefore = await count(stack.db, `${stack.schema}._sluice_loads`);
      const skipping = await run({ skipLoaded: true, end: '2024-01-04' });
      const third = (await skipping.result()) as BackfillResult;
      await saveHistory(skipping, 'rerun-backfill-skip-loaded');
      assert.deepEqual([...third.skipped!].sort(), ['2024-01-01', '2024-01-02', '2024-01-03']);
      assert.equal(third.skippedCount, 3);
      assert.equal(third.succeeded, 4);
      assert.equal(third.rows, 1, 'only the new partition was loaded');
      assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`), loadsBefore + 1);
    });
    assert.equal(await count(stack.db, `${stack.schema}.nightly`), 3 * 24 * 60);
  });

  const days = (start: string, n: number) => Array.from({ length: n }, (_, i) => new Date(Date.parse(start) + i * 86_400_000).toISOString().slice(0, 10));

  test('a backfill stops after maxConsecutiveFailures failures in a row and ends FAILED with the input to re-run', async () => {
    const { result, message } = await stack.withWorker(() =>
      failedRun<BackfillResult>(
        stack.client.workflow.execute('backfillWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `lease-backfill-broken-${stack.schema}`,
          args: [{
            // Every partition is corrupt at the source: a setup the preflight check cannot see.
            source: { kind: 'registered', name: 'test.flaky', options: { brokenPartitions: days('2024-01-01', 91), run: stack.schema } },
            resource: { name: 'broken' },
            destination: { schema: stack.schema },
            partitionColumn: 'at',
            start: '2024-01-01',
            end: '2024-03-31',
            parallel: 2,
            maxConsecutiveFailures: 3,
          }],
        }),
      ),
    );
    assert.ok(result.failedCount! >= 3 && result.failedCount! <= 4, `stopped after 3 in a row (+1 in flight), failed ${result.failedCount}`);
    assert.equal(result.succeeded, 0);
    assert.ok(result.stoppedAt);
    assert.deepEqual(result.rerun, { skipLoaded: true });
    assert.match(message, /stopped after 3 partitions failed in a row/);
    assert.match(message, /not started/);
  });
  test('full refresh takes the table: a second refresh and an incremental of the table fail at once naming it; a refresh fails at once while an incremental holds the table', async () => {
    const refreshInput = (rows: number) => ({
      source: { kind: 'registered', name: 'test.gate', options: { rows } },
      resource: { name: 'refreshed' },
      destination: { schema: stack.schema },
    });
    gate.close();
    await stack.withWorker(async () => {
      const first = await stack.client.workflow.start('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-refresh-a-${stack.schema}`,
        args: [refreshInput(30)],
      });
      // The first refresh holds its leases and is extracting (held at the gate).
      await waitFor('the first refresh to extract', async () => gate.waiting === 1);
      const holder = (await readLease(url, stack.schema, leaseKey('full_refresh', 'refreshed')))?.holder;
      assert.equal(holder?.workflowId, first.workflowId);

      const second = await stack.client.workflow.start('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-refresh-b-${stack.schema}`,
        args: [refreshInput(5)],
      });
      const refused = await failedRun(second.result());
      assert.equal(refused.type, 'LeaseHeldError');
      assert.equal(refused.nonRetryable, true);
      assert.match(refused.message, new RegExp(`lease:full_refresh:refreshed\\) is held by workflow ${first.workflowId}`));
      assert.match(refused.message, new RegExp(`temporal workflow terminate --workflow-id ${first.workflowId}`));
      assert.equal(gate.waiting, 1, 'the second refresh never extracted');
      await saveHistory(second, 'lease-full-refresh-second-run-refused');

      // An incremental of the same table would see its merges undone by the swap: refused too.
      const table = await incrementalSource('refresh_src', 20);
      const sync = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-refresh-incr-${stack.schema}`,
        args: [incrementalInput(table, 'refreshed', { once: true })],
      });
      const syncRefused = await failedRun(sync.result());
      assert.equal(syncRefused.type, 'LeaseHeldError');
      assert.match(syncRefused.message, new RegExp(`lease:incremental:refreshed\\) is held by workflow ${first.workflowId}`));

      gate.open();
      const done = (await first.result()) as FullRefreshResult;
      assert.equal(done.rows, 30);
      await saveHistory(first, 'lease-full-refresh-holds-the-table');
      for (const kind of ['full_refresh', 'backfill', 'incremental', 'files'] as const) {
        assert.equal((await readLease(url, stack.schema, leaseKey(kind, 'refreshed')))?.holder, null, `${kind} lease released at the end`);
      }
      assert.equal(await count(stack.db, `${stack.schema}.refreshed`), 30);

      // The other way round: an incremental that runs `every` holds the table; a refresh fails at once, naming it.
      const live = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-refresh-live-${stack.schema}`,
        args: [incrementalInput(table, 'refresh_live', { every: '1h' })],
      });
      await waitFor('the live sync', async () => (await progressOf(live)).done >= 1);
      const blocked = await stack.client.workflow.start('fullRefreshWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `lease-refresh-c-${stack.schema}`,
        args: [{ ...refreshInput(5), resource: { name: 'refresh_live' } }],
      });
      const blockedRun = await failedRun(blocked.result());
      assert.equal(blockedRun.type, 'LeaseHeldError');
      assert.match(blockedRun.message, new RegExp(`held by workflow ${live.workflowId}`));
      assert.equal(gate.waiting, 0, 'the blocked refresh never extracted');
      assert.equal(await count(stack.db, `${stack.schema}.refresh_live`), 20, 'the incremental rows are intact');
      // What the blocked refresh took before it was refused, it gave back.
      assert.equal((await readLease(url, stack.schema, leaseKey('full_refresh', 'refresh_live')))?.holder, null);
      await live.terminate('test done');
    });
  });
});
