/**
 * `npm run bench:cdc`: a burst of changes (60% updates, 30% inserts, 10% deletes, 1,000 per
 * transaction) over a table of the same size, applied by cdcWorkflow (Temporal dev server,
 * in-process worker) and, in the same run and from the same WAL, by PostgreSQL's own logical
 * replication (CREATE SUBSCRIPTION into another database of the same server). Reports, for each,
 * the seconds from the burst\'s start until its slot confirmed the burst's last LSN, changes per
 * second, and the lag (bytes of WAL not yet confirmed) right after the burst; and the worker
 * process's peak RSS. CDC_BENCH_CHANGES sets the size (default 200,000; the issue's full run is
 * 1,000,000).
 */
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createActivities } from '../src/activities';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startDevServer } from '../src/dev/temporal-server';
import { workerLaunch } from '../src/dev/worker-launch';
import { cdcNames } from '../src/workflows/cdc';

const CHANGES = Number(process.env.CDC_BENCH_CHANGES ?? 200_000);
/**
 * `live`: both appliers stream while the burst commits (they share 2 cores with it and with each
 * other). `solo`: one applier streams while its own burst commits, the other one stopped (as a
 * CDC worker runs beside its source's writes). `alone`: the burst commits with neither reading,
 * then each applies the backlog alone.
 */
const MODES = (process.env.CDC_BENCH_MODES ?? 'live,solo,alone').split(',');
type Who = 'sluice' | 'native';
const PER_TX = 1_000;
/**
 * CDC_BENCH_PROFILE=<file>: a CPU profile of the worker (this process) while sluice streams its
 * (first) solo burst, for Chrome's DevTools; with CDC_BENCH_HEAP=1, a sampling heap profile of
 * what it allocated instead (collected objects included).
 */
const PROFILE = process.env.CDC_BENCH_PROFILE;
/** Rounds of the solo mode (CDC_BENCH_REPEAT, default 1). */
const REPEAT = Math.max(1, Number(process.env.CDC_BENCH_REPEAT ?? 1));
/** CDC_BENCH_PERF=<prefix>: `perf record -a -g` of the whole machine over each solo burst, to <prefix>-<applier>.data (Linux, perf installed). */
const PERF = process.env.CDC_BENCH_PERF;
/** Transactions of the unmeasured warm-up burst (CDC_BENCH_WARMUP changes, default 100,000; 0: none). */
const WARMUP_TXS = Math.ceil(Number(process.env.CDC_BENCH_WARMUP ?? 100_000) / PER_TX);

async function waitUntil(what: string, fn: () => Promise<boolean>, timeoutMs = 3_600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The subscription's conninfo for the bench database (its password is generated per cluster, see src/dev/postgres.ts). */
function nativeConninfo(url: string): string {
  const u = new URL(url);
  const quote = (v: string) => `'${v.replace(/[\\']/g, (m) => `\\${m}`)}'`;
  return `host=${u.hostname} port=${u.port} dbname=${u.pathname.slice(1)} user=${quote(decodeURIComponent(u.username))} password=${quote(decodeURIComponent(u.password))}`.replace(/'/g, "''");
}

/** CPU seconds (user + system) of every process, by pid, from /proc (Linux only; empty elsewhere). */
async function cpuByPid(): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const ticks = 100; // USER_HZ
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields.length > 13) out.set(Number(entry), (Number(fields[11]) + Number(fields[12])) / ticks);
  }
  return out;
}

/**
 * The machine's CPU seconds (all cores) spent idle, and stolen by the hypervisor for other
 * guests (/proc/stat): on a shared host, time stolen from a run says why it was slow.
 */
async function machineCpu(): Promise<{ idle: number; steal: number }> {
  const line = (await readFile('/proc/stat', 'utf8').catch(() => '')).split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  return { idle: ((f[3] ?? 0) + (f[4] ?? 0)) / 100, steal: (f[7] ?? 0) / 100 };
}

