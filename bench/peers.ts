/**
 * `npm run bench:peers`: sluice next to raw COPY, Sling and dlt, in one run on one PostgreSQL.
 *
 * Installs dlt (`dlt[postgres]`, sqlalchemy, pyarrow, connectorx) and Sling (PyPI `sling` and
 * its platform binary package) into a virtual environment under .sluice/peers (never part of
 * `npm install` or `npm test`), creates a 1,000,000-row 10-column table, and times, twice each:
 * raw `COPY TO STDOUT | COPY FROM STDIN`; sluice replace (fullRefreshWorkflow), append and merge
 * (backfillWorkflow, one partition), each end to end from `temporal workflow execute` against a
 * worker in its own process; Sling full-refresh; dlt with its fastest backend (connectorx, csv
 * loader) and its default one (sqlalchemy). Peak memory is the sampled RSS of each tool's
 * processes (for sluice: the worker) while it runs.
 *
 * Then the tie trap: 200,000 rows sharing one cursor value, 1,000 more at that value, a sync
 * with nothing new, for sluice's incrementalWorkflow and dlt's `incremental`: time, rows and
 * the bytes of saved state after each sync.
 *
 *   BENCH_ROWS=1000000 (default)  BENCH_TIE_ROWS=200000  BENCH_ROUNDS=2
 *   BENCH_PEERS=raw,sluice,sling,dlt-fast,dlt-default (default: all; sluice-replace: only sluice's replace)
 *   BENCH_TIE=0 skips the tie trap; BENCH_TIE_TIMEOUT_S=900 stops a dlt step of it that takes longer
 * Worker memory at 10M rows: BENCH_ROWS=10000000 BENCH_PEERS=raw,sluice-replace BENCH_TIE=0 npm run bench:peers
 *   (no Python needed for that); BENCH_WORKER_SCRIPT='node --import tsx src/worker.ts' starts the
 *   worker another way than package.json's `worker` script, to compare
 *   SLUICE_PYTHON=python3   the Python (3.9+) that makes the virtual environment
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { bundleWorkflows } from '../src/dev/bundle';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { resolveTemporalCli } from '../src/dev/temporal-cli';
import { startDevServer } from '../src/dev/temporal-server';
import { workerLaunch } from '../src/dev/worker-launch';

const exec = promisify(execFile);
const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const TIE_ROWS = Number(process.env.BENCH_TIE_ROWS ?? 200_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const PEERS = new Set((process.env.BENCH_PEERS ?? 'raw,sluice,sling,dlt-fast,dlt-default').split(','));
const ROOT = resolve(__dirname, '..');
const PEERS_DIR = join(ROOT, '.sluice', 'peers');
const VENV = join(PEERS_DIR, 'venv');
const VENV_BIN = join(VENV, process.platform === 'win32' ? 'Scripts' : 'bin');
/** Pinned so that a table printed in the README can be reproduced. */
const PYTHON_PACKAGES = ['dlt[postgres]==1.31.0', 'sqlalchemy==2.1.9', 'pyarrow==26.0.1', 'connectorx==0.4.6', 'sling==1.6.5'];
const SLING_BINARY_PACKAGES: Record<string, string> = {
  'linux-x64': 'sling-linux-amd64==1.4.11',
  'linux-arm64': 'sling-linux-arm64==1.4.11',
  'darwin-x64': 'sling-mac-amd64==1.4.10.post2',
  'darwin-arm64': 'sling-mac-arm64==1.4.10.post2',
};
const TASK_QUEUE = 'bench-peers';
/** A dlt step of the tie trap that takes longer than this is stopped and reported as such. */
const TIE_TIMEOUT_S = Number(process.env.BENCH_TIE_TIMEOUT_S ?? 900);

// ---------------------------------------------------------------------------------------------
// The peers' installation

