/**
 * narrowFit / fitsType (src/schema/types.ts): a value that fits a type by them is one that
 * PostgreSQL's own input function for that type accepts, checked against the server with
 * pg_input_is_valid on generated texts; and the everyday forms do fit.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import { fitsType, narrowFit, newFit } from '../src/schema/types';
import { adminUrl } from './helpers';

const TYPES = [
  'smallint',
  'integer',
  'bigint',
  'numeric',
  'numeric(5,2)',
  'numeric(3)',
  'numeric(4,4)',
  'real',
  'double precision',
  'boolean',
  'date',
  'timestamp without time zone',
  'timestamp(3) with time zone',
  'timestamp with time zone',
  'uuid',
  'text',
];

const fitsOne = (text: string, type: string) => {
  const fit = newFit();
  narrowFit(fit, text);
  return fitsType(fit, type);
};

const digits = fc.string({ unit: fc.constantFrom('0', '1', '5', '9'), minLength: 1, maxLength: 22 });
const piece = fc.oneof(
  digits,
  fc.constantFrom('-', '+', '.', 'e', 'E', 'e-', 'e+', ':', 'T', ' ', 'Z', 'z', 't', 'rue', 'false', 'TRUE', 'x', 'a', 'f', '00', '12', '2024-', '1969-12-31', '0000-', '-02-29', '-13-01', '23:59', ':60', '.123456789', '+14:00', '+15', '-0530'),
);
const texts = fc.oneof(
  fc.array(piece, { minLength: 1, maxLength: 8 }).map((p) => p.join('')),
  fc.double().map(String),
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }).map(String),
  fc.date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true }).map((d) => d.toISOString()),
  fc.uuid(),
);

describe('value fits', () => {
  let client: pg.Client;
  before(async () => {
    client = new pg.Client({ connectionString: adminUrl() });
    await client.connect();
  });
  after(async () => {
    await client.end();
  });

  test('a text that fits a type is one its input function accepts', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(texts, { minLength: 1, maxLength: 40 }), async (values) => {
        const claimed: [string, string][] = [];
        for (const v of values) for (const t of TYPES) if (fitsOne(v, t)) claimed.push([v, t]);
        if (!claimed.length) return;
        const { rows } = await client.query<{ v: string; t: string; ok: boolean }>(
          'select v, t, pg_input_is_valid(v, t) as ok from unnest($1::text[], $2::text[]) as x(v, t)',
          [claimed.map((c) => c[0]), claimed.map((c) => c[1])],
        );
        for (const r of rows) assert.ok(r.ok, `${JSON.stringify(r.v)} fits ${r.t} by narrowFit, but PostgreSQL refuses it`);
      }),
      { numRuns: 300 },
    );
  });

  test('everyday values fit their types; a column fits what all of its values fit', () => {
    for (const [text, types] of [
      ['42', ['smallint', 'integer', 'bigint', 'numeric', 'numeric(5,2)', 'numeric(3)', 'real', 'double precision']],
      ['-9223372036854775808', ['bigint', 'numeric', 'real', 'double precision']],
      ['9223372036854775808', ['numeric', 'real', 'double precision']],
      ['12.50', ['numeric', 'numeric(5,2)', 'numeric(3)', 'double precision', 'real']],
      ['1e5', ['numeric', 'double precision', 'real']],
      ['TRUE', ['boolean']],
      ['2024-02-29', ['date', 'timestamp without time zone', 'timestamp(3) with time zone', 'timestamp with time zone']],
      ['2024-01-01T00:00:05Z', ['timestamp without time zone', 'timestamp with time zone', 'timestamp(3) with time zone']],
      ['2024-01-01 10:11:12.123456+05:30', ['timestamp without time zone', 'timestamp(3) with time zone', 'timestamp with time zone']],
      ['123e4567-e89b-12d3-a456-426614174000', ['uuid']],
    ] as [string, string[]][]) {
      for (const t of TYPES) assert.equal(fitsOne(text, t), types.includes(t) || t === 'text', `${text} as ${t}`);
    }
    for (const text of ['2023-02-29', '2024-13-01', '24:00', '1e400', ' 1', '007x', 'yes']) {
      assert.deepEqual(TYPES.filter((t) => t !== 'text' && fitsOne(text, t)), [], text);
    }
    const column = newFit();
    for (const v of ['1', '22.5', '333']) narrowFit(column, v);
    assert.deepEqual(TYPES.filter((t) => fitsType(column, t)), ['numeric', 'numeric(5,2)', 'real', 'double precision', 'text']);
    narrowFit(column, 'label');
    assert.deepEqual(TYPES.filter((t) => fitsType(column, t)), ['text']);
    assert.ok(fitsType(newFit(), 'integer'), 'a column without values fits any type it is given');
    assert.ok(!fitsType(newFit(), 'jsonb') && !fitsType(newFit(), 'character varying(3)'), 'types narrowFit does not know are never vouched for');
  });
});