/** CPU seconds of this process's threads, by thread name (the main thread is the process's own name). */
async function cpuByThread(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const tid of await readdir('/proc/self/task').catch(() => [] as string[])) {
    const stat = await readFile(`/proc/self/task/${tid}/stat`, 'utf8').catch(() => '');
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const name = tid === String(process.pid) ? 'main (JavaScript)' : process.env.CDC_BENCH_THREADS ? `${comm} ${tid}` : comm === 'node' ? 'other' : comm;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields.length > 13) out.set(name, (out.get(name) ?? 0) + (Number(fields[11]) + Number(fields[12])) / 100);
  }
  return out;
}

/** Which applier each PostgreSQL process works for, by pid (asked from pg_stat_activity). */
async function pgRoles(c: pg.Client, slot: string, burstPid: number): Promise<Map<number, string>> {
  const r = await c.query<{ pid: number; backend_type: string; application_name: string; datname: string | null }>(
    'select pid, backend_type, application_name, datname from pg_stat_activity',
  );
  const roles = new Map<number, string>();
  for (const p of r.rows) {
    if (p.pid === burstPid) roles.set(p.pid, 'the burst (source writes)');
    else if (p.backend_type === 'walsender') roles.set(p.pid, p.application_name === 'native_sub' ? 'native: walsender (decoding)' : 'sluice: walsender (decoding)');
    else if (p.backend_type.startsWith('logical replication')) roles.set(p.pid, 'native: apply worker');
    else if (p.backend_type === 'client backend' && p.datname === 'sluice_sub') roles.set(p.pid, 'sluice: destination backends (apply)');
    else roles.set(p.pid, `other PostgreSQL (${p.backend_type})`);
  }
  void slot;
  return roles;
}

