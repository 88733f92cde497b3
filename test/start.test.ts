/**
 * `npm start` end to end: it starts (or reuses) the stack, prints commands, and the commands
 * work exactly as printed when pasted into a shell.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtemp, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from '../src/dev/ports';
import { uniqueName, waitFor } from './helpers';

const exec = promisify(execFile);
const root = join(__dirname, '..');

function startSluice(env: NodeJS.ProcessEnv): { child: ChildProcess; output: () => string; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/start.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const ready = new Promise<void>((resolveReady, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes('Ctrl-C stops')) resolveReady();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => reject(new Error(`npm start exited with ${code} before it was ready:\n${out}`)));
  });
  return { child, output: () => out, ready };
}

function stop(child: ChildProcess): Promise<number | null> {
  return new Promise((resolveExit) => {
    if (child.exitCode !== null) return resolveExit(child.exitCode);
    child.once('exit', (code) => resolveExit(code));
    child.kill('SIGINT');
  });
}

async function runPrinted(output: string): Promise<{ started: string[] }> {
  const commands = output.split('\n').filter((l) => /^\S*temporal workflow start /.test(l));
  assert.ok(commands.length >= 2, `expected printed start commands, got:\n${output}`);
  for (const command of commands) await exec('bash', ['-c', command], { cwd: tmpdir() });
  return { started: commands.map((c) => /--workflow-id (\S+)/.exec(c)![1]!) };
}

async function awaitResults(output: string): Promise<string[]> {
  const results = output.split('\n').filter((l) => l.startsWith('#   result:')).map((l) => l.replace('#   result:', '').trim());
  const printed: string[] = [];
  for (const command of results) {
    const { stdout } = await exec('bash', ['-c', command], { cwd: tmpdir(), timeout: 120_000 });
    printed.push(stdout);
  }
  return printed;
}

describe('npm start', () => {
  const children: ChildProcess[] = [];
  after(async () => {
    for (const c of children) await stop(c);
  });

  test('with an existing Temporal and DATABASE_URL: printed commands run as printed and load the demo rows', async () => {
    const taskQueue = uniqueName('start');
    const sluice = startSluice({ ...process.env, SLUICE_TASK_QUEUE: taskQueue });
    children.push(sluice.child);
    await sluice.ready;
    const output = sluice.output();
    assert.match(output, /using the server at/);
    await runPrinted(output);
    const results = await awaitResults(output);
    for (const r of results) assert.match(r, /COMPLETED/, r);
    const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await db.connect();
    try {
      const rows = await db.query(`select (select count(*) from raw.orders)::int as loaded, (select count(*) from demo.orders)::int as source`);
      assert.equal(rows.rows[0].loaded, rows.rows[0].source);
      assert.ok(rows.rows[0].loaded > 0);
      // The CDC example: the printed psql change arrives, and the printed stop drops the slot.
      const change = /^#   change demo rows: psql '[^']+' -c "(.*)"$/m.exec(output)?.[1];
      assert.ok(change, output);
      await waitFor('the CDC snapshot', async () => (await db.query(`select 1 from cdc.orders where id = 2`).catch(() => ({ rowCount: 0 }))).rowCount === 1, 120_000);
      await db.query(change);
      await waitFor('the change to arrive', async () =>
        (await db.query(`select 1 from cdc.orders where id = 1 and status = 'refunded'`)).rowCount === 1 &&
        (await db.query(`select 1 from cdc.orders where id = 2 and _sluice_deleted_at is not null`)).rowCount === 1, 120_000);
      const stopLine = /^#   stop \(and drop its replication slot\): (.*)$/m.exec(output)![1]!;
      await exec('bash', ['-c', stopLine], { cwd: tmpdir() });
      await waitFor('the slot to be dropped', async () => (await db.query(`select 1 from pg_replication_slots where slot_name like 'sluice_demo_cdc%'`)).rowCount === 0, 120_000);
    } finally {
      await db.end();
    }
    assert.equal(await stop(sluice.child), 0, 'Ctrl-C exits cleanly');
  });

  test('with nothing configured: starts a dev server and an embedded PostgreSQL, keeps both across a restart', async () => {
    const home = await mkdtemp(join(tmpdir(), 'sluice-home-'));
    await chmod(home, 0o755);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      SLUICE_HOME: home,
      TEMPORAL_ADDRESS: `localhost:${await freePort()}`,
      SLUICE_UI_PORT: String(await freePort()),
      SLUICE_PG_PORT: String(await freePort()),
      SLUICE_TASK_QUEUE: uniqueName('start-embedded'),
    };
    delete env.DATABASE_URL;
    delete env.SOURCE_DATABASE_URL;
    const first = startSluice(env);
    children.push(first.child);
    await first.ready;
    assert.match(first.output(), /starting a dev server/);
    assert.match(first.output(), /starting an embedded server/);
    const url = /Destination\s+(\S+)/.exec(first.output())![1]!;
    await runPrinted(first.output());
    await awaitResults(first.output());
    assert.equal(await stop(first.child), 0);

    const second = startSluice(env);
    children.push(second.child);
    await second.ready;
    const cli = process.env.TEMPORAL_CLI_PATH ?? 'temporal';
    const { stdout } = await exec(cli, ['workflow', 'describe', '--address', env.TEMPORAL_ADDRESS!, '--workflow-id', 'demo-backfill-orders']);
    assert.match(stdout, /Completed|COMPLETED/, 'the workflow history survived the restart');
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    try {
      const rows = await db.query('select count(*)::int as n from raw.orders');
      assert.equal(rows.rows[0].n, 500, 'the destination data survived the restart');
    } finally {
      await db.end();
    }
    assert.equal(await stop(second.child), 0);
  });
});
