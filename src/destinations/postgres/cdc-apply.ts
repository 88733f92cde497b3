/**
 * The CDC apply engine: one collapsed batch of changes (see cdc-batch.ts) written set-wise in
 * one destination transaction, together with the LSN up to which the batch is complete
 * (_sluice_state) and its _sluice_loads row. Knows nothing of Temporal or of replication.
 *
 * The transaction first stages every table's rows through COPY into temporary tables, and only
 * then waits for the stream's lock (held by a batch until it commits): a batch can be staged on a second
 * connection while the batch before it still commits on the first, and it applies once that
 * one has committed (the saved position says so; if it did not, this one fails too). Then, per table:
 * evolve the table to the source's current columns (the load engine's planSchema: new columns are
 * added, types only widen, a column dropped at the source stays and becomes nullable), stage
 * again if that changed which columns the rows fill, apply the truncate (if any), the deletes
 * (DELETE ... USING, or setting _sluice_deleted_at) and the upserts (INSERT ... ON CONFLICT, or
 * UPDATE ... FROM for keys present and INSERT for the rest). Columns a change did not carry keep
 * the destination's value.
 */
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { createHash } from 'node:crypto';
import { finished } from 'node:stream/promises';
import { qualifiedName, quoteIdent } from '../../schema/identifiers';
import { formatLsn, parseLsn, SPAN_UNCHANGED } from '../../sources/postgres/cdc/pgoutput';
import { canonicalType } from '../../schema/types';
import { ENTRY_DELETE, ENTRY_OBJECT, ENTRY_UPSERT, RowColumns, RowValues, spansAt, spansOf, type ChangeBatch, type FirstKeyRange, type Pending, type TableBatch } from './cdc-batch';
import { CHUNK_TAKE_BYTES, CopyBinaryWriter } from './binary-copy';
import { writeChunk } from './copy-text';
import { checkLeases, type LeaseToken } from './lease';
import { ensureMetadata, planSchema } from './loader';
import { getPool } from './pool';
import * as sql from './sql';

export const DELETED_AT_COLUMN = '_sluice_deleted_at';
const STAGE = '_sluice_cdc_stage';
const OP = '_sluice_op';
const ABSENT = '_sluice_absent';
const AT = '_sluice_at';
const FROM = '_sluice_from_';

/** A source table as it lands: destination name, key, and the source's current columns (destination names, source types). */
export interface TableShape {
  source: string;
  target: string;
  key: string[];
  columns: sql.TargetColumn[];
}

export interface ApplyRequest {
  url: string;
  schema: string;
  deletes: 'hard' | 'soft';
  shapes: Map<string, TableShape>;
  batch: ChangeBatch;
  load: { loadId: string; workflowId: string; runId: string; resource: string; partition: string };
  /**
   * _sluice_state row of the stream: the batch applies only if the saved `lsn` is below `lsn`,
   * and at or above `after` (where the batch before this one ends: until that one commits, this
   * one waits for it; if it never commits, this one fails). `value` may still be computed while
   * the batch is written, or asked for (a function) once the batch's tables have evolved.
   */
  state: { key: string; lsn: bigint; after: bigint; value: object | Promise<object> | (() => object | Promise<object>) };
  /**
   * With a batch in flight before this one: resolves once that one holds the stream's lock (or
   * has failed), so that this one, however quickly it stages, queues behind it for the lock.
   */
  turn?: Promise<void>;
  /** Called once this batch holds the stream's lock, or has failed before it did. */
  onLocked?: () => void;
  /** Columns reported as dropped by earlier batches (reported once). */
  knownDropped: Set<string>;
  /** The run's leases (every table and the slot): checked in the batch's transaction, so a replaced run never commits. */
  leases?: LeaseToken[];
}

export interface ApplyResult {
  /** False when the saved state already covered this batch (nothing was written). */
  applied: boolean;
  schemaChanges: string[];
}

/** The batch before this one never committed: this one must not apply (the stream restarts from the saved position). */
export class BatchOrderError extends Error {
  constructor(saved: string | null | undefined, after: bigint) {
    super(`the batch before this one did not commit (the saved position is ${saved ?? 'none'}, ${formatLsn(after)} expected)`);
    this.name = 'BatchOrderError';
  }
}

export async function applyBatch(req: ApplyRequest): Promise<ApplyResult> {
  try {
    return await applyInTransaction(req);
  } finally {
    req.onLocked?.();
  }
}

