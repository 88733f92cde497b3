/**
 * The PostgreSQL load engine. Every workflow ends here.
 *
 * A load streams its rows through COPY into a temporary, all-text staging table, then in the
 * same transaction: evolves the target schema, moves bad rows to _sluice_rejects (PostgreSQL's
 * own input functions judge each value), writes the good rows with the write disposition, and
 * records the load in _sluice_loads (and any state in _sluice_state). A crash anywhere leaves
 * all of a load or none of it, and a load_id that committed once is never applied again.
 *
 * A PostgreSQL source whose types are the target's cannot fail a cast, so it skips the text
 * staging and the reject pass (choosePath): its binary COPY goes straight into the target in the
 * same transaction (loadDirect), or, for merges and key checks, into staging of its own types.
 *
 * Rows (files, registered sources) are held in memory first, up to HOLD_CHARS, while each
 * column's values are classified (narrowFit: forms PostgreSQL's input functions always accept).
 * When the load ends within that bound, without a rejected row, and every value fits the final
 * type of its column (after schema evolution), no value can fail: append and replace COPY the
 * held rows straight into the target, merge into staging of those types, and the reject pass is
 * skipped. Otherwise, or as soon as a row is rejected or the bound is passed, the rows go through
 * the all-text staging as they always did, PostgreSQL judging each value.
 */
import { Transform, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { errorMessage, hintFor, PermanentError, TransientError } from '../../errors';
import type { ContractMode, Resource } from '../../inputs';
import { ColumnNamer, derivedName, qualifiedName, quoteIdent } from '../../schema/identifiers';
import { canonicalType, copyField, fitsType, isWellFormed, narrowFit, newFit, unrepresentableInText, valueToText, widenByValue, widenType, type Fit } from '../../schema/types';
import { ROW_REJECT, ROW_SOURCE, type Extracted, type Row, type RowBatch } from '../../sources/types';
import { BinaryCopyTap, binaryTextField } from './binary-copy';
import { writeChunk } from './copy-text';
import { checkLease, type LeaseToken } from './lease';
import { getPool } from './pool';
import * as sql from './sql';

export interface LoadRequest {
  url: string;
  schema: string;
  /** Destination table, already normalized. */
  table: string;
  resource: Resource;
  loadId: string;
  workflowId?: string;
  runId?: string;
  partition?: string;
  attempt?: number;
  data: Extracted;
  /** What this load replaces, deleted in its transaction before it writes (see `Supersede`). */
  supersede?: Supersede;
  /** The resource's lease: checked in the load's own transaction, so a replaced run can never commit. */
  lease?: LeaseToken;
  /** Written to _sluice_state in the same transaction as the rows. */
  state?: { key: string; value: unknown };
  /** Called as rows stream in (activities heartbeat from here). */
  onProgress?: (rowsStaged: number) => void;
}

/**
 * How the rows reached the table. `direct`: a PostgreSQL source's binary COPY, or held rows
 * whose every value fits its column, straight into the target (no value can fail).
 * `typed-staging`: the same into a staging table of the final types, for merges and key checks.
 * `text-staging`: COPY text into an all-text staging table, then every value is checked by its
 * type's input function and bad rows go to _sluice_rejects.
 */
export type LoadPath = 'direct' | 'typed-staging' | 'text-staging';

/**
 * Rows an earlier load wrote that this one replaces:
 * - `range`: a backfill partition, the [start, end) range of `column`;
 * - `from`: an incremental load that reads a cursor value (or a lag window) again: rows whose
 *   `column` is at or past `value` (every row when `value` is null), even when the load is empty;
 * - `load`: the rows of one earlier load;
 * - `file`: a file's earlier version (`previousLoadId`; none for a file's first load). With merge
 *   and a primary key, only the keys it provided that no other loaded file still provides (the
 *   provenance in _sluice_file_keys, which every such load keeps, first loads too); otherwise
 *   the rows of its previous load.
 */
export type Supersede =
  | { kind: 'range'; column: string; start: string; end: string }
  | { kind: 'from'; column: string; value: string | null }
  /** A CDC snapshot chunk: rows whose key column is in [lo, hi); null is unbounded. */
  | { kind: 'keyRange'; column: string; lo: string | null; hi: string | null }
  | { kind: 'load'; loadId: string }
  | { kind: 'file'; file: string; previousLoadId?: string };

export interface LoadResult {
  loadId: string;
  /** Absent when the load had committed before (`alreadyLoaded`). */
  path?: LoadPath;
  rowsLoaded: number;
  rowsRejected: number;
  /** True when this load_id had already committed: nothing was written this time. */
  alreadyLoaded: boolean;
  schemaChanges: string[];
}

const CONTRACT_DEFAULTS = { tables: 'evolve', columns: 'evolve', dataTypes: 'discard_row' } as const;
const FLUSH_BYTES = 256 * 1024;

const metadataReady = new Map<string, Promise<void>>();

/**
 * Creates the schema and the _sluice_* tables once per process and destination. Concurrent
 * callers share one attempt, and metadata that exists already is seen from the catalog without
 * DDL: `CREATE INDEX IF NOT EXISTS` takes a SHARE lock even when the index exists, which would
 * deadlock against loads writing to these tables.
 */
export function ensureMetadata(url: string, schema: string): Promise<void> {
  const key = `${url}\u0000${schema}`;
  let ready = metadataReady.get(key);
  if (!ready) {
    ready = createMetadata(url, schema).catch((err: unknown) => {
      metadataReady.delete(key);
      throw err;
    });
    metadataReady.set(key, ready);
  }
  return ready;
}

async function createMetadata(url: string, schema: string): Promise<void> {
  const pool = getPool(url);
  const objects = sql.METADATA_OBJECTS.map((name) => qualifiedName(schema, name));
  const columns = sql.METADATA_COLUMNS.map(([table, column]) => [qualifiedName(schema, table), column] as const);
  // Every relation, and every column added since the first versions (metadata made by an earlier version gets them).
  const present = async (q: pg.Pool | pg.PoolClient) =>
    (
      await q.query<{ ok: boolean }>(
        `select (select count(to_regclass(o)) from unnest($1::text[]) o) = cardinality($1::text[])
            and (select count(*) from unnest($2::text[], $3::text[]) c(t, col)
                  join pg_attribute a on a.attrelid = to_regclass(c.t) and a.attname = c.col and not a.attisdropped) = cardinality($2::text[]) as ok`,
        [objects, columns.map((c) => c[0]), columns.map((c) => c[1])],
      )
    ).rows[0]!.ok;
  if (await present(pool)) return;
  const client = await pool.connect();
  try {
    await client.query('begin');
    // Concurrent first loads (other workers too) would race on CREATE ... IF NOT EXISTS.
    await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-metadata:${schema}`]);
    if (!(await present(client))) {
      for (const statement of sql.metadataDdl(schema)) await client.query(statement);
    }
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

export async function loadResource(req: LoadRequest): Promise<LoadResult> {
  await ensureMetadata(req.url, req.schema);
  const pool = getPool(req.url);
  await pool.query(
    `insert into ${qualifiedName(req.schema, '_sluice_loads')}
       (load_id, workflow_id, run_id, resource, table_name, partition, write_disposition, status, attempt)
     values ($1, $2, $3, $4, $5, $6, $7, 'running', $8)
     on conflict (load_id) do update set status = 'running', started_at = now(), finished_at = null,
       error = null, hint = null, attempt = excluded.attempt, run_id = excluded.run_id
     where ${qualifiedName(req.schema, '_sluice_loads')}.status <> 'completed'`,
    [req.loadId, req.workflowId ?? null, req.runId ?? null, req.resource.name, req.table, req.partition ?? null, req.resource.writeDisposition, req.attempt ?? null],
  );
  const client = await pool.connect();
  // A backend killed mid-load surfaces as an 'error' event on the client; the failing query
  // rejects too, so the event only needs a listener that keeps it from crashing the worker.
  const onClientError = () => undefined;
  client.on('error', onClientError);
  let broken = false;
  try {
    await checkDeclaredTypes(client, req.url, req.resource.columns);
    await client.query('begin');
    // Two attempts of one load (a retry racing a worker that is not dead after all) queue here.
    await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-load:${req.schema}:${req.loadId}`]);
    const done = await client.query<{ rows_loaded: string; rows_rejected: string }>(
      `select rows_loaded, rows_rejected from ${qualifiedName(req.schema, '_sluice_loads')} where load_id = $1 and status = 'completed'`,
      [req.loadId],
    );
    if (done.rows[0]) {
      await client.query('rollback');
      return {
        loadId: req.loadId,
        rowsLoaded: Number(done.rows[0].rows_loaded),
        rowsRejected: Number(done.rows[0].rows_rejected),
        alreadyLoaded: true,
        schemaChanges: [],
      };
    }
    const path = await choosePath(client, req);
    const result: LoadResult = path === 'direct' ? await loadDirect(client, req) : await finalize(client, req, await stage(client, req, path === 'typed-staging'));
    await client.query('commit');
    return { path, ...result };
  } catch (err) {
    broken = true;
    await client.query('rollback').catch(() => undefined);
    await recordFailure(req, err).catch(() => undefined);
    throw err;
  } finally {
    client.removeListener('error', onClientError);
    // A client that failed mid-COPY may be in an unknown protocol state: never reuse it.
    client.release(broken);
  }
}

