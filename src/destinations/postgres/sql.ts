/**
 * SQL text for the PostgreSQL destination. Pure: identifiers go through quoteIdent, values
 * are bind parameters, and type names come from the catalog (format_type) or from declared
 * types that passed the input schema's type-name pattern.
 */
import { literal, primaryKeySql } from '../../postgres/sql';
import { qualifiedName, quoteIdent } from '../../schema/identifiers';

export { literal, primaryKeySql };

export const LOAD_ID_COLUMN = '_sluice_load_id';
/** Staging bookkeeping columns: arrival order (last one wins on merge), where the row came from, and an extractor's reject reason. */
export const SEQ = '_sluice_seq';
export const SRC = '_sluice_src';
export const EXTRACT_REJECT = '_sluice_reject';
export const STAGING_TABLE = '_sluice_stage';

export interface TargetColumn {
  name: string;
  type: string;
}

/** Every relation metadataDdl creates: when all exist, nothing needs creating. */
export const METADATA_OBJECTS = [
  '_sluice_loads',
  '_sluice_loads_resource_idx',
  '_sluice_state',
  '_sluice_rejects',
  '_sluice_rejects_load_idx',
  '_sluice_file_keys',
  '_sluice_file_keys_file_idx',
];

/** Columns metadataDdl adds to tables that earlier versions created without them: [table, column]. */
export const METADATA_COLUMNS: [string, string][] = [['_sluice_file_keys', 'table_name']];

/** Which loaded file provides which primary key, for files loaded with merge (see fileKeysSql). */
export const FILE_KEYS_TABLE = '_sluice_file_keys';
/** A changed file's keys before this load, for the length of the load's transaction. */
const OLD_FILE_KEYS = '_sluice_old_file_keys';

export function metadataDdl(schema: string): string[] {
  const q = (t: string) => qualifiedName(schema, t);
  return [
    `create schema if not exists ${quoteIdent(schema)}`,
    `create table if not exists ${q('_sluice_loads')} (
      load_id text primary key,
      workflow_id text,
      run_id text,
      resource text not null,
      table_name text,
      partition text,
      write_disposition text,
      status text not null,
      rows_loaded bigint not null default 0,
      rows_rejected bigint not null default 0,
      started_at timestamptz not null default now(),
      finished_at timestamptz,
      error text,
      hint text,
      attempt integer
    )`,
    `create index if not exists ${quoteIdent('_sluice_loads_resource_idx')} on ${q('_sluice_loads')} (resource, started_at desc)`,
    `create table if not exists ${q('_sluice_state')} (
      resource text primary key,
      state jsonb not null,
      updated_at timestamptz not null default now()
    )`,
    `create table if not exists ${q('_sluice_rejects')} (
      load_id text not null,
      resource text not null,
      "row" jsonb not null,
      reason text not null,
      source text,
      rejected_at timestamptz not null default now()
    )`,
    `create index if not exists ${quoteIdent('_sluice_rejects_load_idx')} on ${q('_sluice_rejects')} (load_id)`,
    // One row per (resource, key, file): "does any other file still provide this key" is a primary-key probe.
    `create table if not exists ${q(FILE_KEYS_TABLE)} (
      resource text not null,
      key text[] not null,
      file text not null,
      primary key (resource, key, file)
    )`,
    `create index if not exists ${quoteIdent('_sluice_file_keys_file_idx')} on ${q(FILE_KEYS_TABLE)} (resource, file)`,
    // The table the keys are in, so that a load that empties the table (replace, a full refresh)
    // drops the provenance too; rows recorded before this column existed have none.
    `alter table ${q(FILE_KEYS_TABLE)} add column if not exists table_name text`,
  ];
}

/** Staging of all-text columns (names), or of typed ones (a binary COPY of a PostgreSQL source). */
export function createStagingSql(columns: (string | TargetColumn)[]): string {
  const cols = columns.map((c) => (typeof c === 'string' ? `${quoteIdent(c)} text` : `${quoteIdent(c.name)} ${c.type}`));
  return `create temp table ${quoteIdent(STAGING_TABLE)} (
    ${quoteIdent(SEQ)} bigint generated always as identity,
    ${quoteIdent(SRC)} text,
    ${quoteIdent(EXTRACT_REJECT)} text${cols.length ? ',\n    ' + cols.join(',\n    ') : ''}
  ) on commit drop`;
}