async function applyInTransaction(req: ApplyRequest): Promise<ApplyResult> {
  await ensureMetadata(req.url, req.schema);
  const client = await getPool(req.url).connect();
  const onClientError = () => undefined;
  client.on('error', onClientError);
  let broken = false;
  try {
    // Round trips are what a batch pays beyond its rows: statements without parameters go
    // together, and the load row and the position are written by one statement.
    const state = qualifiedName(req.schema, '_sluice_state');
    // The batch's joins (deletes, key changes) match a few staged keys against a table that may
    // be huge: probing its key index beats scanning it for a hash join, which a planner without
    // statistics on the fresh staging table would often pick.
    await client.query('begin; set local enable_hashjoin = off; set local enable_mergejoin = off');
    // Staged before the stream's lock is taken: this is what overlaps the commit of the batch before.
    const staged = new Map<string, Staged>();
    const inUse = new Set<string>();
    for (const [target, tableBatch] of req.batch.tables) {
      const shape = req.shapes.get(target);
      if (!shape) throw new Error(`no shape for table ${target}`);
      if (tableBatch.rows.size === 0) continue;
      const known = await destinationColumns(client, req.schema, target);
      staged.set(target, await stageRows(client, shape, tableBatch, stagingColumns(known, shape), inUse));
    }
    // The stream's lock, held to the commit: the batch before this one takes it first (`turn`)
    // and holds it until it has committed (a lock on the state row would not do: the first batch
    // has no row to lock). The read after it is a new statement, so it sees that commit.
    if (req.turn) await req.turn;
    await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-cdc-stream:${req.schema}.${req.state.key}`]);
    req.onLocked?.();
    const saved = await client.query<{ lsn: string | null }>(`select state->>'lsn' as lsn from ${state} where resource = $1`, [req.state.key]);
    const savedLsn = saved.rows[0]?.lsn;
    const savedAt = savedLsn ? parseLsn(savedLsn) : 0n;
    if (savedAt >= req.state.lsn) {
      // Not returned to the pool: staging tables this transaction made or dropped (see
      // stageRows) would no longer be what the connection's list says.
      broken = true;
      await client.query('rollback');
      return { applied: false, schemaChanges: [] };
    }
    if (savedAt < req.state.after) throw new BatchOrderError(savedLsn, req.state.after);
    if (req.leases?.length) await checkLeases(client, req.schema, req.leases);
    const schemaChanges: string[] = [];
    for (const [target, tableBatch] of req.batch.tables) {
      const shape = req.shapes.get(target)!;
      const evolved = await evolveTable(client, req, shape);
      schemaChanges.push(...evolved.changes);
      let rows = staged.get(target);
      // The table changed between staging and now (a batch before this one evolved it): the
      // rows fill another set of columns, staged again.
      if (rows && !sameColumns(rows.carried, carriedColumns(evolved.columns, shape, rows))) {
        rows = await stageRows(client, shape, tableBatch, evolved.columns, inUse);
      }
      await applyTable(client, req, shape, tableBatch, evolved.columns, rows);
    }
    const value = JSON.stringify(await (typeof req.state.value === 'function' ? req.state.value() : req.state.value));
    const saveState = `insert into ${state} (resource, state, updated_at) values ($1, $2, now()) on conflict (resource) do update set state = excluded.state, updated_at = now()`;
    if (req.batch.empty) {
      await client.query(saveState, [req.state.key, value]);
    } else {
      await client.query(
        `with load as (
           insert into ${qualifiedName(req.schema, '_sluice_loads')}
             (load_id, workflow_id, run_id, resource, table_name, partition, write_disposition, status, rows_loaded, finished_at)
           values ($3, $4, $5, $6, $7, $8, 'cdc', 'completed', $9, now())
           on conflict (load_id) do nothing)
         ${saveState}`,
        [req.state.key, value, req.load.loadId, req.load.workflowId, req.load.runId, req.load.resource, [...req.batch.tables.keys()].join(','), req.load.partition, req.batch.changes],
      );
    }
    await client.query('commit');
    return { applied: true, schemaChanges };
  } catch (err) {
    broken = true;
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.removeListener('error', onClientError);
    client.release(broken);
  }
}

async function destinationColumns(client: pg.PoolClient, schema: string, table: string): Promise<sql.TargetColumn[] | undefined> {
  const r = await client.query<sql.TargetColumn>(sql.targetColumnsSql(), [qualifiedName(schema, table)]);
  return r.rows.length ? r.rows.map((c) => ({ name: c.name, type: canonicalType(c.type) })) : undefined;
}

const isSluiceColumn = (name: string) => name === sql.LOAD_ID_COLUMN || name === DELETED_AT_COLUMN;

/** Creates or evolves the destination table to the source's current columns; returns what changed and the columns it now has. */
async function evolveTable(client: pg.PoolClient, req: ApplyRequest, shape: TableShape): Promise<{ changes: string[]; columns: sql.TargetColumn[] }> {
  const { schema } = req;
  const { target } = shape;
  await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-table:${schema}.${target}`]);
  const existing = (await destinationColumns(client, schema, target))?.filter((c) => !isSluiceColumn(c.name));
  // A wider modifier of the same type at the source (varchar(20) -> varchar(80), numeric(12,2) ->
  // numeric(16,2)) widens the destination column to exactly that type; the load engine's rules
  // compare base types, and would leave numeric(12,2) too narrow or turn varchar into text.
  const modifierChanges: string[] = [];
  for (const column of existing ?? []) {
    const incoming = shape.columns.find((c) => c.name === column.name)?.type;
    if (!incoming || !widerModifier(incoming, column.type)) continue;
    await client.query(sql.widenColumnSql(schema, target, { name: column.name, type: canonicalType(incoming) }));
    modifierChanges.push(`widened column ${column.name} from ${column.type} to ${canonicalType(incoming)}`);
    column.type = canonicalType(incoming);
  }
  const plan = planSchema({
    table: target,
    existing,
    incoming: new Map(shape.columns.map((c) => [c.name, c.type])),
    declared: new Set(),
    contract: { tables: 'evolve', columns: 'evolve', dataTypes: 'evolve' },
  });
  const changes = [...modifierChanges, ...plan.changes];
  let altered = plan.create || plan.add.length > 0 || plan.widen.length > 0 || modifierChanges.length > 0;
  if (plan.create) await client.query(sql.createTableSql(schema, target, plan.columns, shape.key));
  for (const column of plan.add) await client.query(sql.addColumnSql(schema, target, column));
  for (const column of plan.widen) await client.query(sql.widenColumnSql(schema, target, column));
  if (req.deletes === 'soft') {
    await client.query(sql.addColumnSql(schema, target, { name: DELETED_AT_COLUMN, type: 'timestamp with time zone' }));
  }
  const current = new Set(shape.columns.map((c) => c.name));
  for (const column of existing ?? []) {
    const id = `${target}.${column.name}`;
    if (current.has(column.name) || req.knownDropped.has(id)) continue;
    await client.query(`alter table ${qualifiedName(schema, target)} alter column ${quoteIdent(column.name)} drop not null`);
    altered = true;
    req.knownDropped.add(id);
    changes.push(`column ${column.name} was dropped at the source: kept in ${target} as nullable, no longer written`);
  }
  const columns = altered || !existing ? (await destinationColumns(client, schema, target))!.filter((c) => !isSluiceColumn(c.name)) : existing;
  return { changes: changes.map((c) => `${target}: ${c}`), columns };
}

