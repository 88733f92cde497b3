/**
 * Issue 15, files: nothing outside SLUICE_FILES_ROOTS gets in, and hostile bytes become rejects
 * with file:line, never a worker's secrets in a table, U+FFFD, or a stalled worker.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { FilesSource, Resource } from '../src/inputs';
import { loadResource } from '../src/destinations/postgres/loader';
import { redactSecrets } from '../src/errors';
import { inferType } from '../src/schema/types';
import { extractFile, listFiles, OutsideRootsError, readFileRows } from '../src/sources/files';
import { byteLines, MAX_LINE_BYTES } from '../src/sources/files/read';
import { ROW_REJECT, ROW_SOURCE, type Extracted, type Row } from '../src/sources/types';
import { adminUrl, testStack, uniqueName, type TestStack } from './helpers';
import pg from 'pg';

/** The rows an extractor hands the loader (files sources always hand rows). */
function rowsOf(data: Extracted): AsyncIterable<Row> {
  assert.equal(data.kind, 'rows');
  return data.kind === 'rows' ? data.rows : Readable.from([]);
}

async function collect(rows: AsyncIterable<Row>): Promise<Row[]> {
  const out: Row[] = [];
  for await (const row of rows) out.push(row);
  return out;
}

let base: string;
let root: string;
let outside: string;

before(async () => {
  base = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'hostile-files-'));
  root = join(base, 'root');
  outside = join(base, 'outside');
  await mkdir(join(root, 'drop'), { recursive: true });
  await mkdir(outside, { recursive: true });
  await writeFile(join(outside, 'secret.csv'), 'key,value\nDATABASE_PASSWORD,hunter2\n');
  await writeFile(join(root, 'drop', 'good.csv'), 'id,name\n1,ok\n');
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('files stay inside SLUICE_FILES_ROOTS', () => {
  before(() => {
    process.env.SLUICE_FILES_ROOTS = root;
  });
  test('a source.path outside the roots, or one that climbs out with .., is refused naming the roots', async () => {
    await assert.rejects(listFiles(outside, '*.csv', undefined, [root]), (err: Error) => {
      assert.ok(err instanceof OutsideRootsError);
      assert.match(err.message, /SLUICE_FILES_ROOTS/);
      assert.ok(err.message.includes(root), err.message);
      return true;
    });
    await assert.rejects(listFiles(join(root, 'drop', '..', '..', 'outside'), '*.csv', undefined, [root]), OutsideRootsError);
    const inside = await listFiles(join(root, 'drop'), '*.csv', undefined, [root]);
    assert.deepEqual(inside.map((f) => f.path), ['good.csv']);
  });

  test('a symlink to a file outside is listed as refused and fails on load; one inside a root is followed', async () => {
    const dir = join(root, 'links');
    await mkdir(dir);
    await symlink(join(outside, 'secret.csv'), join(dir, 'partner.csv'));
    await symlink(join(root, 'drop', 'good.csv'), join(dir, 'alias.csv'));
    const listed = await listFiles(dir, '*.csv', undefined, [root]);
    const partner = listed.find((f) => f.path === 'partner.csv')!;
    const alias = listed.find((f) => f.path === 'alias.csv')!;
    assert.match(partner.fingerprint, /^unreadable:/);
    assert.match(partner.error ?? '', /SLUICE_FILES_ROOTS/);
    assert.match(alias.fingerprint, /^sha256:/);
    const source = FilesSource.parse({ kind: 'files', path: dir, pattern: '*.csv', format: 'csv' });
    const refused = await extractFile(source, partner);
    await assert.rejects(collect(rowsOf(refused)), (err: Error) => {
      assert.ok(err instanceof OutsideRootsError);
      assert.ok(err.message.includes(root));
      return true;
    });
    const followed = await extractFile(source, alias);
    const rows = await collect(rowsOf(followed));
    assert.deepEqual(rows.map((r) => r.name), ['ok']);
  });

  test('a symlink to a directory outside is not descended', async () => {
    const dir = join(root, 'dirlink');
    await mkdir(dir);
    await symlink(outside, join(dir, 'escape'));
    const listed = await listFiles(dir, '**/*', undefined, [root]);
    assert.deepEqual(listed, []);
  });

  test('a file swapped for a symlink after listing is refused when it is opened', async () => {
    const dir = join(root, 'swap');
    await mkdir(dir);
    await writeFile(join(dir, 'late.csv'), 'id\n1\n');
    const [file] = await listFiles(dir, '*.csv', undefined, [root]);
    await rm(join(dir, 'late.csv'));
    await symlink(join(outside, 'secret.csv'), join(dir, 'late.tmp'));
    await rename(join(dir, 'late.tmp'), join(dir, 'late.csv'));
    const source = FilesSource.parse({ kind: 'files', path: dir, pattern: '*.csv', format: 'csv' });
    const data = await extractFile(source, file!);
    await assert.rejects(collect(rowsOf(data)), OutsideRootsError);
  });

  test('a listed path that climbs out of source.path is refused', async () => {
    const source = FilesSource.parse({ kind: 'files', path: join(root, 'drop'), pattern: '*.csv', format: 'csv' });
    await assert.rejects(extractFile(source, { path: '../../outside/secret.csv', fingerprint: 'sha256:x' }), /not inside source.path|outside/);
  });
});