export function addStagingColumnSql(column: string): string {
  return `alter table ${quoteIdent(STAGING_TABLE)} add column ${quoteIdent(column)} text`;
}

export function copyIntoStagingSql(columns: string[]): string {
  const cols = [SRC, EXTRACT_REJECT, ...columns].map(quoteIdent).join(', ');
  return `copy ${quoteIdent(STAGING_TABLE)} (${cols}) from stdin`;
}

export function createTableSql(schema: string, table: string, columns: TargetColumn[], primaryKey: string[] | undefined): string {
  const defs = columns.map((c) => `${quoteIdent(c.name)} ${c.type}`);
  defs.push(`${quoteIdent(LOAD_ID_COLUMN)} text not null`);
  if (primaryKey?.length) defs.push(`primary key (${primaryKey.map(quoteIdent).join(', ')})`);
  return `create table if not exists ${qualifiedName(schema, table)} (\n  ${defs.join(',\n  ')}\n)`;
}

/** The index a backfill partition's range delete (deleteRangeSql) uses, on tables sluice creates. */
export function createPartitionIndexSql(schema: string, table: string, column: string): string {
  return `create index if not exists ${quoteIdent(`${table.slice(0, 36)}_${column.slice(0, 16)}_sluice_idx`)} on ${qualifiedName(schema, table)} (${quoteIdent(column)})`;
}

export function addColumnSql(schema: string, table: string, column: TargetColumn): string {
  return `alter table ${qualifiedName(schema, table)} add column if not exists ${quoteIdent(column.name)} ${column.type}`;
}

export function widenColumnSql(schema: string, table: string, column: TargetColumn): string {
  const c = quoteIdent(column.name);
  return `alter table ${qualifiedName(schema, table)} alter column ${c} type ${column.type} using ${c}::${column.type}`;
}

/**
 * One reason per staged row, or null when the row is good: the extractor's own verdict first,
 * then missing key columns, then the first value its column's type cannot parse.
 * pg_input_is_valid (PostgreSQL 16+) asks the type's own input function, so a value is
 * accepted exactly when the final cast will accept it.
 */
export function rejectReasonSql(checks: { keyColumns: string[]; typed: TargetColumn[]; nonNull?: string[] }): string {
  const whens: string[] = [`when s.${quoteIdent(EXTRACT_REJECT)} is not null then s.${quoteIdent(EXTRACT_REJECT)}`];
  for (const key of checks.keyColumns) {
    whens.push(`when s.${quoteIdent(key)} is null then ${literal(`primary key column "${key}" is missing`)}`);
  }
  for (const column of checks.typed) {
    const c = `s.${quoteIdent(column.name)}`;
    const type = literal(column.type);
    whens.push(
      `when ${c} is not null and not pg_input_is_valid(${c}, ${type}) then ` +
        `${literal(`column "${column.name}" (${column.type}): `)} || (pg_input_error_info(${c}, ${type})).message`,
    );
  }
  return `case ${whens.join('\n  ')} end`;
}

/**
 * Moves rejected rows from staging to _sluice_rejects in one statement and one scan of staging
 * (no self-join, so it needs no statistics); returns their count as `n`. The reason is
 * evaluated for every row in WHERE and again only for the rejected ones in RETURNING.
 */
export function moveRejectsSql(schema: string, reasonSql: string): string {
  const stage = quoteIdent(STAGING_TABLE);
  return `with gone as (
    delete from ${stage} s where (${reasonSql}) is not null
    returning s.*, ${reasonSql} as reason
  ), kept as (
    insert into ${qualifiedName(schema, '_sluice_rejects')} (load_id, resource, "row", reason, source)
    select $1, $2, to_jsonb(gone) - ${literal(SEQ)} - ${literal(SRC)} - ${literal(EXTRACT_REJECT)} - 'reason', gone.reason, gone.${quoteIdent(SRC)}
    from gone
    returning 1
  )
  select count(*)::bigint as n from kept`;
}

function castList(columns: TargetColumn[], alias: string): string {
  return columns.map((c) => `${alias}.${quoteIdent(c.name)}::${c.type}`).join(', ');
}

export interface InsertPlan {
  schema: string;
  table: string;
  /** Columns present in staging, with their target types. */
  columns: TargetColumn[];
  primaryKey?: string[];
  hardDelete?: string;
}