/** A table's rows of a batch as staged: the staging table and what its columns are. */
interface Staged {
  name: string;
  /** The non-key columns staged (every column some change carries). */
  carried: string[];
  /** The old-key columns (FROM_i), when an update in the batch changed its key. */
  from: string[];
  moved: boolean;
  /** Some staged upsert lacks a carried column (a TOASTed value left out). */
  anyAbsent: boolean;
  present: Set<string>;
  /** How many staged upserts are of rows the destination holds already (op 'e', see Rows.existing). */
  existing: number;
  /** How many are of rows new to the source in this batch (op 'i', see Rows.fresh); the others are 'u'. */
  fresh: number;
}

/** The columns a staging holds beyond the key: those some change carries, every column when a key moved. */
function carriedColumns(columns: { name: string }[], shape: TableShape, rows: { moved: boolean; present: Set<string> }): string[] {
  return columns.filter((c) => (rows.moved || rows.present.has(c.name)) && !shape.key.includes(c.name)).map((c) => c.name);
}

function sameColumns(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((c) => set.has(c));
}

/**
 * The columns the table will have once evolved, as far as staging is concerned (names): the
 * destination's own and the source's current ones. A batch before this one may still change
 * them; applyBatch stages again when it did.
 */
function stagingColumns(known: sql.TargetColumn[] | undefined, shape: TableShape): { name: string }[] {
  const names = new Set((known ?? []).filter((c) => !isSluiceColumn(c.name)).map((c) => c.name));
  for (const c of shape.columns) names.add(c.name);
  return [...names].map((name) => ({ name }));
}

/**
 * Stages a table's rows of the batch through binary COPY into a temporary table: key, the
 * carried columns, and per row its op, the columns it did not carry (ABSENT), its delete time
 * (AT) and, for an update that changed the key, the old key (FROM_i).
 */
