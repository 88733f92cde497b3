import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readlink, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { PermanentError } from '../src/errors';
import { FilesSource } from '../src/inputs';
import { extractFile, FileChangedError, listFiles, readFileRows, type FileFormat, type ReadOptions } from '../src/sources/files';
import { ROW_REJECT, ROW_SOURCE, type Row } from '../src/sources/types';

/** A row as plain data: its columns, plus `source` and `reject` when set. */
function plain(row: Row): Record<string, unknown> {
  const out: Record<string, unknown> = Object.fromEntries(Object.entries(row));
  if (row[ROW_SOURCE] !== undefined) out.source = row[ROW_SOURCE];
  if (row[ROW_REJECT] !== undefined) out.reject = row[ROW_REJECT];
  return out;
}

let dir: string;
async function file(name: string, content: string | Buffer): Promise<string> {
  const path = join(dir, name);
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, content);
  return path;
}

async function rowsOf(name: string, content: string | Buffer, format: FileFormat, options: Partial<ReadOptions> = {}) {
  const path = await file(name, content);
  const rows: Record<string, unknown>[] = [];
  for await (const row of readFileRows(path, format, { label: name, ...options })) rows.push(plain(row));
  return rows;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sluice-files-'));
});
after(() => rm(dir, { recursive: true, force: true }));

describe('CSV rows', () => {
  test('quotes, embedded delimiters, newlines and doubled quotes; every row names its first line', async () => {
    const csv = 'id,name,note\n1,"Smith, Jane","said ""hi"""\n2,Bob,"line one\nline two"\n3,Eve,plain\n';
    assert.deepEqual(await rowsOf('quotes.csv', csv, 'csv'), [
      { id: '1', name: 'Smith, Jane', note: 'said "hi"', source: 'quotes.csv:2' },
      { id: '2', name: 'Bob', note: 'line one\nline two', source: 'quotes.csv:3' },
      { id: '3', name: 'Eve', note: 'plain', source: 'quotes.csv:5' },
    ]);
  });

  test('a byte order mark is not part of the first header, CRLF line ends, blank lines and a last line without newline', async () => {
    const csv = '\uFEFFid,name\r\n1,a\r\n\r\n   \r\n2,b';
    assert.deepEqual(await rowsOf('bom.csv', csv, 'csv'), [
      { id: '1', name: 'a', source: 'bom.csv:2' },
      { id: '2', name: 'b', source: 'bom.csv:5' },
    ]);
  });

  test('header: false names columns column_1..n; the delimiter is configurable', async () => {
    assert.deepEqual(await rowsOf('nohead.csv', '1;x;"a;b"\n2;y;c\n', 'csv', { csv: { header: false, delimiter: ';' } }), [
      { column_1: '1', column_2: 'x', column_3: 'a;b', source: 'nohead.csv:1' },
      { column_1: '2', column_2: 'y', column_3: 'c', source: 'nohead.csv:2' },
    ]);
  });

  test('blank and repeated header names stay distinct columns; __proto__ is just a column', async () => {
    const rows = await rowsOf('headers.csv', 'a,,a,__proto__\n1,2,3,4\n', 'csv');
    assert.deepEqual(rows, [{ a: '1', column_2: '2', a_2: '3', ['__proto__']: '4', source: 'headers.csv:2' }]);
  });

  test('malformed records are rejected with their line, and the rest of the file still loads', async () => {
    const csv = [
      'id,name,amount', // 1
      '1,a,10', // 2
      '2,b', // 3: too few fields
      '3,c,30,extra', // 4: too many
      '4,"5"" screen",40', // 5: fine (escaped quote)
      '5,d"x,50', // 6: stray quote in an unquoted field is kept
      '6,"bad"quote,60', // 7: text after a closing quote shifts nothing but is kept verbatim
      '7,e,70', // 8
    ].join('\n');
    const rows = await rowsOf('bad.csv', csv, 'csv');
    const good = rows.filter((r) => !r.reject);
    const bad = rows.filter((r) => r.reject);
    assert.deepEqual(good.map((r) => r.id), ['1', '4', '5', '6', '7']);
    assert.equal(good.find((r) => r.id === '4')!.name, '5" screen');
    assert.equal(good.find((r) => r.id === '5')!.name, 'd"x');
    assert.deepEqual(
      bad.map((r) => [r.source, r.reject]),
      [
        ['bad.csv:3', 'bad.csv line 3: expected 3 fields, found 2: ["2","b"]'],
        ['bad.csv:4', 'bad.csv line 4: expected 3 fields, found 4: ["3","c","30","extra"]'],
      ],
    );
    // The values of a misshapen record stay out of the columns (they would skew type inference).
    assert.deepEqual(Object.keys(bad[0]!).sort(), ['reject', 'source']);
  });

  test('a quote that is never closed rejects the rest of the file as one record, naming its lines', async () => {
    const rows = await rowsOf('unclosed.csv', 'id,name\n1,a\n2,"oops\n3,c\n4,d\n', 'csv');
    assert.deepEqual(rows[0], { id: '1', name: 'a', source: 'unclosed.csv:2' });
    assert.equal(rows.length, 2);
    assert.equal(rows[1]!.source, 'unclosed.csv:3');
    assert.match(String(rows[1]!.reject), /^unclosed\.csv lines 3-5: a quote opened on line 3 is never closed/);
  });

  test('gzip is read transparently when the name ends in .gz', async () => {
    const csv = 'id,name\n1,"multi\nline"\n2,b\n';
    assert.deepEqual(await rowsOf('packed.csv.gz', gzipSync(csv), 'csv'), [
      { id: '1', name: 'multi\nline', source: 'packed.csv.gz:2' },
      { id: '2', name: 'b', source: 'packed.csv.gz:4' },
    ]);
  });

  test('a large file streams: rows arrive before the file is read to its end', async () => {
    const lines = ['id,payload'];
    for (let i = 0; i < 100_000; i++) lines.push(`${i},${'x'.repeat(40)}`);
    const path = await file('big.csv', lines.join('\n'));
    let bytes = 0;
    let bytesAtFirstRow = -1;
    let count = 0;
    for await (const row of readFileRows(path, 'csv', { label: 'big.csv', onBytes: (b) => (bytes += b.length) })) {
      if (count++ === 0) bytesAtFirstRow = bytes;
      assert.ok(row.id !== undefined);
    }
    assert.equal(count, 100_000);
    assert.ok(bytesAtFirstRow > 0 && bytesAtFirstRow < bytes / 4, `first row after ${bytesAtFirstRow} of ${bytes} bytes`);
  });
});