async function recordFailure(req: LoadRequest, err: unknown): Promise<void> {
  await getPool(req.url).query(
    `update ${qualifiedName(req.schema, '_sluice_loads')}
       set status = 'failed', finished_at = now(), error = $2, hint = $3
     where load_id = $1 and status <> 'completed'`,
    [req.loadId, errorMessage(err), hintFor(err, { disposition: req.resource.writeDisposition }) ?? null],
  );
}

const knownTypes = new Set<string>();

/**
 * Declared column types go into DDL as written, so the destination itself judges each one
 * first: to_regtype() accepts a type name and nothing else, so "bigint references t",
 * "int generated always as identity" or "text default session_user" never reach CREATE TABLE.
 */
async function checkDeclaredTypes(client: pg.PoolClient, url: string, columns: Record<string, string> | undefined): Promise<void> {
  for (const [column, type] of Object.entries(columns ?? {})) {
    // A name the destination knew as a type once is not asked again (one query per type per process, not per load).
    const known = `${url}\u0000${type}`;
    if (knownTypes.has(known)) continue;
    let oid: unknown = null;
    try {
      oid = (await client.query<{ oid: unknown }>('select to_regtype($1)::oid as oid', [type])).rows[0]?.oid ?? null;
    } catch {
      // PostgreSQL 16 raises on text that is not a type name at all; later versions return null.
    }
    if (oid === null) {
      throw new PermanentError(
        `resource.columns.${column}: ${JSON.stringify(type)} is not a type of the destination database`,
        'declare a plain PostgreSQL type name such as bigint, numeric(12,2), timestamptz, jsonb or text[] (no constraints, defaults or identity clauses)',
      );
    }
    if (knownTypes.size < 10_000) knownTypes.add(known);
  }
}

/** What staging learned about the incoming columns. */
interface Staged {
  /** Normalized column names in staging order. */
  columns: string[];
  /** Type each column's values suggest (declared, from the source, or inferred). */
  incoming: Map<string, string | undefined>;
  /** Columns whose values are known to be valid for their incoming type (a PostgreSQL source's own COPY output). */
  exact: boolean;
  /** Staging columns have the incoming types (binary COPY), not text: the plan must not change any type. */
  typed?: boolean;
  /** The merge key is a unique, non-null key of the source: staging holds no duplicate keys. */
  uniqueKey?: boolean;
  rows: number;
  /** Rows still in memory, no staging table yet (the rows path, for a load of at most HOLD_CHARS). */
  held?: Held;
}

function declaredTypes(resource: Resource): Map<string, string> {
  const declared = new Map<string, string>();
  const namer = new ColumnNamer();
  for (const [raw, type] of Object.entries(resource.columns ?? {})) declared.set(namer.name(raw), canonicalType(type));
  return declared;
}

/** A PostgreSQL source's columns, normalized, with their exact types. */
function sourceColumns(source: Extract<Extracted, { kind: 'copy' }>): sql.TargetColumn[] {
  const namer = new ColumnNamer();
  return source.columns.map((c) => ({ name: namer.name(c.name), type: canonicalType(c.type) }));
}

/**
 * The binary paths need a PostgreSQL source of built-in types, no declared type that differs
 * from the source's, and a target whose columns have exactly the source's types (or no target
 * yet), so that no value can fail its column. Direct also needs a load that checks no key
 * (append or replace without primaryKey); the rest stage in binary. The table's columns are
 * read again under the table lock (assertStillExact) before anything is written.
 */
