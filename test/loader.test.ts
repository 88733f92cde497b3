/**
 * The load engine against a real PostgreSQL: dispositions, idempotency, schema evolution and
 * contracts, rejects, hostile identifiers, and a connection killed in the middle of a COPY.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { loadResource, type LoadRequest } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { metadataDdl } from '../src/destinations/postgres/sql';
import { PermanentError } from '../src/errors';
import { Resource } from '../src/inputs';
import { extractPostgres } from '../src/sources/postgres';
import { ROW_REJECT, ROW_SOURCE, type Row } from '../src/sources/types';
import { requireEnv, uniqueName } from './helpers';

const url = requireEnv('DATABASE_URL');
let db: pg.Pool;
let schema: string;

async function* from(rows: Row[]): AsyncIterable<Row> {
  for (const row of rows) yield row;
}

function load(table: string, resource: Partial<Resource> & { name?: string }, rows: Row[], extra: Partial<LoadRequest> = {}) {
  return loadResource({
    url,
    schema,
    table,
    resource: Resource.parse({ name: table, ...resource }),
    loadId: extra.loadId ?? uniqueName('load'),
    data: { kind: 'rows', rows: from(rows) },
    ...extra,
  });
}

async function select(sql: string, params: unknown[] = []) {
  return (await db.query(sql, params)).rows;
}

describe('load engine', () => {
  before(async () => {
    db = new pg.Pool({ connectionString: url, max: 4 });
    schema = uniqueName('t_loader');
  });
  after(async () => {
    await db.end();
    await closePools();
  });

  // 1.5 and 2 in one column meet at numeric: exact, where double precision would round large integers.
  test('append infers types, stamps _sluice_load_id, records the load', async () => {
    const r = await load('events', { writeDisposition: 'append' }, [
      { id: 1, at: '2024-01-01T10:00:00Z', day: '2024-01-01', ok: true, score: 1.5, tags: { a: 1 }, note: 'x' },
      { id: 2, at: '2024-01-02T10:00:00.123456Z', day: '2024-01-02', ok: false, score: 2, tags: [1, 2], note: null },
    ], { loadId: 'append-1' });
    assert.equal(r.rowsLoaded, 2);
    const types = await select(
      `select column_name, data_type from information_schema.columns where table_schema = $1 and table_name = 'events' order by ordinal_position`,
      [schema],
    );
    assert.deepEqual(
      Object.fromEntries(types.map((t) => [t.column_name, t.data_type])),
      { id: 'bigint', at: 'timestamp with time zone', day: 'date', ok: 'boolean', score: 'numeric', tags: 'jsonb', note: 'text', _sluice_load_id: 'text' },
    );
    const rows = await select(`select id, at, tags, _sluice_load_id from ${schema}.events order by id`);
    assert.equal(rows[1].at.toISOString(), '2024-01-02T10:00:00.123Z');
    assert.deepEqual(rows[1].tags, [1, 2]);
    assert.equal(rows[0]._sluice_load_id, 'append-1');
    const loads = await select(`select status, rows_loaded, rows_rejected, finished_at from ${schema}._sluice_loads where load_id = 'append-1'`);
    assert.equal(loads[0].status, 'completed');
    assert.equal(Number(loads[0].rows_loaded), 2);
    assert.ok(loads[0].finished_at);
  });

  test('twenty loads racing into a new schema and a new table all commit (no deadlock on first use)', async () => {
    const fresh = uniqueName('t_race');
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        loadResource({
          url,
          schema: fresh,
          table: 'crowd',
          resource: Resource.parse({ name: 'crowd' }),
          loadId: `crowd-${i}`,
          data: { kind: 'rows', rows: from([{ id: i, at: '2024-01-01T00:00:00Z', flag: i % 2 === 0 }]) },
        }),
      ),
    );
    assert.equal(results.filter((r) => r.rowsLoaded === 1).length, 20);
    assert.equal((await select(`select count(*)::int as n from ${fresh}.crowd`))[0].n, 20);
  });

  test('loading the same load_id twice changes nothing, even for append', async () => {
    const rows = [{ id: 1 }, { id: 2 }, { id: 3 }];
    const first = await load('idem', { writeDisposition: 'append' }, rows, { loadId: 'same' });
    const second = await load('idem', { writeDisposition: 'append' }, rows, { loadId: 'same' });
    assert.equal(first.alreadyLoaded, false);
    assert.equal(second.alreadyLoaded, true);
    assert.equal(second.rowsLoaded, 3);
    assert.equal((await select(`select count(*)::int as n from ${schema}.idem`))[0].n, 3);
  });

  test('two attempts of one load racing each other commit it once', async () => {
    const rows = Array.from({ length: 2000 }, (_, i) => ({ id: i }));
    const results = await Promise.all([
      load('race', { writeDisposition: 'append' }, rows, { loadId: 'race-1' }),
      load('race', { writeDisposition: 'append' }, rows, { loadId: 'race-1' }),
    ]);
    assert.deepEqual(results.map((r) => r.alreadyLoaded).sort(), [false, true]);
    assert.equal((await select(`select count(*)::int as n from ${schema}.race`))[0].n, 2000);
  });

  test('merge upserts on a composite key; in-batch duplicates resolve to the last row', async () => {
    const resource = { writeDisposition: 'merge' as const, primaryKey: ['day', 'shop'] };
    await load('sales', resource, [
      { day: '2024-01-01', shop: 'a', total: 1 },
      { day: '2024-01-01', shop: 'b', total: 2 },
      { day: '2024-01-01', shop: 'a', total: 3 },
    ]);
    await load('sales', resource, [
      { day: '2024-01-01', shop: 'b', total: 20 },
      { day: '2024-01-02', shop: 'a', total: 5 },
    ]);
    const rows = await select(`select day::text, shop, total::int from ${schema}.sales order by day, shop`);
    assert.deepEqual(rows, [
      { day: '2024-01-01', shop: 'a', total: 3 },
      { day: '2024-01-01', shop: 'b', total: 20 },
      { day: '2024-01-02', shop: 'a', total: 5 },
    ]);
  });

  test('merge with hardDelete removes flagged rows; mergeKey replaces a whole partition', async () => {
    await load('users', { writeDisposition: 'merge', primaryKey: ['id'], hardDelete: 'deleted' }, [
      { id: 1, name: 'a', deleted: false },
      { id: 2, name: 'b', deleted: false },
      { id: 3, name: 'c', deleted: false },
    ]);
    await load('users', { writeDisposition: 'merge', primaryKey: ['id'], hardDelete: 'deleted' }, [
      { id: 2, name: 'b', deleted: true },
      { id: 4, name: 'd', deleted: true },
      { id: 3, name: 'c2', deleted: false },
    ]);
    assert.deepEqual(await select(`select id::int, name from ${schema}.users order by id`), [
      { id: 1, name: 'a' },
      { id: 3, name: 'c2' },
    ]);

    await load('daily', { writeDisposition: 'merge', mergeKey: ['day'] }, [
      { day: '2024-01-01', v: 1 },
      { day: '2024-01-01', v: 2 },
      { day: '2024-01-02', v: 3 },
    ]);
    await load('daily', { writeDisposition: 'merge', mergeKey: ['day'] }, [{ day: '2024-01-01', v: 9 }]);
    assert.deepEqual(await select(`select day::text, v::int from ${schema}.daily order by day, v`), [
      { day: '2024-01-01', v: 9 },
      { day: '2024-01-02', v: 3 },
    ]);
  });

  test('replace swaps the contents in one transaction; a view on the table keeps working', async () => {
    await load('snapshot', { writeDisposition: 'replace' }, [{ id: 1 }, { id: 2 }]);
    await db.query(`create view ${schema}.snapshot_view as select id from ${schema}.snapshot`);
    await load('snapshot', { writeDisposition: 'replace' }, [{ id: 7 }, { id: 8 }, { id: 9 }]);
    assert.deepEqual((await select(`select id::int from ${schema}.snapshot_view order by id`)).map((r) => r.id), [7, 8, 9]);
  });

  test('files with merge: a changed file removes only the keys no other loaded file still provides', async () => {
    const resource = { writeDisposition: 'merge' as const, primaryKey: ['id'] };
    const ids = async () => (await select(`select id from ${schema}.snapshots order by id`)).map((r) => Number(r.id));
    const provided = async (file: string) =>
      (await select(`select key from ${schema}._sluice_file_keys where resource = 'snapshots' and file = $1 order by key`, [file])).map((r) => (r.key as string[]).join(','));
    // Daily snapshot files that share key 3 with the same values: the row keeps the load id of the first file.
    const file = (name: string, version: number, keys: number[], previous?: string) => {
      const loadId = `${name}#${version}`;
      const supersede = { kind: 'file' as const, file: name, ...(previous ? { previousLoadId: previous } : {}) };
      return load('snapshots', resource, keys.map((id) => ({ id, v: `value ${id}` })), { loadId, supersede }).then(() => loadId);
    };
    const a1 = await file('a.csv', 1, [1, 2, 3]);
    const b1 = await file('b.csv', 1, [3, 4]);
    assert.deepEqual(await ids(), [1, 2, 3, 4]);
    assert.deepEqual(await provided('b.csv'), ['3', '4']);
    // a.csv drops 2 and 3: 2 goes, 3 stays (b.csv still has it), although its row carries a.csv's load id.
    assert.equal((await select(`select _sluice_load_id from ${schema}.snapshots where id = 3`))[0]!._sluice_load_id, a1);
    const a2 = await file('a.csv', 2, [1], a1);
    assert.deepEqual(await ids(), [1, 3, 4]);
    assert.deepEqual(await provided('a.csv'), ['1']);
    // b.csv drops 3 too: now nobody provides it, and it goes.
    await file('b.csv', 2, [4], b1);
    assert.deepEqual(await ids(), [1, 4]);
    // a.csv becomes empty: its last key goes; b.csv's stays.
    const a3 = await file('a.csv', 3, [], a2);
    assert.deepEqual(await ids(), [4]);
    assert.deepEqual(await provided('a.csv'), []);
    // A file loaded before provenance existed (no _sluice_file_keys rows): its previous load's rows stand in.
    await file('a.csv', 4, [7, 8], a3);
    await db.query(`delete from ${schema}._sluice_file_keys where file = 'a.csv'`);
    await file('a.csv', 5, [8], 'a.csv#4');
    assert.deepEqual(await ids(), [4, 8]);
    // With append, a changed file still replaces its previous load's rows.
    await load('snap_append', { writeDisposition: 'append' }, [{ id: 1 }, { id: 2 }], { loadId: 'ap#1', supersede: { kind: 'file', file: 'x.csv' } });
    await load('snap_append', { writeDisposition: 'append' }, [{ id: 2 }], { loadId: 'ap#2', supersede: { kind: 'file', file: 'x.csv', previousLoadId: 'ap#1' } });
    assert.deepEqual((await select(`select id from ${schema}.snap_append`)).map((r) => Number(r.id)), [2]);
  });

  test('a replace of a table files loaded with merge forgets their key provenance: a later file never deletes the rows the replace wrote', async () => {
    const merge = { name: 'drops', table: 'mixed', writeDisposition: 'merge' as const, primaryKey: ['id'] };
    const ids = async () => (await select(`select id from ${schema}.mixed order by id`)).map((r) => Number(r.id));
    await load('mixed', merge, [{ id: 1 }, { id: 2 }, { id: 3 }], { loadId: 'd.csv#1', supersede: { kind: 'file', file: 'd.csv' } });
    // A full refresh of the same table under another resource name: every row is now its own.
    await load('mixed', { name: 'nightly', table: 'mixed', writeDisposition: 'replace' }, [{ id: 2 }, { id: 3 }, { id: 9 }], { loadId: 'refresh#1' });
    assert.deepEqual(await select(`select * from ${schema}._sluice_file_keys where table_name = 'mixed'`), []);
    // d.csv changes to hold only key 1: keys 2 and 3 were the file's once, but they are the refresh's rows now.
    await load('mixed', merge, [{ id: 1 }], { loadId: 'd.csv#2', supersede: { kind: 'file', file: 'd.csv', previousLoadId: 'd.csv#1' } });
    assert.deepEqual(await ids(), [1, 2, 3, 9]);
  });

  test('key provenance recorded before it named its table is forgotten by a replace of the same resource', async () => {
    // The metadata as an earlier version left it: every table, but _sluice_file_keys without table_name.
    const old = uniqueName('t_oldmeta');
    for (const statement of metadataDdl(old).filter((s) => !s.startsWith('alter table'))) await db.query(statement);
    await db.query(`insert into ${old}._sluice_file_keys values ('legacy', '{5}', 'e.csv')`);
    const req = (rows: Row[], extra: Partial<LoadRequest>) =>
      loadResource({ url, schema: old, table: 'legacy', resource: Resource.parse({ name: 'legacy', writeDisposition: 'replace' }), loadId: uniqueName('load'), data: { kind: 'rows', rows: from(rows) }, ...extra });
    await req([{ id: 5 }], {});
    assert.deepEqual(await select(`select column_name from information_schema.columns where table_schema = $1 and table_name = '_sluice_file_keys' and column_name = 'table_name'`, [old]), [{ column_name: 'table_name' }]);
    assert.deepEqual(await select(`select * from ${old}._sluice_file_keys`), [], 'the old row (no table_name) went by its resource');
  });

  test('backfill partitions: a range supersede deletes the range before inserting, so re-runs never duplicate', async () => {
    const rows = [
      { id: 1, at: '2024-01-01T00:00:00Z' },
      { id: 2, at: '2024-01-01T23:59:59.999999Z' },
    ];
    const range = { column: 'at', start: '2024-01-01T00:00:00.000Z', end: '2024-01-02T00:00:00.000Z' };
    await load('parts', { writeDisposition: 'append' }, [...rows, { id: 3, at: '2024-01-02T00:00:00Z' }]);
    await load('parts', { writeDisposition: 'append' }, rows, { supersede: { kind: 'range', ...range } });
    await load('parts', { writeDisposition: 'append' }, rows, { supersede: { kind: 'range', ...range } });
    assert.deepEqual((await select(`select id::int from ${schema}.parts order by id`)).map((r) => r.id), [1, 2, 3]);
    // The source's rows for the day were deleted: re-running the partition empties it.
    await load('parts', { writeDisposition: 'append' }, [], { supersede: { kind: 'range', ...range } });
    assert.deepEqual((await select(`select id::int from ${schema}.parts order by id`)).map((r) => r.id), [3]);
  });

  test('schema evolution: new columns are added, numbers widen, the table never narrows', async () => {
    await load('evolve', {}, [{ id: 1, n: 1 }]);
    const r = await load('evolve', {}, [{ id: 2, n: 2.5, extra: 'new' }]);
    assert.deepEqual(r.schemaChanges.sort(), ['added column extra text', 'widened column n from bigint to numeric']);
    assert.deepEqual(await select(`select id::int, n::text, extra from ${schema}.evolve order by id`), [
      { id: 1, n: '1', extra: null },
      { id: 2, n: '2.5', extra: 'new' },
    ]);
  });

  test('a value that does not fit its column is rejected by default, widened to text with evolve, nulled with discard_value', async () => {
    await load('contract', {}, [{ id: 1, qty: 5 }]);
    const rejected = await load('contract', {}, [{ id: 2, qty: 'lots' }, { id: 3, qty: 7 }], { loadId: 'contract-reject' });
    assert.equal(rejected.rowsLoaded, 1);
    assert.equal(rejected.rowsRejected, 1);
    const reasons = await select(`select "row", reason from ${schema}._sluice_rejects where load_id = 'contract-reject'`);
    assert.equal(reasons.length, 1);
    assert.deepEqual(reasons[0].row, { id: '2', qty: 'lots' });
    assert.match(reasons[0].reason, /column "qty" \(bigint\): invalid input syntax for type bigint: "lots"/);

    await load('contract', { schemaContract: { tables: 'evolve', columns: 'evolve', dataTypes: 'discard_value' } }, [{ id: 4, qty: 'many' }]);
    assert.equal((await select(`select qty from ${schema}.contract where id = 4`))[0].qty, null);

    await load('contract', { schemaContract: { tables: 'evolve', columns: 'evolve', dataTypes: 'evolve' } }, [{ id: 5, qty: 'heaps' }]);
    assert.equal((await select(`select qty from ${schema}.contract where id = 5`))[0].qty, 'heaps');
  });

  test('frozen contracts fail the load permanently and leave the table as it was', async () => {
    await load('frozen', {}, [{ id: 1 }]);
    const frozen = { schemaContract: { tables: 'freeze', columns: 'freeze', dataTypes: 'freeze' } } as const;
    await assert.rejects(load('frozen', frozen, [{ id: 2, surprise: true }]), (err: unknown) => err instanceof PermanentError && /new column "surprise"/.test(err.message));
    await assert.rejects(load('never_created', frozen, [{ id: 1 }]), (err: unknown) => err instanceof PermanentError && /does not exist/.test(err.message));
    assert.equal((await select(`select count(*)::int as n from ${schema}.frozen`))[0].n, 1);
    const failed = await select(`select status, error from ${schema}._sluice_loads where table_name = 'frozen' and status = 'failed'`);
    assert.equal(failed.length, 1);
    assert.match(failed[0].error, /surprise/);

    await load('frozen', { schemaContract: { tables: 'evolve', columns: 'discard_row', dataTypes: 'discard_row' } }, [{ id: 3, surprise: true }, { id: 4 }]);
    assert.deepEqual((await select(`select id::int from ${schema}.frozen order by id`)).map((r) => r.id), [1, 4]);
  });

  test('rejects: declared types, missing primary keys and extractor verdicts land in _sluice_rejects with their reason', async () => {
    const r = await load(
      'declared',
      { writeDisposition: 'merge', primaryKey: ['id'], columns: { id: 'bigint', amount: 'numeric(6,2)', day: 'date' } },
      [
        { id: 1, amount: '12.50', day: '2024-01-01', [ROW_SOURCE]: 'a.csv:2' },
        { id: 2, amount: 'twelve', day: '2024-01-01', [ROW_SOURCE]: 'a.csv:3' },
        { id: 3, amount: '99999.99', day: '2024-01-01' },
        { id: 4, amount: '1', day: '2024-02-30' },
        { amount: '1', day: '2024-01-01' },
        { id: 6, amount: '1', day: '2024-01-01', [ROW_REJECT]: 'amount: expected number' },
      ],
      { loadId: 'declared-1' },
    );
    assert.equal(r.rowsLoaded, 1);
    assert.equal(r.rowsRejected, 5);
    const rejects = await select(`select "row"->>'id' as id, reason, source from ${schema}._sluice_rejects where load_id = 'declared-1' order by "row"->>'id' nulls last`);
    assert.deepEqual(
      rejects.map((x) => [x.id, x.source]),
      [['2', 'a.csv:3'], ['3', null], ['4', null], ['6', null], [null, null]],
    );
    assert.match(rejects[0].reason, /column "amount" \(numeric\(6,2\)\): invalid input syntax for type numeric: "twelve"/);
    assert.match(rejects[1].reason, /numeric field overflow/);
    assert.match(rejects[2].reason, /column "day" \(date\)/);
    assert.equal(rejects[3].reason, 'amount: expected number');
    assert.equal(rejects[4].reason, 'primary key column "id" is missing');
    const types = await select(`select format_type(atttypid, atttypmod) as t from pg_attribute where attrelid = '${schema}.declared'::regclass and attname = 'amount'`);
    assert.equal(types[0].t, 'numeric(6,2)');
  });

  test('rows whose every value fits its column COPY straight into the table; one that does not sends the load through text staging', async () => {
    // Columns that appear late, and a declared column that never appears: earlier rows have no value for them.
    const fitting = await load('fits', { writeDisposition: 'append', columns: { id: 'bigint', amount: 'numeric(8,2)', note: 'text' } }, [
      { id: '1', amount: '12.50' },
      { id: '2', amount: '-3', at: '2024-01-31T05:06:07.5Z', ok: true },
      { id: 3, amount: null, at: '2024-02-29T10:00+00:00', ok: false, [ROW_SOURCE]: 'x.csv:4' },
    ]);
    assert.deepEqual([fitting.path, fitting.rowsLoaded, fitting.rowsRejected], ['direct', 3, 0]);
    assert.deepEqual(
      await select(`select id::int, amount::text, to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') as at, ok, note, _sluice_load_id as l from ${schema}.fits order by id`),
      [
        { id: 1, amount: '12.50', at: null, ok: null, note: null, l: fitting.loadId },
        { id: 2, amount: '-3.00', at: '2024-01-31 05:06:07.500', ok: true, note: null, l: fitting.loadId },
        { id: 3, amount: null, at: '2024-02-29 10:00:00.000', ok: false, note: null, l: fitting.loadId },
      ],
    );
    // A value PostgreSQL accepts but the classifier does not vouch for: staged as text, still loaded.
    const spaced = await load('fits', { writeDisposition: 'append', columns: { id: 'bigint' } }, [{ id: ' 4', amount: '1' }]);
    assert.deepEqual([spaced.path, spaced.rowsLoaded, spaced.rowsRejected], ['text-staging', 1, 0]);
    // A value that fits no column type: the whole load goes through text staging, and only that row is rejected.
    const bad = await load('fits', { writeDisposition: 'append' }, [{ id: 5, amount: '1' }, { id: 6, amount: 'lots' }, { id: 7, amount: '2' }]);
    assert.deepEqual([bad.path, bad.rowsLoaded, bad.rowsRejected], ['text-staging', 2, 1]);
    // The existing column's type decides: amount numeric(8,2) takes 123456.78, not 1234567.8.
    const wide = await load('fits', { writeDisposition: 'append' }, [{ id: 8, amount: '123456.78' }, { id: 9, amount: '1234567.8' }]);
    assert.deepEqual([wide.path, wide.rowsLoaded, wide.rowsRejected], ['text-staging', 1, 1]);
    // Merge: staging of the final types; a missing key is a reject, so that load is checked as text.
    const merged = await load('fits_merge', { writeDisposition: 'merge', primaryKey: ['id'] }, [{ id: 1, v: 'a' }, { id: 2, v: 'b' }, { id: 1, v: 'c' }]);
    assert.deepEqual([merged.path, merged.rowsLoaded], ['typed-staging', 2]);
    const keyless = await load('fits_merge', { writeDisposition: 'merge', primaryKey: ['id'] }, [{ id: 3, v: 'd' }, { v: 'e' }]);
    assert.deepEqual([keyless.path, keyless.rowsLoaded, keyless.rowsRejected], ['text-staging', 1, 1]);
    assert.deepEqual(await select(`select id::int, v from ${schema}.fits_merge order by id`), [{ id: 1, v: 'c' }, { id: 2, v: 'b' }, { id: 3, v: 'd' }]);
  });

  test('on a server whose default zone is not UTC, naive timestamps and date partitions are still UTC', async () => {
    const database = uniqueName('tz');
    await db.query(`create database ${database}`);
    await db.query(`alter database ${database} set timezone = 'America/New_York'`);
    const tzUrl = url.replace(/\/[^/]+$/, `/${database}`);
    const base = { url: tzUrl, schema: 'public', table: 'events', resource: Resource.parse({ name: 'events', columns: { at: 'timestamptz', day: 'date' } }) };
    const rows = () => from([{ id: 1, at: '2024-01-01 23:30:00', day: '2024-01-01' }]);
    const range = { column: 'day', start: '2024-01-01T00:00:00.000Z', end: '2024-01-02T00:00:00.000Z' };
    await loadResource({ ...base, loadId: 'tz-1', data: { kind: 'rows', rows: rows() }, supersede: { kind: 'range', ...range } });
    await loadResource({ ...base, loadId: 'tz-2', data: { kind: 'rows', rows: rows() }, supersede: { kind: 'range', ...range } });
    const check = new pg.Client({ connectionString: tzUrl });
    await check.connect();
    try {
      const r = await check.query(`select count(*)::int as n, min(at) as at from events`);
      assert.equal(r.rows[0].n, 1, 're-running the date partition replaced it');
      assert.equal((r.rows[0].at as Date).toISOString(), '2024-01-01T23:30:00.000Z', 'a naive timestamp is read as UTC');
    } finally {
      await check.end();
    }
  });

  test('hostile identifiers are normalized and quoted', async () => {
    const hostile = {
      'Robert"); DROP TABLE students;--': 1,
      'select': 2,
      'Ünïcödé Näme': 3,
      ['x'.repeat(100)]: 4,
      ['x'.repeat(99) + 'y']: 5,
      'Order ID': 6,
      'order_id': 6,
      '': 8,
      '123abc': 9,
    };
    await load('Weird "Table"; drop', {}, [hostile]);
    const table = 'Weird "Table"; drop';
    const cols = await select(
      `select column_name from information_schema.columns where table_schema = $1 and table_name = $2 order by ordinal_position`,
      [schema, table],
    );
    const names = cols.map((c) => c.column_name);
    assert.equal(names.length, 9);
    assert.ok(names.includes('robert_drop_table_students'));
    assert.ok(names.includes('select'));
    assert.ok(names.includes('ünïcödé_näme'));
    assert.ok(names.includes('order_id') && !names.includes('order_id_2'), '"Order ID" and "order_id" share one column');
    assert.ok(names.includes('_123abc'));
    const long = names.filter((n) => n.startsWith('xxxx'));
    assert.equal(long.length, 2, 'two long names that share a prefix stay distinct');
    for (const n of long) assert.ok(Buffer.byteLength(n) <= 63);
    assert.equal((await select(`select count(*)::int as n from ${schema}."Weird ""Table""; drop"`))[0].n, 1);
  });

  test('a connection killed in the middle of COPY leaves no partial data, and the retry loads exactly once', async () => {
    let produced = 0;
    let release!: () => void;
    const paused = new Promise<void>((r) => (release = r));
    let reachedPause!: () => void;
    const atPause = new Promise<void>((r) => (reachedPause = r));
    async function* rows(): AsyncIterable<Row> {
      for (let i = 0; i < 50_000; i++) {
        if (i === 30_000) {
          reachedPause();
          await paused;
        }
        produced++;
        // Long enough that the rows outgrow what a load holds in memory before it stages (4 MiB):
        // by row 30,000 they stream through COPY into staging.
        yield { id: i, payload: `row ${i} ${'x'.repeat(200)}` };
      }
    }
    const attempt = loadResource({
      url,
      schema,
      table: 'crash',
      resource: Resource.parse({ name: 'crash' }),
      loadId: 'crash-1',
      data: { kind: 'rows', rows: rows() },
    });
    await atPause;
    // Kill the loader's backend while its COPY is open (it is the one running COPY into staging).
    const killed = await select(`select pg_terminate_backend(pid) as ok from pg_stat_activity where query ilike 'copy%_sluice_stage%' and state <> 'idle'`);
    assert.ok(killed.length >= 1, 'found the COPY backend');
    release();
    await assert.rejects(attempt);
    assert.ok(produced >= 30_000);
    assert.equal((await select(`select to_regclass($1) as t`, [`${schema}.crash`]))[0].t, null, 'no table, no rows');
    assert.equal((await select(`select status from ${schema}._sluice_loads where load_id = 'crash-1'`))[0].status, 'failed');

    const retry = await loadResource({
      url,
      schema,
      table: 'crash',
      resource: Resource.parse({ name: 'crash' }),
      loadId: 'crash-1',
      data: { kind: 'rows', rows: from(Array.from({ length: 50_000 }, (_, i) => ({ id: i, payload: `row ${i}` }))) },
    });
    assert.equal(retry.rowsLoaded, 50_000);
    assert.equal((await select(`select count(*)::int as n, count(distinct id)::int as d from ${schema}.crash`))[0].d, 50_000);
  });

  test('a PostgreSQL source keeps its exact types through the COPY fast path', async () => {
    const src = uniqueName('src_types');
    await db.query(`create schema ${src};
      create table ${src}.t (id bigint, amount numeric(12,2), at timestamptz, doc jsonb, tags text[], flag boolean, d date, f double precision, note text);
      insert into ${src}.t values
        (1, 12.34, '2024-01-01 12:00:00.123456+00', '{"a": [1, "x\\ty"]}', '{a,"b c"}', true, '2024-01-01', 1.0000000000000002, e'line1\\nline2\\ttab \\\\ back'),
        (2, null, null, null, null, null, null, null, null)`);
    const data = await extractPostgres(url, { kind: 'postgres', connection: 'X', table: `${src}.t` });
    const r = await loadResource({ url, schema, table: 'typed', resource: Resource.parse({ name: 'typed' }), loadId: 'typed-1', data });
    assert.equal(r.rowsLoaded, 2);
    assert.equal(r.path, 'direct', 'binary COPY straight into the new table');
    assert.deepEqual(await select(`select distinct _sluice_load_id from ${schema}.typed`), [{ _sluice_load_id: 'typed-1' }]);
    const types = await select(
      `select attname, format_type(atttypid, atttypmod) as t from pg_attribute where attrelid = '${schema}.typed'::regclass and attnum > 0 order by attnum`,
    );
    assert.deepEqual(types.map((t) => `${t.attname} ${t.t}`), [
      'id bigint', 'amount numeric(12,2)', 'at timestamp with time zone', 'doc jsonb', 'tags text[]', 'flag boolean', 'd date', 'f double precision', 'note text', '_sluice_load_id text',
    ]);
    const diff = await select(`select count(*)::int as n from (
      (select id, amount, at, doc, tags, flag, d, f, note from ${src}.t except all select id, amount, at, doc, tags, flag, d, f, note from ${schema}.typed)
      union all
      (select id, amount, at, doc, tags, flag, d, f, note from ${schema}.typed except all select id, amount, at, doc, tags, flag, d, f, note from ${src}.t)) x`);
    assert.equal(diff[0].n, 0);
  });

  test('PostgreSQL sources: direct COPY when the types are the source\'s own, text staging with rejects when a declared type differs', async () => {
    const src = uniqueName('src_paths');
    await db.query(`create schema ${src};
      create table ${src}.t (id bigint, code text, at timestamptz, n numeric(12,2));
      insert into ${src}.t select i, case when i = 3 then 'x' || i else i::text end, timestamptz '2024-01-01' + i * interval '1 hour', i / 4.0 from generate_series(1, 5) i`);
    const source = { kind: 'postgres' as const, connection: 'X', table: `${src}.t` };
    const run = async (table: string, resource: Record<string, unknown>, loadId: string, extra: Partial<LoadRequest> = {}) =>
      loadResource({ url, schema, table, resource: Resource.parse({ name: table, ...resource }), loadId, data: await extractPostgres(url, source), ...extra });

    // New table, then the same table again (append and replace): direct, rows exact, one load id each.
    assert.equal((await run('paths', { writeDisposition: 'append' }, 'paths-1')).path, 'direct');
    const again = await run('paths', { writeDisposition: 'append' }, 'paths-2');
    assert.deepEqual([again.path, again.rowsLoaded], ['direct', 5]);
    assert.deepEqual(await select(`select _sluice_load_id as id, count(*)::int as n from ${schema}.paths group by 1 order by 1`), [{ id: 'paths-1', n: 5 }, { id: 'paths-2', n: 5 }]);
    assert.equal((await run('paths', { writeDisposition: 'append' }, 'paths-2')).alreadyLoaded, true, 'a committed load id is never applied again');
    const replaced = await run('paths', { writeDisposition: 'replace' }, 'paths-3');
    assert.deepEqual([replaced.path, replaced.rowsLoaded], ['direct', 5]);
    assert.deepEqual(await select(`select _sluice_load_id as id, count(*)::int as n from ${schema}.paths group by 1`), [{ id: 'paths-3', n: 5 }]);

    // A declared type that differs from the source's: every value is checked, the bad one is rejected.
    const declared = await run('paths_declared', { writeDisposition: 'append', columns: { code: 'integer' } }, 'paths-4');
    assert.deepEqual([declared.path, declared.rowsLoaded, declared.rowsRejected], ['text-staging', 4, 1]);
    const rejects = await select(`select reason, "row"->>'code' as code from ${schema}._sluice_rejects where load_id = 'paths-4'`);
    assert.equal(rejects.length, 1);
    assert.equal(rejects[0].code, 'x3');
    assert.match(rejects[0].reason, /column "code" \(integer\)/);

    // An existing column of another type than the source's: the general path, which widens or checks.
    await db.query(`create table ${schema}.paths_existing (id integer, code text, at timestamptz, n numeric(12,2), _sluice_load_id text not null)`);
    const widened = await run('paths_existing', { writeDisposition: 'append' }, 'paths-5');
    assert.deepEqual([widened.path, widened.rowsLoaded], ['text-staging', 5]);
    assert.deepEqual(widened.schemaChanges, ['widened column id from integer to bigint']);

    // Merge (and any load with a primary key) stages in binary, then merges set-based.
    const merged = await run('paths_merge', { writeDisposition: 'merge', primaryKey: ['id'] }, 'paths-6');
    assert.deepEqual([merged.path, merged.rowsLoaded], ['typed-staging', 5]);
    await db.query(`update ${src}.t set n = n + 100 where id = 2; insert into ${src}.t values (2, 'dup', null, 1), (null, 'no key', null, 1)`);
    const remerged = await run('paths_merge', { writeDisposition: 'merge', primaryKey: ['id'] }, 'paths-7');
    assert.deepEqual([remerged.path, remerged.rowsLoaded, remerged.rowsRejected], ['typed-staging', 5, 1]);
    assert.equal((await select(`select count(*)::int as n from ${schema}.paths_merge`))[0].n, 5);
    assert.match((await select(`select reason from ${schema}._sluice_rejects where load_id = 'paths-7'`))[0].reason, /primary key column "id" is missing/);

    // A merge key that is the source's own primary key: into a new (or empty) table every row is
    // an insert, so it goes direct; into a full one it stages in binary and skips the dedupe.
    await db.query(`create table ${src}.keyed (id bigint primary key, v text); insert into ${src}.keyed select i, 'v' || i from generate_series(1, 6) i`);
    const keyed = { kind: 'postgres' as const, connection: 'X', table: `${src}.keyed` };
    const mergeKeyed = async (loadId: string) =>
      loadResource({ url, schema, table: 'paths_keyed', resource: Resource.parse({ name: 'paths_keyed', writeDisposition: 'merge', primaryKey: ['id'] }), loadId, data: await extractPostgres(url, keyed) });
    const first = await mergeKeyed('paths-8');
    assert.deepEqual([first.path, first.rowsLoaded], ['direct', 6]);
    await db.query(`update ${src}.keyed set v = 'changed' where id = 2; insert into ${src}.keyed values (7, 'new')`);
    const second = await mergeKeyed('paths-9');
    assert.deepEqual([second.path, second.rowsLoaded], ['typed-staging', 7]);
    assert.deepEqual(
      await select(`select id::int, v, _sluice_load_id as load from ${schema}.paths_keyed where _sluice_load_id = 'paths-9' order by id`),
      [{ id: 2, v: 'changed', load: 'paths-9' }, { id: 7, v: 'new', load: 'paths-9' }],
      'only changed and new rows are written',
    );
    const pk = await select(`select count(*)::int as n from pg_index where indrelid = $1::regclass and indisprimary`, [`${schema}.paths_keyed`]);
    assert.equal(pk[0].n, 1, 'a merge table gets its primary key on the direct path too');
  });

  test('a backfill partition creates its table with an index on the partition column, which the range delete uses', async () => {
    const src = uniqueName('src_part');
    await db.query(`create schema ${src}; create table ${src}.t (id bigint, "Created At" timestamptz);
      insert into ${src}.t select i, timestamptz '2024-01-01' + i * interval '1 minute' from generate_series(1, 100) i`);
    const range = { column: 'Created At', start: '2024-01-01T00:00:00Z', end: '2024-01-02T00:00:00Z' };
    const partition = await extractPostgres(url, { kind: 'postgres', connection: 'X', table: `${src}.t` }, { range });
    await loadResource({ url, schema, table: 'parted', resource: Resource.parse({ name: 'parted', writeDisposition: 'append' }), loadId: 'parted-1', data: partition, supersede: { kind: 'range', ...range } });
    await load('parted_rows', { writeDisposition: 'append' }, [{ id: 1, day: '2024-01-01T05:00:00Z' }], { loadId: 'parted-2', supersede: { kind: 'range', column: 'day', start: '2024-01-01', end: '2024-01-02' } });
    for (const [table, column] of [['parted', 'created_at'], ['parted_rows', 'day']]) {
      const indexes = await select(
        `select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
          where i.indrelid = $1::regclass and i.indnatts = 1`,
        [`${schema}.${table}`],
      );
      assert.deepEqual(indexes.map((r) => r.attname), [column], `${table} has an index on ${column}`);
    }
    const client = await db.connect();
    try {
      await client.query('begin');
      await client.query(`insert into ${schema}.parted select i, timestamptz '2020-01-01' + i * interval '1 second', 'filler' from generate_series(1, 20000) i`);
      await client.query(`analyze ${schema}.parted`);
      const explain = (await client.query(`explain delete from ${schema}.parted where created_at >= $1::timestamptz and created_at < $2::timestamptz`, [range.start, range.end])).rows;
      assert.match(explain.map((r) => r['QUERY PLAN']).join('\n'), /Index|Bitmap/);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });
});
