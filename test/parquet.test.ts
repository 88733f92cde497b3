import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { FilesResult } from '../src/workflows/files';
import { dateText, decimalText, jsonText, timestampText } from '../src/sources/files/parquet';
import { saveHistory, testStack, type TestStack } from './helpers';

const run = promisify(execFile);

/** pyarrow writes the files (test/fixtures/parquet_types.py): .ci/run installs it from PyPI. */
async function writeParquetFixtures(dir: string): Promise<Record<string, string | null>[]> {
  try {
    await run('python3', [join(__dirname, 'fixtures', 'parquet_types.py'), dir]);
  } catch (err) {
    throw new Error(`generating Parquet files needs pyarrow: pip install pyarrow==26.0.1 (.ci/run does): ${(err as Error).message}`);
  }
  return JSON.parse(await readFile(join(dir, 'expected.json'), 'utf8')) as Record<string, string | null>[];
}

/** The PostgreSQL type a user would declare for each column pyarrow wrote. */
const EXPECTED_TYPES: Record<string, string> = {
  id: 'bigint',
  small: 'smallint',
  i32: 'integer',
  i64: 'bigint',
  price: 'numeric(12,2)',
  precise: 'numeric(38,10)',
  ratio: 'numeric(5,0)',
  at_ms: 'timestamp with time zone',
  at_us: 'timestamp with time zone',
  at_ns: 'timestamp with time zone',
  local_us: 'timestamp without time zone',
  day: 'date',
  flag: 'boolean',
  name: 'text',
  f32: 'real',
  f64: 'double precision',
  tags: 'jsonb',
  point: 'jsonb',
  attrs: 'jsonb',
  blob: 'bytea',
};

describe('Parquet values', () => {
  test('decimals come from their unscaled integers, exactly', () => {
    assert.equal(decimalText(1234567n, 2), '12345.67');
    assert.equal(decimalText(-1, 2), '-0.01');
    assert.equal(decimalText(0, 3), '0.000');
    assert.equal(decimalText(new Uint8Array([0xff, 0xff, 0xff]), 0), '-1');
    // 2^100 + 1 as 16 big-endian bytes: far past what a double holds.
    const big = (1n << 100n) + 1n;
    const bytes = new Uint8Array(16).map((_, i) => Number((big >> BigInt(8 * (15 - i))) & 0xffn));
    assert.equal(decimalText(bytes, 10), `${big / 10n ** 10n}.${(big % 10n ** 10n).toString().padStart(10, '0')}`);
  });

  test('timestamps keep their unit and zone, before 1970 too; dates are days since 1970', () => {
    assert.equal(timestampText(1706677567123456789n, 'NANOS', true), '2024-01-31T05:06:07.123456789Z');
    assert.equal(timestampText(-1n, 'MICROS', true), '1969-12-31T23:59:59.999999Z');
    assert.equal(timestampText(1000n, 'MILLIS', false), '1970-01-01T00:00:01.000');
    assert.equal(dateText(-25567), '1900-01-01');
    assert.equal(dateText(null), null);
    // Ticks that fit a double take a faster way than BigInt division: the same text, either side of 1970.
    const exact = (ticks: bigint, per: bigint, digits: number) => {
      let s = ticks / per;
      let r = ticks % per;
      if (r < 0n) {
        s -= 1n;
        r += per;
      }
      return `${new Date(Number(s) * 1000).toISOString().slice(0, 19)}.${r.toString().padStart(digits, '0')}Z`;
    };
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 53n) + 1n, max: 2n ** 53n - 1n }), fc.constantFrom(['MILLIS', 1_000n, 3], ['MICROS', 1_000_000n, 6], ['NANOS', 1_000_000_000n, 9]), (ticks, [unit, per, digits]) => {
        if (unit === 'MILLIS' && (ticks > 8_640_000_000_000n || ticks < -8_640_000_000_000n)) return;
        assert.equal(timestampText(ticks, unit as 'MILLIS', true), exact(ticks, per as bigint, digits as number));
        assert.equal(timestampText(Number(ticks), unit as 'MILLIS', true), exact(ticks, per as bigint, digits as number));
      }),
      { numRuns: 2000 },
    );
  });

  test('nested values keep 64-bit integers whole', () => {
    assert.equal(jsonText({ a: [1n, 9007199254740993n], b: null, c: 'x' }), '{"a":[1,9007199254740993],"b":null,"c":"x"}');
    assert.equal(jsonText(undefined), null);
  });
});

