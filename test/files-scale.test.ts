/**
 * filesWorkflow at a directory size where carrying the listing or the loaded files in workflow
 * state breaks Temporal's limits (2 MB per payload, 4 MB per gRPC message): 30,000 files load
 * exactly once each, and every run of the chain stays far under the limits. Plus the planner's
 * rule that a local file whose stat data is unchanged is not read at all.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { listEntries, listFiles, type ListedEntry, type ListedFile } from '../src/sources/files/list';
import { planBatch, type StoredFile } from '../src/sources/files/plan';
import type { FilesResult } from '../src/workflows/files';
import { count, testStack, type TestStack } from './helpers';

/** SLUICE_TEST_SCALE_FILES shortens a local run; the case, and the default, is 30,000 (about 20 minutes on a busy 2-core machine). */
const FILES = Number(process.env.SLUICE_TEST_SCALE_FILES ?? 30_000);
/** The default path (one activity per file) at a tenth of it: about 300 history events per 100 files, so it continues as new many times. */
const PER_FILE = Math.ceil(FILES / 10);
const DIRS = 30;
const EVENT_LIMIT = 256 * 1024;
const RUN_LIMIT = 2 * 1024 * 1024;

const pathOf = (i: number) => `d${String(i % DIRS).padStart(2, '0')}/f${String(i).padStart(5, '0')}.csv`;
const contentOf = (i: number, v = 'x') => `id,v\n${i},${v}\n`;

interface RunSize {
  runId: string;
  events: number;
  bytes: number;
  largestEvent: number;
}

/** Every run of the chain that starts at `firstRunId`, followed through continue-as-new, with its history's size. */
async function chainSizes(stack: TestStack, workflowId: string, firstRunId: string): Promise<RunSize[]> {
  const sizes: RunSize[] = [];
  let runId: string | undefined = firstRunId;
  while (runId) {
    const history: temporal.api.history.v1.IHistory = await stack.client.workflow.getHandle(workflowId, runId).fetchHistory();
    const events: temporal.api.history.v1.IHistoryEvent[] = history.events ?? [];
    const eventSizes = events.map((e) => temporal.api.history.v1.HistoryEvent.encode(e).finish().length);
    sizes.push({
      runId,
      events: events.length,
      bytes: temporal.api.history.v1.History.encode(history).finish().length,
      largestEvent: Math.max(...eventSizes),
    });
    runId = events.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
  }
  return sizes;
}

describe('filesWorkflow at scale', () => {
  let stack: TestStack;
  let root: string;
  before(async () => {
    stack = await testStack('files_scale');
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'files-scale-'));
  });
  after(async () => {
    await stack.close();
    await rm(root, { recursive: true, force: true });
  });

  const start = (workflowId: string, dir: string, resource: string, filesPerActivity: number): Promise<WorkflowHandleWithFirstExecutionRunId> =>
    stack.client.workflow.start('filesWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `${workflowId}-${stack.schema}`,
      args: [
        {
          source: { kind: 'files', path: dir, pattern: '**/*.csv', format: 'csv' },
          resource: { name: resource, columns: { id: 'bigint' } },
          destination: { schema: stack.schema },
          parallel: 32,
          filesPerActivity,
          once: true,
        },
      ],
    });

  /** `fileCount` files load exactly once with every history event and run far under the limits; a re-run loads only the new and changed. */
  async function loadAtScale(resource: string, fileCount: number, filesPerActivity: number): Promise<void> {
    const dir = join(root, resource);
    for (let d = 0; d < DIRS; d++) await mkdir(join(dir, `d${String(d).padStart(2, '0')}`), { recursive: true });
    for (let i = 0; i < fileCount; i += 500) {
      await Promise.all(Array.from({ length: Math.min(500, fileCount - i) }, (_, k) => writeFile(join(dir, pathOf(i + k)), contentOf(i + k))));
    }
    const table = `${stack.schema}.${resource}`;

    await stack.withWorker(async () => {
      const handle = await start(`files-${resource}`, dir, resource, filesPerActivity);
      const result = (await handle.result()) as FilesResult;
      assert.deepEqual(result, { files: fileCount, loaded: fileCount, skipped: 0, failed: [], rows: fileCount, rejected: 0 });

      const sizes = await chainSizes(stack, handle.workflowId, handle.firstExecutionRunId);
      assert.ok(sizes.length > 1, 'the chain continued as new');
      for (const run of sizes) {
        assert.ok(run.largestEvent < EVENT_LIMIT, `run ${run.runId}: an event of ${run.largestEvent} bytes`);
        assert.ok(run.bytes < RUN_LIMIT, `run ${run.runId}: a history of ${run.bytes} bytes in ${run.events} events`);
      }
      const largest = Math.max(...sizes.map((s) => s.largestEvent));
      const longest = Math.max(...sizes.map((s) => s.bytes));
      console.log(`files-scale (${filesPerActivity} per activity): ${sizes.length} runs, largest event ${largest} bytes, largest run history ${longest} bytes`);
    });
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${table}`);
    assert.deepEqual(rows.rows[0], { n: fileCount, d: fileCount });
    assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`, `resource = '${resource}' and status = 'completed'`), fileCount);
    assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource like 'files:${resource}:%'`), fileCount);

    // Two files rewritten (one of them to the same size and modification time), one new in an
    // existing directory and one in a new directory: exactly those four load.
    const kept = Math.floor(fileCount * 0.41);
    const rewritten = [7, kept];
    await writeFile(join(dir, pathOf(7)), contentOf(7, 'changed'));
    const sameSize = join(dir, pathOf(kept));
    const { mtime } = await stat(sameSize);
    await writeFile(sameSize, contentOf(kept, 'y'));
    await utimes(sameSize, mtime, mtime);
    await writeFile(join(dir, 'd03', 'late.csv'), contentOf(fileCount));
    await mkdir(join(dir, 'e-new'));
    await writeFile(join(dir, 'e-new', 'first.csv'), contentOf(fileCount + 1));

    await stack.withWorker(async () => {
      const handle = await start(`files-${resource}-again`, dir, resource, filesPerActivity);
      const result = (await handle.result()) as FilesResult;
      assert.deepEqual(result, { files: fileCount + 2, loaded: 4, skipped: fileCount - 2, failed: [], rows: 4, rejected: 0 });
      const loads = await stack.db.query(`select partition from ${stack.schema}._sluice_loads where workflow_id = $1 order by partition collate "C"`, [handle.workflowId]);
      assert.deepEqual(loads.rows.map((r) => r.partition), [pathOf(7), pathOf(kept), 'd03/late.csv', 'e-new/first.csv'].sort());
    });
    const again = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${table}`);
    assert.deepEqual(again.rows[0], { n: fileCount + 2, d: fileCount + 2 });
    const values = await stack.db.query(`select id::int, v from ${table} where id = any($1) order by id`, [rewritten]);
    assert.deepEqual(values.rows, [{ id: 7, v: 'changed' }, { id: kept, v: 'y' }], 'a changed file supersedes its old rows');
  }

  test(`${FILES.toLocaleString('en-US')} small files, many to an activity (filesPerActivity 100)`, () => loadAtScale('scale', FILES, 100));
  // The contract's default, one activity per file: its history stays bounded the same way.
  test(`${PER_FILE.toLocaleString('en-US')} files, one activity per file`, () => loadAtScale('scale_one', PER_FILE, 1));
});

