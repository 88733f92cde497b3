/**
 * Issue 15, connections: a workflow input can name only the connection variables the worker
 * allows, and no password (or whole connection string) reaches workflow history, progress, the
 * UI's details, _sluice_loads.error, rejects or the worker's logs, even when connecting fails.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type WorkflowHandle } from '@temporalio/client';
import { ConnectionNotAllowedError, resolveConnection } from '../src/config';
import { PermanentError, redactSecrets } from '../src/errors';
import { killHard, requireEnv, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

describe('connection variables a workflow may name', () => {
  test('by default only *_URL variables; PATH, HOME and AWS_SECRET_ACCESS_KEY are refused before they are read', () => {
    const env = { PATH: '/usr/bin', HOME: '/root', AWS_SECRET_ACCESS_KEY: 'abc', SOURCE_DATABASE_URL: 'postgres://u:p@h/db' };
    assert.equal(resolveConnection('SOURCE_DATABASE_URL', env), env.SOURCE_DATABASE_URL);
    for (const name of ['PATH', 'HOME', 'AWS_SECRET_ACCESS_KEY']) {
      assert.throws(() => resolveConnection(name, env), (err: Error) => {
        assert.ok(err instanceof ConnectionNotAllowedError && err instanceof PermanentError, 'non-retryable');
        assert.ok(err.message.includes(name) && err.message.includes('SLUICE_CONNECTIONS'), err.message);
        assert.ok(!err.message.includes(env[name as keyof typeof env]), 'the value is never read into the message');
        return true;
      });
    }
  });

  test('SLUICE_CONNECTIONS lists the allowed names exactly', () => {
    const env = { SLUICE_CONNECTIONS: 'WAREHOUSE, CRM_DB', WAREHOUSE: 'postgres://w', CRM_DB: 'postgres://c', OTHER_URL: 'postgres://o' };
    assert.equal(resolveConnection('CRM_DB', env), 'postgres://c');
    assert.throws(() => resolveConnection('OTHER_URL', env), /OTHER_URL is not allowed on this worker by SLUICE_CONNECTIONS \(WAREHOUSE, CRM_DB\)/);
  });

  test('redaction removes connection strings, their passwords (raw and percent-decoded) and URL passwords it does not know', () => {
    const secrets = ['postgres://loader:p%40ss-W0rd@db:5432/x', 'postgres://reader@db/x?password=qwerty123'];
    const text = redactSecrets(
      'a postgres://loader:p%40ss-W0rd@db:5432/x b p@ss-W0rd c qwerty123 d mysql://root:hunter22@other/db e password=letmein',
      secrets,
    );
    for (const leaked of ['p%40ss-W0rd', 'p@ss-W0rd', 'qwerty123', 'hunter22', 'letmein']) assert.ok(!text.includes(leaked), `${leaked} in ${text}`);
    assert.match(text, /mysql:\/\/root:\*\*\*@other\/db/);
  });
});

describe('no password leaves the worker, even when connecting fails', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('hostile_conn');
  });
  after(async () => {
    await stack.close();
  });

  test('wrong password, unknown host, TLS refused, bad port, a leaky driver: grep history, progress, details, tables and logs', async () => {
    const admin = new URL(requireEnv('DATABASE_URL'));
    const token = () => `Pw${randomBytes(8).toString('hex')}`;
    const passwords = { wrong: token(), host: token(), tls: token(), port: token(), leaky: token(), dest: token() };
    const urls: Record<string, string> = {
      WRONG_PW_URL: `postgres://${admin.username}:${passwords.wrong}@${admin.host}${admin.pathname}`,
      NO_HOST_URL: `postgres://someone:${passwords.host}@no-such-host.invalid:5432/db`,
      TLS_URL: `postgres://${admin.username}:${passwords.tls}@${admin.host}${admin.pathname}?sslmode=require`,
      BAD_PORT_URL: `postgres://someone:${passwords.port}@localhost:99999/db`,
      LEAKY_URL: `postgres://someone:${passwords.leaky}@leaky.invalid/db`,
      WRONG_DEST_URL: `postgres://${admin.username}:${passwords.dest}@${admin.host}${admin.pathname}`,
    };
    const worker = await spawnWorker(stack.taskQueue, {
      ...urls,
      SLUICE_SOURCES: [join(__dirname, 'fixtures', 'sources.ts'), join(__dirname, 'fixtures', 'hostile-sources.ts')].join(','),
    });
    let logs = '';
    worker.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
    worker.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
    const handles: WorkflowHandle[] = [];
    try {
      const destination = { connection: 'DATABASE_URL', schema: stack.schema };
      const refresh = (connection: string, dest = destination) => ({
        source: { kind: 'postgres', connection, table: `${stack.sourceSchema}.t` },
        resource: { name: `r_${connection.toLowerCase()}`, writeDisposition: 'replace' },
        destination: dest,
      });
      await stack.db.query(`create table ${stack.sourceSchema}.t (id int); insert into ${stack.sourceSchema}.t values (1)`);
      const start = async (type: string, id: string, input: unknown) => {
        const handle = await stack.client.workflow.start(type, { taskQueue: stack.taskQueue, workflowId: `${id}-${stack.schema}`, args: [input] });
        handles.push(handle);
        return handle;
      };
      for (const connection of ['WRONG_PW_URL', 'NO_HOST_URL', 'TLS_URL', 'BAD_PORT_URL']) await start('fullRefreshWorkflow', `hostile-${connection}`, refresh(connection));
      await start('fullRefreshWorkflow', 'hostile-dest', refresh('SOURCE_DATABASE_URL', { connection: 'WRONG_DEST_URL', schema: stack.schema }));
      await start('backfillWorkflow', 'hostile-leaky', {
        source: { kind: 'registered', name: 'hostile.leaky' },
        resource: { name: 'leaky', writeDisposition: 'append' },
        destination,
        partitionColumn: 'at',
        start: '2024-01-01',
        end: '2024-01-01',
      });

      // Every run has failed, or has failed at least one attempt and is retrying (a lost host may come back).
      for (const handle of handles) {
        await waitFor(`a failure of ${handle.workflowId}`, async () => {
          const d = await handle.describe();
          if (d.status.name !== 'RUNNING') return true;
          const raw = d.raw.pendingActivities ?? [];
          return raw.some((a) => (a.attempt ?? 0) >= 2 && a.lastFailure);
        });
      }
      let seen = logs;
      for (const handle of handles) {
        seen += JSON.stringify(await handle.describe().then((d) => d.raw));
        seen += JSON.stringify(await handle.query('progress').catch((e: Error) => e.message));
        seen += JSON.stringify(await handle.query('__temporal_workflow_metadata').catch((e: Error) => e.message));
        seen += JSON.stringify(await handle.fetchHistory());
        // A run still retrying a transient error (retries do not give up) has no result yet: its failures are in describe and progress.
        if ((await handle.describe()).status.name === 'RUNNING') continue;
        seen += await handle.result().then((r) => JSON.stringify(r), (e: Error) => `${e.message} ${JSON.stringify(e)} ${(e.cause as Error | undefined)?.message ?? ''} ${JSON.stringify(e.cause)}`).catch(() => '');
      }
      const tables = await stack.db.query(
        `select coalesce(string_agg(t::text, ' '), '') as s from (select * from ${stack.schema}._sluice_loads) t`,
      );
      const rejects = await stack.db.query(`select coalesce(string_agg(t::text, ' '), '') as s from (select * from ${stack.schema}._sluice_rejects) t`);
      seen += tables.rows[0].s + rejects.rows[0].s;
      assert.ok(seen.includes('hostile-leaky') || seen.includes('leaky'), 'the grep covers the runs');
      assert.match(tables.rows[0].s, /could not reach \*\*\* \(the driver quoted/, 'the leaky error was recorded, redacted');
      for (const [name, password] of Object.entries(passwords)) assert.ok(!seen.includes(password), `the ${name} password leaked`);
      for (const url of Object.values(urls)) assert.ok(!seen.includes(url), `${url} leaked`);
    } finally {
      for (const handle of handles) await handle.terminate('test over').catch(() => undefined);
      await killHard(worker);
    }
  });
});