describe('JSON Lines rows', () => {
  test('one object per line, types kept, blank lines skipped, BOM and CRLF tolerated', async () => {
    const text = '\uFEFF{"id":1,"tags":["a"],"meta":{"x":true}}\r\n\n  \n{"id":2,"name":"b"}';
    assert.deepEqual(await rowsOf('a.jsonl', text, 'jsonl'), [
      { id: 1, tags: ['a'], meta: { x: true }, source: 'a.jsonl:1' },
      { id: 2, name: 'b', source: 'a.jsonl:4' },
    ]);
  });

  test('invalid JSON and lines that are not objects are rejected with their line; the file carries on', async () => {
    const text = ['{"id":1}', '{"id":2,', '[1,2]', '42', 'null', '"text"', '{"id":3}'].join('\n');
    const rows = await rowsOf('mixed.jsonl', text, 'jsonl');
    assert.deepEqual(rows.filter((r) => !r.reject).map((r) => [r.id, r.source]), [[1, 'mixed.jsonl:1'], [3, 'mixed.jsonl:7']]);
    const bad = rows.filter((r) => r.reject);
    assert.deepEqual(bad.map((r) => r.source), ['mixed.jsonl:2', 'mixed.jsonl:3', 'mixed.jsonl:4', 'mixed.jsonl:5', 'mixed.jsonl:6']);
    assert.match(String(bad[0]!.reject), /^mixed\.jsonl line 2: invalid JSON/);
    assert.match(String(bad[1]!.reject), /^mixed\.jsonl line 3: expected a JSON object, found an array/);
    assert.match(String(bad[2]!.reject), /found a number/);
    assert.match(String(bad[3]!.reject), /found null/);
  });

  test('gzip, and multi-byte characters split across chunks', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 20_000; i++) lines.push(JSON.stringify({ id: i, word: 'zürich ✓ 東京' }));
    const rows = await rowsOf('words.jsonl.gz', gzipSync(lines.join('\n') + '\n'), 'jsonl');
    assert.equal(rows.length, 20_000);
    assert.ok(rows.every((r) => r.word === 'zürich ✓ 東京'));
    assert.equal(rows[19_999]!.source, 'words.jsonl.gz:20000');
  });
});

