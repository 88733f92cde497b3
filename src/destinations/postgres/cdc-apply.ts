/**
 * The CDC apply engine: one collapsed batch of changes (see cdc-batch.ts) written set-wise in
 * one destination transaction, together with the LSN up to which the batch is complete
 * (_sluice_state) and its _sluice_loads row. Knows nothing of Temporal or of replication.
 *
 * Per table, in the transaction: evolve the table to the source's current columns (the load
 * engine's planSchema: new columns are added, types only widen, a column dropped at the source
 * stays and becomes nullable), stage the batch's rows through COPY into a temporary table,
 * then apply the truncate (if any), the deletes (DELETE ... USING, or setting
 * _sluice_deleted_at) and the upserts (UPDATE ... FROM for keys present, INSERT for the rest).
 * Columns a change did not carry keep the destination's value.
 */
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { finished } from 'node:stream/promises';
import { qualifiedName, quoteIdent } from '../../schema/identifiers';
import { parseLsn } from '../../sources/postgres/cdc/pgoutput';
import { canonicalType, copyField } from '../../schema/types';
import type { ChangeBatch, FirstKeyRange, TableBatch } from './cdc-batch';
import { checkLease, type LeaseToken } from './lease';
import { ensureMetadata, planSchema } from './loader';
import { getPool } from './pool';
import * as sql from './sql';

export const DELETED_AT_COLUMN = '_sluice_deleted_at';
const STAGE = '_sluice_cdc_stage';
const OP = '_sluice_op';
const ABSENT = '_sluice_absent';
const AT = '_sluice_at';

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
  /** _sluice_state row of the stream: the batch applies only if the saved `lsn` is below `lsn`. */
  state: { key: string; lsn: bigint; value: object };
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

