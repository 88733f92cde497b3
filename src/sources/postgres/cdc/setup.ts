/**
 * The source side of CDC outside the stream: the checks that refuse a source which cannot
 * stream (each with its fix), the publication and slot sluice creates, a table's snapshot,
 * and dropping what sluice created.
 */
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { PermanentError } from '../../../errors';
import { ColumnNamer, normalizeIdentifier, qualifiedName, quoteIdent, shortHash, splitQualified } from '../../../schema/identifiers';
import type { Extracted, SourceColumn } from '../../types';
import { describeSource, PORTABLE_SESSION } from '../index';
import { parseXidSnapshot, type XidSnapshot } from './snapshot';

export interface CdcTable {
  /** `schema.table` as given. */
  source: string;
  /** Destination table name. */
  target: string;
  /** Source key columns (primary key, else the replica identity index), source names. */
  key: string[];
}

export async function withSourceClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, application_name: 'sluice-cdc' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    // Read as every source session reads, but this one manages CDC's own objects on the source
    // (publication, replication slot), which a read-only session may not create or drop.
    await client.query(`${PORTABLE_SESSION}; set default_transaction_read_only = off`);
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Refuses, with the fix, a source that cannot stream these tables; returns each table's key. */
export async function checkSource(client: pg.Client, tables: string[]): Promise<CdcTable[]> {
  const wal = (await client.query<{ wal_level: string }>('show wal_level')).rows[0]!.wal_level;
  if (wal !== 'logical') {
    throw new PermanentError(
      `source wal_level is "${wal}", but change data capture needs wal_level = logical`,
      'run ALTER SYSTEM SET wal_level = logical on the source and restart PostgreSQL',
    );
  }
  const role = (await client.query<{ name: string; ok: boolean }>(
    'select current_user as name, rolreplication or rolsuper as ok from pg_roles where rolname = current_user',
  )).rows[0]!;
  if (!role.ok) {
    throw new PermanentError(
      `source role "${role.name}" lacks the REPLICATION attribute, which reading a replication slot needs`,
      `run ALTER ROLE ${quoteIdent(role.name)} REPLICATION on the source (as a superuser), or connect as a role that has it`,
    );
  }
  const result: CdcTable[] = [];
  for (const name of tables) {
    const { schema, table } = splitQualified(name);
    const rel = qualifiedName(schema ?? 'public', table);
    const found = (await client.query<{ oid: number | null; identity: string | null }>(
      `select c.oid::int as oid, c.relreplident as identity from pg_class c where c.oid = to_regclass($1) and c.relkind in ('r', 'p')`,
      [rel],
    )).rows[0];
    if (!found?.oid) {
      throw new PermanentError(`source table ${name} does not exist`, 'check source.tables: schema-qualified names of existing tables, like public.orders');
    }
    const keys = await client.query<{ name: string; primary: boolean }>(
      `select a.attname as name, i.indisprimary as primary
         from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
        where i.indrelid = $1 and (i.indisprimary or i.indisreplident)
        order by i.indisprimary desc, array_position(i.indkey::int2[], a.attnum)`,
      [found.oid],
    );
    const primary = keys.rows.filter((k) => k.primary).map((k) => k.name);
    let key = primary.length ? primary : keys.rows.map((k) => k.name);
    // REPLICA IDENTITY FULL sends every column of the old row, so any unique index on NOT NULL
    // columns identifies it as well as a primary key would.
    if (key.length === 0 && found.identity === 'f') key = await uniqueNotNullKey(client, found.oid);
    if (key.length === 0) {
      throw new PermanentError(
        found.identity === 'f'
          ? `source table ${name} has REPLICA IDENTITY FULL but no primary key and no unique index on NOT NULL columns: ` +
              'its rows are identified only by all their values, and two equal rows (which such a table may hold) cannot be told apart, ' +
              'so an update or delete of one of them could not be applied to exactly one destination row'
          : `source table ${name} has no primary key, so its updates and deletes cannot be matched to destination rows`,
        `add a primary key (ALTER TABLE ${rel} ADD PRIMARY KEY (...)), or a unique index on NOT NULL columns (and ALTER TABLE ${rel} REPLICA IDENTITY USING INDEX ..., or keep FULL)`,
      );
    }
    result.push({ source: name, target: normalizeIdentifier(table), key });
  }
  return result;
}

/** The columns of the first plain unique index whose columns are all NOT NULL (none: []), in index order. */
async function uniqueNotNullKey(client: pg.Client, oid: number): Promise<string[]> {
  const r = await client.query<{ cols: string[] }>(
    `select array(select a.attname::text from unnest(i.indkey::int2[]) with ordinality k(attnum, n) join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum order by k.n) as cols
       from pg_index i
      where i.indrelid = $1 and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null
        and not exists (select 1 from pg_attribute a where a.attrelid = i.indrelid and a.attnum = any(i.indkey) and not a.attnotnull)
      order by i.indexrelid limit 1`,
    [oid],
  );
  return r.rows[0]?.cols ?? [];
}