async function stageRows(client: pg.PoolClient, shape: TableShape, batch: TableBatch, columns: { name: string }[], inUse: Set<string>): Promise<Staged> {
  // Staging holds every column some change carries; ABSENT lists, per row, the ones it did not;
  // FROM_i, for an update that changed the key, the old key whose row fills what it did not carry.
  const present = new Set<string>();
  let moved = false;
  const complete = new Set<RowColumns>();
  const rows = batch.rows;
  for (let e = 0, n = rows.entryCount; e < n; e++) {
    if (!rows.isLive(e)) continue;
    const kind = rows.kind(e);
    if (kind === ENTRY_DELETE) continue;
    if (kind === ENTRY_UPSERT) {
      const columns = rows.columns(e);
      // Rows that carry every column of their relation add its names once, not once per row.
      if (rows.complete(e)) {
        if (!complete.has(columns)) {
          complete.add(columns);
          for (const c of columns.names) present.add(c);
        }
        continue;
      }
      const spans = spansAt(rows.buf(e), rows.start(e), rows.count(e));
      const n = Math.min(rows.count(e), columns.names.length);
      for (let i = 0; i < n; i++) if (spans[2 * i] !== SPAN_UNCHANGED) present.add(columns.names[i]!);
      continue;
    }
    const p = rows.object(e);
    if (p.op !== 'upsert') continue;
    if (p.from) moved = true;
    const v = p.values;
    if (v instanceof RowValues && v.complete) {
      if (!complete.has(v.columns)) {
        complete.add(v.columns);
        for (const c of v.columns.names) present.add(c);
      }
      continue;
    }
    for (const c of v.keys()) present.add(c);
  }
  const carriedNames = carriedColumns(columns, shape, { moved, present });
  const staged = [...shape.key, ...carriedNames];
  const from = moved ? shape.key.map((_, i) => `${FROM}${i}`) : [];
  const stageColumns = [OP, ABSENT, AT, ...from, ...staged];
  // One staging table per connection and column list, made once and emptied at every commit: a
  // table created and dropped by every batch would make each batch a catalog change, which
  // logical decoding on a source that shares this database (and the catalog itself) pays for.
  // The target is in the name: a transaction stages every table of its batch before applying any.
  const stageName = `${STAGE}_${createHash('sha1').update(JSON.stringify([shape.target, stageColumns])).digest('hex').slice(0, 12)}`;
  // Column lists vary (which TOASTed columns a batch carried, key changes, schema versions): a
  // connection keeps at most a few staging tables, and drops the others before making one more.
  let made = stagesMade.get(client);
  if (!made) stagesMade.set(client, (made = new Set()));
  if (!made.has(stageName) && made.size >= MAX_STAGES) {
    // Not the ones this transaction has staged rows in already.
    const unused = [...made].filter((t) => !inUse.has(t));
    if (unused.length) await client.query(unused.map((t) => `drop table if exists ${quoteIdent(t)}`).join('; '));
    for (const t of unused) made.delete(t);
  }
  made.add(stageName);
  inUse.add(stageName);
  await client.query(
    `create temp table if not exists ${quoteIdent(stageName)} (${stageColumns.map((c) => `${quoteIdent(c)} text`).join(', ')}) on commit delete rows; delete from ${quoteIdent(stageName)}`,
  );
  const sink = client.query(copyFrom(`copy ${quoteIdent(stageName)} (${stageColumns.map(quoteIdent).join(', ')}) from stdin (format binary)`));
  // Binary COPY into the text columns: a value's bytes go in behind their length, unescaped.
  const out = new CopyBinaryWriter();
  const fields = stageColumns.length;
  const write = () => writeChunk(sink, out.take());
  let anyAbsent = false;
  // One tuple per row, written as bytes: a change's values go from its tuple's bytes into COPY
  // without becoming strings. This loop runs for every change.
  // Where each carried column sits in a relation's tuples, asked once per relation.
  // A batch's rows nearly all share one relation: the last one asked is kept at hand.
  const positions = new Map<RowColumns, (number | undefined)[]>();
  let lastColumns: RowColumns | undefined;
  let lastPositions: (number | undefined)[] = [];
  // No closure inside: one that captured `columns` would make every call allocate its scope.
  const positionsIn = (columns: RowColumns) => {
    if (columns === lastColumns) return lastPositions;
    let at = positions.get(columns);
    if (!at) positions.set(columns, (at = positionsOf(carriedNames, columns)));
    lastColumns = columns;
    lastPositions = at;
    return at;
  };
  /** Whether every carried column is one of the relation's (so a complete tuple has them all). */
  const coverage = new Map<RowColumns, boolean>();
  /** The last relation found covered. */
  let coveredColumns: RowColumns | undefined;
  const covered = (columns: RowColumns) => {
    if (columns === coveredColumns) return true;
    let all = coverage.get(columns);
    if (all === undefined) coverage.set(columns, (all = !positionsIn(columns).includes(undefined)));
    if (all) coveredColumns = columns;
    return all;
  };
  /** The key fields of a tuple (from its spans, at the relation's key positions). */
  const writeKey = (buf: Buffer, spans: Int32Array, columns: RowColumns) => {
    const keyIndex = columns.keyIndex;
    for (let k = 0; k < keyIndex.length; k++) {
      const i = keyIndex[k]!;
      const offset = spans[2 * i]!;
      if (offset < 0) throw new Error(`key column ${columns.names[i]} of ${shape.target} arrived without a value`);
      out.bytes(buf, offset, spans[2 * i + 1]!);
    }
  };
  /** A staged row's fields before its key: op, absent, at, and the old key (FROM_i) left null. */
  let existing = 0;
  let fresh = 0;
  const head = (op: 'd' | 'u' | 'e' | 'i', absent: string[] | undefined, at: string | undefined, oldKeyNull: boolean) => {
    out.row(fields);
    out.ascii(op);
    out.text(absent ? pgTextArray(absent) : null);
    if (at === undefined) out.nullField();
    else out.ascii(at);
    if (oldKeyNull) out.nulls(from.length);
  };
  /** A change merged from several (see cdc-batch.ts): its values by column name. */
  const writePending = (pending: Pending) => {
    if (pending.op === 'delete') {
      head('d', undefined, pending.at.toISOString(), true);
      for (const k of pending.key) out.text(k);
      out.nulls(carriedNames.length);
      return;
    }
    const values = pending.values;
    // A tuple as it arrived: its spans say where each carried column's bytes are.
    const raw = values instanceof RowValues ? values : undefined;
    const at = raw ? positionsIn(raw.columns) : noPositions;
    const spans = raw ? spansOf(raw.tuple) : undefined;
    const count = raw ? raw.tuple.count : 0;
    let absent: string[] | undefined;
    for (let j = 0; j < carriedNames.length; j++) {
      const i = at[j];
      const carries = raw ? i !== undefined && i < count && spans![2 * i] !== SPAN_UNCHANGED : values.has(carriedNames[j]!);
      if (!carries) (absent ??= []).push(carriedNames[j]!);
    }
    if (absent) anyAbsent = true;
    head('u', absent, undefined, false);
    for (let i = 0; i < from.length; i++) out.text(pending.from?.[i] ?? null);
    for (const k of pending.key) out.text(k);
    // The key fields wrote strings only: the tuple's spans (a shared scratch array) still hold.
    for (let j = 0; j < carriedNames.length; j++) {
      if (raw) {
        const i = at[j];
        const offset = i === undefined || i >= count ? SPAN_UNCHANGED : spans![2 * i]!;
        if (offset >= 0) out.bytes(raw.tuple.buf, offset, spans![2 * i! + 1]!);
        else out.nullField();
      } else {
        out.text(values.get(carriedNames[j]!) ?? null);
      }
    }
  };
  const noPositions: (number | undefined)[] = [];
  /** The ISO text of the last delete time written (a transaction's deletes share one). */
  let atMs = NaN;
  let atText = '';
  for (let e = 0, n = rows.entryCount; e < n; e++) {
    if (!rows.isLive(e)) continue;
    const kind = rows.kind(e);
    if (kind === ENTRY_OBJECT) {
      writePending(rows.object(e));
    } else {
      // A change as its tuple arrived: its key and values are bytes in the batch's arena.
      const columns = rows.columns(e);
      const buf = rows.buf(e);
      const count = rows.count(e);
      const spans = spansAt(buf, rows.start(e), count);
      if (kind === ENTRY_DELETE) {
        if (rows.atMs(e) !== atMs) {
          atMs = rows.atMs(e);
          atText = new Date(atMs).toISOString();
        }
        head('d', undefined, atText, true);
        writeKey(buf, spans, columns);
        out.nulls(carriedNames.length);
      } else {
        const at = positionsIn(columns);
        let absent: string[] | undefined;
        if (!rows.complete(e) || !covered(columns)) {
          for (let j = 0; j < carriedNames.length; j++) {
            const i = at[j];
            if (i === undefined || i >= count || spans[2 * i] === SPAN_UNCHANGED) (absent ??= []).push(carriedNames[j]!);
          }
        }
        if (absent) anyAbsent = true;
        // EXISTING and FRESH never go together (see cdc-batch.ts).
        const upsertOp = rows.existing(e) ? 'e' : rows.fresh(e) ? 'i' : 'u';
        if (upsertOp === 'e') existing++;
        else if (upsertOp === 'i') fresh++;
        head(upsertOp, absent, undefined, true);
        writeKey(buf, spans, columns);
        for (let j = 0; j < carriedNames.length; j++) {
          const i = at[j];
          const offset = i === undefined || i >= count ? SPAN_UNCHANGED : spans[2 * i]!;
          if (offset >= 0) out.bytes(buf, offset, spans[2 * i! + 1]!);
          else out.nullField();
        }
      }
    }
    if (out.length > CHUNK_TAKE_BYTES) await write();
  }
  out.trailer();
  if (out.length) await write();
  sink.end();
  await finished(sink);
  out.release();
  return { name: stageName, carried: carriedNames, from, moved, anyAbsent, present, existing, fresh };
}