async function choosePath(client: pg.PoolClient, req: LoadRequest): Promise<LoadPath> {
  if (req.data.kind !== 'copy' || !req.data.binary) return 'text-staging';
  const declared = declaredTypes(req.resource);
  const columns = sourceColumns(req.data);
  if (columns.some((c) => declared.has(c.name) && declared.get(c.name) !== c.type)) return 'text-staging';
  if (new Set(columns.map((c) => c.name)).size !== columns.length) return 'text-staging';
  const existing = await targetColumns(client, req);
  if (!exactPlan(req, columns, existing)) return 'text-staging';
  // A file's merge keeps key provenance, which is written from staging.
  if (req.resource.writeDisposition === 'merge') {
    return req.supersede?.kind !== 'file' && (await mergeIsInsert(client, req, existing !== undefined)) ? 'direct' : 'typed-staging';
  }
  return req.resource.primaryKey?.length ? 'typed-staging' : 'direct';
}

/** Whether the merge key is one of the source's own unique, non-null keys: then a load holds no two rows of one key and none without one. */
async function uniqueSourceKey(req: LoadRequest): Promise<boolean> {
  const { resource, data } = req;
  if (data.kind !== 'copy' || !data.uniqueKeys || !resource.primaryKey?.length) return false;
  const namer = new ColumnNamer();
  const wanted = new Set(resource.primaryKey.map((k) => namer.name(k)));
  const sourceNames = new Map(sourceColumns(data).map((c, i) => [data.columns[i]!.name, c.name]));
  const same = (key: string[]) => key.length === wanted.size && key.every((k) => wanted.has(sourceNames.get(k) ?? ''));
  return (await data.uniqueKeys()).some(same);
}

/**
 * A merge into a table that does not exist yet or is empty, of a source whose merge key is unique
 * and never null, with no hardDelete or mergeKey: every row is an insert, so it takes the direct
 * path (loadDirect checks again under the table lock that the table is still empty).
 */
async function mergeIsInsert(client: pg.PoolClient, req: LoadRequest, exists: boolean): Promise<boolean> {
  if (req.resource.hardDelete || req.resource.mergeKey?.length || !(await uniqueSourceKey(req))) return false;
  return !exists || (await tableIsEmpty(client, req));
}

async function tableIsEmpty(client: pg.PoolClient, req: LoadRequest): Promise<boolean> {
  return (await client.query(`select 1 from ${qualifiedName(req.schema, req.table)} limit 1`)).rowCount === 0;
}

async function targetColumns(client: pg.PoolClient, req: LoadRequest): Promise<sql.TargetColumn[] | undefined> {
  const rows = (await client.query<sql.TargetColumn>(sql.targetColumnsSql(), [qualifiedName(req.schema, req.table)])).rows;
  return rows.length ? rows.filter((c) => c.name !== sql.LOAD_ID_COLUMN).map((c) => ({ name: c.name, type: canonicalType(c.type) })) : undefined;
}

/** The schema plan when every incoming column lands in a column of its own type, else undefined. */
function exactPlan(req: LoadRequest, columns: sql.TargetColumn[], existing: sql.TargetColumn[] | undefined): SchemaPlan | undefined {
  let plan: SchemaPlan;
  try {
    plan = planSchema({
      table: req.table,
      existing,
      incoming: new Map(columns.map((c) => [c.name, c.type])),
      declared: new Set(declaredTypes(req.resource).keys()),
      contract: { ...CONTRACT_DEFAULTS, ...req.resource.schemaContract },
    });
  } catch {
    return undefined; // a contract says no: the general path reports it
  }
  const exact = plan.widen.length === 0 && plan.dropped.length === 0 && plan.nullIfInvalid.length === 0 && plan.rejectIfPresent.length === 0;
  return exact && plan.columns.length === columns.length && plan.columns.every((c, i) => c.name === columns[i]!.name && c.type === columns[i]!.type) ? plan : undefined;
}

/** The load chose its path before taking the table lock; a change in between sends it round again (retryable). */
function tableChanged(table: string, what = 'the columns of'): Error {
  // A TransientError: a plain Error without a code would count as permanent (errors.ts) and fail the load for good.
  return new TransientError(`${what} "${table}" changed while this load was starting; the retry plans it again`);
}

/**
 * The direct path: the target is created (or gets new columns) if needed, what the load
 * supersedes is deleted, and the source's binary COPY goes straight into the target with the load
 * id appended to every row, all in the load's transaction. Loads into a table whose columns
 * already fit share the table lock, so backfill partitions COPY in parallel. A merge gets here
 * only when it is all inserts (mergeIsInsert): the table is created with its primary key.
 */
async function loadDirect(client: pg.PoolClient, req: LoadRequest): Promise<LoadResult> {
  const source = req.data as Extract<Extracted, { kind: 'copy' }>;
  const columns = sourceColumns(source);
  const before = await targetColumns(client, req);
  const merge = req.resource.writeDisposition === 'merge';
  const planned = exactPlan(req, columns, before);
  const shared = !merge && planned !== undefined && !planned.create && planned.add.length === 0;
  await lockTable(client, req, shared);
  const plan = exactPlan(req, columns, await targetColumns(client, req));
  if (!plan || (shared && (plan.create || plan.add.length))) throw tableChanged(req.table);
  const primaryKey = merge ? req.resource.primaryKey!.map((k) => new ColumnNamer().name(k)) : undefined;
  if (merge && !plan.create && !(await tableIsEmpty(client, req))) throw tableChanged(req.table, 'the rows of');
  await applySchemaPlan(client, req, plan, primaryKey);
  if (primaryKey && !plan.create) await ensureUniqueKey(client, req.schema, req.table, primaryKey);
  await deleteSuperseded(client, req, new ColumnNamer());
  const target = qualifiedName(req.schema, req.table);
  const sink = client.query(
    copyFrom(`copy ${target} (${[...columns.map((c) => c.name), sql.LOAD_ID_COLUMN].map(quoteIdent).join(', ')}) from stdin (format binary)`),
  );
  const tap = new BinaryCopyTap({ append: binaryTextField(req.loadId), onProgress: req.onProgress });
  await Promise.all([source.copyTo(tap, 'binary'), pipeline(tap, sink)]);
  req.onProgress?.(tap.rows);
  return record(client, req, { rowsLoaded: sink.rowCount, rowsRejected: 0, changes: plan.changes });
}

/**
 * Serializes sluice's schema changes and writes to one table: loads stage in parallel and
 * finish one at a time, so two loads never widen a column against each other. Direct loads
 * that change no schema share it.
 */
async function lockTable(client: pg.PoolClient, req: LoadRequest, shared = false): Promise<void> {
  await client.query(`select pg_advisory_xact_lock${shared ? '_shared' : ''}(hashtextextended($1, 0))`, [`sluice-table:${req.schema}.${req.table}`]);
}

