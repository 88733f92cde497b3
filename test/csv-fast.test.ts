/**
 * The CSV fast path (FastCsvLines) against csv-parse alone: on any bytes, cut into chunks
 * anywhere, the records (fields, lines, skipped records) are the same.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { csvRecords, type CsvOptions, type CsvRecord } from '../src/sources/files/read';

/** csv-parse reports a skipped record when it parses it, which can be before records parsed earlier reach the reader: compared in line order. */
function plain(records: CsvRecord[]): unknown[] {
  const line = (r: CsvRecord) => ('skipped' in r ? r.skipped.first : r.first);
  return [...records].sort((a, b) => line(a) - line(b)).map((r) =>
    'skipped' in r
      ? { skipped: r.skipped.error.code, first: r.skipped.first, last: r.skipped.last }
      : 'invalid' in r
        ? { invalid: r.invalid, raw: r.raw.map((b) => Buffer.from(b).toString('hex')), first: r.first, last: r.last }
        : { fields: r.fields, first: r.first, last: r.last },
  );
}

async function parse(bytes: Buffer, cuts: number[], csv: CsvOptions | undefined, fast: boolean): Promise<unknown[]> {
  const chunks: Buffer[] = [];
  let at = 0;
  for (const cut of [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)) {
    if (cut > at) chunks.push(bytes.subarray(at, cut));
    at = Math.max(at, cut);
  }
  if (at < bytes.length) chunks.push(bytes.subarray(at));
  const out: CsvRecord[] = [];
  async function* input() {
    yield* chunks;
  }
  for await (const batch of csvRecords(input(), csv, fast)) out.push(...batch);
  return plain(out);
}

const piece = fc.constantFrom('a', 'b', '1', ' ', ',', ';', '"', '""', "'", '\n', '\r\n', '\r', 'é', '😀', '\t', 'x,y', '"q,"', '"a\nb"', '¦', '\uFEFF');
const text = fc.array(piece, { maxLength: 60 }).map((p) => p.join(''));
const bytes = fc.oneof(
  text.map((t) => Buffer.from(t)),
  fc.tuple(text, fc.uint8Array({ maxLength: 3 }), text).map(([a, b, c]) => Buffer.concat([Buffer.from(a), Buffer.from(b), Buffer.from(c)])),
);
const options = fc.constantFrom<CsvOptions | undefined>(undefined, { delimiter: ';' }, { delimiter: '\t' }, { delimiter: '¦' }, { quote: "'" }, { quote: 'é' }, { escape: '\\' });

describe('CSV fast path', () => {
  test('gives the records csv-parse gives, on any bytes and any chunking', async () => {
    await fc.assert(
      fc.asyncProperty(bytes, fc.array(fc.nat(), { maxLength: 6 }), options, async (input, cuts, csv) => {
        assert.deepEqual(await parse(input, cuts, csv, true), await parse(input, [], csv, false));
      }),
      { numRuns: 3000 },
    );
  });

  test('well-formed lines stay on the fast path; the rest of the file after a quoted line break is csv-parse', async () => {
    const csv = 'id,name\r\n1,"a, b"\r\n\r\n2,"say ""hi"""\r\n3,"two\r\nlines"\r\n4,d';
    assert.deepEqual(await parse(Buffer.from(csv), [5, 17], undefined, true), [
      { fields: ['id', 'name'], first: 1, last: 1 },
      { fields: ['1', 'a, b'], first: 2, last: 2 },
      { fields: ['2', 'say "hi"'], first: 4, last: 4 },
      // csv-parse counts a CRLF inside quotes as two lines.
      { fields: ['3', 'two\r\nlines'], first: 5, last: 7 },
      { fields: ['4', 'd'], first: 8, last: 8 },
    ]);
  });
});
