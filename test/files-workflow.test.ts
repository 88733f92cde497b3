import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import type { Progress } from '../src/inputs';
import type { FilesResult } from '../src/workflows/files';
import { count, failedRun, killHard, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

async function put(dir: string, name: string, content: string | Buffer): Promise<void> {
  await mkdir(join(dir, name, '..'), { recursive: true });
  await writeFile(join(dir, name), content);
}

function csv(header: string, rows: (string | number)[][]): string {
  return [header, ...rows.map((r) => r.join(','))].join('\n') + '\n';
}

function jsonl(rows: unknown[]): string {
  return rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('filesWorkflow', () => {
  let stack: TestStack;
  let root: string;
  before(async () => {
    stack = await testStack('files');
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'files-'));
  });
  after(async () => {
    await stack.close();
    await rm(root, { recursive: true, force: true });
  });

  /** A CSV file long enough that a worker can be killed in the middle of loading it. */
  const bigCsv = (rows: number) => {
    const lines = ['id,payload'];
    for (let i = 1; i <= rows; i++) lines.push(`${i},row number ${i} with some padding to make it take a while`);
    return lines.join('\n') + '\n';
  };
  // PostgreSQL reports a running COPY's progress: a worker killed now is well inside the big file.
  const bigFileHalfStaged = () =>
    waitFor(
      'the big file half staged',
      async () => {
        const r = await stack.db.query<{ n: string }>(`select coalesce(max(tuples_processed), 0) as n from pg_stat_progress_copy where command = 'COPY FROM'`);
        return Number(r.rows[0]!.n) >= 100_000;
      },
      120_000,
    );

  /**
   * Starts a run on a worker process and SIGKILLs it in the middle of the big file; `killed`
   * checks what had committed by then, and a second worker finishes the run for `finished`.
   */
  const killedInBigFile = async (
    queue: string,
    workflowId: string,
    input: Record<string, unknown>,
    killed: () => Promise<void>,
    finished: (handle: WorkflowHandle) => Promise<void>,
  ) => {
    const taskQueue = `${stack.taskQueue}-${queue}`;
    const first = await spawnWorker(taskQueue);
    let second: Awaited<ReturnType<typeof spawnWorker>> | undefined;
    try {
      const handle = await stack.client.workflow.start('filesWorkflow', { taskQueue, workflowId: `${workflowId}-${stack.schema}`, args: [input] });
      await bigFileHalfStaged();
      await killHard(first);
      await killed();
      second = await spawnWorker(taskQueue);
      await finished(handle);
    } finally {
      await killHard(first);
      if (second) await killHard(second);
    }
  };

  /** The run's result, every row exactly once in `table`, and an activity attempted again after the kill. */
  const loadedOnceAfterKill = async (handle: WorkflowHandle, table: string, expected: FilesResult) => {
    assert.deepEqual(await handle.result(), expected);
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.${table}`);
    assert.deepEqual(rows.rows[0], { n: expected.rows, d: expected.rows });
    const history = await handle.fetchHistory();
    const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 1);
    assert.ok(attempts.some((a) => a > 1), 'loaded again after the kill');
    return history;
  };

  const run = (workflowId: string, input: Record<string, unknown>) =>
    stack.client.workflow.start('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `${workflowId}-${stack.schema}`, args: [input] });

  test('once: loads every matching CSV file (plain, gzip, in subdirectories); malformed rows land in _sluice_rejects with their line', async () => {
    const dir = join(root, 'orders');
    await put(dir, 'a.csv', 'id,customer,amount,note\n1,"Smith, Jane",10.5,"two\nlines"\n2,Bob,20,plain\n3,Eve,30\n4,Max,40,"said ""hi"""\n');
    await put(dir, 'b.csv', csv('id,customer,amount,note', [[5, 'Ann', 50, 'x'], [6, 'Tom', 60, 'y']]));
    await put(dir, 'c.csv.gz', gzipSync(csv('id,customer,amount,note', [[7, 'Kim', 70, 'z'], [8, 'Lee', 80, ''], [9, 'Ola', 90, 'w']])));
    await put(dir, '2024/d.csv', csv('id,customer,amount,note', [[10, 'Uma', 100, 'v'], [11, 'Ian', 110, 'u']]));
    await put(dir, 'notes.txt', 'not a data file');

    const result = await stack.withWorker(async () => {
      const handle = await run('files-orders', {
        source: { kind: 'files', path: dir, pattern: '**/*.{csv,csv.gz}', format: 'csv' },
        resource: { name: 'orders' },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        parallel: 2,
        once: true,
      });
      const r = (await handle.result()) as FilesResult;
      await saveHistory(handle, 'files-csv-once');
      const progress = await handle.query<Progress>('progress');
      assert.deepEqual([progress.done, progress.failed, progress.inFlight, progress.total, progress.rows], [4, 0, 0, 4, 10]);
      return r;
    });
    assert.deepEqual(result, { files: 4, loaded: 4, skipped: 0, failed: [], rows: 10, rejected: 1 });

    const table = `${stack.schema}.orders`;
    assert.equal(await count(stack.db, table), 10);
    const rows = await stack.db.query(`select id, customer, amount, note from ${table} order by id`);
    assert.deepEqual(rows.rows.map((r) => r.id), ['1', '2', '4', '5', '6', '7', '8', '9', '10', '11']);
    assert.deepEqual(rows.rows[0], { id: '1', customer: 'Smith, Jane', amount: '10.5', note: 'two\nlines' });
    assert.equal(rows.rows[2].note, 'said "hi"');
    assert.equal(rows.rows.find((r) => r.id === '8')!.note, null, 'an empty CSV field is null');
    const types = await stack.db.query(
      `select column_name, data_type from information_schema.columns where table_schema = $1 and table_name = 'orders' order by ordinal_position`,
      [stack.schema],
    );
    assert.deepEqual(types.rows.map((r) => `${r.column_name}:${r.data_type}`), ['id:bigint', 'customer:text', 'amount:numeric', 'note:text', '_sluice_load_id:text']);

    const rejects = await stack.db.query(`select source, reason, load_id from ${stack.schema}._sluice_rejects where resource = 'orders'`);
    assert.equal(rejects.rowCount, 1);
    assert.equal(rejects.rows[0].source, 'a.csv:5');
    assert.match(rejects.rows[0].reason, /^a\.csv line 5: expected 4 fields, found 3/);
    assert.match(rejects.rows[0].load_id, /\/file:a\.csv#1@sha256:[0-9a-f]{64}$/);

    const state = await stack.db.query(`select resource, state from ${stack.schema}._sluice_state where resource like 'files:orders:%' order by resource`);
    assert.deepEqual(state.rows.map((r) => r.resource), ['files:orders:2024/d.csv', 'files:orders:a.csv', 'files:orders:b.csv', 'files:orders:c.csv.gz']);
    assert.equal(state.rows[1].state.version, 1);
    const loads = await stack.db.query(`select partition, status from ${stack.schema}._sluice_loads where resource = 'orders' order by partition`);
    assert.deepEqual(loads.rows.map((r) => `${r.partition}:${r.status}`), ['2024/d.csv:completed', 'a.csv:completed', 'b.csv:completed', 'c.csv.gz:completed']);
  });

  test('a new run loads only the new and the changed files; an unchanged directory loads nothing', async () => {
    const dir = join(root, 'customers');
    await put(dir, 'part-1.csv', csv('id,name,tier', [[1, 'a', 1], [2, 'b', 1]]));
    await put(dir, 'part-2.csv', csv('id,name,tier', [[3, 'c', 1], [4, 'd', 1]]));
    await put(dir, 'part-3.csv', csv('id,name,tier', [[5, 'e', 1]]));
    const input = {
      source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
      // Merge on the key: a changed file's rows replace what its earlier version loaded.
      resource: { name: 'customers', writeDisposition: 'merge', primaryKey: 'id' },
      destination: { connection: 'DATABASE_URL', schema: stack.schema },
      once: true,
    };
    const table = `${stack.schema}.customers`;
    await stack.withWorker(async () => {
      const first = (await (await run('files-customers-1', input)).result()) as FilesResult;
      assert.deepEqual(first, { files: 3, loaded: 3, skipped: 0, failed: [], rows: 5, rejected: 0 });

      await put(dir, 'part-2.csv', csv('id,name,tier', [[3, 'c', 2], [4, 'd', 2], [6, 'f', 2]]));
      await put(dir, 'part-4.csv', csv('id,name,tier', [[7, 'g', 3]]));
      const handle = await run('files-customers-2', input);
      const second = (await handle.result()) as FilesResult;
      await saveHistory(handle, 'files-new-and-changed');
      assert.deepEqual(second, { files: 4, loaded: 2, skipped: 2, failed: [], rows: 4, rejected: 0 });
      const loads = await stack.db.query(`select workflow_id, partition from ${stack.schema}._sluice_loads where workflow_id like 'files-customers-2%' order by partition`);
      assert.deepEqual(loads.rows.map((r) => r.partition), ['part-2.csv', 'part-4.csv']);

      const third = (await (await run('files-customers-3', input)).result()) as FilesResult;
      assert.deepEqual(third, { files: 4, loaded: 0, skipped: 4, failed: [], rows: 0, rejected: 0 });
    });
    const rows = await stack.db.query(`select id, name, tier from ${table} order by id`);
    assert.deepEqual(
      rows.rows.map((r) => [r.id, r.name, r.tier]),
      [['1', 'a', '1'], ['2', 'b', '1'], ['3', 'c', '2'], ['4', 'd', '2'], ['5', 'e', '1'], ['6', 'f', '2'], ['7', 'g', '3']],
    );
    const state = await stack.db.query(`select state from ${stack.schema}._sluice_state where resource = 'files:customers:part-2.csv'`);
    assert.equal(state.rows[0].state.version, 2, 'the changed file was loaded as its second version');
  });

  test('merge: daily snapshot files that share a key; a file that drops it keeps it while another file still has it', async () => {
    const dir = join(root, 'snapshots');
    // Key 2 is in both days, with the same values.
    await put(dir, 'day-1.csv', csv('id,v', [[1, 'a'], [2, 'b']]));
    await put(dir, 'day-2.csv', csv('id,v', [[2, 'b'], [3, 'c']]));
    const input = {
      source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
      resource: { name: 'snapshots', writeDisposition: 'merge', primaryKey: 'id' },
      destination: { connection: 'DATABASE_URL', schema: stack.schema },
      once: true,
    };
    const ids = async () => (await stack.db.query(`select id from ${stack.schema}.snapshots order by id`)).rows.map((r) => Number(r.id));
    await stack.withWorker(async () => {
      await (await run('files-snapshots-1', input)).result();
      assert.deepEqual(await ids(), [1, 2, 3]);
      // day-1.csv is corrected and drops key 2: day-2.csv still has it, so it stays.
      await put(dir, 'day-1.csv', csv('id,v', [[1, 'a']]));
      const handle = await run('files-snapshots-2', input);
      assert.equal(((await handle.result()) as FilesResult).loaded, 1);
      await saveHistory(handle, 'files-merge-shared-key-kept');
      assert.deepEqual(await ids(), [1, 2, 3]);
      // day-2.csv drops it too: no file has it any more, and it goes.
      await put(dir, 'day-2.csv', csv('id,v', [[3, 'c']]));
      await (await run('files-snapshots-3', input)).result();
      assert.deepEqual(await ids(), [1, 3]);
    });
  });

  test('append: a changed file replaces the rows its previous version loaded, so the table mirrors the files', async () => {
    const dir = join(root, 'appended');
    await put(dir, 'x.csv', csv('id,v', [[1, 'a'], [2, 'b'], [3, 'c']]));
    await put(dir, 'y.csv', csv('id,v', [[10, 'z']]));
    const input = {
      source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
      resource: { name: 'appended', writeDisposition: 'append' },
      destination: { connection: 'DATABASE_URL', schema: stack.schema },
      once: true,
    };
    await stack.withWorker(async () => {
      await (await run('files-append-1', input)).result();
      await put(dir, 'x.csv', csv('id,v', [[1, 'a'], [3, 'c2'], [4, 'd']]));
      const second = (await (await run('files-append-2', input)).result()) as FilesResult;
      assert.equal(second.loaded, 1);
    });
    const rows = await stack.db.query(`select id::int, v from ${stack.schema}.appended order by id`);
    assert.deepEqual(rows.rows.map((r) => `${r.id}:${r.v}`), ['1:a', '3:c2', '4:d', '10:z']);
  });

  test('JSON Lines (plain and gzip): declared columns are enforced, bad lines rejected with their line, an unreadable file fails only itself', async () => {
    const dir = join(root, 'events');
    await put(dir, 'events-1.jsonl', jsonl([{ id: 1, day: '2024-01-01', amount: 1.5, tags: ['a'] }, { id: 2, day: '2024-01-02', amount: 2 }]));
    await put(
      dir,
      'events-2.jsonl.gz',
      gzipSync(
        [
          JSON.stringify({ id: 3, day: '2024-01-03', amount: 3 }),
          '',
          JSON.stringify({ id: 4, day: '2024-01-04', amount: 'a lot' }),
          '{"id": 5, "day": ',
          JSON.stringify({ id: 6, day: 'not a date', amount: 6 }),
          JSON.stringify({ id: 7, day: '2024-01-07', amount: 7 }),
        ].join('\n'),
      ),
    );
    await put(dir, 'events-3.jsonl.gz', Buffer.from('this was never gzip'));
    await put(dir, 'events-4.jsonl', jsonl([{ id: 8, day: '2024-01-08', amount: 8 }]));
    // Breaks off mid-stream, after thousands of good lines: none of them may be committed.
    const long = gzipSync(jsonl(Array.from({ length: 20_000 }, (_, i) => ({ id: 1_000 + i, day: '2024-02-01', amount: i }))));
    await put(dir, 'events-5.jsonl.gz', long.subarray(0, Math.floor(long.length * 0.8)));

    await stack.withWorker(async () => {
      const handle = await run('files-events', {
        source: { kind: 'files', path: dir, pattern: 'events-*', format: 'jsonl' },
        resource: { name: 'events', columns: { id: 'bigint', day: 'date', amount: 'numeric' } },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        parallel: 3,
        once: true,
      });
      const failure = await failedRun<FilesResult>(handle.result());
      await saveHistory(handle, 'files-jsonl-declared-and-unreadable');
      await saveHistory(handle, 'lease-files-failed-files');
      assert.equal(failure.type, 'FilesFailed');
      assert.match(failure.message, /2 of 5 files failed: events-3\.jsonl\.gz \(.*\); events-5\.jsonl\.gz/);
      const result = failure.result;
      assert.equal(result.files, 5);
      assert.equal(result.loaded, 3);
      assert.equal(result.rows, 5);
      assert.equal(result.rejected, 3);
      assert.deepEqual(result.failed.map((f) => f.file), ['events-3.jsonl.gz', 'events-5.jsonl.gz']);
      assert.match(result.failed[0]!.error, /cannot read events-3\.jsonl\.gz: incorrect header check/);
      assert.match(result.failed[1]!.error, /cannot read events-5\.jsonl\.gz: unexpected end of file/);
    });
    const table = `${stack.schema}.events`;
    const rows = await stack.db.query(`select id, day::text, amount::text, tags from ${table} order by id`);
    assert.deepEqual(rows.rows.map((r) => Number(r.id)), [1, 2, 3, 7, 8]);
    assert.deepEqual(rows.rows[0], { id: '1', day: '2024-01-01', amount: '1.5', tags: ['a'] });
    const rejects = await stack.db.query(`select source, reason from ${stack.schema}._sluice_rejects where resource = 'events' order by source`);
    assert.deepEqual(rejects.rows.map((r) => r.source), ['events-2.jsonl.gz:3', 'events-2.jsonl.gz:4', 'events-2.jsonl.gz:5']);
    assert.match(rejects.rows[0].reason, /column "amount" \(numeric\)/);
    assert.match(rejects.rows[1].reason, /^events-2\.jsonl\.gz line 4: invalid JSON/);
    assert.match(rejects.rows[2].reason, /column "day" \(date\)/);
    const failedLoads = await stack.db.query(`select partition, status from ${stack.schema}._sluice_loads where resource = 'events' and status <> 'completed' order by partition`);
    assert.deepEqual(failedLoads.rows.map((r) => `${r.partition}:${r.status}`), ['events-3.jsonl.gz:failed', 'events-5.jsonl.gz:failed']);
    const state = await stack.db.query(`select count(*)::int as n from ${stack.schema}._sluice_state where resource like 'files:events:%'`);
    assert.equal(state.rows[0].n, 3, 'the failed file is not recorded as loaded');
  });

  test('every: passes repeat, syncNow starts one at once, pause holds it, and new files are picked up', async () => {
    const dir = join(root, 'stream');
    await put(dir, 'one.csv', csv('id,v', [[1, 'a']]));
    await stack.withWorker(async () => {
      const handle: WorkflowHandle = await run('files-stream', {
        source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
        resource: { name: 'stream' },
        destination: { connection: 'DATABASE_URL', schema: stack.schema },
        every: '1h',
      });
      const passes = (n: number) => async () => {
        const p = await handle.query<Progress>('progress');
        return (p.passes as number) >= n && p.phase === 'waiting' ? p : undefined;
      };
      const afterFirst = await until('the first pass', passes(1));
      assert.equal(afterFirst.rows, 1);

      await put(dir, 'two.csv', csv('id,v', [[2, 'b'], [3, 'c']]));
      await handle.signal('pause');
      await handle.signal('syncNow');
      await new Promise((r) => setTimeout(r, 1_000));
      const paused = await handle.query<Progress>('progress');
      assert.equal(paused.paused, true);
      assert.equal(paused.passes, 1, 'no pass starts while paused');

      await handle.signal('resume');
      const afterSecond = await until('the second pass', passes(2));
      assert.deepEqual([afterSecond.total, afterSecond.done, afterSecond.loaded, afterSecond.skipped, afterSecond.rows], [2, 2, 1, 1, 3]);
      assert.equal(await count(stack.db, `${stack.schema}.stream`), 3);

      await handle.signal('syncNow');
      const afterThird = await until('the third pass', passes(3));
      assert.deepEqual([afterThird.loaded, afterThird.skipped, afterThird.rows], [0, 2, 3]);

      await handle.cancel();
      await assert.rejects(handle.result(), WorkflowFailedError);
      await saveHistory(handle, 'files-every-syncnow');
      await saveHistory(handle, 'files-bounded-every-syncnow');
    });
  });

  test('a pass too long for one history continues as new in the middle and loads every file exactly once', async () => {
    const dir = join(root, 'many');
    // Three events per activity (one per file, the default) alone pass the 400 after which the
    // test server suggests continue-as-new.
    const files = 160;
    for (let i = 0; i < files; i++) await put(dir, `part-${String(i).padStart(4, '0')}.csv`, csv('id,part', [[i * 2, i], [i * 2 + 1, i]]));
    const workflowId = `files-many-${stack.schema}`;
    await stack.withWorker(async () => {
      const handle = await run('files-many', {
        source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' },
        resource: { name: 'many' },
        destination: { schema: stack.schema },
        parallel: 8,
        once: true,
      });
      const result = (await handle.result()) as FilesResult;
      assert.deepEqual(result, { files, loaded: files, skipped: 0, failed: [], rows: files * 2, rejected: 0 });
      const latest = await stack.client.workflow.getHandle(workflowId).describe();
      assert.notEqual(latest.runId, handle.firstExecutionRunId, 'the test server suggests continue-as-new after 400 events');
      await saveHistory(stack.client.workflow.getHandle(workflowId, handle.firstExecutionRunId), 'files-continue-as-new-mid-pass');
      // The same in planned batches: the first run continues as new in the middle of a batch, the last resumes at its cursor.
      await saveHistory(stack.client.workflow.getHandle(workflowId, handle.firstExecutionRunId), 'files-bounded-batches');
      await saveHistory(stack.client.workflow.getHandle(workflowId, latest.runId), 'files-bounded-batches-last-run');
      // (files-grouped-loads-continued and -last-run are this run from when grouping was the default.)
    });
    assert.equal(await count(stack.db, `${stack.schema}.many`), files * 2);
    assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`, `resource = 'many'`), files);
  });

  test('small files load many to an activity, each in its own transaction: a bad file fails alone, the group in flight shows its files and rows', async () => {
    const dir = join(root, 'grouped');
    // Sorted first, so that the group in flight is slow enough to be seen (long enough to take a
    // few of the activity's once-a-second heartbeats at today's load speed).
    const bigRows = 1_500_000;
    await put(dir, 'a-big.csv', csv('id,part', Array.from({ length: bigRows }, (_, i) => [i, 0])));
    const small = 40;
    for (let i = 1; i <= small; i++) await put(dir, `b-${String(i).padStart(3, '0')}.csv`, csv('id,part', [[bigRows + i, i]]));
    await put(dir, 'b-020-broken.csv.gz', Buffer.from('this was never gzip'));
    await stack.withWorker(async () => {
      const handle = await run('files-grouped', {
        source: { kind: 'files', path: dir, pattern: '*.{csv,csv.gz}', format: 'csv' },
        resource: { name: 'grouped', columns: { id: 'bigint' } },
        destination: { schema: stack.schema },
        parallel: 2,
        filesPerActivity: 100,
        once: true,
        allowFailures: true,
      });
      const details = await waitFor('the group in flight, with its rows so far', async () => {
        const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        return /in flight: 21 files from a-big\.csv \(0\/21 done, [\d,.]+[kM]? rows so far\)/.test(meta.currentDetails ?? '') ? meta.currentDetails : undefined;
      }, 120_000);
      assert.match(details!, /\*\*loading files\*\* grouped/);
      const during = await handle.query<Progress>('progress');
      assert.ok(during.groupsInFlight === 1 || during.groupsInFlight === 2, `${during.groupsInFlight} groups in flight`);
      assert.equal(during.inFlight, 21 * (during.groupsInFlight as number), 'in flight counts files, 21 to a group');

      const result = (await handle.result()) as FilesResult;
      assert.equal(result.files, small + 2);
      assert.equal(result.loaded, small + 1);
      assert.equal(result.rows, bigRows + small);
      assert.deepEqual(result.failed.map((f) => f.file), ['b-020-broken.csv.gz']);
      assert.match(result.failed[0]!.error, /cannot read b-020-broken\.csv\.gz: incorrect header check/);
      const history = await handle.fetchHistory();
      const scheduled = history.events!.filter((e) => e.activityTaskScheduledEventAttributes).map((e) => e.activityTaskScheduledEventAttributes!.activityType!.name);
      assert.deepEqual(scheduled.filter((name) => name?.startsWith('loadFile')), ['loadFileGroup', 'loadFileGroup']);
      await saveHistory(handle, 'files-grouped-loads');
      await saveHistory(handle, 'files-grouped-opt-in');
    });
    // One load, one load id and one state row per file, as with one activity per file.
    const loads = await stack.db.query(`select status, count(*)::int as n, count(distinct load_id)::int as ids from ${stack.schema}._sluice_loads where resource = 'grouped' group by status order by status`);
    assert.deepEqual(loads.rows, [{ status: 'completed', n: small + 1, ids: small + 1 }, { status: 'failed', n: 1, ids: 1 }]);
    assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource like 'files:grouped:%'`), small + 1);
    assert.equal(await count(stack.db, `${stack.schema}.grouped`), bigRows + small);
  });

  test('a worker SIGKILLed in the middle of a file: another loads the file again from its start, exactly once', async () => {
    const dir = join(root, 'killed');
    const bigRows = 400_000;
    await put(dir, 'big.csv', bigCsv(bigRows));
    await put(dir, 'small-1.csv', csv('id,payload', [[bigRows + 1, 'x']]));
    await put(dir, 'small-2.csv', csv('id,payload', [[bigRows + 2, 'y']]));
    await killedInBigFile(
      'kill',
      'files-killed',
      { source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' }, resource: { name: 'killed' }, destination: { schema: stack.schema }, once: true },
      async () => {
        assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`, `partition = 'big.csv' and status = 'completed'`), 0, 'killed before the big file committed');
      },
      async (handle) => {
        await loadedOnceAfterKill(handle, 'killed', { files: 3, loaded: 3, skipped: 0, failed: [], rows: bigRows + 2, rejected: 0 });
        await saveHistory(handle, 'files-worker-killed');
      },
    );
  });

  test('a worker SIGKILLed in the middle of a group: the retried group finds the files it committed done, and loads the rest, each exactly once', async () => {
    const dir = join(root, 'killed-group');
    const bigRows = 400_000;
    for (let i = 1; i <= 10; i++) await put(dir, `a-${String(i).padStart(2, '0')}.csv`, csv('id,payload', [[bigRows + i, 'before']]));
    await put(dir, 'b-big.csv', bigCsv(bigRows));
    for (let i = 1; i <= 10; i++) await put(dir, `c-${String(i).padStart(2, '0')}.csv`, csv('id,payload', [[bigRows + 10 + i, 'after']]));
    await killedInBigFile(
      'kill-group',
      'files-killed-group',
      // parallel 1: the 21 files are one group, the big one in its middle.
      { source: { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' }, resource: { name: 'killed_group' }, destination: { schema: stack.schema }, parallel: 1, filesPerActivity: 100, once: true },
      async () => {
        assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`, `resource = 'killed_group' and status = 'completed'`), 10, 'the files before the big one had committed');
      },
      async (handle) => {
        const history = await loadedOnceAfterKill(handle, 'killed_group', { files: 21, loaded: 21, skipped: 0, failed: [], rows: bigRows + 20, rejected: 0 });
        assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`, `resource = 'killed_group'`), 21, 'one load per file, none twice');
        const groups = history.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'loadFileGroup').length;
        assert.equal(groups, 1, 'one group, retried');
        await saveHistory(handle, 'files-grouped-worker-killed');
        await saveHistory(handle, 'files-grouped-opt-in-worker-killed');
      },
    );
  });

  test('a run continued as new in the middle of a pass keeps its files and counts', async () => {
    const dir = join(root, 'continued');
    await put(dir, 'a.csv', csv('id', [[1], [2]]));
    await put(dir, 'b.csv', csv('id', [[3]]));
    await put(dir, 'c.csv', csv('id', [[4]]));
    const source = { kind: 'files', path: dir, pattern: '*.csv', format: 'csv' };
    const result = await stack.withWorker(async () => {
      // What a predecessor hands over after loading a.csv and failing b.csv in this pass.
      const listed = (await (await run('files-continued-list', { source, resource: { name: 'probe' }, destination: { schema: stack.schema }, once: true })).result()) as FilesResult;
      assert.equal(listed.loaded, 3);
      const fingerprints = await stack.db.query<{ path: string; fingerprint: string }>(
        `select state->>'path' as path, state->>'fingerprint' as fingerprint from ${stack.schema}._sluice_state where resource like 'files:probe:%' order by 1`,
      );
      const fp = new Map(fingerprints.rows.map((r) => [r.path, r.fingerprint]));
      const handle = await run('files-continued', {
        source,
        resource: { name: 'continued' },
        destination: { schema: stack.schema },
        once: true,
        // The pass carries a failure: allowFailures keeps the run COMPLETED with it in the result.
        allowFailures: true,
        continuation: {
          files: [['a.csv', fp.get('a.csv'), 1]],
          passes: 0,
          rows: 2,
          rejected: 0,
          pass: { loaded: 1, rows: 2, rejected: 0, failed: [{ file: 'b.csv', error: 'earlier failure', fingerprint: fp.get('b.csv') }] },
          paused: false,
          parallel: 4,
        },
      });
      return (await handle.result()) as FilesResult;
    });
    assert.deepEqual(result, { files: 3, loaded: 2, skipped: 0, failed: [{ file: 'b.csv', error: 'earlier failure' }], rows: 3, rejected: 0 });
    assert.deepEqual((await stack.db.query(`select id from ${stack.schema}.continued`)).rows.map((r) => r.id), ['4']);
  });

  test('invalid input fails at once, non-retryably, naming the field', async () => {
    await stack.withWorker(async () => {
      const err = await stack.client.workflow
        .execute('filesWorkflow', {
          taskQueue: stack.taskQueue,
          workflowId: `files-bad-${stack.schema}`,
          args: [{ source: { kind: 'files', path: root, format: 'xml' }, resource: { name: 'x' }, once: true }],
        })
        .catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${err}`);
      const cause = err.cause as Error & { type?: string; nonRetryable?: boolean };
      assert.equal(cause.type, 'InvalidInput');
      assert.equal(cause.nonRetryable, true);
      assert.match(cause.message, /source\.format/);
    });
  });
});
