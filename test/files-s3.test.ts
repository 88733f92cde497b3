import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { startS3Server, type S3Server } from '../src/dev/s3-server';
import type { Progress } from '../src/inputs';
import type { FilesResult } from '../src/workflows/files';
import { count, killHard, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';
import { sameVersion } from '../src/sources/files/plan';
import { startProxy, type TcpProxy } from './proxy';
import { requireS3, type TestS3 } from './s3';

const WRONG_SECRET = 'not-the-secret-0123456789abcdef';

function csv(rows: [number, string][]): string {
  return ['id,v', ...rows.map(([id, v]) => `${id},${v}`)].join('\n') + '\n';
}

describe('filesWorkflow on object storage', () => {
  let stack: TestStack;
  let s3: TestS3;
  let worker: ChildProcess;
  /** Everything the worker process printed: credentials must never be in it. */
  let workerOutput = '';
  before(async () => {
    s3 = requireS3();
    stack = await testStack('s3');
    // A real worker process, so its logs can be searched for the credentials. WRONG names the
    // same store with a secret that is not the right one.
    worker = await spawnWorker(stack.taskQueue, {
      WRONG_S3_ENDPOINT: process.env.TEST_S3_S3_ENDPOINT,
      WRONG_S3_ACCESS_KEY_ID: process.env.TEST_S3_S3_ACCESS_KEY_ID,
      WRONG_S3_SECRET_ACCESS_KEY: WRONG_SECRET,
      WRONG_S3_FORCE_PATH_STYLE: 'true',
    });
    const keep = (d: Buffer) => (workerOutput += d.toString());
    worker.stdout!.on('data', keep);
    worker.stderr!.on('data', keep);
  });
  after(async () => {
    if (worker) await killHard(worker);
    await stack?.close();
  });

  const start = (workflowId: string, input: Record<string, unknown>) =>
    stack.client.workflow.start('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `${workflowId}-${stack.schema}`, args: [input] });

  const histories: string[] = [];
  const runOnce = async (workflowId: string, input: Record<string, unknown>, scenario?: string) => {
    const handle = await start(workflowId, input);
    const result = (await handle.result()) as FilesResult;
    histories.push(historyToJSON(await handle.fetchHistory()));
    if (scenario) await saveHistory(handle, scenario);
    return { handle, result };
  };

  test('a prefix of many objects across nested keys loads once; a later pass loads only new and changed objects, and a changed object supersedes its rows', async () => {
    const bucket = await s3.bucket('drops');
    const keys: string[] = [];
    for (let day = 1; day <= 6; day++) {
      for (let part = 0; part < 5; part++) {
        const id = day * 100 + part;
        const key = `partner-a/2024/01/${String(day).padStart(2, '0')}/part-${part}.csv${part % 2 ? '.gz' : ''}`;
        const body = csv([[id * 10, `a${id}`], [id * 10 + 1, `b${id}`]]);
        await s3.put(bucket, key, part % 2 ? gzipSync(body) : body);
        keys.push(key);
      }
    }
    // Outside the prefix, not matching the pattern, and a dotfile: none of them is loaded.
    await s3.put(bucket, 'partner-b/x.csv', csv([[1, 'other partner']]));
    await s3.put(bucket, 'partner-a/README.txt', 'not data');
    await s3.put(bucket, 'partner-a/.hidden.csv', csv([[2, 'hidden']]));

    const input = {
      source: { kind: 'files', url: `s3://${bucket}/partner-a/`, pattern: '**/*.{csv,csv.gz}', format: 'csv', connection: s3.connection },
      resource: { name: 'drops', columns: { id: 'bigint' } },
      destination: { schema: stack.schema },
      parallel: 4,
      once: true,
    };
    const first = await runOnce('s3-first', input, 's3-csv-nested-prefix');
    assert.deepEqual(first.result, { files: 30, loaded: 30, skipped: 0, failed: [], rows: 60, rejected: 0 });
    const progress = await first.handle.query<Progress>('progress');
    assert.equal(progress.batchFilesDone, 30);
    assert.ok((progress.batchBytesDone as number) > 0 && progress.batchBytesDone === progress.batchBytes);
    const table = `${stack.schema}.drops`;
    assert.equal(await count(stack.db, table), 60);

    // A new run over the same prefix: nothing is loaded again.
    const again = await runOnce('s3-again', input);
    assert.deepEqual(again.result, { files: 30, loaded: 0, skipped: 30, failed: [], rows: 0, rejected: 0 });

    // Two new objects and one rewritten (new ETag): exactly those three load.
    await s3.put(bucket, 'partner-a/2024/02/01/part-0.csv', csv([[90000, 'new']]));
    await s3.put(bucket, 'partner-a/2024/02/01/part-1.csv', csv([[90001, 'new']]));
    await s3.put(bucket, keys[0]!, csv([[1000, 'rewritten'], [1002, 'added']]));
    const third = await runOnce('s3-third', input, 's3-csv-new-and-changed');
    assert.deepEqual(third.result, { files: 32, loaded: 3, skipped: 29, failed: [], rows: 4, rejected: 0 });
    assert.equal(await count(stack.db, table), 62, "60 - the 2 old rows of the rewritten object + its 2 new rows + 2 new objects");
    const changed = await stack.db.query(`select id::int, v from ${table} where id between 1000 and 1002 order by id`);
    assert.deepEqual(changed.rows, [{ id: 1000, v: 'rewritten' }, { id: 1002, v: 'added' }], 'the old version of the object left no rows');
  });

  test('a versioned bucket: objects are known by version id too, read as listed; a new version reloads, a deleted key is gone from the listing', async () => {
    const { PutBucketVersioningCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    const bucket = await s3.bucket('versioned');
    await s3.client.send(new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: 'Enabled' } }));
    const put = async (key: string, body: string) => (await s3.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }))).VersionId!;
    const first = await put('in/a.csv', csv([[1, 'a1'], [2, 'a1']]));
    await put('in/b.csv', csv([[3, 'b1']]));
    const input = {
      source: { kind: 'files', url: `s3://${bucket}/in/`, pattern: '*.csv', format: 'csv', connection: s3.connection },
      resource: { name: 'versioned', columns: { id: 'bigint' } },
      destination: { schema: stack.schema },
      once: true,
    };
    const loaded = await runOnce('s3-versioned', input, 's3-versioned-bucket');
    assert.deepEqual(loaded.result, { files: 2, loaded: 2, skipped: 0, failed: [], rows: 3, rejected: 0 });
    const state = await stack.db.query(`select state->>'fingerprint' as f from ${stack.schema}._sluice_state where resource = 'files:versioned:a.csv'`);
    assert.match(state.rows[0].f, new RegExp(`^s3:[0-9a-f]+:\\d+@${first}$`), 'the version id is part of the fingerprint');

    // A new version of a.csv, b.csv deleted (its latest version is a delete marker), c.csv new.
    await put('in/a.csv', csv([[1, 'a2']]));
    await s3.remove(bucket, 'in/b.csv');
    await put('in/c.csv', csv([[4, 'c1']]));
    const next = await runOnce('s3-versioned-again', input);
    assert.deepEqual(next.result, { files: 2, loaded: 2, skipped: 0, failed: [], rows: 2, rejected: 0 });
    const rows = await stack.db.query(`select id::int, v from ${stack.schema}.versioned order by id`);
    assert.deepEqual(rows.rows, [{ id: 1, v: 'a2' }, { id: 3, v: 'b1' }, { id: 4, v: 'c1' }], 'the new version superseded the old; a deleted object keeps its rows');
  });

  test('a fingerprint stored before version ids were listed still names the same object', () => {
    assert.equal(sameVersion('s3:abc:10', 's3:abc:10@v2'), true);
    assert.equal(sameVersion('s3:abc:10', 's3:abd:10@v2'), false, 'another ETag');
    assert.equal(sameVersion('s3:abc:10@v1', 's3:abc:10@v2'), false, 'another version');
    assert.equal(sameVersion('sha256:x', 'sha256:x'), true);
  });

  test('more objects than one batch: each planned batch resumes the listing after the last key (StartAfter), and every object loads once', async () => {
    const bucket = await s3.bucket('batches');
    // parallel 1 plans 50 files per batch: 130 objects take three batches, across nested keys.
    const objects = 130;
    const keys = Array.from({ length: objects }, (_, i) => `in/${i % 3 === 0 ? 'deep/' : ''}k-${String(i).padStart(3, '0')}.csv`);
    for (const [i, key] of keys.entries()) await s3.put(bucket, key, csv([[i, `v${i}`]]));
    const input = {
      source: { kind: 'files', url: `s3://${bucket}/in/`, pattern: '**/*.csv', format: 'csv', connection: s3.connection },
      resource: { name: 'batched', columns: { id: 'bigint' } },
      destination: { schema: stack.schema },
      parallel: 1,
      once: true,
    };
    const { handle, result } = await runOnce('s3-batches', input);
    assert.deepEqual(result, { files: objects, loaded: objects, skipped: 0, failed: [], rows: objects, rejected: 0 });
    // Batches planned over the whole chain (the run may have continued as new in between).
    let plans = 0;
    for (let runId: string | null | undefined = handle.firstExecutionRunId; runId; ) {
      const history: Awaited<ReturnType<WorkflowHandle['fetchHistory']>> = await stack.client.workflow.getHandle(handle.workflowId, runId).fetchHistory();
      const events = history.events ?? [];
      plans += events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'planFilesBatch').length;
      runId = events.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
    }
    assert.ok(plans >= 3, `planned in batches (${plans})`);
    const rows = await stack.db.query(`select count(*)::int as n, count(distinct id)::int as d from ${stack.schema}.batched`);
    assert.deepEqual(rows.rows[0], { n: objects, d: objects });
  });

  test('Parquet on object storage is read by byte ranges, with its types', async () => {
    const dir = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 's3-parquet-'));
    await mkdir(dir, { recursive: true });
    await promisify(execFile)('python3', [join(__dirname, 'fixtures', 'parquet_types.py'), dir]);
    const bucket = await s3.bucket('parquet');
    for (const name of (await readdir(dir)).filter((n) => n.endsWith('.parquet'))) await s3.put(bucket, `year=2024/${name}`, await readFile(join(dir, name)));
    const expected = JSON.parse(await readFile(join(dir, 'expected.json'), 'utf8')) as Record<string, string | null>[];
    const { result } = await runOnce('s3-parquet', {
      source: { kind: 'files', url: `s3://${bucket}`, pattern: '**/*.parquet', format: 'parquet', connection: s3.connection },
      resource: { name: 'typed' },
      destination: { schema: stack.schema },
      once: true,
    });
    assert.deepEqual(result, { files: 3, loaded: 3, skipped: 0, failed: [], rows: expected.length, rejected: 0 });
    const r = await stack.db.query(`select sum(price)::text as price, format_type(pg_typeof(min(at_ns))::oid, null) as at_ns from ${stack.schema}.typed`);
    const want = expected.reduce((sum, row) => sum + (row.price === null ? 0 : Math.round(Number(row.price) * 100)), 0);
    assert.deepEqual(r.rows[0], { price: (want / 100).toFixed(2), at_ns: 'timestamp with time zone' });
    await rm(dir, { recursive: true, force: true });
  });

  test('bad or missing credentials fail the run at once, naming the variables and not their values', async () => {
    const bucket = await s3.bucket('locked');
    await s3.put(bucket, 'a.csv', csv([[1, 'x']]));
    const failure = async (workflowId: string, connection: string) => {
      const handle = await start(workflowId, {
        source: { kind: 'files', url: `s3://${bucket}/`, pattern: '*.csv', format: 'csv', connection },
        resource: { name: 'locked' },
        destination: { schema: stack.schema },
        once: true,
      });
      let message = '';
      await assert.rejects(handle.result(), (err: unknown) => {
        assert.ok(err instanceof WorkflowFailedError);
        message = String((err.cause as Error)?.message);
        return true;
      });
      histories.push(historyToJSON(await handle.fetchHistory()));
      return message;
    };
    // A wrong secret: the store says no, and the hint names the variables to check.
    assert.match(await failure('s3-wrong-secret', 'WRONG'), /cannot list .*WRONG_S3_ACCESS_KEY_ID \/ WRONG_S3_SECRET_ACCESS_KEY/s);
    // No variables at all for the name: the message says which ones to set.
    assert.match(await failure('s3-unset', 'NOT_CONFIGURED'), /NOT_CONFIGURED_S3_ACCESS_KEY_ID, NOT_CONFIGURED_S3_SECRET_ACCESS_KEY/);
  });

  test('credentials appear nowhere in history, worker logs or tables', async () => {
    assert.ok(histories.length >= 4, 'the runs above recorded their histories');
    const { rows } = await stack.db.query<{ t: string }>(`select table_name as t from information_schema.tables where table_schema = $1`, [stack.schema]);
    let tables = '';
    for (const { t } of rows) {
      const dump = await stack.db.query<{ row: string }>(`select t::text as row from ${stack.schema}."${t}" t`);
      tables += dump.rows.map((r) => r.row).join('\n');
    }
    assert.ok(tables.includes('rewritten') && workerOutput.length > 0 && histories.join('').includes('s3://'), 'the searched text is the real output');
    for (const secret of [...s3.secrets, WRONG_SECRET]) {
      for (const [where, text] of [['history', histories.join('\n')], ['worker logs', workerOutput], ['tables', tables]] as const) {
        assert.ok(!text.includes(secret), `a credential appears in the ${where}`);
      }
    }
  });
});