/** Creates the publication (before the slot: pgoutput must find it from the slot's first change on), or adds missing tables to it. */
export async function ensurePublication(client: pg.Client, publication: string, tables: string[]): Promise<boolean> {
  const rels = tables.map((t) => {
    const { schema, table } = splitQualified(t);
    return { schema: schema ?? 'public', table };
  });
  const exists = (await client.query('select 1 from pg_publication where pubname = $1', [publication])).rowCount;
  if (!exists) {
    await client.query(`create publication ${quoteIdent(publication)} for table ${rels.map((r) => qualifiedName(r.schema, r.table)).join(', ')}`);
    return true;
  }
  const present = await client.query<{ schemaname: string; tablename: string }>('select schemaname, tablename from pg_publication_tables where pubname = $1', [publication]);
  const have = new Set(present.rows.map((r) => `${r.schemaname}.${r.tablename}`));
  const missing = rels.filter((r) => !have.has(`${r.schema}.${r.table}`));
  if (missing.length) await client.query(`alter publication ${quoteIdent(publication)} add table ${missing.map((r) => qualifiedName(r.schema, r.table)).join(', ')}`);
  return false;
}

/** Creates the logical slot (pgoutput) unless it exists; returns whether it did, and the LSN the stream starts at. */
export async function ensureSlot(client: pg.Client, slot: string): Promise<{ created: boolean; lsn: string }> {
  const existing = await client.query<{ lsn: string; plugin: string }>(
    'select coalesce(confirmed_flush_lsn, restart_lsn)::text as lsn, plugin from pg_replication_slots where slot_name = $1',
    [slot],
  );
  if (existing.rows[0]) {
    if (existing.rows[0].plugin !== 'pgoutput') {
      throw new PermanentError(`replication slot ${slot} exists with plugin ${existing.rows[0].plugin}`, 'name another slot in "slot", or drop this one (SELECT pg_drop_replication_slot(...))');
    }
    return { created: false, lsn: existing.rows[0].lsn };
  }
  try {
    const r = await client.query<{ lsn: string }>(`select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    return { created: true, lsn: r.rows[0]!.lsn };
  } catch (err) {
    if ((err as { code?: string }).code === '53400') {
      throw new PermanentError(`the source has no free replication slot: ${(err as Error).message}`, 'raise max_replication_slots on the source, or drop slots nobody reads (see pg_replication_slots)');
    }
    throw err;
  }
}

export async function dropSlotAndPublication(client: pg.Client, slot: string, publication: string | undefined): Promise<void> {
  // An attempt that just died may still hold the slot for a moment.
  for (let i = 0; ; i++) {
    try {
      await client.query('select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1', [slot]);
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== '55006' || i >= 30) throw err;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
  if (publication) await client.query(`drop publication if exists ${quoteIdent(publication)}`);
}

/** The source's WAL position now. */
export async function currentWalLsn(client: pg.Client): Promise<string> {
  return (await client.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn')).rows[0]!.lsn;
}

/**
 * A table's rows under one REPEATABLE READ snapshot, for the load engine's COPY fast path, and
 * that snapshot's xids (see snapshot.ts). The snapshot is exported by a holding transaction
 * that stays open until `release`, so the copy sees exactly what the xids describe.
 */
export async function snapshotTable(url: string, table: string, range?: KeyRange): Promise<{ data: Extracted; columns: SourceColumn[]; xids: XidSnapshot; release(): Promise<void> }> {
  const columns = await describeSource(url, { kind: 'postgres', connection: '', table });
  const holder = new pg.Client({ connectionString: url, application_name: 'sluice-cdc-snapshot' });
  holder.on('error', () => undefined);
  await holder.connect();
  await holder.query('begin isolation level repeatable read read only');
  const r = await holder.query<{ xids: string; name: string }>('select pg_current_snapshot()::text as xids, pg_export_snapshot() as name');
  const { xids, name } = r.rows[0]!;
  const { schema, table: t } = splitQualified(table);
  const where = range ? rangeWhere(range) : '';
  const query = `select ${columns.map((c) => quoteIdent(c.name)).join(', ')} from ${qualifiedName(schema ?? 'public', t)}${where ? ` where ${where}` : ''}`;
  return {
    columns,
    xids: parseXidSnapshot(xids),
    data: {
      kind: 'copy',
      columns,
      copyTo: (sink: Writable) =>
        withSourceClient(url, async (client) => {
          await client.query('begin isolation level repeatable read read only');
          await client.query(`set transaction snapshot '${name.replace(/'/g, "''")}'`);
          await pipeline(client.query(copyTo(`copy (${query}) to stdout`)), sink);
          await client.query('commit');
        }),
    },
    release: () => holder.end().catch(() => undefined),
  };
}

/** A snapshot chunk: rows whose (integer) key column is in [lo, hi); null is unbounded. */
export interface KeyRange {
  column: string;
  lo: string | null;
  hi: string | null;
}