async function installPeers(): Promise<{ python: string; slingBinary: string; versions: Record<string, string> }> {
  const python = join(VENV_BIN, 'python');
  const binaryPackage = SLING_BINARY_PACKAGES[`${process.platform}-${process.arch}`];
  if (!binaryPackage) throw new Error(`Sling ships no binary package for ${process.platform}-${process.arch}`);
  const wanted = [...PYTHON_PACKAGES, binaryPackage];
  const marker = join(PEERS_DIR, 'installed.json');
  const installed = existsSync(marker) && existsSync(python) ? (JSON.parse(readFileSync(marker, 'utf8')) as string[]) : [];
  if (wanted.some((p) => !installed.includes(p))) {
    await mkdir(PEERS_DIR, { recursive: true });
    if (!existsSync(python)) {
      console.log(`creating ${VENV} ...`);
      await run(process.env.SLUICE_PYTHON ?? 'python3', ['-m', 'venv', VENV]);
    }
    console.log(`pip install ${wanted.join(' ')} ...`);
    await run(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', ...wanted]);
    await writeFile(marker, JSON.stringify(wanted));
  }
  const module = binaryPackage.split('==')[0]!.replace(/-/g, '_');
  // The `sling` package downloads its binary on first use; the binary package ships it instead.
  const { stdout } = await exec(python, [
    '-c',
    `import ${module}, os, glob; d = os.path.join(os.path.dirname(${module}.__file__), 'bin'); print([p for p in glob.glob(os.path.join(d, 'sling*')) if os.access(p, os.X_OK)][0])`,
  ]);
  const slingBinary = stdout.trim();
  const versions: Record<string, string> = {};
  const { stdout: pipList } = await exec(python, ['-m', 'pip', 'list', '--format=json', '--disable-pip-version-check']);
  for (const p of JSON.parse(pipList) as { name: string; version: string }[]) versions[p.name.toLowerCase()] = p.version;
  versions['sling binary'] = (await exec(slingBinary, ['--version'])).stdout.replace(/^Version:\s*/i, '').trim();
  versions.python = (await exec(python, ['--version'])).stdout.replace(/^Python\s*/, '').trim();
  return { python, slingBinary, versions };
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  return new Promise((ok, fail) => {
    const child = spawn(command, args, { stdio: 'inherit', env });
    child.on('error', fail);
    child.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`${command} ${args.slice(0, 3).join(' ')} ... exited with ${code}`))));
  });
}

// ---------------------------------------------------------------------------------------------
// Peak memory: the RSS of a process and its descendants, sampled every 100 ms (Linux /proc).

function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // the process ended while we looked
    }
  }
  const tree: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.pop()!;
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

class PeakSampler {
  peak = 0;
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly roots: () => number[]) {}
  start(): this {
    this.peak = 0;
    if (process.platform !== 'linux') return this;
    const sample = () => {
      const pids = new Set(this.roots().flatMap(processTree));
      this.peak = Math.max(this.peak, [...pids].reduce((sum, pid) => sum + rssBytes(pid), 0));
    };
    sample();
    this.timer = setInterval(sample, 100);
    return this;
  }
  stop(): number {
    clearInterval(this.timer);
    return this.peak;
  }
}