/** Where each of `names` sits in a relation's tuples (undefined: not one of its columns). */
function positionsOf(names: string[], columns: RowColumns): (number | undefined)[] {
  return names.map((c) => columns.index.get(c));
}

async function applyTable(client: pg.PoolClient, req: ApplyRequest, shape: TableShape, batch: TableBatch, columns: sql.TargetColumn[], staged: Staged | undefined): Promise<void> {
  const { schema } = req;
  const target = qualifiedName(schema, shape.target);
  const soft = req.deletes === 'soft';
  const types = new Map(columns.map((c) => [c.name, c.type]));
  if (batch.truncatedAt) {
    // In order: the batch dropped every change before the truncate, so this runs first.
    const within = batch.truncateRanges ? ` and (${rangesWhere(shape.key[0]!, batch.truncateRanges)})` : '';
    if (soft) {
      await client.query(`update ${target} set ${quoteIdent(DELETED_AT_COLUMN)} = $1, ${quoteIdent(sql.LOAD_ID_COLUMN)} = $2 where ${quoteIdent(DELETED_AT_COLUMN)} is null${within}`, [
        batch.truncatedAt,
        req.load.loadId,
      ]);
    } else {
      await client.query(`${sql.deleteAllSql(schema, shape.target)} where true${within}`);
    }
  }
  if (!staged) return;
  const { moved, from } = staged;
  let anyAbsent = staged.anyAbsent;
  const carried = staged.carried.map((name) => ({ name, type: types.get(name)! }));
  const stageName = staged.name;

  const stage = quoteIdent(stageName);
  const match = (alias: string, keys: string[]) => shape.key.map((k, i) => `${alias}.${quoteIdent(k)} = s.${quoteIdent(keys[i]!)}::${types.get(k)}`).join(' and ');
  const keyMatch = match('t', shape.key);
  const op = (...o: ('d' | 'u' | 'e' | 'i')[]) => (o.length === 1 ? `s.${quoteIdent(OP)} = '${o[0]}'` : `s.${quoteIdent(OP)} in (${o.map((x) => `'${x}'`).join(', ')})`);
  /** Every staged upsert, of a row already there, new to the source, or either. */
  const upsert = op('u', 'e', 'i');
  if (moved && anyAbsent) {
    // An update that changed the key and left a TOASTed value out: the value is the old row's,
    // read before this batch deletes that row. An old row the destination lacks leaves it null.
    const fill = carried.map((c) => `${quoteIdent(c.name)} = case when ${sql.literal(c.name)} = any(s.${quoteIdent(ABSENT)}::text[]) then o.${quoteIdent(c.name)}::text else s.${quoteIdent(c.name)} end`);
    await client.query(
      `update ${stage} s set ${[...fill, `${quoteIdent(ABSENT)} = null`].join(', ')} from ${target} o
        where ${upsert} and s.${quoteIdent(ABSENT)} is not null and s.${quoteIdent(from[0]!)} is not null and ${match('o', from)}`,
    );
    anyAbsent = (await client.query(`select 1 from ${stage} s where ${upsert} and s.${quoteIdent(ABSENT)} is not null limit 1`)).rowCount! > 0;
  }
  if (soft) {
    await client.query(
      `update ${target} t set ${quoteIdent(DELETED_AT_COLUMN)} = coalesce(t.${quoteIdent(DELETED_AT_COLUMN)}, s.${quoteIdent(AT)}::timestamptz), ${quoteIdent(sql.LOAD_ID_COLUMN)} = $1
       from ${stage} s where ${op('d')} and ${keyMatch}`,
      [req.load.loadId],
    );
  } else {
    await client.query(`delete from ${target} t using ${stage} s where ${op('d')} and ${keyMatch}`);
  }
  const insertColumns = [...shape.key, ...carried.map((c) => c.name)];
  const selectedWhere = (where: string) => `select ${insertColumns.map((c) => `s.${quoteIdent(c)}::${types.get(c)}`).join(', ')}, $1 from ${stage} s where ${where}`;
  const selected = selectedWhere(upsert);
  const into = `insert into ${target} (${[...insertColumns, sql.LOAD_ID_COLUMN].map(quoteIdent).join(', ')})`;
  if (!anyAbsent && (await hasUniqueKey(client, target, shape.key))) {
    // Every row carries every staged column: one upsert on the key's unique index (the batch
    // holds each key once, so no row is touched twice).
    const sets = [...carried.map((c) => c.name), sql.LOAD_ID_COLUMN].map((c) => `${quoteIdent(c)} = excluded.${quoteIdent(c)}`);
    if (soft) sets.push(`${quoteIdent(DELETED_AT_COLUMN)} = null`);
    const upsertWhere = (where: string) => `${into} ${selectedWhere(where)} on conflict (${shape.key.map(quoteIdent).join(', ')}) do update set ${sets.join(', ')}`;
    try {
      const rest: ('u' | 'e' | 'i')[] = ['u'];
      if (staged.existing > 0) {
        // Rows already there are updated in place: an upsert would first try an insert, then lock
        // the row it conflicts with (one more WAL record per row) before it updates. Probed one
        // by one through the key's index, as the upsert would (the transaction has hash and merge
        // joins off, see applyBatch).
        const updates = [...carried.map((c) => `${quoteIdent(c.name)} = s.${quoteIdent(c.name)}::${c.type}`), `${quoteIdent(sql.LOAD_ID_COLUMN)} = $1`];
        if (soft) updates.push(`${quoteIdent(DELETED_AT_COLUMN)} = null`);
        const updated = await client.query(`update ${target} t set ${updates.join(', ')} from ${stage} s where ${op('e')} and ${keyMatch}`, [req.load.loadId]);
        // One the destination lacks after all (a stream without its snapshot, a row removed by hand): the upsert adds it.
        if (updated.rowCount! < staged.existing) rest.push('e');
      }
      if (staged.fresh > 0) {
        if (await insertFresh(client, target, `${into} ${selectedWhere(op('i'))}`, req.load.loadId)) rest.push('i');
      }
      // Runs even when no row is left for it: the plain insert finds a row already there only
      // through the key's unique index, and if that index is gone since hasUniqueKey saw it,
      // this statement is what fails (and the batch with it) rather than a duplicate landing.
      await client.query(upsertWhere(op(...rest)), [req.load.loadId]);
    } catch (err) {
      uniqueKeys.clear();
      throw err;
    }
    return;
  }
  // The joins below plan better knowing the staged rows.
  if (batch.rows.size >= 50_000) await client.query(`analyze ${stage}`);
  const sets = carried.map((c) =>
    anyAbsent
      ? `${quoteIdent(c.name)} = case when ${sql.literal(c.name)} = any(s.${quoteIdent(ABSENT)}::text[]) then t.${quoteIdent(c.name)} else s.${quoteIdent(c.name)}::${c.type} end`
      : `${quoteIdent(c.name)} = s.${quoteIdent(c.name)}::${c.type}`,
  );
  sets.push(`${quoteIdent(sql.LOAD_ID_COLUMN)} = $1`);
  if (soft) sets.push(`${quoteIdent(DELETED_AT_COLUMN)} = null`);
  await client.query(`update ${target} t set ${sets.join(', ')} from ${stage} s where ${upsert} and ${keyMatch}`, [req.load.loadId]);
  await client.query(`${into} ${selected} and not exists (select 1 from ${target} t where ${keyMatch})`, [req.load.loadId]);
}

