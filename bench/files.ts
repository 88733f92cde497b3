/**
 * `npm run bench:files`: filesWorkflow at parallel 4 over object storage (SeaweedFS, CSV and
 * Parquet) and over a local directory (CSV), next to a raw `COPY FROM STDIN` of the same rows in
 * the same run. BENCH_FILES x BENCH_ROWS rows (default 100 x 10,000; the full size is
 * BENCH_FILES=1000). Then a drop of many small files: BENCH_SMALL_FILES one-row CSV files
 * (default 5,000) at parallel 32, in files per second (BENCH_SMALL_FILES=0 skips it). Last, the
 * same local CSV loads called directly (no Temporal) at the same parallelism.
 */
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { loadResource } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { FilesSource, Resource } from '../src/inputs';
import { extractFile, listFiles } from '../src/sources/files';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startS3Server } from '../src/dev/s3-server';
import { startDevServer } from '../src/dev/temporal-server';
import { benchWorker } from './worker';

const FILES = Number(process.env.BENCH_FILES ?? 100);
const ROWS = Number(process.env.BENCH_ROWS ?? 10_000);
const PARALLEL = 4;
const SMALL_FILES = Number(process.env.BENCH_SMALL_FILES ?? 5_000);
const SMALL_PARALLEL = 32;

function csvFile(n: number): string {
  const lines = ['id,at,amount,label'];
  for (let i = 0; i < ROWS; i++) {
    const id = n * ROWS + i;
    lines.push(`${id},2024-01-01T00:00:${String(i % 60).padStart(2, '0')}Z,${(id % 10_000) / 100},label ${id}`);
  }
  return lines.join('\n') + '\n';
}