export async function applyBatch(req: ApplyRequest): Promise<ApplyResult> {
  await ensureMetadata(req.url, req.schema);
  const client = await getPool(req.url).connect();
  const onClientError = () => undefined;
  client.on('error', onClientError);
  let broken = false;
  try {
    await client.query('begin');
    const saved = await client.query<{ lsn: string | null }>(
      `select state->>'lsn' as lsn from ${qualifiedName(req.schema, '_sluice_state')} where resource = $1 for update`,
      [req.state.key],
    );
    const savedLsn = saved.rows[0]?.lsn;
    if (savedLsn && parseLsn(savedLsn) >= req.state.lsn) {
      await client.query('rollback');
      return { applied: false, schemaChanges: [] };
    }
    for (const lease of req.leases ?? []) await checkLease(client, req.schema, lease);
    const schemaChanges: string[] = [];
    for (const [target, tableBatch] of req.batch.tables) {
      const shape = req.shapes.get(target);
      if (!shape) throw new Error(`no shape for table ${target}`);
      schemaChanges.push(...(await evolveTable(client, req, shape)));
      await applyTable(client, req, shape, tableBatch);
    }
    if (!req.batch.empty) await client.query(
      `insert into ${qualifiedName(req.schema, '_sluice_loads')}
         (load_id, workflow_id, run_id, resource, table_name, partition, write_disposition, status, rows_loaded, finished_at)
       values ($1, $2, $3, $4, $5, $6, 'cdc', 'completed', $7, now())
       on conflict (load_id) do nothing`,
      [req.load.loadId, req.load.workflowId, req.load.runId, req.load.resource, [...req.batch.tables.keys()].join(','), req.load.partition, req.batch.changes],
    );
    await client.query(
      `insert into ${qualifiedName(req.schema, '_sluice_state')} (resource, state, updated_at) values ($1, $2, now())
       on conflict (resource) do update set state = excluded.state, updated_at = now()`,
      [req.state.key, JSON.stringify(req.state.value)],
    );
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

/** Creates or evolves the destination table to the source's current columns; returns what changed. */
async function evolveTable(client: pg.PoolClient, req: ApplyRequest, shape: TableShape): Promise<string[]> {
  const { schema } = req;
  const { target } = shape;
  await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-table:${schema}.${target}`]);
  const existing = (await destinationColumns(client, schema, target))?.filter((c) => !isSluiceColumn(c.name));
  const plan = planSchema({
    table: target,
    existing,
    incoming: new Map(shape.columns.map((c) => [c.name, c.type])),
    declared: new Set(),
    contract: { tables: 'evolve', columns: 'evolve', dataTypes: 'evolve' },
  });
  const changes = [...plan.changes];
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
    req.knownDropped.add(id);
    changes.push(`column ${column.name} was dropped at the source: kept in ${target} as nullable, no longer written`);
  }
  return changes.map((c) => `${target}: ${c}`);
}

async function applyTable(client: pg.PoolClient, req: ApplyRequest, shape: TableShape, batch: TableBatch): Promise<void> {
  const { schema } = req;
  const target = qualifiedName(schema, shape.target);
  const soft = req.deletes === 'soft';
  const columns = (await destinationColumns(client, schema, shape.target))!.filter((c) => !isSluiceColumn(c.name));
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
  if (batch.rows.size === 0) return;

  // Staging holds every column some change carries; ABSENT lists, per row, the ones it did not.
  const carried = columns.filter((c) => [...batch.rows.values()].some((p) => p.op === 'upsert' && p.values.has(c.name)) && !shape.key.includes(c.name));
  const staged = [...shape.key, ...carried.map((c) => c.name)];
  await client.query(`drop table if exists ${quoteIdent(STAGE)}`);
  await client.query(
    `create temp table ${quoteIdent(STAGE)} (${[OP, ABSENT, AT].map((c) => `${quoteIdent(c)} text`).concat(staged.map((c) => `${quoteIdent(c)} text`)).join(', ')}) on commit drop`,
  );
  const sink = client.query(copyFrom(`copy ${quoteIdent(STAGE)} (${[OP, ABSENT, AT, ...staged].map(quoteIdent).join(', ')}) from stdin`));
  let buffer = '';
  const write = async () => {
    if (!sink.write(buffer)) await new Promise((r) => sink.once('drain', r));
    buffer = '';
  };
  for (const pending of batch.rows.values()) {
    const fields: string[] = [];
    if (pending.op === 'delete') {
      fields.push('d', '\\N', copyField(pending.at.toISOString()), ...pending.key.map(copyField), ...carried.map(() => '\\N'));
    } else {
      const absent = carried.filter((c) => !pending.values.has(c.name)).map((c) => c.name);
      fields.push('u', copyField(absent.length ? pgTextArray(absent) : null), '\\N', ...pending.key.map(copyField));
      for (const c of carried) fields.push(copyField(pending.values.get(c.name) ?? null));
    }
    buffer += fields.join('\t') + '\n';
    if (buffer.length > 256 * 1024) await write();
  }
  if (buffer) await write();
  sink.end();
  await finished(sink);
  if (batch.rows.size >= 50_000) await client.query(`analyze ${quoteIdent(STAGE)}`);

  const keyMatch = shape.key.map((k) => `t.${quoteIdent(k)} = s.${quoteIdent(k)}::${types.get(k)}`).join(' and ');
  const op = (o: string) => `s.${quoteIdent(OP)} = '${o}'`;
  if (soft) {
    await client.query(
      `update ${target} t set ${quoteIdent(DELETED_AT_COLUMN)} = coalesce(t.${quoteIdent(DELETED_AT_COLUMN)}, s.${quoteIdent(AT)}::timestamptz), ${quoteIdent(sql.LOAD_ID_COLUMN)} = $1
       from ${quoteIdent(STAGE)} s where ${op('d')} and ${keyMatch}`,
      [req.load.loadId],
    );
  } else {
    await client.query(`delete from ${target} t using ${quoteIdent(STAGE)} s where ${op('d')} and ${keyMatch}`);
  }
  const sets = carried.map(
    (c) => `${quoteIdent(c.name)} = case when ${sql.literal(c.name)} = any(s.${quoteIdent(ABSENT)}::text[]) then t.${quoteIdent(c.name)} else s.${quoteIdent(c.name)}::${c.type} end`,
  );
  sets.push(`${quoteIdent(sql.LOAD_ID_COLUMN)} = $1`);
  if (soft) sets.push(`${quoteIdent(DELETED_AT_COLUMN)} = null`);
  await client.query(`update ${target} t set ${sets.join(', ')} from ${quoteIdent(STAGE)} s where ${op('u')} and ${keyMatch}`, [req.load.loadId]);
  const insertColumns = [...shape.key, ...carried.map((c) => c.name)];
  await client.query(
    `insert into ${target} (${[...insertColumns, sql.LOAD_ID_COLUMN].map(quoteIdent).join(', ')})
     select ${insertColumns.map((c) => `s.${quoteIdent(c)}::${types.get(c)}`).join(', ')}, $1 from ${quoteIdent(STAGE)} s
     where ${op('u')} and not exists (select 1 from ${target} t where ${keyMatch})`,
    [req.load.loadId],
  );
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