/** Runs a command to completion (or kills it after `timeoutS`), sampling its process tree; returns seconds, peak RSS and stdout. */
function measureCommand(command: string, args: string[], env: NodeJS.ProcessEnv, extraRoots: () => number[] = () => [], timeoutS = 0, sampleCommand = true) {
  return new Promise<{ seconds: number; peak: number; stdout: string }>((ok, fail) => {
    const started = performance.now();
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: timeoutS > 0 });
    const timer = timeoutS > 0 ? setTimeout(() => child.pid && process.kill(-child.pid, 'SIGKILL'), timeoutS * 1000) : undefined;
    const sampler = new PeakSampler(() => [...(child.pid && sampleCommand ? [child.pid] : []), ...extraRoots()]).start();
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    child.on('error', fail);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      const seconds = (performance.now() - started) / 1000;
      if (signal === 'SIGKILL' && timeoutS > 0) return fail(new Error(`did not finish in ${timeoutS} s (stopped)`));
      const peak = sampler.stop();
      if (code === 0) ok({ seconds, peak, stdout });
      else fail(new Error(`${command} ${args.slice(0, 4).join(' ')} ... exited with ${code}:\n${stderr || stdout.slice(-4000)}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------

interface Row {
  tool: string;
  round: number;
  seconds: number;
  peak: number;
  note?: string;
}

const ORDERS_DDL = `create table bench_src.orders (
  id bigint primary key, created_at timestamptz not null, day date not null, amount numeric(12,2) not null,
  score double precision, qty integer, paid boolean, customer text, note text, attrs jsonb)`;

const fmtMb = (bytes: number) => (bytes ? `${Math.round(bytes / 1024 / 1024)} MB` : 'n/a');

async function main(): Promise<void> {
  // Sluice and raw COPY alone (the 10M-row memory run) need no Python.
  const python = process.env.BENCH_TIE !== '0' || [...PEERS].some((p) => /^(sling|dlt)/.test(p));
  const peers = python ? await installPeers() : { python: '', slingBinary: '', versions: {} as Record<string, string> };
  console.log(`versions: ${JSON.stringify(peers.versions)}`);
  const scratch = await mkdtemp(join(tmpdir(), 'sluice-peers-'));
  await chmod(scratch, 0o755);
  const temporal = resolveTemporalCli();
  if (temporal.source === 'sdk-download') throw new Error('bench:peers runs `temporal workflow execute`: set TEMPORAL_CLI_PATH or put `temporal` on PATH');
  const [server, db] = await Promise.all([
    startDevServer({ port: await freePort() }),
    startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true }),
  ]);
  const url = db.url;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  const env = { ...process.env, TEMPORAL_ADDRESS: server.address, DATABASE_URL: url, BENCH_SOURCE_URL: url, SLUICE_TASK_QUEUE: TASK_QUEUE };
  let worker: ChildProcess | undefined;
  try {
    const version = (await admin.query<{ v: string }>('select current_setting($1) as v', ['server_version'])).rows[0]!.v;
    console.log(`PostgreSQL ${version}, Temporal CLI ${temporal.path}; ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB`);
    console.log(`preparing ${ROWS.toLocaleString('en-US')} source rows ...`);
    await admin.query(`create schema bench_src; ${ORDERS_DDL};
      insert into bench_src.orders
        select i, timestamptz '2024-01-01' + i * interval '1 second', date '2024-01-01' + (i % 365), (i % 100000) / 100.0,
               i * 1.5, i % 1000, i % 2 = 0, 'customer ' || (i % 5000), md5(i::text),
               jsonb_build_object('channel', (array['web','app','store'])[1 + i % 3], 'n', i % 10)
        from generate_series(1, ${ROWS}) i`);
    await admin.query('vacuum analyze bench_src.orders');
    const last = (await admin.query<{ at: string }>(`select max(created_at)::text as at from bench_src.orders`)).rows[0]!.at;

    // The worker as it runs in production (Dockerfile): one node process, a prebuilt workflow bundle.
    const bundle = join(scratch, 'workflow-bundle.js');
    await writeFile(bundle, await bundleWorkflows());
    const launch = workerLaunch(process.env.BENCH_WORKER_SCRIPT);
    worker = spawn(process.execPath, launch.args, {
      env: { ...env, ...launch.env, SLUICE_WORKFLOW_BUNDLE: bundle },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const workerPid = () => (worker?.pid ? [worker.pid] : []);
    // Sluice's peak memory is the worker's alone: the `temporal` CLI client that starts the run
    // and waits for it (about 90 MB of its own) is not part of sluice.
    const execute = async (type: string, id: string, input: unknown) =>
      measureCommand(
        temporal.path,
        ['workflow', 'execute', '--address', server.address, '--type', type, '--task-queue', TASK_QUEUE, '--workflow-id', id, '--input', JSON.stringify(input), '-o', 'json'],
        env,
        workerPid,
        0,
        false,
      );
    // Warm the worker (its workflow bundle, its connection pools) off the clock.
    await execute('fullRefreshWorkflow', 'warmup', {
      source: { kind: 'postgres', connection: 'BENCH_SOURCE_URL', query: 'select * from bench_src.orders limit 10' },
      resource: { name: 'warmup', writeDisposition: 'replace' },
      destination: { schema: 'bench_warmup' },
    });
    const idle = new PeakSampler(workerPid).start().stop();
    console.log(`worker RSS after warm-up, idle: ${fmtMb(idle)}`);
    const count = async (table: string) => Number((await admin.query<{ n: string }>(`select count(*) as n from ${table}`)).rows[0]!.n);
    const expectRows = async (table: string, n = ROWS) => {
      const got = await count(table);
      if (got !== n) throw new Error(`${table} holds ${got} rows, not ${n}`);
    };
    const slingEnv = { ...env, SLING_BINARY: peers.slingBinary, SLING_HOME_DIR: join(PEERS_DIR, 'sling-home'), SRC_PG: `${url}?sslmode=disable`, DST_PG: `${url}?sslmode=disable` };
    // SQLAlchemy 2.1 reads postgresql:// as psycopg 3; dlt[postgres] brings psycopg2.
    const sqlalchemyUrl = url.replace(/^postgres:/, 'postgresql+psycopg2:');
    const dlt = (pipeline: string, dataset: string, extra: string[], timeoutS = 0) =>
      measureCommand(
        peers.python,
        [join(__dirname, 'peers', 'dlt_load.py'), '--source', sqlalchemyUrl, '--destination', url.replace(/^postgres:/, 'postgresql:'), '--schema', 'bench_src', '--pipeline', pipeline, '--pipelines-dir', join(scratch, 'dlt'), '--dataset', dataset, ...extra],
        { ...env, RUNTIME__LOG_LEVEL: 'WARNING', DLT_DATA_DIR: join(scratch, 'dlt-data') },
        () => [],
        timeoutS,
      );
    const merge = (table: string) => ({
      source: { kind: 'postgres', connection: 'BENCH_SOURCE_URL', table: 'bench_src.orders' },
      resource: { name: table, writeDisposition: 'merge', primaryKey: ['id'] },
      destination: { schema: 'bench_sluice' },
      partitionColumn: 'created_at', start: '2024-01-01', end: last.slice(0, 10), granularity: 'month', parallel: 1,
    });

    const rows: Row[] = [];
    const add = (tool: string, round: number, m: { seconds: number; peak: number }, note?: string) => {
      rows.push({ tool, round, seconds: m.seconds, peak: m.peak, note });
      console.log(`  round ${round}: ${tool}: ${m.seconds.toFixed(2)} s, peak ${fmtMb(m.peak)}`);
    };
    for (let round = 1; round <= ROUNDS; round++) {
      console.log(`round ${round} ...`);
      if (PEERS.has('raw')) {
        await admin.query(`drop schema if exists bench_raw cascade; create schema bench_raw; create table bench_raw.orders (like bench_src.orders)`);
        const m = await measureCommand('bash', ['-c', 'set -o pipefail; psql "$SRC_URL" -qAt -c "copy bench_src.orders to stdout" | psql "$SRC_URL" -qAt -c "copy bench_raw.orders from stdin"'], { ...env, SRC_URL: url });
        await expectRows('bench_raw.orders');
        add('raw COPY TO STDOUT | COPY FROM STDIN (psql)', round, m);
      }
      if (PEERS.has('sluice') || PEERS.has('sluice-replace')) {
        // Replace into the same table every round: round 1 creates it, round 2 replaces 1M rows.
        add('sluice replace (fullRefreshWorkflow)', round, await execute('fullRefreshWorkflow', `replace-${round}`, {
          source: { kind: 'postgres', connection: 'BENCH_SOURCE_URL', table: 'bench_src.orders' },
          resource: { name: 'orders_replace', writeDisposition: 'replace' },
          destination: { schema: 'bench_sluice' },
        }), round === 1 ? 'new table' : 'replaces 1M rows');
        await expectRows('bench_sluice.orders_replace');
      }
      if (PEERS.has('sluice')) {
        add('sluice append into a new table (backfillWorkflow, 1 partition)', round, await execute('backfillWorkflow', `append-${round}`, {
          ...merge(`orders_append_${round}`),
          resource: { name: `orders_append_${round}`, writeDisposition: 'append' },
        }));
        await expectRows(`bench_sluice.orders_append_${round}`);
      }
      if (PEERS.has('sling')) {
        const m = await measureCommand(peers.slingBinary, ['run', '--src-conn', 'SRC_PG', '--src-stream', 'bench_src.orders', '--tgt-conn', 'DST_PG', '--tgt-object', 'bench_sling.orders', '--mode', 'full-refresh'], slingEnv);
        await expectRows('bench_sling.orders');
        add('Sling full-refresh', round, m, round === 1 ? 'new table' : 'replaces 1M rows');
      }
      if (PEERS.has('dlt-fast')) {
        const m = await dlt('fast', 'bench_dlt_fast', ['--table', 'orders', '--backend', 'connectorx', '--format', 'csv', '--disposition', 'replace']);
        await expectRows('bench_dlt_fast.orders');
        add('dlt replace, connectorx backend + csv loader (fastest)', round, m, round === 1 ? 'new table' : 'replaces 1M rows');
      }
      if (PEERS.has('dlt-default')) {
        const m = await dlt('default', 'bench_dlt_default', ['--table', 'orders', '--disposition', 'replace']);
        await expectRows('bench_dlt_default.orders');
        add('dlt replace, default (sqlalchemy backend, insert_values loader)', round, m, round === 1 ? 'new table' : 'replaces 1M rows');
      }
      if (PEERS.has('sluice')) {
        add('sluice merge into an empty table', round, await execute('backfillWorkflow', `merge-empty-${round}`, merge(`orders_merge_${round}`)));
        await expectRows(`bench_sluice.orders_merge_${round}`);
        await admin.query(`update bench_src.orders set amount = amount + 1, note = 'changed' where id % 10 = 0`);
        add('sluice merge, 10% changed, into the full table', round, await execute('backfillWorkflow', `merge-full-${round}`, merge(`orders_merge_${round}`)));
        const changed = await count(`bench_sluice.orders_merge_${round} where note = 'changed'`);
        if (changed !== Math.floor(ROWS / 10)) throw new Error(`merge changed ${changed} rows, not ${ROWS / 10}`);
        await admin.query(`update bench_src.orders set amount = amount - 1, note = md5(id::text) where id % 10 = 0`);
        await admin.query('vacuum analyze bench_src.orders');
      }
    }

    const raw = rows.filter((r) => r.tool.startsWith('raw'));
    const rawSeconds = (round: number) => raw.find((r) => r.round === round)?.seconds;
    console.log(`\n| ${ROWS.toLocaleString('en-US')} rows, 10 columns, PostgreSQL -> PostgreSQL | ${Array.from({ length: ROUNDS }, (_, i) => `run ${i + 1}`).join(' | ')} | peak memory |`);
    console.log(`|---|${'---:|'.repeat(ROUNDS)}---:|`);
    for (const tool of [...new Set(rows.map((r) => r.tool))]) {
      const mine = rows.filter((r) => r.tool === tool);
      const cells = mine.map((r) => {
        const base = rawSeconds(r.round);
        return `${r.seconds.toFixed(2)} s${base ? ` (${(r.seconds / base).toFixed(2)}x)` : ''}${r.note ? `, ${r.note}` : ''}`;
      });
      console.log(`| ${tool} | ${cells.join(' | ')} | ${fmtMb(Math.max(...mine.map((r) => r.peak)))} |`);
    }

    console.log(`\n(peak memory: sampled RSS of the tool's processes; for sluice the worker, whose RSS was ${fmtMb(idle)} idle after warm-up)`);
    if (process.env.BENCH_TIE !== '0') await tieTrap(admin, execute, dlt);
    console.log(`\nversions: ${Object.entries(peers.versions).filter(([k]) => /^(dlt|sling|sling binary|connectorx|pyarrow|sqlalchemy|python)$/.test(k)).map(([k, v]) => `${k} ${v}`).join(', ')}; PostgreSQL ${version}`);
  } finally {
    worker?.kill('SIGTERM');
    if (worker && worker.exitCode === null) await new Promise((r) => worker!.once('exit', r));
    await admin.end();
    await server.stop();
    await db.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

/** 200,000 rows at one cursor value, 1,000 more at the same value, then nothing new. */
async function tieTrap(
  admin: pg.Client,
  execute: (type: string, id: string, input: unknown) => Promise<{ seconds: number; peak: number }>,
  dlt: (pipeline: string, dataset: string, extra: string[], timeoutS?: number) => Promise<{ seconds: number; peak: number; stdout: string }>,
): Promise<void> {
  const at = '2024-06-01 00:00:00+00';
  console.log(`\ntie trap: ${TIE_ROWS.toLocaleString('en-US')} rows at one cursor value ...`);
  await admin.query(`create table bench_src.ties (id bigint primary key, updated_at timestamptz not null, payload text);
    insert into bench_src.ties select i, '${at}', md5(i::text) from generate_series(1, ${TIE_ROWS}) i;
    create index on bench_src.ties (updated_at, id)`);
  await admin.query('vacuum analyze bench_src.ties');
  const steps = [
    { name: `first sync (${TIE_ROWS.toLocaleString('en-US')} rows at one value)`, before: async () => undefined },
    {
      name: '1,000 more rows at that value',
      before: async () => {
        await admin.query(`insert into bench_src.ties select i, '${at}', md5(i::text) from generate_series(${TIE_ROWS + 1}, ${TIE_ROWS + 1000}) i`);
      },
    },
    { name: 'sync with nothing new', before: async () => undefined },
  ];
  const stats = async (table: string) =>
    (await admin.query<{ n: string; d: string }>(`select count(*) as n, count(distinct id) as d from ${table}`)).rows[0]!;
  const lines: string[] = [];
  for (const [i, step] of steps.entries()) {
    await step.before();
    const expected = i === 0 ? TIE_ROWS : TIE_ROWS + 1000;
    const sluice = await execute('incrementalWorkflow', `ties-${i}`, {
      source: { kind: 'postgres', connection: 'BENCH_SOURCE_URL', table: 'bench_src.ties' },
      resource: { name: 'ties', writeDisposition: 'append', primaryKey: ['id'] },
      destination: { schema: 'bench_sluice' },
      cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
      once: true,
    });
    const s = await stats('bench_sluice.ties');
    const state = (await admin.query<{ n: number }>(`select length(state::text) as n from bench_sluice._sluice_state where resource = 'incremental:ties'`)).rows[0]?.n ?? 0;
    lines.push(`| ${step.name} | sluice incrementalWorkflow | ${sluice.seconds.toFixed(2)} s | ${s.n} (${s.d} distinct; expected ${expected}) | ${state} bytes |`);
    try {
      const d = await dlt('ties', 'bench_dlt_ties', ['--table', 'ties', '--backend', 'connectorx', '--disposition', 'append', '--incremental', 'updated_at', '--primary-key', 'id'], TIE_TIMEOUT_S);
      const r = await stats('bench_dlt_ties.ties');
      const dState = (await admin.query<{ n: number }>(`select length(state) as n from bench_dlt_ties._dlt_pipeline_state order by _dlt_load_id desc limit 1`)).rows[0]?.n ?? 0;
      const local = (JSON.parse(d.stdout.trim().split('\n').pop()!) as { state_bytes: number }).state_bytes;
      lines.push(`| ${step.name} | dlt incremental (connectorx) | ${d.seconds.toFixed(2)} s | ${r.n} (${r.d} distinct; expected ${expected}) | ${local} bytes (${dState} compressed in _dlt_pipeline_state) |`);
    } catch (err) {
      lines.push(`| ${step.name} | dlt incremental (connectorx) | failed: ${String((err as Error).message).split('\n').slice(-2).join(' ')} | | |`);
    }
    console.log(lines.slice(-2).join('\n'));
  }
  console.log(`\n| tie trap | tool | time | rows in the destination | saved state |`);
  console.log('|---|---|---:|---:|---:|');
  for (const line of lines) console.log(line);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