export function appendSql(p: InsertPlan): string {
  const cols = [...p.columns.map((c) => quoteIdent(c.name)), quoteIdent(LOAD_ID_COLUMN)].join(', ');
  // No ORDER BY: staging is scanned in arrival order anyway, and sorting a big load costs more than the insert.
  return `insert into ${qualifiedName(p.schema, p.table)} (${cols})
    select ${[castList(p.columns, 's'), '$1'].filter(Boolean).join(', ')} from ${quoteIdent(STAGING_TABLE)} s`;
}

/** Types without an equality operator: compared as text when deciding whether a merged row changed. */
const NO_EQUALITY = /^(json|xml|point|line|lseg|box|path|polygon|circle)(\[\])?$/;

function keyMatch(keys: string[], types: Map<string, string>, left: string, right: string, castLeft: boolean): string {
  return keys
    .map((k) => `${left}.${quoteIdent(k)}${castLeft ? `::${types.get(k)}` : ''} = ${right}.${quoteIdent(k)}::${types.get(k)}`)
    .join(' and ');
}

export interface MergeStatements {
  /** Deletes all but the last staged row of each key; its row count is the number of in-batch duplicates. */
  dedupe: string;
  /**
   * One MERGE ($1 = load id): with hardDelete, target rows whose latest staged row is flagged go;
   * rows whose values differ are updated (unchanged rows are not rewritten and keep their
   * _sluice_load_id); keys the target does not have yet are inserted.
   */
  merge: string;
}

/**
 * Merge as set operations the planner runs as hash joins, not one speculative insert per row:
 * drop in-batch duplicates (last one wins), then one MERGE joins staging to the target once for
 * deletes, updates and inserts. The per-table lock taken by the loader keeps other sluice loads
 * of the table out.
 */
export function mergeSql(p: InsertPlan & { primaryKey: string[] }): MergeStatements {
  const target = qualifiedName(p.schema, p.table);
  const stage = quoteIdent(STAGING_TABLE);
  const types = new Map(p.columns.map((c) => [c.name, c.type]));
  const flagged = p.hardDelete ? `l.${quoteIdent(p.hardDelete)}::boolean is true` : undefined;
  const whens: string[] = [];
  if (flagged) whens.push(`when matched and ${flagged} then delete`);
  const values = p.columns.filter((c) => !p.primaryKey.includes(c.name));
  if (values.length) {
    const cmp = (alias: string, c: TargetColumn, cast: boolean) => {
      const v = `${alias}.${quoteIdent(c.name)}${cast ? `::${c.type}` : ''}`;
      return NO_EQUALITY.test(c.type) ? `(${v})::text` : v;
    };
    whens.push(`when matched and (${values.map((c) => cmp('t', c, false)).join(', ')}) is distinct from (${values.map((c) => cmp('l', c, true)).join(', ')})
      then update set ${[...values.map((c) => `${quoteIdent(c.name)} = l.${quoteIdent(c.name)}::${c.type}`), `${quoteIdent(LOAD_ID_COLUMN)} = $1`].join(', ')}`);
  }
  whens.push(`when not matched${flagged ? ` and not coalesce(${flagged}, false)` : ''}
      then insert (${[...p.columns.map((c) => quoteIdent(c.name)), quoteIdent(LOAD_ID_COLUMN)].join(', ')}) values (${castList(p.columns, 'l')}, $1)`);
  return {
    dedupe: `delete from ${stage} s using ${stage} d where ${keyMatch(p.primaryKey, types, 'd', 's', true)} and d.${quoteIdent(SEQ)} > s.${quoteIdent(SEQ)}`,
    merge: `merge into ${target} t using ${stage} l on ${keyMatch(p.primaryKey, types, 't', 'l', false)}\n    ${whens.join('\n    ')}`,
  };
}

/** delete-insert on a merge key: every destination row whose key occurs in the load is replaced. */
export function deleteByMergeKeySql(p: InsertPlan, mergeKey: string[]): string {
  const types = new Map(p.columns.map((c) => [c.name, c.type]));
  const tuple = (alias: string, cast: boolean) =>
    `(${mergeKey.map((k) => `${alias}${quoteIdent(k)}${cast ? `::${types.get(k)}` : ''}`).join(', ')})`;
  return `delete from ${qualifiedName(p.schema, p.table)} t where ${tuple('t.', false)} in (select distinct ${tuple('s.', true).slice(1, -1)} from ${quoteIdent(STAGING_TABLE)} s)`;
}

