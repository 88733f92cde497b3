import { durationMs } from '../src/plan/duration';
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IncrementalInput, parseInput } from '../src/inputs';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  addTies,
  compareCursorValues,
  cursorValue,
  describePosition,
  groupTie,
  initialPosition,
  lagStart,
  positionKey,
  sameTie,
} from '../src/plan/cursor';
import {
  afterPredicate,
  bindParameters,
  literalValues,
  PageTap,
  pageSql,
  parseCopyLine,
  probeSql,
  tieRangeSql,
  type Keyset,
} from '../src/sources/postgres/incremental';

const keyset: Keyset = { cursor: { name: 'updated_at', type: 'timestamp with time zone' }, key: [{ name: 'id', type: 'bigint' }] };
const composite: Keyset = { cursor: { name: 'seq', type: 'bigint' }, key: [{ name: 'region', type: 'text' }, { name: 'Order Id', type: 'integer' }] };
const orders = { kind: 'postgres' as const, connection: 'SRC', table: 'public.orders' };

describe('cursor positions', () => {
  test('a call that continues the tie group it started after adds its keys to that group', () => {
    const start = { cursor: '2024-01-01 00:00:00+00', tiebreak: ['100'], tie: { count: 100, hash: '5' } };
    assert.deepEqual(groupTie(start, '2024-01-01 00:00:00+00', { count: 50, hash: '-7' }), { count: 150, hash: '-2' });
    assert.deepEqual(groupTie(start, '2024-01-02 00:00:00+00', { count: 1, hash: '9' }), { count: 1, hash: '9' }, 'a new cursor value starts a new group');
    // Numbers saved by a registered source compare with PostgreSQL's text of the same value.
    assert.deepEqual(groupTie({ cursor: 42, tiebreak: ['1'], tie: { count: 1, hash: '1' } }, '42', { count: 1, hash: '2' }), { count: 2, hash: '3' });
  });

  test('a call read from a cursor inclusive holds the whole group; a group continued from an unknown summary stays unknown', () => {
    const inclusive = { cursor: '2024-01-01 00:00:00+00', tiebreak: null };
    assert.deepEqual(groupTie(inclusive, '2024-01-01 00:00:00+00', { count: 9, hash: '1' }), { count: 9, hash: '1' });
    assert.equal(groupTie({ cursor: 't', tiebreak: ['5'] }, 't', { count: 3, hash: '3' }), undefined, 'the next sync reads the group again');
    assert.deepEqual(groupTie({ cursor: 't', tiebreak: ['5'] }, 'u', { count: 3, hash: '3' }), { count: 3, hash: '3' });
  });

  test('tie summaries: sums of 64-bit hashes do not overflow, and equality needs both parts', () => {
    const big = { count: 1, hash: '9223372036854775807' };
    assert.equal(addTies(big, big).hash, '18446744073709551614');
    assert.ok(sameTie({ count: 3, hash: '10' }, { count: 3, hash: '10' }));
    assert.ok(!sameTie({ count: 3, hash: '10' }, { count: 3, hash: '11' }), 'one key swapped for another');
    assert.ok(!sameTie({ count: 3, hash: '10' }, { count: 4, hash: '10' }));
    assert.ok(!sameTie(undefined, { count: 0, hash: '0' }), 'no saved summary means read the group again');
  });

  test('the state stays small however many rows share the cursor value', () => {
    let p = { ...initialPosition('2024-01-01T00:00:00Z'), tie: undefined as ReturnType<typeof groupTie> };
    for (let call = 0; call < 1_000; call++) {
      const tiebreak = [String((call + 1) * 1_000)];
      p = { cursor: '2024-01-01 00:00:00+00', tiebreak, tie: groupTie(p, '2024-01-01 00:00:00+00', { count: 1_000, hash: '-4611686018427387904000' }) };
    }
    assert.equal(p.tie!.count, 1_000_000);
    assert.ok(JSON.stringify(p).length < 200, JSON.stringify(p));
  });

  test('position keys are stable and tell positions apart', () => {
    const a = { cursor: 'x', tiebreak: ['1'] };
    assert.equal(positionKey(a), positionKey({ ...a, tie: { count: 1, hash: '1' } }));
    assert.notEqual(positionKey(a), positionKey({ cursor: 'x', tiebreak: null }));
    assert.notEqual(positionKey(a), positionKey({ cursor: 'x', tiebreak: ['2'] }));
  });

  test('descriptions for the UI', () => {
    assert.equal(describePosition('updated_at', undefined), 'updated_at: from the beginning');
    assert.equal(describePosition('updated_at', { cursor: '2024-01-01', tiebreak: null }), 'updated_at >= 2024-01-01');
    assert.match(describePosition('updated_at', { cursor: 't', tiebreak: ['7'], tie: { count: 3, hash: '0' } }), /= t \(up to key 7, 3 keys/);
  });

  test('durations', () => {
    assert.equal(durationMs('5m'), 300_000);
    assert.equal(durationMs('250ms'), 250);
    assert.equal(durationMs('1d'), 86_400_000);
    assert.throws(() => durationMs('5 minutes'));
  });
});

describe('cursor values of code-defined sources', () => {
  test('numbers, numeric strings and bigints compare numerically', () => {
    assert.ok(compareCursorValues(9, 10) < 0);
    assert.ok(compareCursorValues('9', '10') < 0, 'not as text');
    assert.equal(compareCursorValues(10, '10'), 0);
    assert.ok(compareCursorValues(9007199254740993n, 9007199254740992) > 0, 'exact beyond 2^53');
    assert.ok(compareCursorValues('9007199254740993', '9007199254740992') > 0);
    assert.ok(compareCursorValues(1.5, 1) > 0);
  });

  test('instants compare by time, whatever their form, to the microsecond', () => {
    assert.equal(compareCursorValues(new Date('2024-01-01T00:00:00Z'), '2024-01-01 00:00:00+00'), 0);
    assert.equal(compareCursorValues('2024-01-01T01:00:00+01:00', '2024-01-01T00:00:00Z'), 0);
    assert.ok(compareCursorValues('2024-01-01 00:00:00.000001+00', '2024-01-01T00:00:00.000Z') > 0);
    assert.ok(compareCursorValues('2024-01-01T00:00:00.1Z', '2024-01-01T00:00:00.09Z') > 0, 'fractions are digits, not numbers');
    assert.ok(compareCursorValues('2024-01-02', '2024-01-01T23:59:59.999999Z') > 0);
    assert.ok(compareCursorValues('2023-12-31T23:00:00-02:00', '2024-01-01T00:30:00Z') > 0);
  });

  test('other strings compare by code unit; values of different kinds do not compare', () => {
    assert.ok(compareCursorValues('b', 'a') > 0);
    assert.throws(() => compareCursorValues('abc', 5), /cannot compare/);
    assert.throws(() => compareCursorValues(new Date('2024-01-01'), 5), /cannot compare/);
    assert.throws(() => compareCursorValues({}, 5), /not a cursor value/);
  });

  test('values as a position holds them', () => {
    assert.equal(cursorValue(5), 5);
    assert.equal(cursorValue(5n), '5');
    assert.equal(cursorValue(new Date('2024-01-01T00:00:00Z')), '2024-01-01T00:00:00.000Z');
  });

  test('the lag window starts exactly lag before the cursor, sub-millisecond digits kept', () => {
    assert.equal(lagStart('2024-01-01T00:05:00Z', 300_000), '2024-01-01T00:00:00.000Z');
    assert.equal(lagStart('2024-01-01 00:05:00.123456+00', 300_000), '2024-01-01T00:00:00.123456Z');
    assert.equal(lagStart('2024-01-01T00:00:00+02:00', 60_000), '2023-12-31T21:59:00.000Z');
    assert.throws(() => lagStart(42, 1000), /date or timestamp/);
  });
});

describe('keyset SQL', () => {
  test('strictly after (cursor, key), at or after a cursor, or from the beginning; never null cursors', () => {
    const values: unknown[] = [];
    assert.equal(
      afterPredicate(keyset, { cursor: '2024-01-01 00:00:00+00', tiebreak: ['42'] }, bindParameters(values)),
      '("updated_at", "id") > ($1::timestamp with time zone, $2::bigint)',
    );
    assert.deepEqual(values, ['2024-01-01 00:00:00+00', '42']);
    assert.equal(afterPredicate(keyset, { cursor: 5, tiebreak: null }, literalValues), `"updated_at" >= '5'::timestamp with time zone`);
    assert.equal(afterPredicate(keyset, { cursor: null, tiebreak: null }, literalValues), '"updated_at" is not null');
    assert.throws(() => afterPredicate(composite, { cursor: '1', tiebreak: ['x'] }, literalValues), /has 1 key values but the primary key has 2 columns/);
  });

  test('a page: composite keys, quoted identifiers, literals that cannot break out of COPY, keyset order and limit', () => {
    const sql = pageSql(
      orders,
      [{ name: 'seq', type: 'bigint' }, { name: 'region', type: 'text' }, { name: 'Order Id', type: 'integer' }],
      composite,
      { cursor: '7', tiebreak: ["it's", 'eu\\west'] },
      500,
    );
    assert.equal(
      sql,
      `select "seq", "region", "Order Id" from "public"."orders" where ("seq", "region", "Order Id") > ('7'::bigint, 'it''s'::text,  E'eu\\\\west'::integer) ` +
        `order by "seq", "region", "Order Id" limit 500`,
    );
  });

  test('probe and tie summaries bind every value; one hash expression for single and composite keys', () => {
    const probe = probeSql(orders, keyset, { cursor: 'c', tiebreak: ['1'] });
    assert.deepEqual(probe.values, ['c', '1']);
    assert.match(probe.text, /^select 1 from "public"."orders" where \("updated_at", "id"\) > \(\$1::timestamp with time zone, \$2::bigint\) limit 1$/);
    const single = tieRangeSql(orders, keyset, { cursor: 'c', tiebreak: null }, { cursor: 'c', tiebreak: ['9'] });
    assert.match(single.text, /hashtextextended\("id"::text, 0\)/);
    assert.match(single.text, /"updated_at" = \$1::timestamp with time zone and "updated_at" >= \$2::timestamp with time zone and \("updated_at", "id"\) <= \(\$3::timestamp with time zone, \$4::bigint\)/);
    assert.deepEqual(single.values, ['c', 'c', 'c', '9']);
    const multi = tieRangeSql(orders, composite, { cursor: '1', tiebreak: ['eu', '3'] }, { cursor: '2', tiebreak: ['us', '4'] });
    assert.match(multi.text, /hashtextextended\(row\("region", "Order Id"\)::text, 0\)/);
  });
});

describe('COPY text of a page', () => {
  test('fields are unescaped as COPY TO escapes them', () => {
    assert.deepEqual(parseCopyLine('1\ta\\tb\\\\c\t\\N\tx\\ny'), ['1', 'a\tb\\c', null, 'x\ny']);
  });

  test('the tap counts rows and keeps the last one, lines split across chunks included', async () => {
    const columns = [{ name: 'id', type: 'bigint' }, { name: 'updated_at', type: 'timestamptz' }, { name: 'v', type: 'text' }];
    const ks: Keyset = { cursor: columns[1]!, key: [columns[0]!] };
    const text = '1\t2024-01-01 00:00:00+00\ta\n2\t2024-01-01 00:00:00+00\tb\\tc\n30\t2024-01-02 00:00:00+00\tlast\n';
    for (const cut of [1, 5, 30, text.length - 3, text.length - 1]) {
      const tap = new PageTap();
      const out: Buffer[] = [];
      const chunks = [Buffer.from(text.slice(0, cut)), Buffer.from(text.slice(cut))];
      await pipeline(Readable.from(chunks), tap, new Writable({ write(c: Buffer, _e, done) { out.push(c); done(); } }));
      assert.equal(tap.rows, 3);
      assert.deepEqual(tap.lastRow(columns, ks), { cursor: '2024-01-02 00:00:00+00', tiebreak: ['30'] }, `cut at ${cut}`);
      assert.equal(Buffer.concat(out).toString(), text, 'passed through unchanged');
    }
    assert.equal(new PageTap().lastRow(columns, ks), undefined);
  });
});

describe('incrementalWorkflow input', () => {
  const base = {
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: 'public.orders' },
    resource: { name: 'orders', primaryKey: 'id' },
    cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
  };
  test('needs once or every, refuses replace and files, defaults pageSize and reset', () => {
    const ok = parseInput(IncrementalInput, { ...base, once: true });
    assert.ok(ok.ok);
    assert.equal(ok.ok && ok.value.pageSize, 50_000);
    assert.equal(ok.ok && ok.value.cursor.reset, false);
    const none = parseInput(IncrementalInput, base);
    assert.ok(!none.ok && /once/.test(none.message));
    const replace = parseInput(IncrementalInput, { ...base, once: true, resource: { name: 'o', writeDisposition: 'replace' } });
    assert.ok(!replace.ok && /resource\.writeDisposition/.test(replace.message));
    const lag = parseInput(IncrementalInput, { ...base, every: '5m', cursor: { column: 'u', lag: 'five minutes' } });
    assert.ok(!lag.ok && /cursor\.lag/.test(lag.message));
  });
});
