/**
 * `npm run bench:backfill`: 365 daily partitions of 10 rows at parallel 20 through a real
 * Temporal dev server and an in-process worker, reported as wall milliseconds per partition,
 * next to the same 365 loads called directly (no Temporal) at the same concurrency; then the
 * same direct loads again into the table after it was filled with BENCH_FILL_ROWS other rows
 * (default 10,000,000): each partition's range delete uses the index sluice created on the
 * partition column, so a partition costs about the same as into the empty table. For
 * comparison, the first 20 of those partitions once more without that index.
 *
 *   BENCH_FILL_ROWS=10000000 (0 skips the filled-table runs)
 */
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createActivities } from '../src/activities';
import { loadResource } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startDevServer } from '../src/dev/temporal-server';
import { Resource } from '../src/inputs';
import { partitionAt } from '../src/plan/partitions';
import { defineResource, defineSource, registerSource } from '../src/sources/registered';
import type { Row } from '../src/sources/types';

const PARTITIONS = 365;
const PARALLEL = 20;
const ROWS_PER_PARTITION = 10;
const FILL_ROWS = Number(process.env.BENCH_FILL_ROWS ?? 10_000_000);

function* tenRows(start: string): Generator<Row> {
  const t0 = Date.parse(start);
  for (let i = 0; i < ROWS_PER_PARTITION; i++) {
    yield { id: t0 / 1000 + i, at: new Date(t0 + i * 60_000).toISOString(), v: i };
  }
}

registerSource(
  defineSource({
    name: 'bench',
    resources: [defineResource({ name: 'rows', async *extract(ctx) { yield* tenRows(ctx.partition!.start); } })],
  }),
);

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const scratch = await mkdtemp(join(tmpdir(), 'sluice-bench-'));
  await chmod(scratch, 0o755);
  const [server, db] = await Promise.all([
    startDevServer({ port: await freePort() }),
    startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true }),
  ]);
  process.env.DATABASE_URL = db.url;
  try {
    const resource = { name: 'bench_rows', writeDisposition: 'append' as const };

    // Baseline: the same loads, called directly with the same concurrency.
    const directLoads = async (prefix: string, count = PARTITIONS) => {
      const started = Date.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: PARALLEL }, async () => {
          while (next < count) {
            const p = partitionAt('2024-01-01', 'day', next++);
            await loadResource({
              url: db.url,
              schema: 'bench_direct',
              table: 'bench_rows',
              resource: Resource.parse(resource),
              loadId: `${prefix}/${p.key}`,
              data: { kind: 'rows', rows: (async function* () { yield* tenRows(p.start); })() },
              supersede: { kind: 'range', column: 'at', start: p.start, end: p.end },
            });
          }
        }),
      );
      return Date.now() - started;
    };
    const direct = Date.now();
    await directLoads('direct');
    const directMs = Date.now() - direct;
    const filled: string[] = [];
    if (FILL_ROWS > 0) {
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      try {
        console.log(`filling bench_direct.bench_rows with ${FILL_ROWS.toLocaleString('en-US')} rows before 2024 ...`);
        await admin.query(
          `insert into bench_direct.bench_rows (id, at, v, _sluice_load_id)
             select i, timestamptz '2023-12-31' - i * interval '1 minute', i % 10, 'fill' from generate_series(1, $1::int) i`,
          [FILL_ROWS],
        );
        await admin.query('vacuum analyze bench_direct.bench_rows');
        const index = await admin.query<{ name: string }>(
          `select indexrelid::regclass::text as name from pg_index where indrelid = 'bench_direct.bench_rows'::regclass`,
        );
        const fullMs = await directLoads('direct-full');
        filled.push(`| same loads into the table holding ${FILL_ROWS.toLocaleString('en-US')} more rows (index ${index.rows.map((r) => r.name).join(', ')}) | ${(fullMs / 1000).toFixed(2)} s | ${(fullMs / PARTITIONS).toFixed(1)} |`);
        for (const r of index.rows) await admin.query(`drop index ${r.name}`);
        const sample = 20;
        const noIndexMs = await directLoads('direct-noindex', sample);
        filled.push(`| the first ${sample} of them again without that index | ${(noIndexMs / 1000).toFixed(2)} s | ${(noIndexMs / sample).toFixed(1)} |`);
      } finally {
        await admin.end();
      }
    }

    const native = await NativeConnection.connect({ address: server.address });
    const connection = await Connection.connect({ address: server.address });
    const client = new Client({ connection });
    const worker = await Worker.create({
      connection: native,
      taskQueue: 'bench',
      workflowsPath: require.resolve('../src/workflows'),
      activities: createActivities({ searchAttributesRegistered: true }),
      maxConcurrentActivityTaskExecutions: 100,
    });
    const temporalMs = await worker.runUntil(async () => {
      // Warm the workflow bundle and the connection pool so the measurement is the steady state.
      await client.workflow.execute('backfillWorkflow', {
        taskQueue: 'bench',
        workflowId: 'bench-warmup',
        args: [{ source: { kind: 'registered', name: 'bench.rows' }, resource: { ...resource, name: 'warmup' }, destination: { schema: 'bench_temporal' }, partitionColumn: 'at', start: '2023-01-01', end: '2023-01-05', parallel: PARALLEL }],
      });
      const started = Date.now();
      const result = (await client.workflow.execute('backfillWorkflow', {
        taskQueue: 'bench',
        workflowId: 'bench-backfill',
        args: [{ source: { kind: 'registered', name: 'bench.rows' }, resource, destination: { schema: 'bench_temporal' }, partitionColumn: 'at', start: '2024-01-01', end: '2024-12-30', parallel: PARALLEL }],
      })) as { succeeded: number; rows: number };
      if (result.succeeded !== PARTITIONS || result.rows !== PARTITIONS * ROWS_PER_PARTITION) throw new Error(`unexpected result ${JSON.stringify(result)}`);
      return Date.now() - started;
    });
    await native.close();
    await connection.close();

    console.log(`\n| ${PARTITIONS} daily partitions x ${ROWS_PER_PARTITION} rows, parallel ${PARALLEL} | wall | ms per partition |`);
    console.log('|---|---:|---:|');
    console.log(`| backfillWorkflow (Temporal dev server, one activity per partition) | ${(temporalMs / 1000).toFixed(2)} s | ${(temporalMs / PARTITIONS).toFixed(1)} |`);
    console.log(`| same loads called directly, no Temporal (baseline) | ${(directMs / 1000).toFixed(2)} s | ${(directMs / PARTITIONS).toFixed(1)} |`);
    for (const line of filled) console.log(line);
  } finally {
    await closePools();
    await server.stop();
    await db.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
