/**
 * Issue 15, SQL and least privilege: source.query is one read-only statement, declared types
 * are judged by the destination before any DDL, derived names are cut by bytes and never
 * collide, and the roles the suite loads as are what the README asks for.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { loadResource } from '../src/destinations/postgres/loader';
import { PermanentError } from '../src/errors';
import { PostgresSource, Resource } from '../src/inputs';
import { derivedName, MAX_IDENTIFIER_BYTES } from '../src/schema/identifiers';
import { describeSource, extractPostgres } from '../src/sources/postgres';
import { adminUrl, requireEnv, uniqueName } from './helpers';
import { LOADER_ROLE, SOURCE_ROLE } from './roles';

const discard = () => new Writable({ write: (_chunk, _encoding, done) => done() });

describe('source.query is one read-only statement', () => {
  const schema = uniqueName('hostile_sql');
  let db: pg.Pool;
  before(async () => {
    db = new pg.Pool({ connectionString: adminUrl(), max: 2 });
    await db.query(`create schema ${schema}; create table ${schema}.t (id int); insert into ${schema}.t values (1); create sequence ${schema}.s`);
  });
  after(async () => {
    await db.query(`drop schema ${schema} cascade`);
    await db.end();
  });
  const tableSurvives = async () => assert.equal((await db.query(`select count(*)::int as n from ${schema}.t`)).rows[0].n, 1);

  // As the superuser, on purpose: the statement and transaction checks hold even where privileges would not.
  for (const query of [
    `select 1; commit; drop table ${schema}.t`,
    `select 1) as q; commit; drop table ${schema}.t; select * from (select 1`,
    `select 1 as x) as q limit 0; commit; drop table ${schema}.t; --`,
    `with d as (delete from ${schema}.t returning *) select * from d`,
  ]) {
    test(`cannot escape: ${query}`, async () => {
      const source = PostgresSource.parse({ kind: 'postgres', connection: 'X', query });
      await assert.rejects(describeSource(adminUrl(), source));
      await tableSurvives();
    });
  }

  test('the copy runs read-only: a query that would write fails and writes nothing', async () => {
    const source = PostgresSource.parse({ kind: 'postgres', connection: 'X', query: `select nextval('${schema}.s') as n` });
    const data = await extractPostgres(adminUrl(), source);
    assert.equal(data.kind, 'copy');
    if (data.kind !== 'copy') return;
    await assert.rejects(data.copyTo(discard()), /read-only transaction/);
    assert.equal((await db.query(`select last_value, is_called from ${schema}.s`)).rows[0].is_called, false);
  });

  test('a plain query still loads', async () => {
    const data = await extractPostgres(adminUrl(), PostgresSource.parse({ kind: 'postgres', connection: 'X', query: `select id from ${schema}.t where id = 1` }));
    assert.deepEqual(data.kind === 'copy' ? data.columns.map((c) => c.name) : [], ['id']);
  });
});

describe('declared column types are judged by the destination', () => {
  const schema = uniqueName('hostile_types');
  let db: pg.Pool;
  before(async () => {
    db = new pg.Pool({ connectionString: adminUrl(), max: 2 });
    await db.query(`create schema ${schema}; create table ${schema}.t (id bigint primary key)`);
  });
  after(async () => {
    await db.query(`drop schema ${schema} cascade`);
    await db.end();
  });

  for (const type of [`bigint references ${'t'}`, 'int generated always as identity', 'text default session_user', 'no_such_type']) {
    test(`refused before any DDL: ${type}`, async () => {
      const resource = Resource.parse({ name: 'declared', columns: { x: type } });
      await assert.rejects(
        loadResource({ url: adminUrl(), schema, table: 'declared', resource, loadId: `l-${type}`, data: { kind: 'rows', rows: [{ x: '1' }] as never } }),
        (err: Error) => {
          assert.ok(err instanceof PermanentError);
          assert.match(err.message, /resource\.columns\.x: .* is not a type of the destination database/);
          return true;
        },
      );
      const created = await db.query(`select to_regclass($1) as t`, [`${schema}.declared`]);
      assert.equal(created.rows[0].t, null, 'no table was created');
    });
  }

  test('plain type names still work', async () => {
    const resource = Resource.parse({ name: 'ok', columns: { a: 'numeric(12,2)', b: 'text[]', c: 'timestamptz' } });
    const r = await loadResource({ url: adminUrl(), schema, table: 'ok', resource, loadId: 'ok-1', data: { kind: 'rows', rows: [{ a: '1.5', b: '{x}', c: '2024-01-01T00:00:00Z' }] as never } });
    assert.equal(r.rowsLoaded, 1);
  });
});

describe('names derived from table names', () => {
  test('are cut by bytes and carry a hash of the whole table name', () => {
    const long = 'ü'.repeat(40);
    const a = derivedName(`${long}_a`, 'sluice_pk');
    const b = derivedName(`${long}_b`, 'sluice_pk');
    assert.ok(Buffer.byteLength(a) <= MAX_IDENTIFIER_BYTES, a);
    assert.notEqual(a, b);
    assert.equal(derivedName(`${long}_a`, 'sluice_pk'), a, 'stable');
  });

  test('two tables that share a long multi-byte prefix both get their merge key index', async () => {
    const schema = uniqueName('hostile_names');
    const db = new pg.Pool({ connectionString: adminUrl(), max: 2 });
    try {
      const prefix = 'ü'.repeat(20);
      await db.query(`create schema ${schema}`);
      for (const table of [`${prefix}_a`, `${prefix}_b`]) {
        await db.query(`create table ${schema}."${table}" (id bigint, v text, _sluice_load_id text)`);
        const resource = Resource.parse({ name: table, writeDisposition: 'merge', primaryKey: ['id'] });
        const r = await loadResource({ url: adminUrl(), schema, table, resource, loadId: `m-${table}`, data: { kind: 'rows', rows: [{ id: 1, v: 'x' }] as never } });
        assert.equal(r.rowsLoaded, 1);
      }
      const indexes = await db.query(`select count(*)::int as n from pg_indexes where schemaname = $1 and tablename like $2`, [schema, `${prefix}%`]);
      assert.equal(indexes.rows[0].n, 2);
    } finally {
      await db.query(`drop schema if exists ${schema} cascade`);
      await db.end();
    }
  });
});

describe('least privilege: the roles the suite loads as', () => {
  test('the worker reads as a SELECT-only source role and loads as a non-superuser that owns only its schemas', async () => {
    const sourceUrl = process.env.SLUICE_TEST_SOURCE_URL;
    const loaderUrl = process.env.SLUICE_TEST_LOADER_URL;
    assert.ok(sourceUrl && loaderUrl, 'test/run.ts creates the roles');
    const admin = new pg.Client({ connectionString: adminUrl() });
    const source = new pg.Client({ connectionString: sourceUrl });
    const loader = new pg.Client({ connectionString: loaderUrl });
    await Promise.all([admin.connect(), source.connect(), loader.connect()]);
    const src = uniqueName('lp_src');
    const own = uniqueName('lp_dest');
    try {
      const roles = await admin.query(`select rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication from pg_roles where rolname in ($1, $2) order by rolname`, [LOADER_ROLE, SOURCE_ROLE]);
      assert.deepEqual(roles.rows.map((r) => [r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb]), [[LOADER_ROLE, false, false, false], [SOURCE_ROLE, false, false, false]]);
      await admin.query(`create schema ${src}; grant usage on schema ${src} to ${SOURCE_ROLE}; create table ${src}.t (id int); grant select on ${src}.t to ${SOURCE_ROLE}; insert into ${src}.t values (1)`);
      assert.equal((await source.query(`select count(*)::int as n from ${src}.t`)).rows[0].n, 1, 'the source role reads');
      await assert.rejects(source.query(`insert into ${src}.t values (2)`), /permission denied/);
      await assert.rejects(source.query(`create table ${src}.u (id int)`), /permission denied/);
      await assert.rejects(source.query(`drop table ${src}.t`), /must be owner/);
      await assert.rejects(loader.query(`select * from ${src}.t`), /permission denied/, 'the loader cannot read sources');
      await assert.rejects(loader.query(`create table ${src}.v (id int)`), /permission denied/, 'nor write outside its schemas');
      await assert.rejects(loader.query(`create table public.v (id int)`), /permission denied/);
      await loader.query(`create schema ${own}; create table ${own}.x (id int); drop table ${own}.x`);
      assert.equal(requireEnv('DATABASE_URL').length > 0, true);
    } finally {
      await admin.query(`drop schema if exists ${src} cascade; drop schema if exists ${own} cascade`).catch(() => undefined);
      await Promise.all([admin.end(), source.end(), loader.end()]);
    }
  });
});