describe('CSV control characters and hostile bytes', () => {
  test('NUL, CR and LF are refused as delimiter, quote or escape; tab is a delimiter', () => {
    for (const option of ['delimiter', 'quote', 'escape']) {
      for (const c of ['\u0000', '\r', '\n']) {
        const parsed = FilesSource.safeParse({ kind: 'files', path: root, format: 'csv', csv: { [option]: c } });
        assert.equal(parsed.success, false, `${option} ${JSON.stringify(c)}`);
        assert.deepEqual(parsed.error!.issues[0]!.path, ['csv', option]);
        assert.match(parsed.error!.issues[0]!.message, /control character/);
      }
    }
    assert.equal(FilesSource.safeParse({ kind: 'files', path: root, format: 'csv', csv: { delimiter: '\t' } }).success, true);
  });

  test('a custom quote and escape are honoured', async () => {
    const file = join(root, 'drop', 'quoted.csv');
    await writeFile(file, "id;note\n1;'a;b \\'c\\''\n");
    const rows = await collect(readFileRows(file, 'csv', { label: 'quoted.csv', csv: { delimiter: ';', quote: "'", escape: '\\' } }));
    assert.equal(rows[0]!.note, "a;b 'c'");
  });

  test('invalid UTF-8 rejects its row with file:line and the reason, CSV and JSON Lines alike', async () => {
    const csv = join(root, 'drop', 'latin1.csv');
    await writeFile(csv, Buffer.concat([Buffer.from('id,name\n1,ok\n2,caf'), Buffer.from([0xe9]), Buffer.from('\n3,fine\n')]));
    const rows = await collect(readFileRows(csv, 'csv', { label: 'latin1.csv' }));
    assert.deepEqual(rows.filter((r) => !r[ROW_REJECT]).map((r) => r.name), ['ok', 'fine']);
    const bad = rows.find((r) => r[ROW_REJECT])!;
    assert.equal(bad[ROW_SOURCE], 'latin1.csv:3');
    assert.match(bad[ROW_REJECT]!, /latin1\.csv line 3: invalid UTF-8 in column "name"/);
    assert.ok(!rows.some((r) => Object.values(r).some((v) => typeof v === 'string' && v.includes('\uFFFD'))), 'no U+FFFD anywhere');

    const jsonl = join(root, 'drop', 'latin1.jsonl');
    await writeFile(jsonl, Buffer.concat([Buffer.from('{"id":1}\n{"name":"caf'), Buffer.from([0xe9]), Buffer.from('"}\n{"id":3}\n')]));
    const lines = await collect(readFileRows(jsonl, 'jsonl', { label: 'latin1.jsonl' }));
    assert.deepEqual(lines.filter((r) => !r[ROW_REJECT]).map((r) => r.id), [1, 3]);
    assert.match(lines[1]![ROW_REJECT]!, /latin1\.jsonl line 2: invalid UTF-8/);
  });

  test('a JSON Lines line over the byte cap is a reject with file:line, and the next line is read', async () => {
    const file = join(root, 'drop', 'huge.jsonl');
    const huge = `{"x":"${'a'.repeat(MAX_LINE_BYTES)}"}`;
    await writeFile(file, `{"id":1}\n${huge}\n{"id":3}\n`);
    const rows = await collect(readFileRows(file, 'jsonl', { label: 'huge.jsonl' }));
    assert.equal(rows.length, 3);
    assert.equal(rows[1]![ROW_SOURCE], 'huge.jsonl:2');
    assert.match(rows[1]![ROW_REJECT]!, /huge\.jsonl line 2: the line is \d+ bytes, longer than/);
    assert.equal(rows[2]!.id, 3);
  });

  test('the line splitter keeps lines split across chunks and numbers them', async () => {
    const chunks = ['ab', 'c\nde', 'f\n\n', 'toolongline\nok'].map((c) => Buffer.from(c));
    const lines = [];
    for await (const l of byteLines(Readable.from(chunks), 5)) lines.push('bytes' in l ? [l.line, l.bytes.toString()] : [l.line, `oversized ${l.oversized}`]);
    assert.deepEqual(lines, [[1, 'abc'], [2, 'def'], [3, ''], [4, 'oversized 11'], [5, 'ok']]);
  });

  test('type inference keeps leading zeros: 00123 is text', () => {
    assert.equal(inferType('00123', true), 'text');
    assert.equal(inferType('-007', true), 'text');
    assert.equal(inferType('007.5', true), 'text');
    assert.equal(inferType('0', true), 'bigint');
    assert.equal(inferType('0.5', true), 'numeric');
    assert.equal(inferType('120', true), 'bigint');
  });
});