/** A partition's rows, for backfills that replace a date range: [$1, $2) on the column. */
export function deleteRangeSql(schema: string, table: string, column: string): string {
  const c = quoteIdent(column);
  return `delete from ${qualifiedName(schema, table)} where ${c} >= $1::timestamptz and ${c} < $2::timestamptz`;
}

/**
 * Supersedes a file loaded with merge by keys, not by load id: a key the file's previous version
 * provided stays while another loaded file still provides it (daily snapshot files that share
 * keys). Run in order, in the load's transaction, after rejects left staging; every statement is
 * a set operation ($1 = resource, $2 = file):
 * - `takeOld`: this file's recorded keys move into a temporary table;
 * - `legacyOld` ($3 = previous load id): for a file loaded before provenance existed, the keys of
 *   the rows its previous load wrote stand in;
 * - `recordNew`: the keys staged now become the file's (flagged hardDelete rows provide none);
 * - `deleteUnprovided`: target rows whose key the old version provided and no file provides now.
 * Keys are compared as the text of their column's type, and joined back to the target by typed
 * equality, so the delete probes the target's primary key.
 */
export function fileKeysSql(schema: string, table: string, keys: TargetColumn[], hardDelete?: string) {
  const provenance = qualifiedName(schema, FILE_KEYS_TABLE);
  const old = quoteIdent(OLD_FILE_KEYS);
  const target = qualifiedName(schema, table);
  const keyText = (alias: string, cast: boolean) => `array[${keys.map((k) => `(${alias}.${quoteIdent(k.name)}${cast ? `::${k.type}` : ''})::text`).join(', ')}]`;
  return {
    takeOld: [
      `create temp table ${old} (key text[] not null) on commit drop`,
      `with gone as (delete from ${provenance} where resource = $1 and file = $2 returning key) insert into ${old} select key from gone`,
    ],
    hasOld: `select exists (select 1 from ${old}) as found`,
    legacyOld: `insert into ${old} select ${keyText('t', false)} from ${target} t where t.${quoteIdent(LOAD_ID_COLUMN)} = $1`,
    recordNew: `insert into ${provenance} (resource, key, file, table_name)
      select distinct $1, ${keyText('s', true)}, $2, ${literal(table)} from ${quoteIdent(STAGING_TABLE)} s${hardDelete ? ` where s.${quoteIdent(hardDelete)}::boolean is not true` : ''}`,
    deleteUnprovided: `delete from ${target} t using (
        select distinct o.key from ${old} o where not exists (select 1 from ${provenance} p where p.resource = $1 and p.key = o.key)
      ) d where ${keys.map((k, i) => `t.${quoteIdent(k.name)} = (d.key[${i + 1}])::${k.type}`).join(' and ')}`,
    dropOld: `drop table ${old}`,
  };
}

/**
 * Key provenance of a table whose rows were all deleted ($1 = the resource loading it): what
 * files provided is gone with them, so no later file load may delete a key on its account.
 */
export function forgetFileKeysSql(schema: string, table: string): string {
  return `delete from ${qualifiedName(schema, FILE_KEYS_TABLE)} where table_name = ${literal(table)} or (table_name is null and resource = $1)`;
}

/** The rows one earlier load wrote ($1 = its load id). */
export function deleteLoadSql(schema: string, table: string): string {
  return `delete from ${qualifiedName(schema, table)} where ${quoteIdent(LOAD_ID_COLUMN)} = $1`;
}

/** Rows at or past a cursor value ($1, typed by the column), for incremental loads that read it again. */
export function deleteFromSql(schema: string, table: string, column: string): string {
  return `delete from ${qualifiedName(schema, table)} where ${quoteIdent(column)} >= $1`;
}

/** Every row, inside the load's transaction (TRUNCATE would take an exclusive lock and is not MVCC-safe). */
export function deleteAllSql(schema: string, table: string): string {
  return `delete from ${qualifiedName(schema, table)}`;
}

export function targetColumnsSql(): string {
  return `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type
    from pg_attribute a
    where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped
    order by a.attnum`;
}