/**
 * Tables where a row new to the source was found in the destination (a soft-deleted row whose
 * key came back, one inserted by hand), by how many more of their batches upsert such rows
 * rather than try a plain insert first.
 */
const keysCameBack = new Map<string, number>();
const UPSERT_AFTER_CONFLICT = 100;

/**
 * Inserts the batch's rows new to the source (op 'i') with a plain INSERT, which costs about
 * half what an upsert's speculative insertion does, in a savepoint: when the destination holds
 * one of them after all, nothing of it stays and the result says to upsert them instead.
 */
async function insertFresh(client: pg.PoolClient, target: string, insert: string, loadId: string): Promise<boolean> {
  const id = tableId(client, target);
  const skip = keysCameBack.get(id);
  if (skip !== undefined) {
    if (skip <= 1) keysCameBack.delete(id);
    else keysCameBack.set(id, skip - 1);
    return true;
  }
  await client.query('savepoint sluice_fresh');
  try {
    await client.query(insert, [loadId]);
  } catch (err) {
    if ((err as { code?: string }).code !== '23505') throw err;
    // Released too: the rest of the batch runs in the transaction itself, not in a subtransaction.
    await client.query('rollback to savepoint sluice_fresh; release savepoint sluice_fresh');
    keysCameBack.set(id, UPSERT_AFTER_CONFLICT);
    return true;
  }
  await client.query('release savepoint sluice_fresh');
  return false;
}

