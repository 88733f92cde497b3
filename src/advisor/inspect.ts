/**
 * Gathers the facts the advisor decides on from a PostgreSQL source's catalog: size, primary
 * key, timestamp columns and their indexes, and wal_level. Cheap on any table size: the row
 * count is pg_class's estimate, counted only when the table is small or never analyzed (and
 * then only up to a cap); column ranges are read only where an index makes it instant.
 */
import type pg from 'pg';
import { PermanentError } from '../errors';
import { qualifiedName, quoteIdent, splitQualified } from '../schema/identifiers';
import { isTimestampType, SMALL_TABLE_ROWS, timestampRole, type TableFacts, type TimestampColumn } from './recommend';

export interface InspectOptions {
  smallTableRows?: number;
}

export async function inspectTable(client: pg.ClientBase, tableName: string, options: InspectOptions = {}): Promise<TableFacts> {
  const small = options.smallTableRows ?? SMALL_TABLE_ROWS;
  const { schema, table } = splitQualified(tableName);
  const regclass = schema ? qualifiedName(schema, table) : quoteIdent(table);
  await client.query(`set timezone = 'UTC'`);

  const found = await client.query<{ oid: number; schema: string; table: string; relkind: string; reltuples: number }>(
    `select c.oid::int as oid, n.nspname as schema, c.relname as table, c.relkind::text as relkind,
            case when c.relkind = 'p'
                 then coalesce((select sum(greatest(p.reltuples, 0)) from pg_inherits i join pg_class p on p.oid = i.inhrelid where i.inhparent = c.oid), -1)
                 else c.reltuples end::float8 as reltuples
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = to_regclass($1)`,
    [regclass],
  );
  const rel = found.rows[0];
  if (!rel) {
    throw new PermanentError(`table ${tableName} does not exist (or is not visible to this user)`, 'give --table as schema.table, like public.orders');
  }
  const relation = qualifiedName(rel.schema, rel.table);

  // Never analyzed (-1), or small enough that counting is cheap and more exact than the estimate.
  let rows = rel.reltuples;
  let rowsFrom: TableFacts['rowsFrom'] = 'estimate';
  if (rel.reltuples < 0 || rel.reltuples < small * 2) {
    const cap = Math.max(small * 10, 1_000_000);
    const counted = await client.query<{ n: string }>(`select count(*) as n from (select 1 from ${relation} limit $1) s`, [cap]);
    rows = Number(counted.rows[0]!.n);
    rowsFrom = rows >= cap ? 'atLeast' : 'count';
  }

  const pk = await client.query<{ name: string }>(
    `select a.attname as name
       from pg_index i
       cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
       join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
      where i.indrelid = $1 and i.indisprimary
      order by k.ord`,
    [rel.oid],
  );

  const columns = await client.query<{ name: string; type: string; index: string | null }>(
    `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
            (select ic.relname from pg_index i join pg_class ic on ic.oid = i.indexrelid
              where i.indrelid = a.attrelid and i.indkey[0] = a.attnum and i.indpred is null
              order by ic.relname limit 1) as index
       from pg_attribute a
      where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
      order by a.attnum`,
    [rel.oid],
  );
  const timestampColumns: TimestampColumn[] = [];
  for (const c of columns.rows) {
    if (!isTimestampType(c.type)) continue;
    const column: TimestampColumn = { name: c.name, type: c.type, role: timestampRole(c.name), leadingIndex: c.index };
    if (c.index || rows < small * 10) {
      const range = await client.query<{ min: string | null; max: string | null }>(
        `select min(${quoteIdent(c.name)})::date::text as min, max(${quoteIdent(c.name)})::date::text as max from ${relation}`,
      );
      column.minDay = range.rows[0]?.min ?? null;
      column.maxDay = range.rows[0]?.max ?? null;
    }
    timestampColumns.push(column);
  }

  const wal = await client.query<{ wal_level: string }>(`select current_setting('wal_level') as wal_level`);
  return {
    schema: rel.schema,
    table: rel.table,
    rows,
    rowsFrom,
    primaryKey: pk.rows.map((r) => r.name),
    timestampColumns,
    walLevel: wal.rows[0]!.wal_level,
  };
}
