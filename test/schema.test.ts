import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { planSchema } from '../src/destinations/postgres/loader';
import { PermanentError } from '../src/errors';
import { ColumnNamer, normalizeIdentifier, quoteIdent, splitQualified } from '../src/schema/identifiers';
import { canonicalType, copyField, inferType, isLosslessWidening, valueToText, widenType } from '../src/schema/types';

describe('identifiers', () => {
  test('normalizeIdentifier makes safe snake_case names', () => {
    assert.equal(normalizeIdentifier('OrderID'), 'order_id');
    assert.equal(normalizeIdentifier('Order Total ($)'), 'order_total');
    assert.equal(normalizeIdentifier('2fast'), '_2fast');
    assert.equal(normalizeIdentifier(''), '_empty');
    assert.equal(normalizeIdentifier('"; drop table x;--'), 'drop_table_x');
    assert.equal(normalizeIdentifier('Straße'), 'straße');
    const long = normalizeIdentifier('a'.repeat(100));
    assert.ok(Buffer.byteLength(long) <= 63);
    assert.notEqual(long, normalizeIdentifier('a'.repeat(99) + 'b'));
    assert.ok(Buffer.byteLength(normalizeIdentifier('é'.repeat(80))) <= 63, 'multi-byte names are cut on byte length');
  });

  test('ColumnNamer maps colliding names to one column, whatever the order', () => {
    const namer = new ColumnNamer();
    assert.equal(namer.name('Order ID'), 'order_id');
    assert.equal(namer.name('order_id'), 'order_id');
    assert.equal(new ColumnNamer().name('order_id'), 'order_id');
    assert.equal(namer.name('Order ID'), 'order_id');
    assert.equal(namer.name('_sluice_load_id'), '_sluice_load_id_2', 'sluice keeps its own column');
  });

  test('quoteIdent doubles quotes and refuses what PostgreSQL cannot hold', () => {
    assert.equal(quoteIdent('a"b'), '"a""b"');
    assert.equal(quoteIdent('select'), '"select"');
    assert.throws(() => quoteIdent(''));
    assert.throws(() => quoteIdent('a\u0000b'));
    assert.throws(() => quoteIdent('x'.repeat(64)));
  });

  test('splitQualified reads schema.table like PostgreSQL does', () => {
    assert.deepEqual(splitQualified('public.Orders'), { schema: 'public', table: 'orders' });
    assert.deepEqual(splitQualified('"My Schema"."Odd.Name"'), { schema: 'My Schema', table: 'Odd.Name' });
    assert.deepEqual(splitQualified('orders'), { schema: undefined, table: 'orders' });
    assert.throws(() => splitQualified('a.b.c'));
  });
});

describe('types', () => {
  test('inferType reads JavaScript values and, for CSV, strings', () => {
    assert.equal(inferType(1), 'bigint');
    assert.equal(inferType(1.5), 'double precision');
    assert.equal(inferType(2n ** 70n), 'numeric');
    assert.equal(inferType(true), 'boolean');
    assert.equal(inferType(new Date()), 'timestamp with time zone');
    assert.equal(inferType('2024-01-01T10:00:00Z'), 'timestamp with time zone');
    assert.equal(inferType('2024-01-01'), 'date');
    assert.equal(inferType('2024-13-45'), 'text');
    assert.equal(inferType({ a: 1 }), 'jsonb');
    assert.equal(inferType('42'), 'text');
    assert.equal(inferType('42', true), 'bigint');
    assert.equal(inferType('4.20', true), 'numeric');
    assert.equal(inferType('TRUE', true), 'boolean');
    assert.equal(inferType('', true), undefined);
    assert.equal(inferType(null), undefined);
  });

  test('widenType climbs the lattice and meets unrelated families at text', () => {
    assert.equal(widenType('integer', 'bigint'), 'bigint');
    assert.equal(widenType('bigint', 'double precision'), 'numeric');
    assert.equal(widenType('integer', 'double precision'), 'double precision');
    assert.equal(widenType('numeric(12,2)', 'bigint'), 'numeric');
    assert.equal(widenType('date', 'timestamptz'), 'timestamp with time zone');
    assert.equal(widenType('json', 'jsonb'), 'jsonb');
    assert.equal(widenType('boolean', 'bigint'), 'text');
    assert.equal(widenType('int8', 'bigint'), 'bigint');
  });

  test('isLosslessWidening and canonicalType agree with format_type spellings', () => {
    assert.ok(isLosslessWidening('integer', 'bigint'));
    assert.ok(!isLosslessWidening('bigint', 'integer'));
    assert.ok(!isLosslessWidening('bigint', 'text'));
    assert.equal(canonicalType('timestamptz'), 'timestamp with time zone');
    assert.equal(canonicalType('TIMESTAMPTZ(3)'), 'timestamp(3) with time zone');
    assert.equal(canonicalType('numeric( 12 , 2 )'), 'numeric(12,2)');
    assert.equal(canonicalType('int4[]'), 'integer[]');
    assert.equal(canonicalType('varchar(20)'), 'character varying(20)');
  });

  test('values become COPY text safely', () => {
    assert.equal(copyField(null), '\\N');
    assert.equal(copyField('a\tb\nc\\d\re'), 'a\\tb\\nc\\\\d\\re');
    assert.equal(copyField('\\N'), '\\\\N', 'a literal backslash-N is not null');
    assert.equal(valueToText(new Date('2024-01-01T00:00:00Z')), '2024-01-01T00:00:00.000Z');
    assert.equal(valueToText({ a: 'x' }), '{"a":"x"}');
    assert.equal(valueToText(Number.NaN), 'NaN');
    assert.equal(valueToText(false), 'false');
  });
});