/** Creates the table or adds its new columns; a table created for a backfill gets an index on the partition column. */
async function applySchemaPlan(client: pg.PoolClient, req: LoadRequest, plan: SchemaPlan, primaryKey: string[] | undefined): Promise<void> {
  const { schema, table } = req;
  if (plan.create) {
    await client.query(sql.createTableSql(schema, table, plan.columns, primaryKey));
    const partition = req.supersede?.kind === 'range' ? new ColumnNamer().name(req.supersede.column) : undefined;
    if (partition && plan.columns.some((c) => c.name === partition)) await client.query(sql.createPartitionIndexSql(schema, table, partition));
  }
  for (const column of plan.add) await client.query(sql.addColumnSql(schema, table, column));
  for (const column of plan.widen) await client.query(sql.widenColumnSql(schema, table, column));
}

async function stage(client: pg.PoolClient, req: LoadRequest, typed = false): Promise<Staged> {
  const declared = declaredTypes(req.resource);
  const namer = new ColumnNamer();

  if (req.data.kind === 'copy') {
    const source = req.data;
    const columns = source.columns.map((c) => namer.name(c.name));
    const incoming = new Map<string, string | undefined>(columns.map((name, i) => [name, declared.get(name) ?? canonicalType(source.columns[i]!.type)]));
    if (typed) {
      // Staging of the source's own types, filled by binary COPY: nothing to parse or cast.
      await client.query(sql.createStagingSql(sourceColumns(source)));
      const sink = client.query(copyFrom(`copy ${quoteIdent(sql.STAGING_TABLE)} (${columns.map(quoteIdent).join(', ')}) from stdin (format binary)`));
      const tap = new BinaryCopyTap({ onProgress: req.onProgress });
      await Promise.all([source.copyTo(tap, 'binary'), pipeline(tap, sink)]);
      req.onProgress?.(tap.rows);
      return { columns, incoming, exact: true, typed: true, uniqueKey: await uniqueSourceKey(req), rows: sink.rowCount };
    }
    await client.query(sql.createStagingSql(columns));
    const sink = client.query(copyFrom(`copy ${quoteIdent(sql.STAGING_TABLE)} (${columns.map(quoteIdent).join(', ')}) from stdin`));
    const counter = lineCounter(req.onProgress);
    // Both awaited together: if the source fails mid-copy, the COPY is aborted (CopyFail) and
    // neither rejection goes unobserved.
    await Promise.all([source.copyTo(counter), pipeline(counter, sink)]);
    // Declared types that differ from the source's must be checked value by value.
    return { columns, incoming, exact: declared.size === 0, rows: sink.rowCount };
  }

  const { rows, batches, textValues = false, columnTypes = {} } = req.data;
  const known = new Map<string, string>(declared);
  for (const [raw, type] of Object.entries(columnTypes)) {
    const name = namer.name(raw);
    if (!known.has(name)) known.set(name, canonicalType(type));
  }
  const columns: string[] = [];
  const indexOf = new Map<string, number>();
  const inferred: (string | undefined)[] = [];
  // Rows are held in memory (no staging yet) while they may still take the typed path (Held).
  let held: Held | undefined = { lines: [], sources: [], widths: [], chars: 0, fits: [], nulls: [] };

  let sinkError: Error | undefined;
  const openSink = (): Writable => {
    const stream = client.query(copyFrom(sql.copyIntoStagingSql(columns)));
    stream.on('error', (err: Error) => (sinkError ??= err));
    return stream;
  };
  const closeSink = async () => {
    if (!sink) return;
    sink.end();
    await finished(sink);
  };
  let sink: Writable | undefined;
  let buffer = '';
  let count = 0;
  const flush = async () => {
    if (sinkError) throw sinkError;
    if (buffer.length === 0 || !sink) return;
    const chunk = buffer;
    buffer = '';
    await writeChunk(sink, chunk);
    if (sinkError) throw sinkError;
  };
  const addColumn = async (name: string) => {
    if (held) {
      held.widths.push(held.lines.length, columns.length + 1);
      held.fits.push(newFit());
      // Rows held before this one have no value for it.
      held.nulls.push(held.lines.length > 0);
    } else {
      // COPY's column list is fixed, so a new column ends this COPY and starts another.
      await flush();
      await closeSink();
      await client.query(sql.addStagingColumnSql(name));
    }
    indexOf.set(name, columns.length);
    columns.push(name);
    inferred.push(undefined);
    if (!held) sink = openSink();
  };
  /** From held rows to text staging: created with every column so far, the held rows written first. */
  const spill = async () => {
    const rowsHeld = held!;
    held = undefined;
    await client.query(sql.createStagingSql(columns));
    sink = openSink();
    for (const line of heldLines(rowsHeld, columns.length, (i) => `${copyField(rowsHeld.sources[i] ?? null)}\t\\N${columns.length ? '\t' : ''}`, '')) {
      buffer += line;
      if (buffer.length >= FLUSH_BYTES) await flush();
    }
  };
  let heldReported = 0;
  /**
   * One staged row: held while the load may take the typed path, else into text staging. A
   * promise only when there is I/O to wait for (a spill, a flush): a promise per row costs, and
   * more so under the activity's async hooks.
   */
  const emit = (source: string | undefined, reject: string | undefined, line: string): Promise<void> | undefined => {
    count++;
    if (held) {
      if (reject === undefined && held.chars + line.length <= HOLD_CHARS) {
        held.lines.push(line);
        held.sources.push(source);
        // With what each row costs besides its text (its strings' headers, array slots).
        held.chars += line.length + (source?.length ?? 0) + 64;
        if (held.chars - heldReported >= FLUSH_BYTES) {
          heldReported = held.chars;
          req.onProgress?.(count);
        }
        return undefined;
      }
      return spill().then(() => emitStaged(source, reject, line));
    }
    return emitStaged(source, reject, line);
  };
  const emitStaged = (source: string | undefined, reject: string | undefined, line: string): Promise<void> | undefined => {
    buffer += `${copyField(source ?? null)}\t${copyField(reject ?? null)}${columns.length ? '\t' : ''}${line}\n`;
    if (buffer.length < FLUSH_BYTES) return undefined;
    return flush().then(() => req.onProgress?.(count));
  };
  /** A value staged in column `index` (text, not null): what the typed path needs to know of it. */
  const fitValue = (index: number, text: string) => {
    if (held) narrowFit(held.fits[index]!, text);
  };
  const nullValue = (index: number) => {
    if (held) held.nulls[index] = true;
  };

  const rawToName = new Map<string, string>();
  const nameOf = (raw: string) => {
    let name = rawToName.get(raw);
    if (name === undefined) {
      name = namer.name(raw);
      rawToName.set(raw, name);
    }
    return name;
  };
  const inferring = (index: number) => !known.has(columns[index]!);

  /** Stages one batch of value arrays (RowBatch): the rows path without an object per row. */
  const stageBatch = async (batch: RowBatch) => {
    const { values, sources, rejects } = batch;
    const names = batch.columns.map(nameOf);
    if (new Set(names).size !== names.length) {
      // Two raw columns meet in one (see ColumnNamer): the rows path knows what to do.
      for (const row of rowsOfBatch(batch)) await stageRow(row);
      return;
    }
    const at: number[] = [];
    for (const name of names) {
      let index = indexOf.get(name);
      if (index === undefined) {
        await addColumn(name);
        index = columns.length - 1;
      }
      at.push(index);
    }
    const infer = at.map(inferring);
    const inOrder = at.every((index, c) => index === c);
    for (let i = 0; i < values.length; i++) {
      const record = values[i]!;
      const extractorReject = rejects?.[i];
      let reject = extractorReject;
      let line = '';
      const fields: string[] | undefined = inOrder && record.length === columns.length ? undefined : new Array<string>(columns.length).fill('\\N');
      for (let c = 0; c < record.length; c++) {
        const value = record[c];
        let field = '\\N';
        if (value !== null && value !== undefined && !(textValues && value === '')) {
          const text = typeof value === 'string' ? value : valueToText(value)!;
          if (text.indexOf('\u0000') !== -1 || !isWellFormed(text)) {
            reject ??= `column "${names[c]}" ${unrepresentableInText(text)}`;
          } else {
            field = copyField(text);
            fitValue(at[c]!, text);
            // A row the extractor rejected keeps its values for _sluice_rejects but must not shape the table.
            if (infer[c] && extractorReject === undefined) inferred[at[c]!] = widenByValue(inferred[at[c]!], value, textValues);
          }
        }
        if (fields) fields[at[c]!] = field;
        else line += c === 0 ? field : `\t${field}`;
        if (field === '\\N') nullValue(at[c]!);
      }
      if (fields) {
        if (held) for (let k = 0; k < columns.length; k++) if (fields[k] === '\\N') nullValue(k);
        line = fields.join('\t');
      }
      const wait = emit(sources[i], reject, line);
      if (wait) await wait;
    }
  };

  const stageRow = async (row: Row) => {
    let reject = row[ROW_REJECT];
    const fields: string[] = new Array(columns.length).fill('\\N');
    const rawOf = new Map<string, string>();
    for (const raw in row) {
      let name = rawToName.get(raw);
      if (name === undefined) {
        name = namer.name(raw);
        rawToName.set(raw, name);
      }
      // "ID" and "id" share a column (see ColumnNamer): a row may fill it from one, not with two different values.
      const present = row[raw] !== null && row[raw] !== undefined && !(textValues && row[raw] === '');
      const other = present ? rawOf.get(name) : undefined;
      if (other !== undefined && fields[indexOf.get(name)!] !== copyField(valueToText(row[raw]))) {
        reject ??= `columns ${JSON.stringify(other)} and ${JSON.stringify(raw)} both map to column "${name}" and hold different values`;
      }
      if (present) rawOf.set(name, raw);
      let index = indexOf.get(name);
      if (index === undefined) {
        await addColumn(name);
        index = columns.length - 1;
        fields.push('\\N');
      }
      const value = row[raw];
      if (value === null || value === undefined || (textValues && value === '')) continue;
      const text = valueToText(value)!;
      const unrepresentable = unrepresentableInText(text);
      if (unrepresentable) {
        reject ??= `column "${name}" ${unrepresentable}`;
        continue;
      }
      fields[index] = copyField(text);
      fitValue(index, text);
      // A row the extractor rejected keeps its values for _sluice_rejects but must not shape the table.
      if (!known.has(name) && row[ROW_REJECT] === undefined) inferred[index] = widenByValue(inferred[index], value, textValues);
    }
    if (held) for (let k = 0; k < fields.length; k++) if (fields[k] === '\\N') nullValue(k);
    const wait = emit(row[ROW_SOURCE], reject, fields.join('\t'));
    if (wait) await wait;
  };

  try {
    if (batches) {
      for await (const batch of batches()) await stageBatch(batch);
    } else {
      for await (const row of rows) await stageRow(row);
    }
    // Declared columns absent from every row still belong in the table.
    for (const name of declared.keys()) if (!indexOf.has(name)) await addColumn(name);
    await flush();
    await closeSink();
  } catch (err) {
    // An open COPY holds the connection: abort it (CopyFail) so the rollback can run.
    if (sink) {
      sink.destroy(err instanceof Error ? err : new Error(String(err)));
      await finished(sink).catch(() => undefined);
    }
    throw err;
  }
  req.onProgress?.(count);
  const incoming = new Map<string, string | undefined>(columns.map((name, i) => [name, known.get(name) ?? inferred[i]]));
  return { columns, incoming, exact: false, rows: count, ...(held ? { held } : {}) };
}