describe('filesWorkflow on Parquet', () => {
  let stack: TestStack;
  let root: string;
  before(async () => {
    stack = await testStack('parquet');
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'parquet-'));
  });
  after(async () => {
    await stack.close();
    await rm(root, { recursive: true, force: true });
  });

  test('pyarrow files (snappy, zstd, gzip; several row groups) land with the types and values a user would write; corrupt Parquet fails only itself', async () => {
    const dir = join(root, 'drops');
    await mkdir(dir);
    const expected = await writeParquetFixtures(dir);
    await writeFile(join(dir, 'garbage.parquet'), 'this is not parquet at all, not even close');
    const whole = await readFile(join(dir, 'types-zstd.parquet'));
    await writeFile(join(dir, 'truncated.parquet'), whole.subarray(0, Math.floor(whole.length / 2)));
    // A good footer in front of broken pages: the footer reads, the row groups do not.
    const broken = Buffer.from(whole);
    broken.fill(0x5a, 64, Math.floor(broken.length / 2));
    await writeFile(join(dir, 'broken-pages.parquet'), broken);

    const result = await stack.withWorker(async () => {
      const handle = await stack.client.workflow.start('filesWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `parquet-types-${stack.schema}`,
        args: [
          {
            source: { kind: 'files', path: dir, pattern: '*.parquet', format: 'parquet' },
            resource: { name: 'typed' },
            destination: { schema: stack.schema },
            parallel: 2,
            once: true,
            allowFailures: true,
          },
        ],
      });
      const r = (await handle.result()) as FilesResult;
      await saveHistory(handle, 'parquet-types-and-corrupt');
      return r;
    });
    assert.equal(result.files, 6);
    assert.equal(result.loaded, 3);
    assert.equal(result.rows, expected.length);
    assert.deepEqual(result.failed.map((f) => f.file).sort(), ['broken-pages.parquet', 'garbage.parquet', 'truncated.parquet']);
    for (const failure of result.failed) assert.match(failure.error, new RegExp(`cannot read ${failure.file.replace('.', '\\.')}: not a readable Parquet file`));

    const table = `${stack.schema}.typed`;
    const types = await stack.db.query<{ name: string; type: string }>(
      `select attname as name, format_type(atttypid, atttypmod) as type from pg_attribute
        where attrelid = $1::regclass and attnum > 0 and not attisdropped and attname not like '\\_sluice%'`,
      [table],
    );
    assert.deepEqual(Object.fromEntries(types.rows.map((r) => [r.name, r.type])), EXPECTED_TYPES);

    // Each destination value against pyarrow's own value, cast by PostgreSQL from the text a
    // person would write: one mismatch names its row and column.
    const { rows: loaded } = await stack.db.query<{ id: string }>(`select t.id::text as id from ${table} t order by t.id`);
    assert.deepEqual(loaded.map((r) => r.id), expected.map((r) => r.id).sort((a, b) => Number(a) - Number(b)));
    const mismatches: string[] = [];
    for (const [column, type] of Object.entries(EXPECTED_TYPES)) {
      const r = await stack.db.query<{ id: string; got: string | null; want: string | null }>(
        `select d.id::text, d.${column}::text as got, x.value as want
           from ${table} d join jsonb_to_recordset($1::jsonb) as x(id bigint, value text) on x.id = d.id
          where d.${column} is distinct from x.value::${type}`,
        [JSON.stringify(expected.map((row) => ({ id: Number(row.id), value: row[column] })))],
      );
      for (const m of r.rows) mismatches.push(`id ${m.id} ${column}: loaded ${m.got}, pyarrow wrote ${m.want}`);
    }
    assert.deepEqual(mismatches, []);
    // The comparison is not vacuous: nulls are nulls and the extreme values are there.
    const extremes = await stack.db.query(
      `select max(i64)::text as i64, min(at_us) = '1901-01-01T00:00:00.000001Z'::timestamptz as early, count(*) filter (where name is null)::int as nulls from ${table}`,
    );
    assert.deepEqual(extremes.rows[0], { i64: '9223372036854775807', early: true, nulls: 3 });
  });
});