describe('columns that collide after normalization', () => {
  const url = adminUrl;
  const schema = uniqueName('hostile_cols');
  let db: pg.Pool;
  before(async () => {
    db = new pg.Pool({ connectionString: url(), max: 2 });
  });
  after(async () => {
    await db.query(`drop schema if exists ${schema} cascade`);
    await db.end();
  });

  test('ID and id land in the same column in every file and load, whatever order they come in', async () => {
    const resource = Resource.parse({ name: 'collide', writeDisposition: 'append' });
    const load = async (loadId: string, rows: Row[]) =>
      loadResource({ url: url(), schema, table: 'collide', resource, loadId, data: { kind: 'rows', rows: Readable.from(rows), textValues: true } });
    await load('a', [{ id: '1', ID: '' }]);
    await load('b', [{ ID: '2', id: '' }]);
    await load('c', [{ ID: '3' }]);
    const r = await load('d', [{ id: '4', ID: '5' }, { ID: '6', id: '6' }]);
    assert.equal(r.rowsRejected, 1);
    const columns = await db.query(`select column_name from information_schema.columns where table_schema = $1 and table_name = 'collide' and column_name <> '_sluice_load_id'`, [schema]);
    assert.deepEqual(columns.rows.map((c) => c.column_name), ['id']);
    const ids = await db.query(`select id from ${schema}.collide order by id`);
    assert.deepEqual(ids.rows.map((x) => Number(x.id)), [1, 2, 3, 6]);
    const reject = await db.query(`select reason from ${schema}._sluice_rejects`);
    assert.match(reject.rows[0].reason, /columns "id" and "ID" both map to column "id"/);
  });
});

describe('the /proc/self/environ attack through filesWorkflow', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('hostile_files');
  });
  after(async () => {
    await stack.close();
  });

  test('a NUL delimiter fails the workflow at once, and a symlink to /proc/self/environ fails only that file', async () => {
    const dropRoot = join(base, 'watched');
    await mkdir(join(dropRoot, 'drop'), { recursive: true });
    await symlink('/proc/self/environ', join(dropRoot, 'drop', 'partner.csv'));
    await writeFile(join(dropRoot, 'drop', 'orders.csv'), 'id\n1\n');
    process.env.SLUICE_FILES_ROOTS = dropRoot;
    const input = (csv: Record<string, unknown>) => ({
      source: { kind: 'files', path: join(dropRoot, 'drop'), pattern: '*.csv', format: 'csv', csv },
      resource: { name: 'partner', writeDisposition: 'append' },
      destination: { connection: 'DATABASE_URL', schema: stack.schema },
      once: true,
    });
    await stack.withWorker(async () => {
      await assert.rejects(
        stack.client.workflow.execute('filesWorkflow', { taskQueue: stack.taskQueue, workflowId: `hostile-nul-${stack.schema}`, args: [input({ delimiter: '\u0000', header: false })] }),
        (err: unknown) => {
          assert.ok(err instanceof WorkflowFailedError, String(err));
          assert.match(String(err.cause?.message), /csv\.delimiter/);
          return true;
        },
      );
      const result = (await stack.client.workflow.execute('filesWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `hostile-environ-${stack.schema}`,
        // The refused file fails the run unless allowFailures; the test reads the result either way.
        args: [{ ...input({ header: false }), allowFailures: true }],
      })) as { failed: { file: string; error: string }[] };
      assert.equal(result.failed.length, 1);
      assert.equal(result.failed[0]!.file, 'partner.csv');
      assert.match(result.failed[0]!.error, /SLUICE_FILES_ROOTS/);
      // Redacted as every message is: a connection password that also occurs in the path (the dev
      // server's "sluice") is starred there too.
      assert.ok(result.failed[0]!.error.includes(redactSecrets(dropRoot)), result.failed[0]!.error);
    });
    const loaded = await stack.db.query(`select * from ${stack.schema}.partner`);
    assert.deepEqual(loaded.rows.map((r) => r.column_1).sort(), ['1', 'id'], 'only orders.csv loaded (header: false, so its header is a row)');
    const everything = JSON.stringify(loaded.rows) + JSON.stringify((await stack.db.query(`select * from ${stack.schema}._sluice_rejects`)).rows);
    assert.ok(!everything.includes('DATABASE_URL') && !everything.includes('PATH='), `no environment variable reached a table: ${everything.slice(0, 500)}`);
  });
});