/** Staging tables each destination connection has made (see applyTable). */
const stagesMade = new WeakMap<pg.PoolClient, Set<string>>();
const MAX_STAGES = 8;

/** Tables known to have their key's unique index (asked once per worker; an index dropped later fails the upsert, which forgets it). */
const uniqueKeys = new Set<string>();

/**
 * Whether `source` is `dest`'s own type with a modifier that holds every value of it and more:
 * a longer varchar/char/bit varying, a numeric with as many integer and fraction digits or
 * more (or none: unconstrained), a time or timestamp with more fractional digits.
 */
export function widerModifier(source: string, dest: string): boolean {
  const parse = (t: string) => {
    const c = canonicalType(t);
    const m = /^([a-z ]+?)(?:\((\d+)(?:,(\d+))?\))?((?: with(?:out)? time zone)?)$/.exec(c);
    return m ? { base: `${m[1]}${m[4]}`, args: m[2] === undefined ? undefined : [Number(m[2]), Number(m[3] ?? 0)] } : undefined;
  };
  const s = parse(source);
  const d = parse(dest);
  if (!s || !d || s.base !== d.base || canonicalType(source) === canonicalType(dest) || !d.args) return false;
  if (!s.args) return ['character varying', 'numeric', 'bit varying'].includes(s.base);
  const [sp, ss] = s.args as [number, number];
  const [dp, ds] = d.args as [number, number];
  if (s.base === 'numeric') return sp - ss >= dp - ds && ss >= ds;
  return ['character varying', 'bit varying', 'time without time zone', 'time with time zone', 'timestamp without time zone', 'timestamp with time zone', 'interval'].includes(s.base) && sp >= dp;
}

