/**
 * The `sluice` command, spawned as a user runs it (bin/sluice.js, which `npx sluice` runs),
 * against the real Temporal dev server and PostgreSQL of test/run.ts, with an in-process worker
 * on this test's task queue.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { readWorkflowFile } from '../src/cli/workflow-file';
import { runsQuery } from '../src/cli/resources';
import { count, requireEnv, testStack, waitFor, type TestStack } from './helpers';
import { ensureMetadata } from '../src/destinations/postgres/loader';
import { acquireLease, leaseKey } from '../src/destinations/postgres/lease';

const REPO = join(__dirname, '..');
const BIN = join(REPO, 'bin', 'sluice.js');

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function collect(child: ChildProcess): Promise<Ran> & { output: () => string } {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Ran>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  return Object.assign(done, { output: () => stdout + stderr });
}

describe('sluice command', () => {
  let stack: TestStack;
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const sluiceChild = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) =>
    spawn(process.execPath, [BIN, ...args], { cwd: REPO, env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  const sluice = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => collect(sluiceChild(args, extraEnv));
  const file = async (name: string, content: unknown) => {
    const path = join(dir, name);
    await writeFile(path, typeof content === 'string' ? content : name.endsWith('.json') ? JSON.stringify(content, null, 2) : stringify(content));
    return path;
  };
  const destination = () => ({ connection: 'DATABASE_URL', schema: stack.schema });

  before(async () => {
    stack = await testStack('cli');
    dir = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'cli-'));
    env = { ...process.env, SLUICE_TASK_QUEUE: stack.taskQueue, TEMPORAL_ADDRESS: requireEnv('TEMPORAL_ADDRESS'), DATABASE_URL: requireEnv('DATABASE_URL') };
    await stack.db.query(`
      create table ${stack.sourceSchema}.customers (id bigint primary key, name text not null, updated_at timestamptz not null);
      insert into ${stack.sourceSchema}.customers
        select g, 'customer ' || g, timestamptz '2024-01-01' + g * interval '1 minute' from generate_series(1, 50) g;
    `);
  });
  after(async () => {
    await stack.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('the file reader names file:line and the field for YAML and JSON, and reports YAML syntax errors at their line', () => {
    const yamlText = [
      'workflow: fullRefreshWorkflow', // 1
      'input:', // 2
      '  source:', // 3
      '    kind: postgres', // 4
      '    connection: SOURCE_DATABASE_URL', // 5
      '    table: public.orders', // 6
      '  resource:', // 7
      '    writeDisposition: merj', // 8
      '    primaryKey: [id]', // 9
      '    mergKey: [id]', // 10
      '', // 11
    ].join('\n');
    const r = readWorkflowFile('orders.yaml', yamlText);
    assert.equal(r.ok, false);
    assert.deepEqual(!r.ok && r.problems, [
      'orders.yaml:7: input.resource.name: required',
      'orders.yaml:8: input.resource.writeDisposition: Invalid option: expected one of "append"|"merge"|"replace"',
      'orders.yaml:10: input.resource.mergKey: unknown field, did you mean mergeKey?',
    ]);

    const json = JSON.stringify({ workflow: 'incrementalWorkflow', input: { source: { kind: 'postgres', connection: 'X', table: 't' }, resource: { name: 'a' }, cursor: { column: 'u' }, once: 'yes' } }, null, 2);
    const j = readWorkflowFile('sync.json', json);
    const onceLine = json.split('\n').findIndex((l) => l.includes('"once"')) + 1;
    assert.deepEqual(!j.ok && j.problems, [`sync.json:${onceLine}: input.once: Invalid input: expected boolean, received string`]);

    const badType = readWorkflowFile('x.yaml', 'workflow: nopeWorkflow\nid: x\ninput: {}\nextra: 1\n');
    assert.deepEqual(!badType.ok && badType.problems.map((p) => p.split(': ').slice(0, 2).join(': ')), ['x.yaml:1: workflow', 'x.yaml:4: extra']);

    const syntax = readWorkflowFile('broken.yaml', 'workflow: backfillWorkflow\ninput:\n  a: [1, 2\n  b: 3\n');
    assert.equal(syntax.ok, false);
    assert.match(!syntax.ok ? syntax.problems[0]! : '', /^broken\.yaml:\d+: /);

    // Pipelines: each step's input is judged by its own workflow's schema, at its own line.
    const pipeline = readWorkflowFile(
      'p.yaml',
      'workflow: pipelineWorkflow\ninput:\n  name: p\n  steps:\n    - name: a\n      workflow: fullRefreshWorkflow\n      input:\n        source: { kind: postgres, connection: X, table: t }\n        resource: { name: a, writeDisposition: nope }\n',
    );
    assert.deepEqual(!pipeline.ok && pipeline.problems, [
      'p.yaml:9: input.steps[0].input.resource.writeDisposition: Invalid option: expected one of "append"|"merge"|"replace"',
    ]);
  });

  test('the example files under docs/examples, which the README starts, are valid', async () => {
    const examples = join(REPO, 'docs', 'examples');
    const names = (await readdir(examples)).sort();
    assert.deepEqual(names, ['backfill-orders.yaml', 'files-payments.yaml', 'sync-customers.json']);
    for (const name of names) {
      const r = readWorkflowFile(name, await readFile(join(examples, name), 'utf8'));
      assert.ok(r.ok, `${name}: ${!r.ok && r.problems.join('; ')}`);
    }
  });

  test('--help on every command, through npx as a user types it', async () => {
    const top = await collect(spawn('npx', ['sluice', '--help'], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] }));
    assert.equal(top.code, 0, top.stderr);
    for (const command of ['start', 'status', 'rejects', 'reset']) assert.match(top.stdout, new RegExp(`^  ${command} `, 'm'));
    for (const command of ['start', 'status', 'rejects', 'reset']) {
      const help = await sluice([command, '--help']);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, new RegExp(`^Usage: sluice ${command} `, 'm'));
    }
    const unknown = await sluice(['stat']);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /unknown command 'stat'/);
  });

  test('start: an invalid file fails before anything starts, naming file:line and the field, without a stack trace', async () => {
    const path = await file('bad.yaml', 'workflow: fullRefreshWorkflow\ninput:\n  source:\n    kind: postgres\n    connection: SOURCE_DATABASE_URL\n    table: x.y\n  resource:\n    name: bad\n    writeDisposition: merj\n');
    const r = await sluice(['start', path], { TEMPORAL_ADDRESS: '127.0.0.1:1' }); // not even Temporal is needed
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:9: input\\.resource\\.writeDisposition: Invalid option`));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    const missing = await sluice(['start', join(dir, 'nope.yaml')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /nope\.yaml: no such file/);
  });

  test('start from JSON prints the id, the UI link and a temporal command that works as printed; --watch from YAML exits 0 on success', async () => {
    await stack.withWorker(async () => {
      const input = {
        source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.customers` },
        resource: { name: 'customers_copy', writeDisposition: 'replace' },
        destination: destination(),
      };
      const workflowId = `cli-refresh-${stack.schema}`;
      const path = await file('refresh.json', { workflow: 'fullRefreshWorkflow', id: workflowId, input });
      const started = await sluice(['start', path]);
      assert.equal(started.code, 0, started.stderr);
      assert.match(started.stdout, new RegExp(`^started fullRefreshWorkflow ${workflowId} \\(run [0-9a-f-]+\\) on task queue ${stack.taskQueue}`, 'm'));
      assert.match(started.stdout, new RegExp(`UI: +http://\\S+/namespaces/default/workflows/${workflowId}$`, 'm'));
      await stack.client.workflow.getHandle(workflowId).result();
      assert.equal(await count(stack.db, `${stack.schema}.customers_copy`), 50);

      // The printed Temporal CLI command starts the same workflow again.
      const command = /Temporal: (temporal workflow start .*)$/m.exec(started.stdout)![1]!;
      assert.match(command, /--address /, 'names the non-default address');
      const temporal = await collect(spawn('sh', ['-c', command.replace(/^temporal /, `"${requireEnv('TEMPORAL_CLI_PATH')}" `)], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
      assert.equal(temporal.code, 0, temporal.stderr);
      const again = await stack.client.workflow.getHandle(workflowId).describe();
      assert.notEqual(again.runId, /\(run ([0-9a-f-]+)\)/.exec(started.stdout)![1]);
      await stack.client.workflow.getHandle(workflowId).result();

      // --watch from YAML: id from --id, follows the run to its end.
      const syncPath = await file('sync.yaml', {
        workflow: 'incrementalWorkflow',
        input: {
          source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.customers` },
          resource: { name: 'customers', writeDisposition: 'merge', primaryKey: ['id'] },
          destination: destination(),
          cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
          pageSize: 10,
          once: true,
        },
      });
      const watched = await sluice(['start', syncPath, '--id', `cli-sync-${stack.schema}`, '--watch']);
      assert.equal(watched.code, 0, watched.stderr);
      assert.match(watched.stdout, new RegExp(`^cli-sync-${stack.schema} completed: \\{.*"rows":50`, 'm'));
      assert.equal(await count(stack.db, `${stack.schema}.customers`), 50);
    });
  });

  test('start --watch exits non-zero when the run fails, with the reason', async () => {
    await stack.withWorker(async () => {
      const path = await file('missing.yaml', {
        workflow: 'fullRefreshWorkflow',
        id: `cli-missing-${stack.schema}`,
        input: {
          source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.no_such_table` },
          resource: { name: 'missing', writeDisposition: 'replace' },
          destination: destination(),
        },
      });
      const r = await sluice(['start', path, '--watch']);
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.match(r.stderr, new RegExp(`cli-missing-${stack.schema} failed: .*no_such_table`));
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    });
  });

  test('status and rejects show loads, rejects with their source line, saved file state and runs; reset forgets the state', async () => {
    const drops = join(dir, 'drops');
    await rm(drops, { recursive: true, force: true });
    await mkdir(drops);
    await writeFile(join(drops, 'a.csv'), 'id,amount\n1,10\n2,not-a-number\n3,30\n');
    const workflowId = `cli-files-${stack.schema}`;
    const path = await file('files.yaml', {
      workflow: 'filesWorkflow',
      id: workflowId,
      input: {
        source: { kind: 'files', path: drops, pattern: '*.csv', format: 'csv' },
        resource: { name: 'payments', columns: { id: 'bigint', amount: 'numeric' } },
        destination: destination(),
        once: true,
      },
    });
    await stack.withWorker(async () => {
      const r = await sluice(['start', path, '--watch']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
    });

    const rejects = await sluice(['rejects', 'payments', '--schema', stack.schema]);
    assert.equal(rejects.code, 0, rejects.stderr);
    assert.match(rejects.stdout, /^rejected +source line +reason +row$/m);
    assert.match(rejects.stdout, /a\.csv:3 +.*not-a-number.*"amount":"not-a-number"/);

    // The run is listed once the visibility store has caught up.
    const status = await waitFor('the run in sluice status', async () => {
      const s = await sluice(['status', 'payments', '--schema', stack.schema]);
      assert.equal(s.code, 0, s.stderr);
      return s.stdout.includes(workflowId) && s.stdout;
    });
    assert.match(status, /^recent loads/m);
    assert.match(status, /payments +a\.csv +completed +2 +1/);
    assert.match(status, /files: 1 loaded, the latest a\.csv/);
    assert.match(status, new RegExp(`${workflowId} +filesWorkflow +COMPLETED +completed`));
    const all = await sluice(['status', '--schema', stack.schema]);
    assert.match(all.stdout, /payments +a\.csv +completed/);

    const reset = await sluice(['reset', 'payments', '--schema', stack.schema]);
    assert.equal(reset.code, 0, reset.stderr);
    assert.match(reset.stdout, /forgot 1 loaded file/);
    assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource like 'files:payments:%'`), 0);
    const after = await sluice(['status', 'payments', '--schema', stack.schema]);
    assert.match(after.stdout, /saved state: none for resource "payments"/);

    const noSchema = await sluice(['status', '--schema', 'no_such_schema_here']);
    assert.equal(noSchema.code, 1);
    assert.match(noSchema.stderr, /schema "no_such_schema_here" has no sluice metadata/);
    const noDb = await sluice(['status'], { DATABASE_URL: '' });
    assert.equal(noDb.code, 1);
    assert.match(noDb.stderr, /DATABASE_URL is not set/);
  });

  test('reset refuses while a run holds the resource; Ctrl-C on --watch detaches and the run goes on', async () => {
    const workflowId = `cli-every-${stack.schema}`;
    const path = await file('every.yaml', {
      workflow: 'incrementalWorkflow',
      id: workflowId,
      input: {
        source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.customers` },
        resource: { name: 'customers_live', writeDisposition: 'merge', primaryKey: ['id'] },
        destination: destination(),
        cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
        every: '1h',
      },
    });
    await stack.withWorker(async () => {
      const child = sluiceChild(['start', path, '--watch']);
      const watching = collect(child);
      await waitFor('the first sync to commit its cursor', async () =>
        (await count(stack.db, `${stack.schema}._sluice_state`, `resource = 'incremental:customers_live'`).catch(() => 0)) === 1,
      );
      await waitFor('the started line', async () => watching.output().includes(`started incrementalWorkflow ${workflowId}`));
      child.kill('SIGINT');
      const detached = await watching;
      assert.equal(detached.code, 130, detached.stdout + detached.stderr);
      assert.match(detached.stdout, /detached: .* keeps running/);
      const handle = stack.client.workflow.getHandle(workflowId);
      assert.equal((await handle.describe()).status.name, 'RUNNING');

      await waitFor('the run in visibility', async () => {
        for await (const run of stack.client.workflow.list({ query: runsQuery('customers_live', true) })) return run.workflowId === workflowId;
        return false;
      });
      const refused = await sluice(['reset', 'customers_live', '--schema', stack.schema]);
      assert.equal(refused.code, 1, refused.stdout);
      assert.match(refused.stderr, new RegExp(`refusing to reset "customers_live": a run holds it \\(${workflowId}\\)`));
      assert.match(refused.stderr, new RegExp(`temporal workflow cancel --workflow-id ${workflowId}`));
      assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource = 'incremental:customers_live'`), 1, 'state kept');

      await handle.terminate('test done');
      await waitFor('the run to leave visibility as running', async () => {
        for await (const run of stack.client.workflow.list({ query: runsQuery('customers_live', true) })) return !run;
        return true;
      });
      const reset = await sluice(['reset', 'customers_live', '--schema', stack.schema]);
      assert.equal(reset.code, 0, reset.stderr);
      assert.match(reset.stdout, /forgot incremental:customers_live/);
      assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource = 'incremental:customers_live'`), 0);
    });
  });
  test('reset refuses while a live run holds one of the resource\'s leases, even one visibility does not name; a gone holder does not block it', async () => {
    const url = requireEnv('DATABASE_URL');
    await ensureMetadata(url, stack.schema);
    // Its own state, and a lease on its table held by a run that visibility lists under another resource.
    await stack.db.query(`insert into ${stack.schema}._sluice_state (resource, state) values ('incremental:cli_leased', '{"cursor": 1}')`);
    const holderId = `cli-holder-${stack.schema}`;
    await stack.withWorker(async () => {
      const holder = await stack.client.workflow.start('incrementalWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: holderId,
        args: [
          {
            source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.customers` },
            resource: { name: 'cli_holder', writeDisposition: 'merge', primaryKey: ['id'] },
            destination: destination(),
            cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
            every: '1h',
          },
        ],
      });
      await waitFor('the holder to run', async () => (await holder.describe()).status.name === 'RUNNING');
      await acquireLease(url, stack.schema, {
        key: leaseKey('backfill', 'cli_leased'),
        holder: { workflowId: holderId, chain: holder.firstExecutionRunId },
        isRunning: async () => 'running',
        resource: 'cli_leased',
      });
      const refused = await sluice(['reset', 'cli_leased', '--schema', stack.schema]);
      assert.equal(refused.code, 1, refused.stdout);
      assert.match(refused.stderr, new RegExp(`refusing to reset "cli_leased": a run holds it \\(${holderId}\\): workflow ${holderId} holds lease:backfill:cli_leased`));
      assert.match(refused.stderr, new RegExp(`temporal workflow cancel --workflow-id ${holderId}`));
      assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource = 'incremental:cli_leased'`), 1, 'state kept');

      await holder.terminate('test done');
      const reset = await sluice(['reset', 'cli_leased', '--schema', stack.schema]);
      assert.equal(reset.code, 0, reset.stderr);
      assert.match(reset.stdout, /forgot incremental:cli_leased/);
      assert.equal(await count(stack.db, `${stack.schema}._sluice_state`, `resource = 'lease:backfill:cli_leased'`), 1, 'the lease (and its token) stays');
    });
  });
});
