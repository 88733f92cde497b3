import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WorkflowFailedError, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { Progress } from '../src/inputs';
import { defineResource, defineSource, registerSource, type ExtractContext } from '../src/sources/registered';
import type { IncrementalResult } from '../src/workflows/incremental';
import { count, killHard, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

/** Rows of the code-defined test resource: tests change it between syncs. */
const feedRows: { id: number; at: string; v: string }[] = [];
const feedCursors: unknown[] = [];

/** Yields everything at or past ctx.cursor, newest first, as a real API client would; or everything, with options.ignoreCursor. */
const feedSource = defineSource({
  name: 'incrtest',
  resources: [
    defineResource({
      name: 'feed',
      async *extract(ctx: ExtractContext) {
        feedCursors.push(ctx.cursor?.value);
        const since = ctx.cursor && !ctx.options.ignoreCursor ? Date.parse(String(ctx.cursor.value)) : -Infinity;
        for (const row of [...feedRows].reverse()) {
          if (Date.parse(row.at) >= since) yield { ...row };
        }
      },
    }),
  ],
});

const T0 = '2024-03-01 00:00:00+00';
const T1 = '2024-03-01 12:00:00+00';
const T2 = '2024-03-02 00:00:00+00';
const T3 = '2024-03-03 00:00:00+00';

describe('incrementalWorkflow', () => {
  let stack: TestStack;
  before(async () => {
    registerSource(feedSource);
    stack = await testStack('incr');
  });
  after(() => stack.close());

  async function createSource(table: string): Promise<string> {
    const name = `${stack.sourceSchema}.${table}`;
    await stack.db.query(`create table ${name} (id bigint primary key, updated_at timestamptz, v text);
      create index on ${name} (updated_at, id)`);
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
  async function start(args: Record<string, unknown>, name = 'run'): Promise<WorkflowHandleWithFirstExecutionRunId> {
    return stack.client.workflow.start('incrementalWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `incr-${name}-${++runs}-${stack.schema}`,
      args: [args],
    });
  }

  async function sync(args: Record<string, unknown>, history?: string): Promise<IncrementalResult> {
    const handle = await start(args, history ?? 'sync');
    const result = (await stack.withWorker(() => handle.result())) as IncrementalResult;
    if (history) await saveHistory(handle, history);
    return result;
  }

  /** Rows in one table and not the other, both ways: [] when the destination is an exact copy. */
  async function difference(table: string): Promise<unknown[]> {
    const cols = 'id, updated_at, v';
    const src = `${stack.sourceSchema}.${table}`;
    const dst = `${stack.schema}.${table}`;
    const r = await stack.db.query(`(select 'missing' as d, ${cols} from ${src} where updated_at is not null except all select 'missing', ${cols} from ${dst})
      union all (select 'extra', ${cols} from ${dst} except all select 'extra', ${cols} from ${src})`);
    return r.rows;
  }

  async function savedState(table: string): Promise<{ state: { cursor: string; tiebreak: string[] | null; tie?: { count: number; hash: string } }; bytes: number }> {
    const r = await stack.db.query(`select state, octet_length(state::text) as bytes from ${stack.schema}._sluice_state where resource = $1`, [`incremental:${table}`]);
    return { state: r.rows[0].state, bytes: Number(r.rows[0].bytes) };
  }

  test('10,000 rows sharing one cursor value, 1,000 a page: loaded exactly once, state a few hundred bytes', async () => {
    const table = await createSource('ties');
    await stack.db.query(`insert into ${table} select i, '${T1}', 'row ' || i from generate_series(1, 10000) i`);
    const result = await sync(input('ties', { pageSize: 1_000 }), 'incremental-ties-10000');
    assert.equal(result.rows, 10_000);
    assert.equal(result.pages, 10);
    assert.equal(result.cursor, T1);
    assert.deepEqual(result.tiebreak, ['10000']);
    assert.deepEqual(await difference('ties'), []);
    const { state, bytes } = await savedState('ties');
    assert.equal(state.tie!.count, 10_000, 'the summary covers every key at the cursor value');
    assert.ok(bytes < 1024, `state is ${bytes} bytes`);
    const loads = await stack.db.query(`select count(*)::int as n from ${stack.schema}._sluice_loads where resource = 'ties' and status = 'completed'`);
    assert.equal(loads.rows[0].n, 10);

    // A new run (new workflow id) resumes from _sluice_state: nothing to load, nothing reloaded.
    const again = await sync(input('ties', { pageSize: 1_000 }));
    assert.equal(again.rows, 0);
    assert.equal(again.cursor, T1);
    assert.equal(await count(stack.db, `${stack.schema}.ties`), 10_000);
    const after = await stack.db.query(`select count(*)::int as n from ${stack.schema}._sluice_loads where resource = 'ties' and status = 'completed'`);
    assert.equal(after.rows[0].n, 10, 'no page was loaded again');
  });

  for (const disposition of ['append', 'merge'] as const) {
    test(`${disposition}: rows committed later at the last cursor value, with lower and higher keys, and a key swapped for another`, async () => {
      const name = `late_${disposition}`;
      const table = await createSource(name);
      await stack.db.query(`insert into ${table} select i, '${T1}', 'first ' || i from generate_series(100, 199) i;
        insert into ${table} select i, '${T0}', 'early ' || i from generate_series(200, 209) i`);
      const args = () => input(name, { pageSize: 30, resource: { name, writeDisposition: disposition, primaryKey: ['id'] } });
      const first = await sync(args());
      assert.equal(first.rows, 110);
      assert.deepEqual([first.cursor, first.tiebreak], [T1, ['199']]);

      // Late commits at T1 above the last key seen are simply read next: no re-read of the group.
      await stack.db.query(`insert into ${table} select i, '${T1}', 'late high ' || i from generate_series(500, 505) i`);
      const higher = await sync(args());
      assert.equal(higher.rows, 6);
      assert.deepEqual(await difference(name), []);

      // Late commits at T1 below the last key seen, and a row past T1: the group at T1 is read again.
      await stack.db.query(`insert into ${table} select i, '${T1}', 'late low ' || i from generate_series(1, 5) i;
        insert into ${table} values (600, '${T2}', 'next day')`);
      const second = await sync(args(), `incremental-late-ties-${disposition}`);
      assert.deepEqual(await difference(name), [], 'every late row is in, none twice');
      assert.deepEqual([second.cursor, second.tiebreak], [T2, ['600']]);
      assert.equal(second.rows, 100 + 6 + 5 + 1, 'the 111 rows at T1, then the row at T2');

      // Same count at the last value, different keys: its row moves on, another arrives there with a low key.
      await stack.db.query(`update ${table} set updated_at = '${T3}', v = 'moved' where id = 600;
        insert into ${table} values (7, '${T2}', 'swapped in')`);
      const swapped = await sync(args());
      assert.deepEqual(await difference(name), []);
      assert.deepEqual([swapped.cursor, swapped.tiebreak], [T3, ['600']]);

      // Nothing changed: the next sync writes nothing.
      const quiet = await sync(args());
      assert.equal(quiet.rows, 0);
      assert.deepEqual(await difference(name), []);
    });
  }

  test('merge: updates move rows forward and the destination equals the source', async () => {
    const table = await createSource('moving');
    await stack.db.query(`insert into ${table} select i, timestamptz '${T0}' + (i % 10) * interval '1 hour', 'v1' from generate_series(1, 1000) i`);
    const args = () => input('moving', { pageSize: 150, resource: { name: 'moving', writeDisposition: 'merge', primaryKey: 'id' } });
    assert.equal((await sync(args())).rows, 1000);
    await stack.db.query(`update ${table} set updated_at = updated_at + interval '1 day', v = 'v2' where id % 10 = 3`);
    const second = await sync(args(), 'incremental-merge-updates');
    assert.ok(second.rows >= 100, `${second.rows} rows`);
    assert.deepEqual(await difference('moving'), []);
    assert.equal(await count(stack.db, `${stack.schema}.moving`, `v = 'v2'`), 100);
  });

  test('cursor.reset starts over from initialValue without duplicating appended rows', async () => {
    const table = await createSource('reset');
    await stack.db.query(`insert into ${table} select i, timestamptz '${T0}' + i * interval '1 minute', 'r' from generate_series(1, 500) i`);
    await sync(input('reset', { pageSize: 100 }));
    await stack.db.query(`update ${table} set v = 'fixed at the source' where id <= 10`);
    const reset = await sync(input('reset', { pageSize: 100, cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z', reset: true } }), 'incremental-reset');
    assert.equal(reset.rows, 500, 'everything read again');
    assert.deepEqual(await difference('reset'), [], 'and held once, corrected');
  });

  test('lag re-reads a window behind the cursor: a row stamped before the cursor but committed after it is loaded once', async () => {
    const table = await createSource('lagged');
    await stack.db.query(`insert into ${table} select i, timestamptz '${T1}' + i * interval '1 second', 'x' from generate_series(1, 100) i`);
    const args = () => input('lagged', { pageSize: 40, cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z', lag: '5m' } });
    await sync(args());
    await stack.db.query(`insert into ${table} values (1000, timestamptz '${T1}' + interval '99 seconds' - interval '2 minutes', 'stamped before commit')`);
    await sync(args());
    assert.deepEqual(await difference('lagged'), []);
    await sync(args());
    assert.deepEqual(await difference('lagged'), [], 'the window is replaced, not appended again');
  });

  for (const disposition of ['append', 'merge'] as const) {
    test(`registered source, ${disposition}: ctx.cursor, ties at the last value, late rows, rows before the cursor skipped`, async () => {
      const name = `feed_${disposition}`;
      feedRows.length = 0;
      feedCursors.length = 0;
      for (let id = 1; id <= 40; id++) feedRows.push({ id: id * 10, at: id <= 30 ? '2024-03-01T12:00:00.000Z' : '2024-03-01T06:00:00.000Z', v: `first ${id}` });
      const args = {
        // Append, the case where a re-yielded row would be a duplicate, gets every row every time.
        source: { kind: 'registered', name: 'incrtest.feed', options: { ignoreCursor: disposition === 'append' } },
        resource: { name, writeDisposition: disposition, primaryKey: 'id' },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        cursor: { column: 'at' },
        once: true,
      };
      const first = await sync(args);
      assert.equal(first.rows, 40);
      assert.equal(first.cursor, '2024-03-01T12:00:00.000Z');
      feedRows.push({ id: 5, at: '2024-03-01T12:00:00.000Z', v: 'late low' }, { id: 999, at: '2024-03-01T12:00:00.000Z', v: 'late high' });
      feedRows.push({ id: 1000, at: '2024-03-02T00:00:00.000Z', v: 'next day' });
      const second = await sync(args, `incremental-registered-${disposition}`);
      assert.equal(feedCursors[1], '2024-03-01T12:00:00.000Z', 'the extractor was handed the saved cursor');
      assert.equal(second.cursor, '2024-03-02T00:00:00.000Z');
      const dest = await stack.db.query(`select id::int, v from ${stack.schema}.${name} order by id`);
      const expected = [...feedRows].sort((a, b) => a.id - b.id).map(({ id, v }) => ({ id, v }));
      assert.deepEqual(dest.rows, expected, 'exactly the source rows, once each');
    });
  }

  test('SIGKILL of the worker mid-sync: a new worker finishes, nothing lost, nothing duplicated', async () => {
    const table = await createSource('killed');
    // 300 cursor values of 100 rows each, 70 rows a page: tie groups straddle page boundaries.
    await stack.db.query(`insert into ${table} select i, timestamptz '${T0}' + (i / 100) * interval '1 minute', md5(i::text) from generate_series(0, 29999) i`);
    const taskQueue = `${stack.taskQueue}-kill`;
    const handle = await stack.client.workflow.start('incrementalWorkflow', {
      taskQueue,
      workflowId: `incr-kill-${stack.schema}`,
      args: [input('killed', { pageSize: 70 })],
    });
    const committed = async () =>
      Number((await stack.db.query(`select count(*) as n from ${stack.schema}._sluice_loads where resource = 'killed' and status = 'completed'`)).rows[0].n);
    const first = await spawnWorker(taskQueue);
    await waitFor('some pages committed', async () => (await committed().catch(() => 0)) >= 20, 120_000);
    await killHard(first);
    const atKill = await committed();
    assert.ok(atKill >= 20 && atKill < 429, `killed mid-sync (${atKill} of 429 pages committed)`);
    const second = await spawnWorker(taskQueue);
    let result: IncrementalResult;
    try {
      result = (await handle.result()) as IncrementalResult;
    } finally {
      await killHard(second);
    }
    assert.equal(result.rows, 30_000, 'the result counts the pages the dead attempt committed');
    assert.equal(result.pages, 429);
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.killed`);
    assert.deepEqual(rows.rows[0], { n: 30_000, d: 30_000 });
    assert.deepEqual(await difference('killed'), []);
    const history = await handle.fetchHistory();
    const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 1);
    assert.ok(attempts.some((a) => a > 1), 'the sync activity was retried after the kill');
    const loads = await stack.db.query(`select count(*)::int as n, count(distinct load_id)::int as d from ${stack.schema}._sluice_loads where resource = 'killed' and status = 'completed'`);
    assert.deepEqual(loads.rows[0], { n: 429, d: 429 }, 'each page committed once');
    await saveHistory(handle, 'incremental-worker-killed');

    // The sync that survived the kill left an exact position: the next one has nothing to do.
    const next = await sync(input('killed', { pageSize: 70 }));
    assert.equal(next.rows, 0);
    assert.equal(await count(stack.db, `${stack.schema}.killed`), 30_000);
  });

  test('every: syncs on a schedule, syncNow starts one at once, pause holds it, progress and details show the cursor', async () => {
    const table = await createSource('live');
    await stack.db.query(`insert into ${table} select i, '${T0}', 'a' from generate_series(1, 50) i`);
    const handle = await start(input('live', { once: undefined, every: '1h', pageSize: 20 }), 'every');
    await stack.withWorker(async () => {
      await waitFor('the first sync', async () => (await handle.query<Progress>('progress')).done >= 1);
      await stack.db.query(`insert into ${table} select i, '${T1}', 'b' from generate_series(51, 80) i`);
      await handle.signal('syncNow');
      await waitFor('the second sync', async () => (await handle.query<Progress>('progress')).done >= 2);
      const p = await handle.query<Progress>('progress');
      assert.equal(p.rows, 80);
      assert.equal(p.cursor, T1);
      assert.equal(p.total, null);
      assert.equal(typeof p.lastSyncAt, 'string');
      assert.deepEqual(await difference('live'), []);

      await handle.signal('pause');
      await stack.db.query(`insert into ${table} values (81, '${T2}', 'c')`);
      await handle.signal('syncNow');
      await sleep(1_000);
      assert.equal((await handle.query<Progress>('progress')).done, 2, 'no sync while paused');
      await handle.signal('resume');
      await waitFor('the sync after resume', async () => (await handle.query<Progress>('progress')).done >= 3);
      assert.deepEqual(await difference('live'), []);
      const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      assert.match(meta.currentDetails ?? '', /cursor updated_at = 2024-03-02 00:00:00\+00 \(up to key 81/);
      assert.match(meta.currentDetails ?? '', /last sync/);
      await handle.cancel();
      await handle.result().catch(() => undefined);
    });
    await saveHistory(handle, 'incremental-every-sync-now');
  });

  test('every: continues as new on a long history, carrying the cursor and the counts', async () => {
    const table = await createSource('forever');
    await stack.db.query(`insert into ${table} select i, '${T0}', 'a' from generate_series(1, 10) i`);
    const handle = await start(input('forever', { once: undefined, every: '1h' }), 'forever');
    await stack.withWorker(async () => {
      // syncNow again and again (the dev server's timers fire about once a second) until the history is long.
      await waitFor(
        'a continue-as-new',
        async () => {
          const before = (await handle.query<Progress>('progress')).done;
          await handle.signal('syncNow');
          await waitFor('the sync', async () => (await handle.query<Progress>('progress')).done > before, 10_000).catch(() => undefined);
          return (await handle.describe()).runId !== handle.firstExecutionRunId;
        },
        120_000,
      );
      await stack.db.query(`insert into ${table} values (11, '${T1}', 'after')`);
      await handle.signal('syncNow');
      await waitFor('the new row', async () => (await count(stack.db, `${stack.schema}.forever`)) === 11, 30_000);
      const p = await handle.query<Progress>('progress');
      assert.ok(p.done >= 20, `${p.done} syncs carried over`);
      assert.equal(p.rows, 11, 'the rows count carried over');
      assert.equal(p.cursor, T1);
      await handle.cancel();
      await handle.result().catch(() => undefined);
    });
    assert.deepEqual(await difference('forever'), []);
    await saveHistory(handle, 'incremental-continued-as-new');
  });

  test('bad input fails at once naming the field; a missing cursor column fails in seconds naming it', async () => {
    await stack.withWorker(async () => {
      const err = await stack.client.workflow
        .execute('incrementalWorkflow', { taskQueue: stack.taskQueue, workflowId: `incr-bad-${stack.schema}`, args: [input('nope', { once: undefined })] })
        .catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError);
      assert.equal((err.cause as Error & { type?: string }).type, 'InvalidInput');
      assert.match((err.cause as Error).message, /once/);

      await createSource('nocursor');
      const started = Date.now();
      const missing = await stack.client.workflow
        .execute('incrementalWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `incr-nocursor-${stack.schema}`,
          args: [input('nocursor', { cursor: { column: 'modified' } })],
        })
        .catch((e: unknown) => e);
      assert.ok(missing instanceof WorkflowFailedError);
      assert.match((missing.cause as Error).message, /column "modified" is not (a column|in table)/);
      assert.ok(Date.now() - started < 20_000, 'no retry loop on a permanent error');
    });
  });
});
