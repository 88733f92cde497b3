/**
 * `npm run bench:load`: PostgreSQL -> PostgreSQL load throughput of the engine, next to a raw
 * `COPY TO STDOUT | COPY FROM STDIN` of the same rows measured in the same run.
 *
 *   BENCH_ROWS=1000000 (default)   rows in the 10-column source table
 *   DATABASE_URL=...               use an existing server instead of an embedded one
 */
import { mkdtemp, chmod, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { loadResource } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { Resource } from '../src/inputs';
import { extractPostgres } from '../src/sources/postgres';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);

interface Measurement {
  name: string;
  seconds: number;
  rows: number;
  peakRssMb: number;
}

async function measure(name: string, rows: number, fn: () => Promise<void>): Promise<Measurement> {
  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const started = process.hrtime.bigint();
  try {
    await fn();
  } finally {
    clearInterval(sampler);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  peak = Math.max(peak, process.memoryUsage().rss);
  const m = { name, seconds, rows, peakRssMb: peak / 1024 / 1024 };
  console.log(`  ${name}: ${seconds.toFixed(2)} s, ${Math.round(rows / seconds).toLocaleString('en-US')} rows/s, peak RSS ${m.peakRssMb.toFixed(0)} MB`);
  return m;
}

async function main(): Promise<void> {
  let url = process.env.DATABASE_URL;
  let stop = async () => undefined as void;
  let scratch: string | undefined;
  if (!url) {
    scratch = await mkdtemp(join(tmpdir(), 'sluice-bench-'));
    await chmod(scratch, 0o755);
    const db = await startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true });
    url = db.url;
    stop = db.stop;
  }
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    console.log(`preparing ${ROWS.toLocaleString('en-US')} source rows ...`);
    await admin.query(`drop schema if exists bench_src cascade; drop schema if exists bench cascade; create schema bench_src;
      create table bench_src.orders (
        id bigint primary key, created_at timestamptz not null, day date not null, amount numeric(12,2) not null,
        score double precision, qty integer, paid boolean, customer text, note text, attrs jsonb);
      insert into bench_src.orders
        select i, timestamptz '2024-01-01' + i * interval '1 second', date '2024-01-01' + (i % 365), (i % 100000) / 100.0,
               i * 1.5, i % 1000, i % 2 = 0, 'customer ' || (i % 5000), md5(i::text),
               jsonb_build_object('channel', (array['web','app','store'])[1 + i % 3], 'n', i % 10)
        from generate_series(1, ${ROWS}) i;
      analyze bench_src.orders;`);

    const source = { kind: 'postgres' as const, connection: 'BENCH', table: 'bench_src.orders' };
    const results: Measurement[] = [];

    console.log('running ...');
    await admin.query(`create schema bench; create table bench.raw_copy (like bench_src.orders)`);
    results.push(
      await measure('raw COPY TO STDOUT -> COPY FROM STDIN (baseline)', ROWS, async () => {
        const reader = new pg.Client({ connectionString: url });
        const writer = new pg.Client({ connectionString: url });
        await Promise.all([reader.connect(), writer.connect()]);
        try {
          await pipeline(reader.query(copyTo('copy bench_src.orders to stdout')), writer.query(copyFrom('copy bench.raw_copy from stdin')));
        } finally {
          await Promise.all([reader.end(), writer.end()]);
        }
      }),
    );

    const run = (table: string, resource: Record<string, unknown>, loadId: string) => async () => {
      await loadResource({
        url: url!,
        schema: 'bench',
        table,
        resource: Resource.parse({ name: table, ...resource }),
        loadId,
        data: await extractPostgres(url!, source),
      });
    };
    results.push(await measure('sluice append', ROWS, run('appended', { writeDisposition: 'append' }, 'append')));
    results.push(await measure('sluice replace', ROWS, run('appended', { writeDisposition: 'replace' }, 'replace')));
    results.push(await measure('sluice merge into an empty table', ROWS, run('merged', { writeDisposition: 'merge', primaryKey: ['id'] }, 'merge-1')));
    await admin.query(`update bench_src.orders set amount = amount + 1, note = 'changed' where id % 10 = 0`);
    results.push(
      await measure('sluice merge, 10% of rows changed, into the full table', ROWS, run('merged', { writeDisposition: 'merge', primaryKey: ['id'] }, 'merge-2')),
    );
    const check = await admin.query(`select count(*)::int as n, count(*) filter (where note = 'changed')::int as changed from bench.merged`);
    if (check.rows[0].n !== ROWS || check.rows[0].changed !== ROWS / 10) throw new Error(`merge result is wrong: ${JSON.stringify(check.rows[0])}`);

    const raw = results[0]!;
    const rawRate = raw.rows / raw.seconds;
    console.log(`\n| load (${ROWS.toLocaleString('en-US')} rows, 10 columns, PostgreSQL -> PostgreSQL) | seconds | rows/s | vs raw COPY | peak RSS |`);
    console.log('|---|---:|---:|---:|---:|');
    for (const r of results) {
      const rate = r.rows / r.seconds;
      console.log(
        `| ${r.name} | ${r.seconds.toFixed(2)} | ${Math.round(rate).toLocaleString('en-US')} | ${((rate / rawRate) * 100).toFixed(0)}% | ${r.peakRssMb.toFixed(0)} MB |`,
      );
    }
  } finally {
    await admin.end();
    await closePools();
    await stop();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