function rangeWhere(range: KeyRange): string {
  const c = quoteIdent(range.column);
  const bound = (v: string) => {
    // Bounds are integers sluice read from the key itself; anything else is refused, never quoted in.
    if (!/^-?\d{1,20}$/.test(v)) throw new Error(`snapshot chunk bound ${JSON.stringify(v)} is not an integer`);
    return v;
  };
  return [range.lo === null ? undefined : `${c} >= ${bound(range.lo)}`, range.hi === null ? undefined : `${c} < ${bound(range.hi)}`].filter(Boolean).join(' and ');
}

const INTEGER_TYPES = new Set(['smallint', 'integer', 'bigint']);

/**
 * Splits a table into key ranges of about `chunkRows` rows, on the first key column when it is
 * an integer (the ranges then mean the same in the source, in the destination and to the
 * stream's snapshot filter); returns the n-1 inner bounds, none for a table copied whole.
 * Bounds are exact quantiles of the key (one ordered scan of its index).
 */
export async function planChunks(client: pg.Client, table: CdcTable, chunkRows: number): Promise<{ column: string; bounds: string[] }> {
  const { schema, table: t } = splitQualified(table.source);
  const rel = qualifiedName(schema ?? 'public', t);
  const column = table.key[0]!;
  const type = (await client.query<{ type: string }>(
    'select format_type(atttypid, atttypmod) as type from pg_attribute where attrelid = to_regclass($1) and attname = $2',
    [rel, column],
  )).rows[0]?.type;
  if (!type || !INTEGER_TYPES.has(type)) return { column, bounds: [] };
  const count = Number((await client.query<{ n: string }>(`select count(*) as n from ${rel}`)).rows[0]!.n);
  if (count <= chunkRows) return { column, bounds: [] };
  const step = Math.ceil(count / Math.ceil(count / chunkRows));
  const c = quoteIdent(column);
  const r = await client.query<{ b: string }>(
    `select b::text from (select ${c} as b, row_number() over (order by ${c}) as rn from ${rel}) s where rn % $1 = 1 and rn > 1 order by rn`,
    [step],
  );
  // A composite key repeats its first column: equal bounds would make empty chunks.
  return { column, bounds: [...new Set(r.rows.map((x) => x.b))] };
}

/** application_name of the sessions that read a slot for workflow `workflowId`: who holds a slot is read off pg_stat_activity. */
export function ownerTag(workflowId: string): string {
  // PostgreSQL keeps 63 bytes of printable ASCII: the hash identifies, the id (maybe cut) is for people.
  return `sluice-cdc ${shortHash(workflowId)} ${workflowId.replace(/[^\x20-\x7e]/g, '?')}`.slice(0, 63);
}

/**
 * Refuses a slot that another consumer reads right now: another cdcWorkflow (named by its
 * workflow id) or anything else. A session of this same workflow (an attempt that has not
 * noticed its worker died) is not refused: it lets go soon, and the caller retries.
 */
export async function checkSlotHolder(client: pg.Client, slot: string, workflowId: string, waitMs = 10_000): Promise<void> {
  const deadline = Date.now() + waitMs;
  let holder: { pid: number; app: string | null } | undefined;
  let tag: RegExpExecArray | null = null;
  for (;;) {
    const r = await client.query<{ pid: number; app: string | null }>(
      `select s.active_pid as pid, a.application_name as app from pg_replication_slots s left join pg_stat_activity a on a.pid = s.active_pid
        where s.slot_name = $1 and s.active_pid is not null`,
      [slot],
    );
    holder = r.rows[0];
    if (!holder) return;
    tag = /^sluice-cdc ([0-9a-z]+) (.+)$/.exec(holder.app ?? '');
    if (tag?.[1] === shortHash(workflowId)) return;
    // A reader that is being stopped (a terminated run's last streaming call) lets go within seconds.
    if (Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  const app = holder.app ?? '';
  const other = tag?.[2];
  throw new PermanentError(
    other
      ? `replication slot ${slot} is read by another cdcWorkflow, workflow ${other}: one workflow at a time may read a slot`
      : `replication slot ${slot} is in use by another consumer (pid ${holder.pid}${app ? `, application_name ${app}` : ''})`,
    other
      ? `stop that workflow (temporal workflow signal --workflow-id ${other} --name stop) or give this one its own "slot"`
      : 'give this workflow its own "slot", or stop the consumer that reads it',
  );
}

/** Destination column names of a table's source columns, in the load engine's naming (same order, same collisions). */
export function destinationNames(sourceColumns: string[]): Map<string, string> {
  const namer = new ColumnNamer();
  return new Map(sourceColumns.map((c) => [c, namer.name(c)]));
}

/** format_type() of the relation columns pgoutput describes (by type oid and modifier). */
export async function typeNames(client: pg.Client, columns: { typeOid: number; typeMod: number }[]): Promise<string[]> {
  const r = await client.query<{ i: number; type: string }>(
    `select x.i::int as i, format_type(x.oid, nullif(x.m, -1)) as type from unnest($1::oid[], $2::int[]) with ordinality as x(oid, m, i)`,
    [columns.map((c) => c.typeOid), columns.map((c) => c.typeMod)],
  );
  const byIndex = new Map(r.rows.map((row) => [row.i, row.type]));
  return columns.map((_, i) => byIndex.get(i + 1) ?? 'text');
}