describe('planSchema', () => {
  const evolve = { tables: 'evolve', columns: 'evolve', dataTypes: 'discard_row' } as const;
  const incoming = (o: Record<string, string | undefined>) => new Map(Object.entries(o));

  test('creates a missing table with the incoming types (all-null columns as text)', () => {
    const plan = planSchema({ table: 't', existing: undefined, incoming: incoming({ a: 'bigint', b: undefined }), declared: new Set(), contract: evolve });
    assert.equal(plan.create, true);
    assert.deepEqual(plan.columns, [{ name: 'a', type: 'bigint' }, { name: 'b', type: 'text' }]);
  });

  test('adds columns, widens losslessly, never narrows, keeps declared types', () => {
    const plan = planSchema({
      table: 't',
      existing: [{ name: 'a', type: 'integer' }, { name: 'b', type: 'numeric(12,2)' }, { name: 'c', type: 'bigint' }, { name: 'd', type: 'date' }],
      incoming: incoming({ a: 'bigint', b: 'bigint', c: 'text', d: 'timestamp with time zone', e: 'boolean' }),
      declared: new Set(),
      contract: evolve,
    });
    assert.deepEqual(plan.widen, [{ name: 'a', type: 'bigint' }, { name: 'd', type: 'timestamp with time zone' }]);
    assert.deepEqual(plan.add, [{ name: 'e', type: 'boolean' }]);
    assert.deepEqual(plan.columns.find((c) => c.name === 'b'), { name: 'b', type: 'numeric(12,2)' }, 'numeric(12,2) holds bigint values: no change');
    assert.deepEqual(plan.columns.find((c) => c.name === 'c'), { name: 'c', type: 'bigint' }, 'text values in a bigint column are judged row by row');
  });

  test('contracts: freeze throws, discard modes drop or reject, evolve widens to text', () => {
    const existing = [{ name: 'a', type: 'bigint' }];
    assert.throws(() => planSchema({ table: 't', existing, incoming: incoming({ z: 'text' }), declared: new Set(), contract: { ...evolve, columns: 'freeze' } }), PermanentError);
    assert.throws(() => planSchema({ table: 't', existing: undefined, incoming: incoming({ a: 'text' }), declared: new Set(), contract: { ...evolve, tables: 'freeze' } }), PermanentError);
    assert.throws(() => planSchema({ table: 't', existing, incoming: incoming({ a: 'text' }), declared: new Set(), contract: { ...evolve, dataTypes: 'freeze' } }), PermanentError);
    const discard = planSchema({ table: 't', existing, incoming: incoming({ a: 'text', z: 'text' }), declared: new Set(), contract: { tables: 'evolve', columns: 'discard_row', dataTypes: 'discard_value' } });
    assert.deepEqual(discard.rejectIfPresent, ['z']);
    assert.deepEqual(discard.nullIfInvalid, ['a']);
    const toText = planSchema({ table: 't', existing, incoming: incoming({ a: 'text' }), declared: new Set(), contract: { ...evolve, dataTypes: 'evolve' } });
    assert.deepEqual(toText.widen, [{ name: 'a', type: 'text' }]);
  });
});