describe('planBatch', () => {
  const entry = (path: string, fingerprint: string, statKey?: string, onHash: () => void = () => undefined): ListedEntry => ({
    path,
    size: 1,
    mtimeMs: 0,
    ...(statKey !== undefined ? { statKey } : {}),
    async fingerprinted(): Promise<ListedFile> {
      onHash();
      return { path, size: 1, mtimeMs: 0, fingerprint };
    },
  });
  async function* stream(entries: ListedEntry[]) {
    yield* entries;
  }
  const limits = { maxFiles: 2, maxBytes: 1 << 20, maxExamined: 100, lookupBatch: 2 };

  test('skips stored files by stat key without hashing, hashes the rest, versions the changed, stops at maxFiles with a cursor', async () => {
    const hashed: string[] = [];
    const stored = new Map<string, StoredFile>([
      ['a', { fingerprint: 'fa', version: 1, statKey: 'ka' }],
      ['b', { fingerprint: 'fb', version: 1, statKey: 'old' }],
      ['c', { fingerprint: 'fc', version: 3, statKey: 'kc' }],
    ]);
    const lookups: string[][] = [];
    const lookup = async (paths: string[]) => {
      lookups.push(paths);
      return new Map(paths.filter((p) => stored.has(p)).map((p) => [p, stored.get(p)!]));
    };
    const listing = ['a', 'b', 'c', 'd', 'e'].map((p) =>
      entry(p, p === 'c' ? 'fc2' : `f${p}`, p === 'b' ? 'new' : p === 'c' ? 'kc2' : `k${p}`, () => hashed.push(p)),
    );
    const batch = await planBatch(stream(listing), lookup, limits);
    assert.deepEqual(hashed, ['b', 'c', 'd'], 'a is not read: its stat key is the stored one');
    assert.deepEqual(
      batch.files.map((f) => [f.file.path, f.version, f.examined, f.file.statKey]),
      [['c', 4, 3, 'kc2'], ['d', 1, 4, 'kd']],
    );
    assert.deepEqual([batch.examined, batch.unchanged, batch.cursor, batch.exhausted], [4, 2, 'd', false]);
    assert.deepEqual(lookups, [['a', 'b'], ['c', 'd']], 'one lookup per key batch');

    const rest = await planBatch(stream(listing.slice(4)), lookup, limits);
    assert.deepEqual([rest.files.map((f) => f.file.path), rest.examined, rest.cursor, rest.exhausted], [['e'], 1, 'e', true]);
    const empty = await planBatch(stream([]), lookup, limits);
    assert.deepEqual([empty.files, empty.examined, empty.cursor, empty.exhausted], [[], 0, undefined, true]);
  });
});

describe('listEntries', () => {
  test('walks in code-unit path order, and from any cursor yields exactly the paths after it', async () => {
    const dir = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'list-entries-'));
    try {
      // Names around "/" in code-unit order: "-" and "." sort before it, "0" after it.
      const paths = ['a-b.csv', 'a.csv', 'a/b.csv', 'a/c/d.csv', 'a0.csv', 'b/a.csv', 'b.csv', 'ä.csv', 'z/y/x.csv'];
      for (const path of paths) {
        await mkdir(join(dir, path, '..'), { recursive: true });
        await writeFile(join(dir, path), contentOf(1));
      }
      const sorted = [...paths].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const walk = async (after: string | undefined) => {
        const seen: string[] = [];
        for await (const e of listEntries(dir, '**/*.csv', after, [dir])) seen.push(e.path);
        return seen;
      };
      assert.deepEqual(await walk(undefined), sorted);
      assert.deepEqual((await listFiles(dir, '**/*.csv', undefined, [dir])).map((f) => f.path), sorted);
      for (const [i, cursor] of sorted.entries()) assert.deepEqual(await walk(cursor), sorted.slice(i + 1), `after ${cursor}`);
      // A cursor that is no listed path (the file was deleted since) resumes where it would sort.
      assert.deepEqual(await walk('a/bb'), ['a/c/d.csv', 'a0.csv', 'b.csv', 'b/a.csv', 'z/y/x.csv', 'ä.csv']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
