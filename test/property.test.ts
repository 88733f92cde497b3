/**
 * Property tests (fast-check) for the pure edges that hostile input reaches first: the COPY
 * text encoder, the CSV and JSON Lines readers, and identifier normalization.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { normalizeIdentifier, quoteIdent, MAX_IDENTIFIER_BYTES } from '../src/schema/identifiers';
import { copyField, unrepresentableInText, valueToText } from '../src/schema/types';
import { readFileRows, type FileFormat } from '../src/sources/files';
import { ROW_REJECT, ROW_SOURCE } from '../src/sources/types';
import { adminUrl } from './helpers';

/** Any JavaScript string: arbitrary code points plus arbitrary UTF-16 code units (lone surrogates included). */
const anyString = fc.oneof(
  fc.string({ unit: 'binary' }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }),
  fc.string({ unit: fc.constantFrom('\\', '\t', '\n', '\r', '\\N', 'N', '.', '\u0000', '\uFEFF', 'é', '😀') }),
);

/** String.prototype.isWellFormed (Node 20; the project's TypeScript lib predates it). */
const isWellFormed = (s: string) => (s as string & { isWellFormed(): boolean }).isWellFormed();

describe('COPY text encoder into PostgreSQL text', () => {
  let client: pg.Client;
  before(async () => {
    client = new pg.Client({ connectionString: adminUrl() });
    await client.connect();
    await client.query('create temporary table roundtrip (i int, v text)');
  });
  after(async () => {
    await client.end();
  });

  test('every string PostgreSQL text can hold comes back unchanged; the rest are named as unrepresentable', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.option(anyString, { nil: null }), { maxLength: 30 }), async (values) => {
        const representable = values.filter((v) => v === null || unrepresentableInText(v) === undefined);
        for (const v of values) {
          if (v !== null && unrepresentableInText(v) !== undefined) assert.ok(v.includes('\u0000') || !isWellFormed(v));
        }
        await client.query('truncate roundtrip');
        const text = representable.map((v, i) => `${i}\t${copyField(valueToText(v))}\n`).join('');
        await pipeline(Readable.from([text]), client.query(copyFrom('copy roundtrip (i, v) from stdin')));
        const back = await client.query<{ v: string | null }>('select v from roundtrip order by i');
        assert.deepEqual(back.rows.map((r) => r.v), representable);
      }),
      { numRuns: 150 },
    );
  });
});

describe('the CSV and JSON Lines readers on arbitrary bytes', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'property-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  // Bytes that matter to the parsers, and any byte at all.
  const bytes = fc
    .array(fc.oneof(fc.constantFrom(...Buffer.from(',;"\n\r{}[]:\\ a0\t')), fc.constantFrom(0xef, 0xbb, 0xbf, 0xc3, 0xa9, 0xff, 0x80, 0), fc.integer({ min: 0, max: 255 })), { maxLength: 400 })
    .map((a) => Buffer.from(a));

  let n = 0;
  for (const format of ['csv', 'jsonl'] as FileFormat[]) {
    test(`${format}: never throws; every row names its file:line, and a reject says where`, async () => {
      await fc.assert(
        fc.asyncProperty(bytes, fc.boolean(), fc.constantFrom(',', ';', '\t'), async (content, header, delimiter) => {
          const label = `fuzz-${++n}.${format}`;
          const path = join(dir, label);
          await writeFile(path, content);
          const hadReplacement = content.includes(Buffer.from([0xef, 0xbf, 0xbd]));
          for await (const row of readFileRows(path, format, { label, csv: { header, delimiter } })) {
            assert.match(String(row[ROW_SOURCE]), new RegExp(`^${label.replace('.', '\\.')}:\\d+$`));
            if (row[ROW_REJECT] !== undefined) assert.match(row[ROW_REJECT], new RegExp(`^${label.replace('.', '\\.')} lines? \\d+`));
            else if (!hadReplacement) assert.ok(!JSON.stringify(Object.values(row)).includes('\uFFFD'), 'no U+FFFD invented');
          }
        }),
        { numRuns: 200 },
      );
    });
  }
});

describe('identifier normalization', () => {
  test('is stable, idempotent, and always a valid identifier that quoteIdent accepts', () => {
    fc.assert(
      fc.property(anyString, (raw) => {
        const name = normalizeIdentifier(raw);
        assert.equal(normalizeIdentifier(raw), name);
        assert.equal(normalizeIdentifier(name), name, 'a normalized name is its own normal form');
        assert.ok(name.length > 0 && Buffer.byteLength(name, 'utf8') <= MAX_IDENTIFIER_BYTES);
        assert.ok(!name.includes('\u0000') && isWellFormed(name));
        assert.match(name, /^[\p{L}_][\p{L}\p{N}_]*$/u);
        assert.equal(quoteIdent(name), `"${name}"`);
      }),
      { numRuns: 2000 },
    );
  });

  test('distinct normalized names stay distinct columns in PostgreSQL (no truncation merges them)', async () => {
    const client = new pg.Client({ connectionString: adminUrl() });
    await client.connect();
    try {
      await fc.assert(
        fc.asyncProperty(fc.uniqueArray(anyString, { minLength: 1, maxLength: 20 }), async (raws) => {
          const names = [...new Set(raws.map(normalizeIdentifier))];
          await client.query('drop table if exists idents');
          await client.query(`create temporary table idents (${names.map((c) => `${quoteIdent(c)} text`).join(', ')})`);
          const cols = await client.query<{ attname: string }>(`select attname from pg_attribute where attrelid = 'idents'::regclass and attnum > 0 order by attnum`);
          assert.deepEqual(cols.rows.map((r) => r.attname), names);
        }),
        { numRuns: 100 },
      );
    } finally {
      await client.end();
    }
  });
});
