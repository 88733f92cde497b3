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
 *   BENCH_ROUNDS=3   rounds of the workflow next to the direct loads, alternating (medians printed)
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { loadResource } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startDevServer } from '../src/dev/temporal-server';
import { Resource } from '../src/inputs';
import { partitionAt } from '../src/plan/partitions';
import { defineResource, defineSource, registerSource } from '../src/sources/registered';
import type { Row } from '../src/sources/types';
import { benchWorker } from './worker';

const PARTITIONS = 365;
const PARALLEL = 20;
const ROWS_PER_PARTITION = 10;
const FILL_ROWS = Number(process.env.BENCH_FILL_ROWS ?? 10_000_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

/**
 * CPU seconds used so far by this process and every live descendant (the Temporal dev server,
 * PostgreSQL and its backends), from Linux /proc; undefined elsewhere. On a shared machine CPU
 * time moves far less than wall time, so it is printed next to it.
 */
function treeCpuSeconds(byName?: Map<string, number>): number | undefined {
  if (process.platform !== 'linux') return undefined;
  const parentOf = new Map<number, number>();
  const ticks = new Map<number, number>();
  const names = new Map<number, string>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parentOf.set(Number(entry), Number(fields[1]));
      names.set(Number(entry), stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')));
      ticks.set(Number(entry), Number(fields[11]) + Number(fields[12]));
    } catch {
      // the process ended while we looked
    }
  }
  let total = 0;
  for (const [pid, t] of ticks) {
    for (let p: number | undefined = pid; p; p = parentOf.get(p)) {
      if (p === process.pid) {
        total += t;
        const name = names.get(pid)!;
        byName?.set(name, (byName.get(name) ?? 0) + t / 100);
        break;
      }
    }
  }
  return total / 100;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

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
    const { client, worker, close } = await benchWorker(server.address);
    const backfill = (workflowId: string, resourceName: string, start: string, end: string) =>
      client.workflow.execute('backfillWorkflow', {
        taskQueue: 'bench',
        workflowId,
        args: [{ source: { kind: 'registered', name: 'bench.rows' }, resource: { ...resource, name: resourceName }, destination: { schema: 'bench_temporal' }, partitionColumn: 'at', start, end, parallel: PARALLEL }],
      }) as Promise<{ succeeded: number; rows: number }>;
    // Rounds alternate the workflow and the direct loads, so both see the same machine.
    const temporalRuns: number[] = [];
    const directRuns: number[] = [];
    const temporalCpu: number[] = [];
    const directCpu: number[] = [];
    await worker.runUntil(async () => {
      // Warm the workflow bundle and the connection pool so the measurement is the steady state.
      await backfill('bench-warmup', 'warmup', '2023-01-01', '2023-01-05');
      for (let round = 1; round <= ROUNDS; round++) {
        const before = new Map<string, number>();
        const after = new Map<string, number>();
        const cpu0 = treeCpuSeconds(before);
        const started = Date.now();
        const result = await backfill(`bench-backfill-${round}`, resource.name, '2024-01-01', '2024-12-30');
        if (result.succeeded !== PARTITIONS || result.rows !== PARTITIONS * ROWS_PER_PARTITION) throw new Error(`unexpected result ${JSON.stringify(result)}`);
        temporalRuns.push(Date.now() - started);
        const cpu1 = treeCpuSeconds(after);
        directRuns.push(await directLoads(`direct-${round}`));
        const cpu2 = treeCpuSeconds();
        if (cpu0 !== undefined) {
          temporalCpu.push((cpu1! - cpu0) * 1000);
          directCpu.push((cpu2! - cpu1!) * 1000);
        }
        const byProcess = [...after].map(([name, t]) => `${name} ${Math.round((t - (before.get(name) ?? 0)) * 1000)}`).join(', ');
        console.log(
          `  round ${round}: backfillWorkflow CPU ms by process: ${byProcess}`,
        );
        console.log(
          `  round ${round}: backfillWorkflow ${temporalRuns.at(-1)} ms (CPU ${temporalCpu.at(-1)?.toFixed(0)} ms), direct ${directRuns.at(-1)} ms (CPU ${directCpu.at(-1)?.toFixed(0)} ms)`,
        );
      }
    });
    await close();
    const temporalMs = median(temporalRuns);
    const directMs = median(directRuns);
    const spread = (runs: number[]) => `${(Math.min(...runs) / PARTITIONS).toFixed(1)} to ${(Math.max(...runs) / PARTITIONS).toFixed(1)}`;
    const overhead = temporalRuns.map((t, i) => t - directRuns[i]!);

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

    console.log(`\nmedian of ${ROUNDS} rounds (min to max in brackets):`);
    console.log(`| ${PARTITIONS} daily partitions x ${ROWS_PER_PARTITION} rows, parallel ${PARALLEL} | wall | ms per partition |`);
    console.log('|---|---:|---:|');
    console.log(`| backfillWorkflow (Temporal dev server, one activity per partition) | ${(temporalMs / 1000).toFixed(2)} s | ${(temporalMs / PARTITIONS).toFixed(1)} (${spread(temporalRuns)}) |`);
    console.log(`| same loads called directly, no Temporal (baseline) | ${(directMs / 1000).toFixed(2)} s | ${(directMs / PARTITIONS).toFixed(1)} (${spread(directRuns)}) |`);
    console.log(`| workflow minus direct, round by round | ${(median(overhead) / 1000).toFixed(2)} s | ${(median(overhead) / PARTITIONS).toFixed(1)} (${spread(overhead)}) |`);
    for (const line of filled) console.log(line);
    if (temporalCpu.length) {
      const cpuOverhead = temporalCpu.map((t, i) => t - directCpu[i]!);
      console.log(`\nCPU time of this process, the Temporal dev server and PostgreSQL, ms per partition (median, min to max):`);
      console.log(`  backfillWorkflow ${(median(temporalCpu) / PARTITIONS).toFixed(1)} (${spread(temporalCpu)}), direct ${(median(directCpu) / PARTITIONS).toFixed(1)} (${spread(directCpu)}), workflow minus direct ${(median(cpuOverhead) / PARTITIONS).toFixed(1)} (${spread(cpuOverhead)})`);
    }
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