/** Rows of a load held in memory until the load knows its columns' final types (see finalize). */
interface Held {
  /** Each row's staging fields (COPY text), as many as there were columns when it arrived. */
  lines: string[];
  /** Each row's ROW_SOURCE (held rows have no reject). */
  sources: (string | undefined)[];
  /** Pairs (first row, width): from that row on, rows have that many fields. */
  widths: number[];
  /** Characters held, bounded by HOLD_CHARS. */
  chars: number;
  /** Per column: the types every value fits, and whether any row has no value. */
  fits: Fit[];
  nulls: boolean[];
}

/** At most this much is held per load (a larger load is staged as text as it streams). */
const HOLD_CHARS = 4 * 1024 * 1024;

/** The held rows as COPY lines of `width` fields (missing ones null), each as prefix(row) + fields + suffix + newline. */
function* heldLines(held: Held, width: number, prefix: ((row: number) => string) | undefined, suffix: string): Generator<string> {
  const { lines, widths } = held;
  let next = 0;
  let pad = width === 0 ? '' : `\\N${'\t\\N'.repeat(width - 1)}`;
  for (let i = 0; i < lines.length; i++) {
    if (next < widths.length && widths[next] === i) {
      while (next < widths.length && widths[next] === i) next += 2;
      const have = widths[next - 1]!;
      pad = have >= width ? '' : '\t\\N'.repeat(width - have);
    }
    yield `${prefix ? prefix(i) : ''}${lines[i]}${pad}${suffix}\n`;
  }
}