describe('unreadable files throw', () => {
  const drain = async (path: string, format: FileFormat) => {
    for await (const _ of readFileRows(path, format, { label: 'x' })) void _;
  };

  test('a missing file', async () => {
    await assert.rejects(drain(join(dir, 'nope.csv'), 'csv'), (err: unknown) => err instanceof PermanentError && /cannot read x: .*ENOENT/.test(err.message));
  });

  test('corrupt and truncated gzip', async () => {
    const corrupt = await file('corrupt.csv.gz', Buffer.from('this is not gzip data at all'));
    await assert.rejects(drain(corrupt, 'csv'), (err: unknown) => err instanceof PermanentError && /gzip/i.test(err.hint ?? ''));
    const whole = gzipSync('{"a":1}\n'.repeat(10_000));
    const truncated = await file('truncated.jsonl.gz', whole.subarray(0, whole.length - 20));
    await assert.rejects(drain(truncated, 'jsonl'), (err: unknown) => err instanceof PermanentError);
  });

  // (Permission denied cannot be staged here: the tests run as root, which reads every file.)
  test('a file that vanished after it was listed', async () => {
    await assert.rejects(drain(join(dir, 'gone.csv'), 'csv'), (err: unknown) => err instanceof PermanentError && /ENOENT/.test(err.message));
  });
});

describe('listing files', () => {
  let root: string;
  before(async () => {
    root = join(dir, 'listing');
    const put = async (name: string, content: string) => {
      await mkdir(join(root, name, '..'), { recursive: true });
      await writeFile(join(root, name), content);
    };
    await put('b.csv', 'x\n1\n');
    await put('a.csv', 'x\n2\n');
    await put('notes.txt', 'no');
    await put('.hidden.csv', 'x\n3\n');
    await put('2024/01/c.csv', 'x\n4\n');
    await put('2024/02/d.csv.gz', 'x');
    await put('.git/e.csv', 'x');
  });

  test('a pattern without ** stays at its depth; ** descends; dotfiles never match; sorted by path', async () => {
    assert.deepEqual((await listFiles(root, '*.csv')).map((f) => f.path), ['a.csv', 'b.csv']);
    assert.deepEqual((await listFiles(root, '**/*.csv')).map((f) => f.path), ['2024/01/c.csv', 'a.csv', 'b.csv']);
    assert.deepEqual((await listFiles(root, '**/*.{csv,csv.gz}')).map((f) => f.path), ['2024/01/c.csv', '2024/02/d.csv.gz', 'a.csv', 'b.csv']);
    assert.deepEqual((await listFiles(root, '2024/*/*')).map((f) => f.path), ['2024/01/c.csv', '2024/02/d.csv.gz']);
  });

  test('the fingerprint follows the content, not the name or the modification time', async () => {
    const [first] = await listFiles(root, 'a.csv');
    assert.match(first!.fingerprint, /^sha256:[0-9a-f]{64}$/);
    assert.equal(first!.size, 4);
    // Touching a file changes nothing that matters.
    await utimes(join(root, 'a.csv'), new Date('2020-01-01'), new Date('2020-01-01'));
    const [touched] = await listFiles(root, 'a.csv');
    assert.equal(touched!.fingerprint, first!.fingerprint);
    // New content of the same size, with the old modification time restored, is still noticed.
    await writeFile(join(root, 'a.csv'), 'x\n9\n');
    await utimes(join(root, 'a.csv'), new Date('2020-01-01'), new Date('2020-01-01'));
    const [rewritten] = await listFiles(root, 'a.csv');
    assert.equal(rewritten!.size, 4);
    assert.equal(rewritten!.mtimeMs, touched!.mtimeMs);
    assert.notEqual(rewritten!.fingerprint, first!.fingerprint);
  });

  test('a missing directory is a permanent error that names source.path', async () => {
    await assert.rejects(listFiles(join(root, 'nope'), '*'), (err: unknown) => err instanceof PermanentError && /source\.path/.test(err.hint ?? ''));
  });
});