/** Starts the profile CDC_BENCH_PROFILE asks for; the function returned stops it and writes the file. */
async function startProfiler(): Promise<() => Promise<void>> {
  const session = new Session();
  session.connect();
  const heap = Boolean(process.env.CDC_BENCH_HEAP);
  if (heap) {
    await session.post('HeapProfiler.enable');
    // Node's types lack the two include flags (V8 has them).
    await session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as never);
  } else {
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  return async () => {
    const { profile } = heap ? await session.post('HeapProfiler.stopSampling') : await session.post('Profiler.stop');
    await writeFile(PROFILE!, JSON.stringify(profile));
    session.disconnect();
  };
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
  source.on('error', () => undefined);
  let rssPeak = 0;
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 100);
  try {
    await source.query(`
      create schema src;
      create table src.bench (id bigint primary key, v int not null, note text, at timestamptz not null);
      insert into src.bench select i, i % 1000, 'row ' || i, timestamptz '2024-01-01' + i * interval '1 second' from generate_series(1, ${CHANGES}) i;
      create publication native_pub for table src.bench;`);
    await source.query('create database native_sub');
    // sluice's destination is a database of its own too: WAL written in another database is
    // skipped by logical decoding at once, so neither applier's writes cost the other's reader.
    await source.query('create database sluice_sub');
    process.env.DATABASE_URL = db.url.replace(/\/sluice$/, '/sluice_sub');
    const dest = new pg.Client(process.env.DATABASE_URL);
    await dest.connect();
    dest.on('error', () => undefined);
    // The native subscriber: same table, initial copy by the subscription itself.
    const subUrl = db.url.replace(/\/sluice$/, '/native_sub');
    const sub = new pg.Client(subUrl);
    await sub.connect();
    sub.on('error', () => undefined);
    await sub.query(`create schema src; create table src.bench (id bigint primary key, v int not null, note text, at timestamptz not null)`);
    // On one server the subscription's slot must exist first: creating it inside CREATE
    // SUBSCRIPTION would wait for that very transaction to end.
    await source.query(`select pg_create_logical_replication_slot('native_sub', 'pgoutput')`);
    await sub.query(`create subscription native_sub connection '${nativeConninfo(db.url)}' publication native_pub with (create_slot = false)`);
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
      console.log('both appliers are streaming');
      const burstPid = (await source.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const txs = Math.ceil(CHANGES / PER_TX);
      /** One burst of `count` transactions of 1,000 changes (CHANGES in all by default); each burst moves on to keys of its own (the updates wrap over the first half). */
      let firstTx = 0;
      const burst = async (count = txs): Promise<{ seconds: number; end: string }> => {
        const first = firstTx;
        firstTx += count;
        const started = Date.now();
        await source.query(`
          do $$
          declare n bigint := ${CHANGES};
          begin
            for t in ${first} .. ${first + count - 1} loop
              -- 600 updates over the first half of the table, 300 inserts past its end, 100 deletes from the second half.
              update src.bench set v = v + 1, note = 'updated ' || t where id > (t * 600) % (n / 2) and id <= (t * 600) % (n / 2) + 600;
              insert into src.bench select n + t * 300 + i, t, 'inserted', now() from generate_series(1, 300) i;
              delete from src.bench where id > n / 2 + t * 100 and id <= n / 2 + t * 100 + 100;
              commit;
            end loop;
          end $$`);
        // The insert position, not pg_current_wal_lsn() (the write position): with synchronous_commit
        // off the last commits may still sit in WAL buffers, and a slot past the write position
        // need not have those transactions yet.
        return { seconds: (Date.now() - started) / 1000, end: (await source.query(`select pg_current_wal_insert_lsn()::text as l`)).rows[0].l as string };
      };
      const slotOf = (who: Who) => (who === 'sluice' ? slot : 'native_sub');
      const lagTo = async (who: Who, end: string) =>
        Number((await source.query(`select greatest(pg_wal_lsn_diff($2, confirmed_flush_lsn), 0)::bigint as d from pg_replication_slots where slot_name = $1`, [slotOf(who), end])).rows[0].d);
      const slotActive = async (who: Who) => (await source.query(`select active from pg_replication_slots where slot_name = $1`, [slotOf(who)])).rows[0].active === true;
      /** CPU seconds of each process between two samples (see cpuByPid), by its role. */
      const cpuMeter = async () => {
        const before = await cpuByPid();
        const threadsBefore = await cpuByThread();
        const selfBefore = process.cpuUsage();
        const machineBefore = await machineCpu();
        return async () => {
          const after = await cpuByPid();
          const machine = await machineCpu();
          const self = process.cpuUsage(selfBefore);
          const roles = await pgRoles(source, slot, burstPid);
          const cpu = new Map<string, number>([['sluice: worker process (Node: decoding, batching, Temporal worker)', (self.user + self.system) / 1e6]]);
          // Its threads: the main thread (JavaScript), V8's helpers (garbage collection, compilation), libuv's pool, the Temporal core's runtime.
          for (const [name, t] of await cpuByThread()) {
            const used = t - (threadsBefore.get(name) ?? 0);
            if (used > 0) cpu.set(`sluice: worker process, thread "${name}"`, used);
          }
          for (const [pid, t] of after) {
            const cmdline = roles.has(pid) ? '' : await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
            const role = roles.get(pid) ?? (cmdline.includes('start-dev') ? 'Temporal dev server' : undefined);
            if (role && !role.startsWith('other')) cpu.set(role, (cpu.get(role) ?? 0) + t - (before.get(pid) ?? 0));
          }
          cpu.set('machine: idle (both cores)', machine.idle - machineBefore.idle);
          cpu.set('machine: stolen by the hypervisor for other guests (both cores)', machine.steal - machineBefore.steal);
          return cpu;
        };
      };
      const checksum = (c: pg.Client, table: string) => c.query(`select count(*)::bigint as n, coalesce(sum(v), 0)::bigint as v from ${table}`).then((r) => `${r.rows[0].n}/${r.rows[0].v}`);
      const equal = async (who: Who) => {
        const want = await checksum(source, 'src.bench');
        const got = who === 'sluice' ? await checksum(dest, 'sluice_dest.bench') : await checksum(sub, 'src.bench');
        if (got !== want && process.env.CDC_BENCH_DIAG) {
          const ids = async (c: pg.Client, t: string) => new Map((await c.query(`select id::text, v from ${t}`)).rows.map((r) => [r.id as string, r.v as number]));
          const a = await ids(source, 'src.bench');
          const b = who === 'sluice' ? await ids(dest, 'sluice_dest.bench') : await ids(sub, 'src.bench');
          const missing = [...a.keys()].filter((k) => !b.has(k));
          const extra = [...b.keys()].filter((k) => !a.has(k));
          const differ = [...a.keys()].filter((k) => b.has(k) && b.get(k) !== a.get(k));
          console.log('DIAG missing', missing.length, missing.slice(0, 20), 'extra', extra.length, extra.slice(0, 20), 'differ', differ.length, differ.slice(0, 20).map((k) => `${k}:${a.get(k)}/${b.get(k)}`));
          console.log('DIAG loads', (await dest.query(`select load_id, partition, rows_loaded, started_at, finished_at from sluice_dest._sluice_loads order by started_at desc limit 12`)).rows);
        }
        return got === want ? 'yes' : `NO (${got} vs ${want})`;
      };
      const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
      const cpuTable = (title: string, cpu: Map<string, number>) => {
        console.log(`\n${title}\n`);
        console.log('| process | CPU seconds | µs per change |');
        console.log('|---|---:|---:|');
        for (const [role, seconds] of [...cpu].sort((x, y) => x[0].localeCompare(y[0]))) console.log(`| ${role} | ${seconds.toFixed(2)} | ${((seconds * 1e6) / CHANGES).toFixed(1)} |`);
      };
      const label = (who: Who) => (who === 'native' ? 'PostgreSQL CREATE SUBSCRIPTION' : 'sluice cdcWorkflow');
      /** Batches sluice has committed so far (one _sluice_loads row each): how finely it cut a burst. */
      const batchesApplied = async () => (await dest.query<{ n: number }>(`select count(*)::int as n from sluice_dest._sluice_loads`)).rows[0]!.n;
      const batchLine = (mode: string, batches: number) => console.log(`${mode}: sluice applied the ${CHANGES.toLocaleString('en')} changes in ${batches} batches (${Math.round(CHANGES / batches).toLocaleString('en')} changes per batch)`);

      // Each slot has decoded everything before the burst (sluice's slot starts before its own
      // snapshot copy, whose WAL its reader goes through first), so each burst starts level.
      const caughtUp = async () => {
        const now = (await source.query(`select pg_current_wal_insert_lsn()::text as l`)).rows[0].l as string;
        await waitUntil('both slots to confirm the WAL written so far', async () => (await lagTo('sluice', now)) === 0 && (await lagTo('native', now)) === 0);
      };
      await caughtUp();
      if (WARMUP_TXS > 0) {
        // Not measured: a worker streams for hours, so its code is compiled and its buffers are
        // made before the bursts that are; a first burst would measure V8's compiler warming up.
        const { end } = await burst(WARMUP_TXS);
        await waitUntil('both appliers to apply the warm-up burst', async () => (await lagTo('sluice', end)) === 0 && (await lagTo('native', end)) === 0);
        console.log(`warm-up: ${(WARMUP_TXS * PER_TX).toLocaleString('en')} changes applied by both (not measured)`);
        await caughtUp();
      }
      if (MODES.includes('live')) {
        // Both appliers stream while the burst commits, sharing the machine with it and each other.
        const rssBefore = process.memoryUsage().rss;
        rssPeak = 0;
        const meter = await cpuMeter();
        const batches = await batchesApplied();
        const started = Date.now();
        const { seconds, end } = await burst();
        const lagAfterBurst = { sluice: await lagTo('sluice', end), native: await lagTo('native', end) };
        const finished: Record<string, number> = {};
        await Promise.all(
          (['sluice', 'native'] as const).map(async (who) => {
            await waitUntil(`${who} to confirm the burst`, async () => (await lagTo(who, end)) === 0);
            finished[who] = (Date.now() - started) / 1000;
          }),
        );
        const cpu = await meter();
        console.log(`\nlive: ${CHANGES.toLocaleString('en')} changes in ${txs} transactions over a ${CHANGES.toLocaleString('en')}-row table, both appliers streaming; burst committed in ${seconds.toFixed(1)} s\n`);
        console.log('| applier | seconds from burst start to confirmed | changes/s | lag right after the burst | equals source |');
        console.log('|---|---:|---:|---:|---|');
        for (const who of ['native', 'sluice'] as const) {
          console.log(`| ${label(who)} | ${finished[who]!.toFixed(1)} | ${Math.round(CHANGES / finished[who]!).toLocaleString('en')} | ${mb(lagAfterBurst[who])} | ${await equal(who)} |`);
        }
        console.log(`\nlive: sluice / native: ${(finished.native! / finished.sluice!).toFixed(2)}x the native subscriber's changes/s`);
        batchLine('live', (await batchesApplied()) - batches);
        console.log(`worker process RSS before the burst: ${mb(rssBefore)}; peak while streaming: ${mb(rssPeak)}`);
        cpuTable("live: CPU seconds from the burst's start until both confirmed it (2 cores: at most 2 s of CPU per second)", cpu);
      }

      if (MODES.includes('solo')) {
        // One applier streams while the burst commits; the other is stopped and catches up afterwards, unmeasured.
        // CDC_BENCH_REPEAT rounds (default 1): on 2 shared cores one round's ratio varies by some 10%.
        const ratios: string[] = [];
        for (let round = 1; round <= REPEAT; round++) {
          const took: Record<string, number> = {};
          const rows: string[] = [];
          const cpus: [Who, Map<string, number>][] = [];
          let soloBatches = 0;
          for (const who of ['native', 'sluice'] as const) {
            await caughtUp();
            if (who === 'sluice') await sub.query('alter subscription native_sub disable');
            else await handle.signal('pause');
            const other: Who = who === 'sluice' ? 'native' : 'sluice';
            await waitUntil(`the ${other} applier to let go of its slot`, async () => !(await slotActive(other)));
            const rssBefore = process.memoryUsage().rss;
            rssPeak = 0;
            const meter = await cpuMeter();
            const batches = await batchesApplied();
            const profiler = PROFILE && who === 'sluice' && round === 1 ? await startProfiler() : undefined;
            const perf = PERF && round === 1 ? spawn('perf', ['record', '-a', '-g', '-F', '499', '-o', `${PERF}-${who}.data`], { stdio: 'ignore' }) : undefined;
            const started = Date.now();
            const { seconds, end } = await burst();
            const lag = await lagTo(who, end);
            await waitUntil(`${who} to confirm the burst`, async () => (await lagTo(who, end)) === 0);
            took[who] = (Date.now() - started) / 1000;
            if (perf) {
              const exited = new Promise((r) => perf.once('exit', r));
              perf.kill('SIGINT');
              await exited;
            }
            if (profiler) await profiler();
            cpus.push([who, await meter()]);
            if (who === 'sluice') soloBatches = (await batchesApplied()) - batches;
            rows.push(`| ${label(who)} | ${seconds.toFixed(1)} | ${took[who]!.toFixed(1)} | ${Math.round(CHANGES / took[who]!).toLocaleString('en')} | ${mb(lag)} | ${await equal(who)} |${who === 'sluice' ? ` ${mb(rssBefore)} / ${mb(rssPeak)} |` : ' |'}`);
            if (who === 'sluice') await sub.query('alter subscription native_sub enable');
            else await handle.signal('resume');
          }
          const of = REPEAT > 1 ? ` (round ${round} of ${REPEAT})` : '';
          console.log(`\nsolo${of}: ${CHANGES.toLocaleString('en')} changes, one burst per applier, each streaming while its burst commits, the other one stopped:\n`);
          console.log('| applier | burst committed in s | seconds from burst start to confirmed | changes/s | lag right after the burst | equals source | worker RSS before / peak |');
          console.log('|---|---:|---:|---:|---:|---|---:|');
          for (const row of rows) console.log(row);
          const ratio = (took.native! / took.sluice!).toFixed(2);
          ratios.push(`${ratio}x`);
          console.log(`\nsolo${of}: sluice / native: ${ratio}x the native subscriber's changes/s`);
          batchLine('solo', soloBatches);
          for (const [who, cpu] of cpus) cpuTable(`solo${of}: CPU seconds while ${label(who)} streamed its burst`, cpu);
        }
        if (REPEAT > 1) console.log(`\nsolo, ${REPEAT} rounds: sluice / native ${ratios.join(', ')}`);
      }

      if (MODES.includes('alone')) {
        // The same kind of burst with neither applier reading; both slots keep its WAL. Then each
        // applier alone (the other one stopped) applies that backlog: the machine is its own.
        // The applier that goes second also has its reader decode (and skip) the WAL the first
        // one wrote while applying, which is on the way to nothing of its own but still costs CPU:
        // two rounds, one in each order, so each pays for that once.
        const took: Record<string, number> = { native: 0, sluice: 0 };
        for (const order of [['native', 'sluice'], ['sluice', 'native']] as const) {
          await caughtUp();
          await handle.signal('pause');
          await sub.query('alter subscription native_sub disable');
          await waitUntil('both appliers to let go of their slots', async () => !(await slotActive('sluice')) && !(await slotActive('native')));
          const { seconds, end } = await burst();
          console.log(`\nalone, ${order[0]} first: ${CHANGES.toLocaleString('en')} changes in ${txs} transactions committed in ${seconds.toFixed(1)} s with neither applier reading; then each applier alone:\n`);
          const rows: string[] = [];
          const cpus: [Who, Map<string, number>][] = [];
          const round: Record<string, number> = {};
          let aloneBatches = 0;
          for (const who of order) {
            const rssBefore = process.memoryUsage().rss;
            rssPeak = 0;
            const meter = await cpuMeter();
            const batches = await batchesApplied();
            const started = Date.now();
            if (who === 'native') await sub.query('alter subscription native_sub enable');
            else await handle.signal('resume');
            await waitUntil(`${who} to confirm the backlog`, async () => (await lagTo(who, end)) === 0);
            round[who] = (Date.now() - started) / 1000;
            took[who]! += round[who]!;
            cpus.push([who, await meter()]);
            if (who === 'sluice') aloneBatches = (await batchesApplied()) - batches;
            if (who === 'native') {
              await sub.query('alter subscription native_sub disable');
              await waitUntil('the native subscriber to let go of its slot', async () => !(await slotActive('native')));
            } else {
              await handle.signal('pause');
              await waitUntil('sluice to let go of its slot', async () => !(await slotActive('sluice')));
            }
            rows.push(`| ${label(who)} | ${round[who]!.toFixed(1)} | ${Math.round(CHANGES / round[who]!).toLocaleString('en')} | ${await equal(who)} |${who === 'sluice' ? ` ${mb(rssBefore)} / ${mb(rssPeak)} |` : ' |'}`);
          }
          console.log('| applier | seconds from its start to confirmed | changes/s | equals source | worker RSS before / peak |');
          console.log('|---|---:|---:|---|---:|');
          for (const row of rows) console.log(row);
          console.log(`\nalone, ${order[0]} first: sluice / native: ${(round.native! / round.sluice!).toFixed(2)}x the native subscriber's changes/s`);
          batchLine(`alone, ${order[0]} first`, aloneBatches);
          for (const [who, cpu] of cpus) cpuTable(`alone, ${order[0]} first: CPU seconds while ${label(who)} applied the backlog`, cpu);
          await sub.query('alter subscription native_sub enable');
          await handle.signal('resume');
        }
        console.log(`\nalone, both orders: sluice / native: ${(took.native! / took.sluice!).toFixed(2)}x the native subscriber's changes/s (${(took.native! / 2).toFixed(1)} s vs ${(took.sluice! / 2).toFixed(1)} s on average)`);
      }
      await handle.signal('stop', { dropSlot: true });
      await handle.result();
    });
    await sub.query('drop subscription native_sub');
    await sub.end();
    await dest.end();
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

/**
 * The bench is the worker process (its CPU and memory are measured as the worker's), so it runs
 * under the production worker's node settings (`npm run worker`'s: a 4 MB young generation, its
 * malloc arenas, its loader): it starts itself again that way unless it is that process.
 * CDC_BENCH_NODE_DEFAULTS=1 runs it with node's defaults instead, as `tsx` starts it.
 */
function underWorkerSettings(): boolean {
  if (process.env.CDC_BENCH_WORKER_SETTINGS || process.env.CDC_BENCH_NODE_DEFAULTS) return true;
  const launch = workerLaunch();
  const args = launch.args.map((a) => (a.endsWith('.ts') ? __filename : a));
  const child = spawn(process.execPath, args, { stdio: 'inherit', env: { ...process.env, ...launch.env, CDC_BENCH_WORKER_SETTINGS: '1' } });
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => child.kill(sig));
  return false;
}

if (underWorkerSettings()) main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