/** A batch's rows as objects (RowBatch). */
function* rowsOfBatch({ columns, values, sources, rejects }: RowBatch): Generator<Row> {
  for (let i = 0; i < values.length; i++) {
    const row = Object.create(null) as Row;
    if (sources[i] !== undefined) row[ROW_SOURCE] = sources[i];
    if (rejects?.[i] !== undefined) row[ROW_REJECT] = rejects[i];
    values[i]!.forEach((value, c) => (row[columns[c]!] = value));
    yield row;
  }
}

/** Passes COPY text through, counting lines (rows) per chunk to report progress every 10,000. */
function lineCounter(onProgress?: (rows: number) => void): Transform {
  let lines = 0;
  let reported = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
      if (onProgress && lines - reported >= 10_000) {
        reported = lines;
        onProgress(lines);
      }
      done(null, chunk);
    },
  });
}

/** Decides how the incoming columns meet the target table, and says why in `changes`. */
export interface SchemaPlan {
  create: boolean;
  add: sql.TargetColumn[];
  widen: sql.TargetColumn[];
  /** Incoming columns dropped by a `discard_value` contract. */
  dropped: string[];
  /** Incoming columns whose non-null values reject their row (`discard_row` on new columns). */
  rejectIfPresent: string[];
  /** Columns whose unparseable values become null (`discard_value` on data types). */
  nullIfInvalid: string[];
  /** Final type of every column that will be written. */
  columns: sql.TargetColumn[];
  changes: string[];
}

export function planSchema(args: {
  table: string;
  existing: sql.TargetColumn[] | undefined;
  incoming: Map<string, string | undefined>;
  declared: Set<string>;
  contract: { tables: ContractMode; columns: ContractMode; dataTypes: ContractMode };
}): SchemaPlan {
  const { existing, incoming, contract, table } = args;
  const plan: SchemaPlan = { create: false, add: [], widen: [], dropped: [], rejectIfPresent: [], nullIfInvalid: [], columns: [], changes: [] };
  if (!existing) {
    if (contract.tables === 'freeze') {
      throw new PermanentError(
        `table "${table}" does not exist and schemaContract.tables is "freeze"`,
        'create the table first, or set schemaContract.tables to "evolve"',
      );
    }
    plan.create = true;
    for (const [name, type] of incoming) plan.columns.push({ name, type: type ?? 'text' });
    plan.changes.push(`created table ${table} (${plan.columns.map((c) => `${c.name} ${c.type}`).join(', ')})`);
    return plan;
  }
  const current = new Map(existing.map((c) => [c.name, c.type]));
  for (const [name, type] of incoming) {
    const have = current.get(name);
    if (have === undefined) {
      const newType = type ?? 'text';
      switch (contract.columns) {
        case 'freeze':
          throw new PermanentError(
            `new column "${name}" for table "${table}", whose schemaContract.columns is "freeze"`,
            'add the column to the table, or set schemaContract.columns to "evolve", "discard_row" or "discard_value"',
          );
        case 'discard_value':
          plan.dropped.push(name);
          continue;
        case 'discard_row':
          plan.rejectIfPresent.push(name);
          plan.dropped.push(name);
          continue;
        case 'evolve':
          plan.add.push({ name, type: newType });
          plan.columns.push({ name, type: newType });
          plan.changes.push(`added column ${name} ${newType}`);
          continue;
      }
    }
    let target = have;
    if (type !== undefined && !args.declared.has(name)) {
      const widened = widenType(baseType(have), type);
      const lossless = widened !== 'text' || baseType(have) === 'text';
      if (widened !== baseType(have)) {
        if (contract.dataTypes === 'freeze') {
          throw new PermanentError(
            `column "${name}" of "${table}" is ${have} but the load has ${type} values, and schemaContract.dataTypes is "freeze"`,
            `declare the column type in resource.columns, or set schemaContract.dataTypes to "discard_row"`,
          );
        }
        if (lossless || contract.dataTypes === 'evolve') {
          plan.widen.push({ name, type: widened });
          plan.changes.push(`widened column ${name} from ${have} to ${widened}`);
          target = widened;
        } else if (contract.dataTypes === 'discard_value') {
          plan.nullIfInvalid.push(name);
        }
      }
    }
    plan.columns.push({ name, type: target });
  }
  return plan;
}

/** numeric(12,2) -> numeric: modifiers narrow a type but do not move it in the lattice. */
function baseType(type: string): string {
  return canonicalType(type).replace(/\(.*?\)/, '');
}