describe('extractFile', () => {
  const sub = () => join(dir, 'extract');
  const drain = async (extracted: ReturnType<typeof extractFile>) => {
    const data = await extracted;
    const ids: unknown[] = [];
    if (data.kind === 'rows') for await (const row of data.rows) ids.push(row.id);
    return ids;
  };

  test('loads CSV as text values, and fails at the end when the bytes are not the listed ones', async () => {
    await mkdir(sub());
    await writeFile(join(sub(), 'one.csv'), 'id\n1\n2\n');
    const source = FilesSource.parse({ kind: 'files', path: sub(), pattern: '*.csv', format: 'csv' });
    const [listed] = await listFiles(sub(), '*.csv');
    const fresh = await extractFile(source, listed!);
    assert.ok(fresh.kind === 'rows' && fresh.textValues);
    assert.deepEqual(await drain(Promise.resolve(fresh)), ['1', '2']);

    // The file grew after it was listed: the load must not commit what it read.
    await writeFile(join(sub(), 'one.csv'), 'id\n1\n2\n3\n');
    await assert.rejects(drain(extractFile(source, listed!)), FileChangedError);
  });

  test('a gzip stream that breaks off mid-file yields the rows before the break, then fails', async () => {
    const whole = gzipSync(['id', ...Array.from({ length: 50_000 }, (_, i) => `${i}`)].join('\n'));
    await writeFile(join(sub(), 'cut.csv.gz'), whole.subarray(0, Math.floor(whole.length / 2)));
    const source = FilesSource.parse({ kind: 'files', path: sub(), pattern: '*.gz', format: 'csv' });
    const [cut] = await listFiles(sub(), 'cut.csv.gz');
    const data = await extractFile(source, cut!);
    let rows = 0;
    await assert.rejects(
      (async () => {
        if (data.kind === 'rows') for await (const _ of data.rows) rows++;
      })(),
      (err: unknown) => err instanceof PermanentError && /cannot read cut\.csv\.gz: unexpected end of file/.test(err.message),
    );
    assert.ok(rows > 0 && rows < 50_000, `${rows} rows before the break`);
  });

  test('a reader that stops early closes the file at once, not when the garbage collector finds it', async () => {
    const path = join(sub(), 'long.csv');
    await writeFile(path, ['id', ...Array.from({ length: 300_000 }, (_, i) => `${i}`)].join('\n'));
    const source = FilesSource.parse({ kind: 'files', path: sub(), pattern: 'long.csv', format: 'csv' });
    const [listed] = await listFiles(sub(), 'long.csv');
    const openOn = async () => {
      let n = 0;
      // The descriptor names the file's real path (the temporary directory may be reached through a link).
      for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')).endsWith(`${basename(dir)}/extract/long.csv`)) n++;
      return n;
    };
    // Without an explicit close the descriptor stays open until the garbage collector closes it,
    // which Node reports as a warning: either outcome fails this test.
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    after(() => process.off('warning', onWarning));
    const data = await extractFile(source, listed!);
    assert.ok(data.kind === 'rows');
    for await (const _ of data.rows) {
      assert.equal(await openOn(), 1, 'the file is open while it is read');
      break;
    }
    // Closing is asynchronous: wait for it (bounded), without a fixed sleep.
    for (let i = 0; i < 200 && (await openOn()) > 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(await openOn(), 0, 'no descriptor of the file is left open');
    assert.deepEqual(warnings.filter((w) => /garbage collection/.test(w)), [], 'closed by the reader, not by the garbage collector');
  });

  test('refuses a path outside the source directory', async () => {
    const source = FilesSource.parse({ kind: 'files', path: dir, format: 'csv' });
    await assert.rejects(extractFile(source, { path: '../etc/passwd', fingerprint: 'sha256:0' }), PermanentError);
  });
});
