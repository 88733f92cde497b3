/**
 * `sluice status / rejects / reset`: what the destination's metadata tables and Temporal's
 * visibility store know about a resource. Reads with bind parameters only; the schema name
 * goes through the one identifier quoting path.
 */
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import pg from 'pg';
import { fileStateKey } from '../activities/files';
import { incrementalStateKey } from '../activities/incremental';
import { holderLiveness } from '../activities/lease';
import { LEASE_KINDS, leaseKey, parseLease, type LeaseHolder } from '../destinations/postgres/lease';
import { Resource } from '../inputs';
import { destinationTable, qualifiedName } from '../schema/identifiers';
import { SEARCH_ATTRIBUTES } from '../search-attributes';
import { CliError, formatTable, formatTime, truncate } from './output';

export interface DestinationOptions {
  databaseUrl: string | undefined;
  schema: string;
}

export async function withDestination<T>(options: DestinationOptions, fn: (db: pg.Client) => Promise<T>): Promise<T> {
  if (!options.databaseUrl) {
    throw new CliError('DATABASE_URL is not set: export DATABASE_URL=postgres://user:pass@host:5432/db (the destination the worker loads into)');
  }
  const db = new pg.Client({ connectionString: options.databaseUrl, application_name: 'sluice-cli' });
  try {
    await db.connect();
  } catch (err) {
    throw new CliError(`cannot connect to DATABASE_URL: ${(err as Error).message}`);
  }
  try {
    const r = await db.query<{ loads: string | null }>('select to_regclass($1) as loads', [qualifiedName(options.schema, '_sluice_loads')]);
    if (!r.rows[0]?.loads) {
      throw new CliError(`schema "${options.schema}" has no sluice metadata (_sluice_loads): nothing was loaded there yet, or pass --schema with the destination schema of your input`);
    }
    return await fn(db);
  } finally {
    await db.end();
  }
}