async function finalize(client: pg.PoolClient, req: LoadRequest, staged: Staged): Promise<LoadResult & { path?: LoadPath }> {
  const { schema, table, resource } = req;
  await lockTable(client, req);
  const existing = await targetColumns(client, req);
  const namer = new ColumnNamer();
  const norm = (names: string[] | undefined) => names?.map((n) => namer.name(n));
  const primaryKey = norm(resource.primaryKey);
  const mergeKey = norm(resource.mergeKey);
  const hardDelete = resource.hardDelete ? namer.name(resource.hardDelete) : undefined;
  const declared = new Set(Object.keys(resource.columns ?? {}).map((n) => namer.name(n)));

  for (const key of [...(primaryKey ?? []), ...(mergeKey ?? [])]) {
    if (!staged.incoming.has(key)) {
      if (staged.rows === 0) staged.incoming.set(key, 'text');
      else throw new PermanentError(`key column "${key}" of resource "${resource.name}" is not in the data`, 'check resource.primaryKey / resource.mergeKey against the source column names');
    }
  }
  if (staged.rows === 0 && existing) {
    // Nothing to write: skip schema work, but what this load supersedes still goes (a partition
    // or table whose source became empty becomes empty too), and the load and its state are recorded.
    await deleteSuperseded(client, req, namer, { keys: keyColumns(primaryKey, existing), staged: false });
    return record(client, req, { rowsLoaded: 0, rowsRejected: 0, changes: [] });
  }

  const plan = planSchema({
    table,
    existing,
    incoming: staged.incoming,
    declared,
    contract: { ...CONTRACT_DEFAULTS, ...resource.schemaContract },
  });
  if (staged.typed && plan.columns.some((c) => staged.columns.includes(c.name) && c.type !== staged.incoming.get(c.name))) throw tableChanged(table);
  await applySchemaPlan(client, req, plan, resource.writeDisposition === 'merge' ? primaryKey : undefined);
  if (resource.writeDisposition === 'merge' && primaryKey && !plan.create) await ensureUniqueKey(client, schema, table, primaryKey);

  // Held rows whose every value fits its column's final type: no value can fail, so none is
  // rejected. Append and replace COPY them straight into the table; merge into a staging table
  // of those types (no casts, no reject pass). Anything else stages them as text, as they came.
  const held = staged.held;
  const fits = held !== undefined && heldFits(held, staged, plan, primaryKey);
  if (held && fits && resource.writeDisposition !== 'merge') {
    await deleteSuperseded(client, req, namer);
    const target = qualifiedName(schema, table);
    const rowsLoaded = held.lines.length
      ? await copyLines(
          client,
          `copy ${target} (${[...plan.columns.map((c) => c.name), sql.LOAD_ID_COLUMN].map(quoteIdent).join(', ')}) from stdin`,
          heldLines(held, plan.columns.length, undefined, `\t${copyField(req.loadId)}`),
        )
      : 0;
    return { ...(await record(client, req, { rowsLoaded, rowsRejected: 0, changes: plan.changes })), path: 'direct' };
  }
  if (held) {
    const columns = fits ? plan.columns : staged.columns;
    await client.query(sql.createStagingSql(columns));
    const names = columns.map((c) => (typeof c === 'string' ? c : c.name));
    if (held.lines.length) {
      await copyLines(
        client,
        fits ? `copy ${quoteIdent(sql.STAGING_TABLE)} (${names.map(quoteIdent).join(', ')}) from stdin` : sql.copyIntoStagingSql(names),
        heldLines(held, names.length, fits ? undefined : (i) => `${copyField(held.sources[i] ?? null)}\t\\N${names.length ? '\t' : ''}`, ''),
      );
    }
  }

  for (const name of plan.nullIfInvalid) {
    const type = plan.columns.find((c) => c.name === name)!.type;
    await client.query(
      `update ${quoteIdent(sql.STAGING_TABLE)} set ${quoteIdent(name)} = null where not pg_input_is_valid(${quoteIdent(name)}, $1)`,
      [type],
    );
  }
  const sourceTypes = staged.exact ? staged.incoming : new Map<string, string | undefined>();
  const typed = plan.columns.filter((c) => c.type !== 'text' && canonicalType(sourceTypes.get(c.name) ?? '') !== c.type);
  let reason = sql.rejectReasonSql({ keyColumns: primaryKey ?? [], typed });
  if (plan.rejectIfPresent.length) {
    const extra = plan.rejectIfPresent
      .map((c) => `when s.${quoteIdent(c)} is not null then ${sql.literal(`column "${c}" is not in the schema of "${table}" and schemaContract.columns is "discard_row"`)}`)
      .join(' ');
    reason = reason.replace(/^case /, `case ${extra} `);
  }
  const rowsRejected = fits ? 0 : Number((await client.query<{ n: string }>(sql.moveRejectsSql(schema, reason), [req.loadId, resource.name])).rows[0]!.n);

  const insertPlan: sql.InsertPlan = { schema, table, columns: plan.columns, primaryKey, hardDelete };
  let rowsLoaded: number;
  await deleteSuperseded(client, req, namer, { keys: keyColumns(primaryKey, plan.columns), staged: true, hardDelete });
  switch (resource.writeDisposition) {
    case 'replace':
    case 'append':
      rowsLoaded = (await client.query(sql.appendSql(insertPlan), [req.loadId])).rowCount ?? 0;
      break;
    case 'merge': {
      if (mergeKey) await client.query(sql.deleteByMergeKeySql(insertPlan, mergeKey));
      if (primaryKey) {
        // Temp tables have no statistics: without them the planner guesses row counts and may
        // join staging to the target with nested loops. Only the key columns matter for the join.
        if (staged.rows >= 50_000) await client.query(`analyze ${quoteIdent(sql.STAGING_TABLE)} (${primaryKey.map(quoteIdent).join(', ')})`);
        const merge = sql.mergeSql({ ...insertPlan, primaryKey });
        // A source whose own unique, non-null key is the merge key has no in-batch duplicates.
        const duplicates = staged.uniqueKey ? 0 : ((await client.query(merge.dedupe)).rowCount ?? 0);
        let flagged = 0;
        if (hardDelete) {
          const r = await client.query<{ n: string }>(
            `select count(*) as n from ${quoteIdent(sql.STAGING_TABLE)} where ${quoteIdent(hardDelete)}::boolean is true`,
          );
          flagged = Number(r.rows[0]!.n);
        }
        await client.query(merge.merge, [req.loadId]);
        // Rows delivered: every surviving key, whether it was inserted, changed or already equal.
        rowsLoaded = staged.rows - rowsRejected - duplicates - flagged;
      } else {
        rowsLoaded = (await client.query(sql.appendSql(insertPlan), [req.loadId])).rowCount ?? 0;
      }
      break;
    }
  }
  const result = await record(client, req, { rowsLoaded, rowsRejected, changes: plan.changes });
  return fits ? { ...result, path: 'typed-staging' } : result;
}

/**
 * Whether held rows can skip the text staging: the plan writes exactly the staged columns, drops
 * and nulls none, and every column's values fit its final type (narrowFit), key columns with a
 * value in every row.
 */
function heldFits(held: Held, staged: Staged, plan: SchemaPlan, primaryKey: string[] | undefined): boolean {
  if (plan.dropped.length || plan.nullIfInvalid.length || plan.rejectIfPresent.length || plan.columns.length === 0) return false;
  if (plan.columns.length !== staged.columns.length) return false;
  return plan.columns.every(
    (c, i) => c.name === staged.columns[i] && fitsType(held.fits[i]!, c.type) && !(primaryKey?.includes(c.name) && held.nulls[i]),
  );
}

/** Writes `lines` (COPY text, each ending in a newline) through `copy ... from stdin`; the rows COPY wrote. */
async function copyLines(client: pg.PoolClient, statement: string, lines: Iterable<string>): Promise<number> {
  const sink = client.query(copyFrom(statement));
  try {
    let buffer = '';
    const write = async () => {
      const chunk = buffer;
      buffer = '';
      await writeChunk(sink, chunk);
    };
    for (const line of lines) {
      buffer += line;
      if (buffer.length >= FLUSH_BYTES) await write();
    }
    if (buffer.length) await write();
    sink.end();
    await finished(sink);
  } catch (err) {
    sink.destroy(err instanceof Error ? err : new Error(String(err)));
    await finished(sink).catch(() => undefined);
    throw err;
  }
  return sink.rowCount;
}

