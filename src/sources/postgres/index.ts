/**
 * PostgreSQL tables (or queries) as a source. Extraction streams the source's own COPY text
 * straight into the destination's staging table: no row becomes a JavaScript object, types
 * stay exact (numeric(12,2) stays numeric(12,2)), and memory stays flat however large the
 * partition.
 */
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { PermanentError } from '../../errors';
import type { PostgresSource } from '../../inputs';
import { qualifiedName, quoteIdent, splitQualified } from '../../schema/identifiers';
import { literal } from '../../postgres/sql';
import { clientConfig, sessionSettingsSql } from '../../postgres/connection';
import type { Extracted, SourceColumn } from '../types';

/** Object ids below this are PostgreSQL's own (built-in types), the same on every server. */
const FIRST_NORMAL_OID = 16384;

/**
 * Session settings that make COPY text portable between servers: UTC, ISO dates, exact floats;
 * and every transaction read-only, so even a statement that got past the checks below cannot write.
 */
export const PORTABLE_SESSION = `set timezone = 'UTC'; set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'; set extra_float_digits = 3; set default_transaction_read_only = on`;

/**
 * A query sent over the extended protocol, whose Parse step takes exactly one statement:
 * "select 1; commit; drop table t" is refused by the server itself ("cannot insert multiple
 * commands into a prepared statement") instead of running as three. Everything that carries
 * source.query uses it; node-postgres would otherwise send a query without parameters as a
 * simple-protocol string, which runs any number of statements.
 */
export function oneStatement(text: string, values: unknown[] = []): pg.QueryConfig {
  return { text, values, queryMode: 'extended' } as pg.QueryConfig;
}

/**
 * COPY goes over the simple protocol (pg-copy-streams), so the SELECT inside it is first parsed
 * on its own over the extended protocol: only one statement gets as far as COPY.
 */
export async function checkOneStatement(client: pg.Client, select: string): Promise<void> {
  await client.query(oneStatement(`select from (${select}) as sluice_one_statement limit 0`));
}

export interface SourceFilter {
  /** rows with start <= column < end */
  range?: { column: string; start: string; end: string };
  /** rows strictly after (value, tiebreak) in (column, tiebreak...) order */
  after?: { column: string; value: unknown };
}

/** The source as a FROM item: its table, or its query as a subquery. */
export function relation(source: PostgresSource): string {
  if (source.query) return `(${source.query}) as q`;
  const { schema, table } = splitQualified(source.table!);
  return schema ? qualifiedName(schema, table) : quoteIdent(table);
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(clientConfig(url, 'sluice-extract'));
  await client.connect();
  try {
    await client.query(`${PORTABLE_SESSION}; ${sessionSettingsSql()}`);
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Column names and exact types of the source relation, without reading any rows. */
export async function describeSource(url: string, source: PostgresSource): Promise<SourceColumn[]> {
  return withClient(url, async (client) => {
    try {
      // Read-only and one statement (see oneStatement): describing a query runs it as far as planning.
      await client.query('begin read only');
      const r = await client.query({ ...oneStatement(`select * from ${relation(source)} limit 0`), rowMode: 'array' });
      const oids = r.fields.map((f) => f.dataTypeID);
      const mods = r.fields.map((f) => f.dataTypeModifier);
      const types = await client.query<{ i: number; type: string }>(
        `select i, format_type(t.oid, m) as type
           from unnest($1::oid[], $2::int[]) with ordinality as x(oid, m, i) join pg_type t on t.oid = x.oid`,
        [oids, mods],
      );
      const byIndex = new Map(types.rows.map((t) => [Number(t.i), t.type]));
      await client.query('rollback');
      return r.fields.map((f, i) => {
        const type = byIndex.get(i + 1);
        return { name: f.name, type: type ?? 'text', ...(type !== undefined && f.dataTypeID < FIRST_NORMAL_OID ? { builtin: true } : {}) };
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '42P01' || code === '42601' || code === '3F000') {
        throw new PermanentError(
          `source ${source.table ? `table ${source.table}` : 'query'} cannot be read: ${(err as Error).message}`,
          'check source.table (schema-qualified, like public.orders) or source.query',
        );
      }
      throw err;
    }
  });
}

export function selectSql(source: PostgresSource, columns: SourceColumn[], filter: SourceFilter = {}): string {
  const where: string[] = [];
  if (filter.range) {
    const c = quoteIdent(filter.range.column);
    where.push(`${c} >= ${literal(filter.range.start)}::timestamptz and ${c} < ${literal(filter.range.end)}::timestamptz`);
  }
  const cols = columns.map((c) => quoteIdent(c.name)).join(', ');
  return `select ${cols} from ${relation(source)}${where.length ? ` where ${where.join(' and ')}` : ''}`;
}

/** The relation's unique indexes ($1) without predicate or expressions whose columns are all NOT NULL. */
export function uniqueKeysSql(): string {
  return `select array_agg(a.attname::text order by k.n) as columns
    from pg_index i cross join lateral unnest(i.indkey::int2[]) with ordinality as k(attnum, n)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = to_regclass($1) and i.indisunique and i.indpred is null and i.indexprs is null
    group by i.indexrelid
    having bool_and(a.attnotnull)`;
}

/** A partition (or the whole relation) as COPY text for the loader's fast path. */
export async function extractPostgres(url: string, source: PostgresSource, filter: SourceFilter = {}): Promise<Extracted> {
  const columns = await describeSource(url, source);
  if (filter.range && !columns.some((c) => c.name === filter.range!.column)) {
    throw new PermanentError(
      `partition column "${filter.range.column}" is not a column of ${source.table ?? 'the source query'} (columns: ${columns.map((c) => c.name).join(', ')})`,
      'set partitionColumn to a date or timestamp column of the source',
    );
  }
  const query = selectSql(source, columns, filter);
  return {
    kind: 'copy',
    columns,
    // Binary COPY names element types by OID in arrays and records: only built-in types are portable.
    binary: columns.length > 0 && columns.every((c) => c.builtin),
    // A query may join or repeat rows: only a table's own constraints say a key is unique.
    uniqueKeys: async () => (source.table ? withClient(url, async (client) => (await client.query<{ columns: string[] }>(uniqueKeysSql(), [relation(source)])).rows.map((r) => r.columns)) : []),
    copyTo: (sink: Writable, format = 'text') =>
      withClient(url, async (client) => {
        // REPEATABLE READ: one consistent snapshot even if the source changes mid-copy.
        await client.query('begin isolation level repeatable read read only');
        await checkOneStatement(client, query);
        const out = client.query(copyTo(`copy (${query}) to stdout${format === 'binary' ? ' (format binary)' : ''}`));
        await pipeline(out, sink);
        await client.query('commit');
      }),
  };
}