describe('filesWorkflow when object storage goes away mid-object', () => {
  let stack: TestStack;
  let server: S3Server;
  let proxy: TcpProxy;
  let root: string;
  before(async () => {
    requireS3();
    stack = await testStack('s3cut');
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 's3-cut-'));
    // A server of this test's own, so stopping it disturbs no other test.
    server = await startS3Server({ dir: root, accessKeyId: 'cutkey', secretAccessKey: 'cutsecret0123456789' });
    // The worker reaches it through a proxy at 2 MB/s: the 19 MB object is still being read
    // when the test takes the server away.
    const target = new URL(server.endpoint);
    proxy = await startProxy({ host: target.hostname, port: Number(target.port) }, 2_000_000);
    Object.assign(process.env, {
      CUT_S3_ENDPOINT: proxy.endpoint,
      CUT_S3_ACCESS_KEY_ID: server.accessKeyId,
      CUT_S3_SECRET_ACCESS_KEY: server.secretAccessKey,
      CUT_S3_FORCE_PATH_STYLE: 'true',
    });
  });
  after(async () => {
    await proxy?.close();
    await server?.stop();
    await stack?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('the server stopped during a read and started again: the object is retried and loaded exactly once', async () => {
    const { S3Client, CreateBucketCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    const client = new S3Client({
      endpoint: server.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    });
    await client.send(new CreateBucketCommand({ Bucket: 'cut' }));
    const total = 400_000;
    const big = ['id,v', ...Array.from({ length: total }, (_, i) => `${i},${'x'.repeat(40)}${i}`)].join('\n') + '\n';
    await client.send(new PutObjectCommand({ Bucket: 'cut', Key: 'big.csv', Body: big }));
    await client.send(new PutObjectCommand({ Bucket: 'cut', Key: 'small.csv', Body: csv([[-1, 'small']]) }));
    client.destroy();

    await stack.withWorker(async () => {
      const handle = await stack.client.workflow.start('filesWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `s3-cut-${stack.schema}`,
        args: [
          {
            source: { kind: 'files', url: 's3://cut/', pattern: '*.csv', format: 'csv', connection: 'CUT' },
            resource: { name: 'cut', columns: { id: 'bigint' } },
            destination: { schema: stack.schema },
            parallel: 2,
            maxAttempts: 50,
            once: true,
          },
        ],
      });
      // Rows are flowing from the object when the server goes away.
      await waitFor('the big object to be part-read', async () => (await rowsHeartbeated(handle)) > 0, 120_000);
      assert.ok((await rowsHeartbeated(handle)) < total, 'the server goes away in the middle of the object');
      await server.stop();
      proxy.cut();
      await waitFor('the interrupted read to fail and be retried', async () => {
        const d = await handle.describe();
        return (d.raw.pendingActivities ?? []).some((a) => (a.attempt ?? 0) > 1 && a.lastFailure);
      });
      await server.start();
      proxy.open();
      const result = (await handle.result()) as FilesResult;
      assert.deepEqual(result, { files: 2, loaded: 2, skipped: 0, failed: [], rows: total + 1, rejected: 0 });
    });
    const table = `${stack.schema}.cut`;
    assert.equal(await count(stack.db, table), total + 1);
    assert.equal(await count(stack.db, `(select id from ${table} group by id having count(*) > 1) d`), 0, 'no row loaded twice');
  });
});

/** Rows the loadFile activity last reported in its heartbeat ({ file, rows }). */
async function rowsHeartbeated(handle: WorkflowHandle): Promise<number> {
  const d = await handle.describe();
  for (const activity of d.raw.pendingActivities ?? []) {
    const data = activity.heartbeatDetails?.payloads?.[0]?.data;
    if (!data) continue;
    const details = JSON.parse(Buffer.from(data).toString()) as { file?: string; rows?: number };
    if (details.file === 'big.csv' && (details.rows ?? 0) > 0) return details.rows!;
  }
  return 0;
}
