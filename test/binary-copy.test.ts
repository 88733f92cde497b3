/**
 * BinaryCopyTap, the binary COPY pass-through of the loader's direct path, on hand-built
 * streams cut at every byte boundary; and against PostgreSQL's own binary COPY output.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { describe, test } from 'node:test';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { BinaryCopyTap, binaryTextField } from '../src/destinations/postgres/binary-copy';
import { requireEnv, uniqueName } from './helpers';

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/** A binary COPY stream of tuples whose fields are text (or null), with a header extension. */
function encode(tuples: (string | null)[][], extension = Buffer.alloc(0)): Buffer {
  const parts: Buffer[] = [SIGNATURE, int32(0), int32(extension.length), extension];
  for (const tuple of tuples) {
    parts.push(int16(tuple.length));
    for (const field of tuple) parts.push(field === null ? int32(-1) : binaryTextField(field));
  }
  parts.push(int16(-1));
  return Buffer.concat(parts);
}

function int16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

async function tap(chunks: Buffer[], append?: string): Promise<{ out: Buffer; rows: number }> {
  const t = new BinaryCopyTap(append === undefined ? {} : { append: binaryTextField(append) });
  const [out] = await Promise.all([buffer(t), pipeline(Readable.from(chunks), t)]);
  return { out, rows: t.rows };
}

describe('binary COPY tap', () => {
  const tuples = [['1', 'héllo', null], ['2', '', 'x'.repeat(300)], [], [null, null, null]];
  const input = encode(tuples, Buffer.from('ext'));
  const expected = encode(tuples.map((t) => [...t, 'load/1']), Buffer.from('ext'));

  test('appends the field to every tuple and counts them, however the stream is cut', async () => {
    assert.deepEqual(await tap([input], 'load/1'), { out: expected, rows: 4 });
    for (let cut = 1; cut < input.length; cut++) {
      const r = await tap([input.subarray(0, cut), input.subarray(cut)], 'load/1');
      assert.ok(r.out.equals(expected), `cut at byte ${cut}`);
      assert.equal(r.rows, 4);
    }
    const bytes = await tap([...input].map((b) => Buffer.from([b])), 'load/1');
    assert.ok(bytes.out.equals(expected), 'one byte per chunk');
  });

  test('without a field to append it passes the stream through unchanged', async () => {
    const r = await tap([input.subarray(0, 7), input.subarray(7, 40), input.subarray(40)]);
    assert.ok(r.out.equals(input));
    assert.equal(r.rows, 4);
  });

  test('a truncated stream, a foreign stream or bytes after the trailer fail instead of passing', async () => {
    await assert.rejects(tap([input.subarray(0, input.length - 5)], 'x'), /ended in the middle of a row/);
    await assert.rejects(tap([Buffer.from('1\tabc\n\\.\n'.repeat(3))], 'x'), /not a binary COPY stream/);
    await assert.rejects(tap([input, Buffer.from([0, 1])], 'x'), /after the end/);
  });

  test("PostgreSQL's own binary COPY, with the load id appended, goes into a table with one more column", async () => {
    const db = new pg.Client({ connectionString: requireEnv('DATABASE_URL') });
    await db.connect();
    const schema = uniqueName('t_binary');
    try {
      await db.query(`create schema ${schema};
        create table ${schema}.src (id bigint, n numeric(12,2), at timestamptz, doc jsonb, tags text[], note text);
        insert into ${schema}.src select i, i / 3.0, timestamptz '2024-01-01' + i * interval '1 second', jsonb_build_object('i', i),
          array['a', i::text], case when i % 7 = 0 then null else repeat('z', i % 50) end from generate_series(1, 5000) i;
        create table ${schema}.dst (like ${schema}.src, load_id text not null)`);
      const source = await buffer(db.query(copyTo(`copy ${schema}.src to stdout (format binary)`)));
      // Cut into uneven pieces so that tuples and lengths straddle chunk boundaries.
      const chunks: Buffer[] = [];
      for (let at = 0, size = 1; at < source.length; at += size, size = (size * 7 + 3) % 997 + 1) chunks.push(source.subarray(at, at + size));
      const t = new BinaryCopyTap({ append: binaryTextField('load-ü') });
      const sink = db.query(copyFrom(`copy ${schema}.dst from stdin (format binary)`));
      await pipeline(Readable.from(chunks), t, sink);
      assert.equal(t.rows, 5000);
      assert.equal(sink.rowCount, 5000);
      const diff = await db.query(`select count(*)::int as n from (
        (select *, 'load-ü' from ${schema}.src except all select * from ${schema}.dst)
        union all (select * from ${schema}.dst except all select *, 'load-ü' from ${schema}.src)) x`);
      assert.equal(diff.rows[0].n, 0);
    } finally {
      await db.query(`drop schema if exists ${schema} cascade`);
      await db.end();
    }
  });
});