/** A destination table, told apart from a namesake in another database a worker writes to. */
function tableId(client: pg.PoolClient, table: string, key?: string[]): string {
  const at = (client as unknown as { connectionParameters?: { host?: string; port?: number; database?: string } }).connectionParameters;
  return JSON.stringify([at?.host, at?.port, at?.database, table, key]);
}

/** Whether the destination table has a plain unique index on exactly the key columns (ON CONFLICT needs one). */
async function hasUniqueKey(client: pg.PoolClient, table: string, key: string[]): Promise<boolean> {
  const id = tableId(client, table, key);
  if (uniqueKeys.has(id)) return true;
  const r = await client.query(
    `select 1 from pg_index i
      where i.indrelid = $1::regclass and i.indisunique and i.indpred is null and i.indexprs is null and i.indnkeyatts = $3
        and (select array_agg(a.attname::text order by a.attname) from pg_attribute a where a.attrelid = i.indrelid and a.attnum = any(i.indkey)) = $2::text[]`,
    [table, [...key].sort(), key.length],
  );
  if (r.rowCount) uniqueKeys.add(id);
  return (r.rowCount ?? 0) > 0;
}

/** SQL for "the first key column is in one of these ranges"; the bounds are integers (checked), never quoted in. */
function rangesWhere(column: string, ranges: FirstKeyRange[]): string {
  const c = quoteIdent(column);
  const int = (v: string) => {
    if (!/^-?\d{1,20}$/.test(v)) throw new Error(`key range bound ${JSON.stringify(v)} is not an integer`);
    return v;
  };
  if (!ranges.length) return 'false';
  return ranges
    .map((r) => [r.lo === null ? 'true' : `${c} >= ${int(r.lo)}`, r.hi === null ? 'true' : `${c} < ${int(r.hi)}`].join(' and '))
    .map((w) => `(${w})`)
    .join(' or ');
}

/** A text[] literal in PostgreSQL's array input syntax (values quoted and escaped). */
function pgTextArray(values: string[]): string {
  return `{${values.map((v) => `"${v.replace(/["\\]/g, (m) => `\\${m}`)}"`).join(',')}}`;
}