const PARQUET_WRITER = `
import sys, pyarrow as pa, pyarrow.parquet as pq, datetime as dt
out, files, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for n in range(files):
    ids = list(range(n * rows, (n + 1) * rows))
    pq.write_table(pa.table({
        "id": pa.array(ids, pa.int64()),
        "at": pa.array([dt.datetime(2024, 1, 1, 0, 0, i % 60, tzinfo=dt.timezone.utc) for i in range(rows)], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([(i % 10000) / 100 for i in ids], pa.float64()),
        "label": pa.array([f"label {i}" for i in ids], pa.string()),
    }), f"{out}/part-{n:05d}.parquet")
`;

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const scratch = await mkdtemp(join(tmpdir(), 'sluice-bench-files-'));
  // The worker reads only under SLUICE_FILES_ROOTS: the bench's drops are in its scratch directory.
  process.env.SLUICE_FILES_ROOTS = [process.env.SLUICE_FILES_ROOTS, scratch].filter(Boolean).join(',');
  await chmod(scratch, 0o755);
  const [server, db, s3] = await Promise.all([
    startDevServer({ port: await freePort() }),
    startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true }),
    startS3Server({ dir: join(scratch, 's3'), accessKeyId: 'benchkey', secretAccessKey: 'benchsecret0123456789' }),
  ]);
  Object.assign(process.env, {
    DATABASE_URL: db.url,
    BENCH_S3_ENDPOINT: s3.endpoint,
    BENCH_S3_ACCESS_KEY_ID: s3.accessKeyId,
    BENCH_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
    BENCH_S3_FORCE_PATH_STYLE: 'true',
  });
  const pool = new pg.Pool({ connectionString: db.url });
  try {
    console.log(`preparing ${FILES} files x ${ROWS} rows (CSV and Parquet, local and in S3)`);
    const local = join(scratch, 'csv');
    const parquetDir = join(scratch, 'parquet');
    await mkdir(local);
    await mkdir(parquetDir);
    const texts: string[] = [];
    for (let n = 0; n < FILES; n++) {
      texts.push(csvFile(n));
      await writeFile(join(local, `part-${String(n).padStart(5, '0')}.csv`), texts[n]!);
    }
    await promisify(execFile)('python3', ['-c', PARQUET_WRITER, parquetDir, String(FILES), String(ROWS)]);
    const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
    await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
    for (const name of await readdir(local)) await client.send(new PutObjectCommand({ Bucket: 'bench', Key: `csv/${name}`, Body: await readFile(join(local, name)) }));
    for (const name of await readdir(parquetDir)) await client.send(new PutObjectCommand({ Bucket: 'bench', Key: `parquet/${name}`, Body: await readFile(join(parquetDir, name)) }));
    client.destroy();

    // Baseline: the same rows through one raw COPY FROM STDIN into a table with the same types.
    await pool.query('create table raw_copy (id bigint, at timestamptz, amount numeric, label text)');
    const rawStarted = Date.now();
    const c = await pool.connect();
    try {
      const body = Readable.from((function* () {
        for (const t of texts) yield t.slice(t.indexOf('\n') + 1);
      })());
      await pipeline(body, c.query(copyFrom('copy raw_copy from stdin with (format csv)')));
    } finally {
      c.release();
    }
    const rawMs = Date.now() - rawStarted;

    const { client: temporal, worker, close } = await benchWorker(server.address);
    const runs: [string, Record<string, unknown>][] = [
      ['local directory, CSV', { kind: 'files', path: local, pattern: '*.csv', format: 'csv' }],
      ['S3 (SeaweedFS), CSV', { kind: 'files', url: 's3://bench/csv/', pattern: '*.csv', format: 'csv', connection: 'BENCH' }],
      ['S3 (SeaweedFS), Parquet', { kind: 'files', url: 's3://bench/parquet/', pattern: '*.parquet', format: 'parquet', connection: 'BENCH' }],
    ];
    const results: [string, number][] = [];
    const small = join(scratch, 'small');
    await mkdir(small);
    for (let n = 0; n < SMALL_FILES; n += 500) {
      await Promise.all(
        Array.from({ length: Math.min(500, SMALL_FILES - n) }, (_, k) => writeFile(join(small, `f-${String(n + k).padStart(6, '0')}.csv`), `id,label\n${n + k},small ${n + k}\n`)),
      );
    }
    // One activity per file (the default) against many small files to an activity, same drop, same run.
    const smallRuns: [number, number][] = [];
    await worker.runUntil(async () => {
      for (const [i, [label, source]] of runs.entries()) {
        const started = Date.now();
        const result = (await temporal.workflow.execute('filesWorkflow', {
          taskQueue: 'bench',
          workflowId: `bench-files-${i}`,
          args: [{ source, resource: { name: `run_${i}`, columns: { id: 'bigint', at: 'timestamptz', amount: 'numeric' } }, destination: { schema: 'bench' }, parallel: PARALLEL, once: true }],
        })) as { rows: number; failed: unknown[] };
        if (result.rows !== FILES * ROWS || result.failed.length) throw new Error(`${label}: unexpected result ${JSON.stringify(result)}`);
        results.push([label, Date.now() - started]);
      }
      for (const filesPerActivity of SMALL_FILES > 0 ? [1, 100] : []) {
        const started = Date.now();
        const result = (await temporal.workflow.execute('filesWorkflow', {
          taskQueue: 'bench',
          workflowId: `bench-files-small-${filesPerActivity}`,
          args: [
            {
              source: { kind: 'files', path: small, pattern: '*.csv', format: 'csv' },
              resource: { name: `small_${filesPerActivity}`, columns: { id: 'bigint' } },
              destination: { schema: 'bench' },
              parallel: SMALL_PARALLEL,
              filesPerActivity,
              once: true,
            },
          ],
        })) as { rows: number; failed: unknown[] };
        if (result.rows !== SMALL_FILES || result.failed.length) throw new Error(`small files: unexpected result ${JSON.stringify(result)}`);
        smallRuns.push([filesPerActivity, Date.now() - started]);
      }
    });
    await close();

    // The same local CSV loads called directly (loadResource + extractFile, as loadFile calls them),
    // at the same parallelism, without Temporal: what the workflow adds is the difference.
    const listed = await listFiles(local, '*.csv');
    const direct: FilesSource = FilesSource.parse({ kind: 'files', path: local, pattern: '*.csv', format: 'csv' });
    const resource = Resource.parse({ name: 'direct', columns: { id: 'bigint', at: 'timestamptz', amount: 'numeric' } });
    const directStarted = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        for (let i = next++; i < listed.length; i = next++) {
          const file = listed[i]!;
          await loadResource({
            url: db.url,
            schema: 'bench',
            table: 'direct',
            resource,
            loadId: `direct/${file.path}`,
            partition: file.path,
            supersede: { kind: 'file', file: file.path },
            data: await extractFile(direct, file),
            state: { key: `files:direct:${file.path}`, value: { path: file.path, fingerprint: file.fingerprint } },
          });
        }
      }),
    );
    const directMs = Date.now() - directStarted;
    const loaded = Number((await pool.query('select count(*) as n from bench.direct')).rows[0].n);
    if (loaded !== FILES * ROWS) throw new Error(`direct loads: ${loaded} rows, expected ${FILES * ROWS}`);
    results.push(['engine called directly (no Temporal), local directory, CSV', directMs]);

    const total = FILES * ROWS;
    const line = (label: string, ms: number) =>
      console.log(`| ${label} | ${(ms / 1000).toFixed(2)} | ${Math.round(total / (ms / 1000)).toLocaleString('en-US')} | ${Math.round((rawMs / ms) * 100)}% |`);
    console.log(`\n| ${FILES} files x ${ROWS.toLocaleString('en-US')} rows, parallel ${PARALLEL} | seconds | rows/s | vs raw COPY |`);
    console.log('|---|---:|---:|---:|');
    line('raw `COPY FROM STDIN` of the same rows (baseline)', rawMs);
    for (const [label, ms] of results) line(label.startsWith('engine') ? label : `filesWorkflow, ${label}`, ms);
    if (smallRuns.length) {
      console.log(`\n| ${SMALL_FILES.toLocaleString('en-US')} one-row CSV files, local directory, parallel ${SMALL_PARALLEL} | seconds | files/s |`);
      console.log('|---|---:|---:|');
      for (const [perActivity, ms] of smallRuns) {
        console.log(`| filesWorkflow, filesPerActivity ${perActivity} | ${(ms / 1000).toFixed(2)} | ${Math.round(SMALL_FILES / (ms / 1000)).toLocaleString('en-US')} |`);
      }
    }
  } finally {
    await pool.end();
    await closePools();
    await s3.stop();
    await server.stop();
    await db.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