/** A string literal for a Temporal visibility query. */
export function visibilityLiteral(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

export function runsQuery(resource: string, runningOnly = false): string {
  return `${SEARCH_ATTRIBUTES.resource.name} = ${visibilityLiteral(resource)}${runningOnly ? ' AND ExecutionStatus = "Running"' : ''}`;
}

export async function listRuns(client: Client, query: string, limit: number): Promise<WorkflowExecutionInfo[]> {
  const runs: WorkflowExecutionInfo[] = [];
  for await (const run of client.workflow.list({ query, pageSize: limit })) {
    runs.push(run);
    if (runs.length >= limit) break;
  }
  return runs;
}

/**
 * The _sluice_state keys that belong to a resource: its incremental cursor (keyed by destination
 * table, so also under every table its loads went to) and one row per loaded file.
 */
async function stateRows(db: pg.Client, schema: string, resource: string) {
  const tables = await db.query<{ table_name: string }>(
    `select distinct table_name from ${qualifiedName(schema, '_sluice_loads')} where resource = $1 and table_name is not null`,
    [resource],
  );
  const keys = [
    incrementalStateKey(Resource.parse({ name: resource })),
    ...tables.rows.map((t) => incrementalStateKey(Resource.parse({ name: resource, table: t.table_name }))),
  ];
  const filesPrefix = fileStateKey(resource, '');
  const r = await db.query<{ resource: string; state: unknown; updated_at: Date }>(
    `select resource, state, updated_at from ${qualifiedName(schema, '_sluice_state')}
      where resource = any($1) or starts_with(resource, $2) order by resource`,
    [keys, filesPrefix],
  );
  return { rows: r.rows, keys, filesPrefix, tables: tables.rows.map((t) => t.table_name) };
}

/**
 * The runs that hold a lease on one of the resource's tables (any kind) and still run, per
 * Temporal. A holder Temporal cannot vouch for either way counts as live: reset must not race it.
 */
async function liveLeaseHolders(db: pg.Client, client: Client, schema: string, resource: string, tables: string[]) {
  const all = new Set([destinationTable(Resource.parse({ name: resource })), ...tables]);
  const keys = [...all].flatMap((table) => LEASE_KINDS.map((kind) => leaseKey(kind, table)));
  const r = await db.query<{ resource: string; state: unknown }>(
    `select resource, state from ${qualifiedName(schema, '_sluice_state')} where resource = any($1) order by resource`,
    [keys],
  );
  const isRunning = holderLiveness(client, () => undefined);
  const live: { key: string; holder: LeaseHolder; liveness: 'running' | 'unknown' }[] = [];
  for (const row of r.rows) {
    const holder = parseLease(row.state)?.holder;
    if (!holder) continue;
    const liveness = await isRunning(holder);
    if (liveness !== 'gone') live.push({ key: row.resource, holder, liveness });
  }
  return live;
}

export async function status(db: pg.Client, client: Client | undefined, schema: string, resource: string | undefined, limit: number): Promise<string> {
  const sections: string[] = [];
  const loads = await db.query<{
    resource: string;
    partition: string | null;
    status: string;
    rows_loaded: string;
    rows_rejected: string;
    started_at: Date;
    error: string | null;
    hint: string | null;
  }>(
    `select resource, partition, status, rows_loaded, rows_rejected, started_at, error, hint
       from ${qualifiedName(schema, '_sluice_loads')}
      where $1::text is null or resource = $1 order by started_at desc, load_id limit $2`,
    [resource ?? null, limit],
  );
  sections.push(
    loads.rows.length === 0
      ? `loads: none${resource ? ` for resource "${resource}"` : ''} in ${schema}._sluice_loads`
      : `recent loads (${schema}._sluice_loads, newest first):\n` +
          formatTable(
            ['started', 'resource', 'partition', 'status', 'rows', 'rejects', 'error / hint'],
            loads.rows.map((l) => [
              formatTime(l.started_at),
              l.resource,
              l.partition ?? '-',
              l.status,
              l.rows_loaded,
              l.rows_rejected,
              l.error ? truncate(`${l.error}${l.hint ? ` (hint: ${l.hint})` : ''}`, 160) : '',
            ]),
          ),
  );
  if (resource) {
    const { rows, filesPrefix } = await stateRows(db, schema, resource);
    const files = rows.filter((r) => r.resource.startsWith(filesPrefix));
    const others = rows.filter((r) => !r.resource.startsWith(filesPrefix));
    const lines = others.map((r) => `  ${r.resource}: ${truncate(JSON.stringify(r.state), 200)} (saved ${formatTime(r.updated_at)})`);
    if (files.length > 0) {
      const latest = files.reduce((a, b) => (a.updated_at > b.updated_at ? a : b));
      lines.push(`  files: ${files.length} loaded, the latest ${latest.resource.slice(filesPrefix.length)} (saved ${formatTime(latest.updated_at)})`);
    }
    sections.push(lines.length ? `saved state (${schema}._sluice_state):\n${lines.join('\n')}` : `saved state: none for resource "${resource}"`);
    sections.push(await runsSection(client, resource, limit));
  }
  return sections.join('\n\n');
}

async function runsSection(client: Client | undefined, resource: string, limit: number): Promise<string> {
  if (!client) return 'runs: Temporal is not reachable (check TEMPORAL_ADDRESS)';
  try {
    const runs = await listRuns(client, runsQuery(resource), limit);
    if (runs.length === 0) return `runs: none with ${runsQuery(resource)}`;
    return (
      `runs (${runsQuery(resource)}):\n` +
      formatTable(
        ['started', 'workflow id', 'type', 'status', 'sluice status'],
        runs.map((r) => [
          formatTime(r.startTime),
          r.workflowId,
          r.type,
          r.status.name,
          String(r.typedSearchAttributes.get(SEARCH_ATTRIBUTES.status) ?? '-'),
        ]),
      )
    );
  } catch (err) {
    return `runs: the visibility query failed (${(err as Error).message}); is the ${SEARCH_ATTRIBUTES.resource.name} search attribute registered?`;
  }
}

export async function rejects(db: pg.Client, schema: string, resource: string, limit: number): Promise<string> {
  const r = await db.query<{ rejected_at: Date; reason: string; source: string | null; row: unknown; load_id: string }>(
    `select rejected_at, reason, source, "row", load_id from ${qualifiedName(schema, '_sluice_rejects')}
      where resource = $1 order by rejected_at desc limit $2`,
    [resource, limit],
  );
  if (r.rows.length === 0) return `rejects: none for resource "${resource}" in ${schema}._sluice_rejects`;
  return (
    `recent rejects of "${resource}" (${schema}._sluice_rejects, newest first):\n` +
    formatTable(
      ['rejected', 'source line', 'reason', 'row'],
      r.rows.map((x) => [formatTime(x.rejected_at), x.source ?? x.load_id, truncate(x.reason, 100), truncate(JSON.stringify(x.row), 120)]),
    )
  );
}

/** Why reset will not run, naming the runs that hold the resource and how to stop them. */
function refusal(resource: string, workflowIds: string[], detail = ''): CliError {
  const ids = [...new Set(workflowIds)];
  return new CliError(
    `refusing to reset "${resource}": ${ids.length === 1 ? 'a run holds' : 'runs hold'} it (${ids.join(', ')})${detail}. ` +
      `Stop ${ids.length === 1 ? 'it' : 'them'} first: ${ids.map((id) => `temporal workflow cancel --workflow-id ${id}`).join('; ')} (or terminate); nothing was reset`,
  );
}

/**
 * Forgets a resource's saved state, so its next run starts from `initialValue` / loads every
 * file again. Refused while a run holds the resource: that run would write its state right back.
 */
export async function reset(db: pg.Client, client: Client | undefined, schema: string, resource: string): Promise<string> {
  if (!client) throw new CliError('cannot check for running workflows: Temporal is not reachable (check TEMPORAL_ADDRESS); nothing was reset');
  const { keys, filesPrefix, tables } = await stateRows(db, schema, resource);
  // The lease says who owns the resource even when the namespace lacks sluice's search attributes.
  const holders = await liveLeaseHolders(db, client, schema, resource, tables);
  if (holders.length > 0) {
    const named = holders.map((h) => `workflow ${h.holder.workflowId} holds ${h.key}${h.liveness === 'unknown' ? ' (Temporal cannot say whether it still runs)' : ''}`);
    throw refusal(resource, holders.map((h) => h.holder.workflowId), `: ${named.join('; ')}; it would write its state right back`);
  }
  let running: WorkflowExecutionInfo[];
  try {
    running = await listRuns(client, runsQuery(resource, true), 20);
  } catch (err) {
    throw new CliError(`cannot check for running workflows (${(err as Error).message}); nothing was reset`);
  }
  if (running.length > 0) throw refusal(resource, running.map((r) => r.workflowId));
  const deleted = await db.query<{ resource: string }>(
    `delete from ${qualifiedName(schema, '_sluice_state')} where resource = any($1) or starts_with(resource, $2) returning resource`,
    [keys, filesPrefix],
  );
  if (deleted.rows.length === 0) return `nothing to reset: no saved state for resource "${resource}" in ${schema}._sluice_state`;
  const files = deleted.rows.filter((r) => r.resource.startsWith(filesPrefix)).length;
  const other = deleted.rows.filter((r) => !r.resource.startsWith(filesPrefix)).map((r) => r.resource);
  const what = [...other, ...(files ? [`${files} loaded file${files === 1 ? '' : 's'}`] : [])].join(', ');
  return `reset "${resource}": forgot ${what}. Its next run starts over (from cursor.initialValue; every file is loaded again).`;
}