/**
 * Deletes what this load supersedes, in its transaction and before it writes: the whole table
 * for `replace`, and otherwise a backfill partition's range, the rows from a re-read cursor
 * value on, or an earlier load of the same file. Readers see the old rows until commit.
 */
async function deleteSuperseded(
  client: pg.PoolClient,
  req: LoadRequest,
  namer: ColumnNamer,
  merge: { keys: sql.TargetColumn[] | undefined; staged: boolean; hardDelete?: string } = { keys: undefined, staged: false },
): Promise<void> {
  const { schema, table } = req;
  if (req.resource.writeDisposition === 'replace') {
    // DELETE, not TRUNCATE: TRUNCATE is not MVCC-safe (a REPEATABLE READ reader such as pg_dump
    // would see an empty table) and its ACCESS EXCLUSIVE lock would block every reader until commit.
    await client.query(sql.deleteAllSql(schema, table));
    await client.query(sql.forgetFileKeysSql(schema, table), [req.resource.name]);
    return;
  }
  const supersede = req.supersede;
  switch (supersede?.kind) {
    case undefined:
      return;
    case 'load':
      await client.query(sql.deleteLoadSql(schema, table), [supersede.loadId]);
      return;
    case 'file':
      if (req.resource.writeDisposition === 'merge' && merge.keys) return supersedeFileKeys(client, req, supersede, merge.keys, merge);
      if (supersede.previousLoadId !== undefined) await client.query(sql.deleteLoadSql(schema, table), [supersede.previousLoadId]);
      return;
    case 'range':
      await client.query(sql.deleteRangeSql(schema, table, namer.name(supersede.column)), [supersede.start, supersede.end]);
      return;
    case 'from':
      if (supersede.value === null) await client.query(sql.deleteAllSql(schema, table));
      else await client.query(sql.deleteFromSql(schema, table, namer.name(supersede.column)), [supersede.value]);
      return;
    case 'keyRange': {
      const c = quoteIdent(namer.name(supersede.column));
      const where: string[] = [];
      const params: string[] = [];
      if (supersede.lo !== null) where.push(`${c} >= $${params.push(supersede.lo)}`);
      if (supersede.hi !== null) where.push(`${c} < $${params.push(supersede.hi)}`);
      await client.query(`delete from ${qualifiedName(schema, table)}${where.length ? ` where ${where.join(' and ')}` : ''}`, params);
      return;
    }
  }
}

/** The primary key's columns with their types in `columns`, in key order; undefined without a key. */
function keyColumns(primaryKey: string[] | undefined, columns: sql.TargetColumn[] | undefined): sql.TargetColumn[] | undefined {
  if (!primaryKey?.length || !columns) return undefined;
  const types = new Map(columns.map((c) => [c.name, c.type]));
  return primaryKey.every((k) => types.has(k)) ? primaryKey.map((k) => ({ name: k, type: types.get(k)! })) : undefined;
}

/** A file's merge: records the keys it provides now and deletes those of its old version that no loaded file provides (sql.fileKeysSql). */
async function supersedeFileKeys(
  client: pg.PoolClient,
  req: LoadRequest,
  supersede: Extract<Supersede, { kind: 'file' }>,
  keys: sql.TargetColumn[],
  options: { staged: boolean; hardDelete?: string },
): Promise<void> {
  const q = sql.fileKeysSql(req.schema, req.table, keys, options.hardDelete);
  const args = [req.resource.name, supersede.file];
  await client.query(q.takeOld[0]!);
  await client.query(q.takeOld[1]!, args);
  if (supersede.previousLoadId !== undefined && !(await client.query<{ found: boolean }>(q.hasOld)).rows[0]!.found) {
    await client.query(q.legacyOld, [supersede.previousLoadId]);
  }
  if (options.staged) await client.query(q.recordNew, args);
  await client.query(q.deleteUnprovided, [req.resource.name]);
  await client.query(q.dropOld);
}

async function ensureUniqueKey(client: pg.PoolClient, schema: string, table: string, key: string[]): Promise<void> {
  const found = await client.query(
    `select 1 from pg_index i
      where i.indrelid = to_regclass($1) and i.indisunique
        and (select array_agg(a.attname::text order by a.attname) from pg_attribute a
              where a.attrelid = i.indrelid and a.attnum = any(i.indkey)) = (select array_agg(k order by k) from unnest($2::text[]) k)`,
    [qualifiedName(schema, table), key],
  );
  if (found.rowCount) return;
  try {
    await client.query(`create unique index ${quoteIdent(derivedName(table, 'sluice_pk'))} on ${qualifiedName(schema, table)} (${key.map(quoteIdent).join(', ')})`);
  } catch (err) {
    throw new PermanentError(
      `cannot merge into "${table}" on (${key.join(', ')}): ${errorMessage(err)}`,
      'the table already holds duplicate keys (it was loaded with append?): deduplicate it or load into a new table',
    );
  }
}

async function record(
  client: pg.PoolClient,
  req: LoadRequest,
  r: { rowsLoaded: number; rowsRejected: number; changes: string[] },
): Promise<LoadResult> {
  // The fence: last before the writes that say "done", under the row lock until commit.
  if (req.lease) await checkLease(client, req.schema, req.lease);
  await client.query(
    `update ${qualifiedName(req.schema, '_sluice_loads')}
       set status = 'completed', rows_loaded = $2, rows_rejected = $3, finished_at = now(), error = null, hint = null
     where load_id = $1`,
    [req.loadId, r.rowsLoaded, r.rowsRejected],
  );
  if (req.state) {
    await client.query(
      `insert into ${qualifiedName(req.schema, '_sluice_state')} (resource, state, updated_at) values ($1, $2, now())
       on conflict (resource) do update set state = excluded.state, updated_at = now()`,
      [req.state.key, JSON.stringify(req.state.value)],
    );
  }
  return { loadId: req.loadId, rowsLoaded: r.rowsLoaded, rowsRejected: r.rowsRejected, alreadyLoaded: false, schemaChanges: r.changes };
}

/** Reads a resource's saved state (cursor, loaded files) from _sluice_state. */
export async function readState(url: string, schema: string, key: string): Promise<unknown> {
  await ensureMetadata(url, schema);
  const r = await getPool(url).query<{ state: unknown }>(`select state from ${qualifiedName(schema, '_sluice_state')} where resource = $1`, [key]);
  return r.rows[0]?.state;
}
