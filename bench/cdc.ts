/**
 * `npm run bench:cdc`: a burst of changes (60% updates, 30% inserts, 10% deletes, 1,000 per
 * transaction) over a table of the same size, applied by cdcWorkflow (Temporal dev server,
 * in-process worker) and, in the same run and from the same WAL, by PostgreSQL's own logical
 * replication (CREATE SUBSCRIPTION into another database of the same server). Reports, for each,
 * the seconds from the burst's start until its slot confirmed the burst's last LSN, changes per
 * second, and the lag (bytes of WAL not yet confirmed) right after the burst; and the worker
 * process's peak RSS. CDC_BENCH_CHANGES sets the size (default 200,000; the issue's full run is
 * 1,000,000).
 */
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createActivities } from '../src/activities';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startDevServer } from '../src/dev/temporal-server';
import { cdcNames } from '../src/workflows/cdc';

const CHANGES = Number(process.env.CDC_BENCH_CHANGES ?? 200_000);
const PER_TX = 1_000;

async function waitUntil(what: string, fn: () => Promise<boolean>, timeoutMs = 3_600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const scratch = await mkdtemp(join(tmpdir(), 'sluice-bench-'));
  await chmod(scratch, 0o755);
  const port = await freePort();
  const [server, db] = await Promise.all([
    startDevServer({ port: await freePort() }),
    startEmbeddedPostgres({ dir: join(scratch, 'pg'), port, fast: true }),
  ]);
  process.env.DATABASE_URL = db.url;
  process.env.SOURCE_DATABASE_URL = db.url;
  const source = new pg.Client(db.url);
  await source.connect();
  let rssPeak = 0;
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 100);
  try {
    await source.query(`
      create schema src;
      create table src.bench (id bigint primary key, v int not null, note text, at timestamptz not null);
      insert into src.bench select i, i % 1000, 'row ' || i, timestamptz '2024-01-01' + i * interval '1 second' from generate_series(1, ${CHANGES}) i;
      create publication native_pub for table src.bench;`);
    await source.query('create database native_sub');
    // The native subscriber: same table, initial copy by the subscription itself.
    const subUrl = db.url.replace(/\/sluice$/, '/native_sub');
    const sub = new pg.Client(subUrl);
    await sub.connect();
    await sub.query(`create schema src; create table src.bench (id bigint primary key, v int not null, note text, at timestamptz not null)`);
    // On one server the subscription's slot must exist first: creating it inside CREATE
    // SUBSCRIPTION would wait for that very transaction to end.
    await source.query(`select pg_create_logical_replication_slot('native_sub', 'pgoutput')`);
    await sub.query(`create subscription native_sub connection 'host=localhost port=${port} dbname=sluice user=postgres password=sluice' publication native_pub with (create_slot = false)`);
    await waitUntil('the native initial copy', async () => (await sub.query(`select bool_and(srsubstate = 'r') as ready from pg_subscription_rel`)).rows[0].ready === true);

    const native = await NativeConnection.connect({ address: server.address });
    const connection = await Connection.connect({ address: server.address });
    const client = new Client({ connection });
    const worker = await Worker.create({
      connection: native,
      taskQueue: 'bench-cdc',
      workflowsPath: require.resolve('../src/workflows'),
      activities: createActivities({ searchAttributesRegistered: true }),
    });
    const workflowId = 'bench-cdc';
    const slot = cdcNames(workflowId).slot;
    await worker.runUntil(async () => {
      const handle = await client.workflow.start('cdcWorkflow', {
        taskQueue: 'bench-cdc',
        workflowId,
        args: [{ source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['src.bench'] }, destination: { schema: 'sluice_dest' }, deletes: 'hard', batchWait: '500ms', batchChanges: 50_000 }],
      });
      await waitUntil('the sluice snapshot', async () => ((await handle.query<{ phase: string }>('progress')).phase === 'streaming'));
      console.log('both appliers are streaming; the burst starts');
      rssPeak = 0;

      const started = Date.now();
      const txs = Math.ceil(CHANGES / PER_TX);
      await source.query(`
        do $$
        declare n bigint := ${CHANGES};
        begin
          for t in 0 .. ${txs - 1} loop
            -- 600 updates over the first half of the table, 300 inserts past its end, 100 deletes from the second half.
            update src.bench set v = v + 1, note = 'updated ' || t where id > (t * 600) % (n / 2) and id <= (t * 600) % (n / 2) + 600;
            insert into src.bench select n + t * 300 + i, t, 'inserted', now() from generate_series(1, 300) i;
            delete from src.bench where id > n / 2 + t * 100 and id <= n / 2 + t * 100 + 100;
            commit;
          end loop;
        end $$`);
      const burstSeconds = (Date.now() - started) / 1000;
      const end = (await source.query(`select pg_current_wal_lsn()::text as l`)).rows[0].l as string;
      const lagNow = async (name: string) =>
        Number((await source.query(`select greatest(pg_wal_lsn_diff($2, confirmed_flush_lsn), 0)::bigint as d from pg_replication_slots where slot_name = $1`, [name, end])).rows[0].d);
      const lagAfterBurst = { sluice: await lagNow(slot), native: await lagNow('native_sub') };
      const finished: Record<string, number> = {};
      await Promise.all(
        (['sluice', 'native'] as const).map(async (who) => {
          await waitUntil(`${who} to confirm the burst`, async () => (await lagNow(who === 'sluice' ? slot : 'native_sub')) === 0);
          finished[who] = (Date.now() - started) / 1000;
        }),
      );
      const checksum = (c: pg.Client, table: string) => c.query(`select count(*)::bigint as n, coalesce(sum(v), 0)::bigint as v from ${table}`).then((r) => `${r.rows[0].n}/${r.rows[0].v}`);
      const want = await checksum(source, 'src.bench');
      const got = { sluice: await checksum(source, 'sluice_dest.bench'), native: await checksum(sub, 'src.bench') };
      const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
      console.log(`\n${CHANGES.toLocaleString('en')} changes in ${txs} transactions over a ${CHANGES.toLocaleString('en')}-row table; burst committed in ${burstSeconds.toFixed(1)} s\n`);
      console.log('| applier | seconds from burst start to confirmed | changes/s | lag right after the burst | equals source |');
      console.log('|---|---:|---:|---:|---|');
      for (const who of ['native', 'sluice'] as const) {
        console.log(`| ${who === 'native' ? 'PostgreSQL CREATE SUBSCRIPTION' : 'sluice cdcWorkflow'} | ${finished[who]!.toFixed(1)} | ${Math.round(CHANGES / finished[who]!).toLocaleString('en')} | ${mb(lagAfterBurst[who])} | ${got[who] === want ? 'yes' : `NO (${got[who]} vs ${want})`} |`);
      }
      console.log(`\nsluice / native: ${(finished.native! / finished.sluice!).toFixed(2)}x the native subscriber's changes/s`);
      console.log(`worker process peak RSS while streaming: ${mb(rssPeak)}`);
      await handle.signal('stop', { dropSlot: true });
      await handle.result();
    });
    await sub.query('drop subscription native_sub');
    await sub.end();
    await native.close();
    await connection.close();
  } finally {
    clearInterval(sampler);
    await source.end().catch(() => undefined);
    await closePools();
    await db.stop();
    await server.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
