/**
 * The load-strategy decision matrix as one pure function: what is known about a source table
 * in, the sluice workflow to run (with its reasons and its exact start command) out. The
 * catalog queries that gather the facts live in ./inspect.ts; this module does no I/O.
 *
 * | scenario                      | pattern               | workflow             |
 * |-------------------------------|-----------------------|----------------------|
 * | small table (< 100K rows)     | full refresh          | fullRefreshWorkflow  |
 * | large table with a timestamp  | timestamp incremental | incrementalWorkflow  |
 * | source supports CDC           | CDC events            | cdcWorkflow          |
 * | one-time historical load      | parallel backfill     | backfillWorkflow     |
 * | critical table                | swap                  | fullRefreshWorkflow  |
 */
import type { WorkflowType } from '../inputs';

export const SMALL_TABLE_ROWS = 100_000;

export type TimestampRole = 'updated' | 'created' | 'other';

export interface TimestampColumn {
  name: string;
  /** As format_type prints it: "timestamp with time zone", "date". */
  type: string;
  /** updated_at-like, created_at-like, or another timestamp. */
  role: TimestampRole;
  /** Name of an index whose first column this is; a cursor or partition filter on it is an index range scan. */
  leadingIndex: string | null;
  /** First and last day in the column (UTC), when it was cheap to find out. */
  minDay?: string | null;
  maxDay?: string | null;
}

export interface TableFacts {
  schema: string;
  table: string;
  rows: number;
  /** estimate: pg_class.reltuples; count: exact; atLeast: a count that stopped at `rows`. */
  rowsFrom: 'estimate' | 'count' | 'atLeast';
  primaryKey: string[];
  timestampColumns: TimestampColumn[];
  walLevel: string;
}

export interface AdviceOptions {
  /** Environment variable that holds the source connection string (never the string itself). */
  connection: string;
  smallTableRows?: number;
  /** A one-time load of the table's history, not a recurring sync. */
  historical?: boolean;
  /** Readers must never see the table empty or half loaded. */
  critical?: boolean;
  taskQueue?: string;
  /** Destination schema; the workflow default (DATABASE_URL, public) when absent. */
  destinationSchema?: string;
  /** UTC day used when a backfill range is unknown (pure: the caller passes the clock in). */
  today: string;
}

export type Pattern = 'full-refresh' | 'incremental' | 'backfill' | 'swap' | 'cdc';

/** The workflow types the advisor recommends: the pipeline's step types and cdcWorkflow. */
export type AdvisedWorkflow = WorkflowType | 'cdcWorkflow';

export interface Recommendation {
  pattern: Pattern;
  /** Headline: "Timestamp incremental". */
  title: string;
  workflowType: AdvisedWorkflow;
  reasons: string[];
  notes: string[];
  cdc: { available: boolean; why: string };
  workflowId: string;
  /** The workflow input, valid against its zod schema in src/inputs.ts. */
  input: Record<string, unknown>;
  command: string;
}

const TIMESTAMP_TYPES = new Set(['timestamp with time zone', 'timestamp without time zone', 'date']);

/** updated_at, modified_at, last_changed, mtime -> updated; created_at, inserted_on -> created. */
export function timestampRole(column: string): TimestampRole {
  const name = column.toLowerCase();
  if (/(updated|modified|changed|mtime)/.test(name)) return 'updated';
  if (/(created|inserted|creation|ctime)/.test(name)) return 'created';
  return 'other';
}

export function isTimestampType(type: string): boolean {
  return TIMESTAMP_TYPES.has(type.replace(/\(\d+\)/, ''));
}

export function recommend(facts: TableFacts, options: AdviceOptions): Recommendation {
  const small = options.smallTableRows ?? SMALL_TABLE_ROWS;
  const qualified = `${facts.schema}.${facts.table}`;
  const size = `${facts.rowsFrom === 'estimate' ? '~' : facts.rowsFrom === 'atLeast' ? 'at least ' : ''}${formatCount(facts.rows)} row${facts.rows === 1 ? '' : 's'}`;
  const pk = facts.primaryKey;
  const cdc = cdcSupport(facts);
  const source = { kind: 'postgres', connection: options.connection, table: qualified };
  const destination = options.destinationSchema ? { destination: { connection: 'DATABASE_URL', schema: options.destinationSchema } } : {};
  const resource = (writeDisposition: 'append' | 'merge' | 'replace') => ({
    name: facts.table,
    writeDisposition,
    ...(pk.length ? { primaryKey: pk } : {}),
  });
  const build = (
    pattern: Pattern,
    title: string,
    workflowType: AdvisedWorkflow,
    fields: Record<string, unknown>,
    reasons: string[],
    notes: string[],
  ): Recommendation => {
    const workflowId = `${pattern}-${qualified}`;
    const input = { source, ...fields, ...destination };
    return {
      pattern,
      title,
      workflowType,
      reasons,
      notes,
      cdc,
      workflowId,
      input,
      command: startCommand(workflowType, options.taskQueue ?? 'sluice', workflowId, input),
    };
  };
  const fullRefresh = (pattern: Pattern, title: string, reasons: string[], notes: string[] = []) =>
    build(pattern, title, 'fullRefreshWorkflow', { resource: resource('replace') }, reasons, notes);

  if (options.historical) {
    const column = partitionColumn(facts.timestampColumns);
    if (!column) {
      return fullRefresh('full-refresh', 'Full refresh (one-time copy)', [
        `a one-time load was asked for, but ${qualified} has no timestamp or date column to split it into partitions`,
        'one full refresh copies the whole table in one activity',
      ]);
    }
    const start = column.minDay ?? addDays(options.today, -365);
    const end = column.maxDay ?? options.today;
    const granularity = backfillGranularity(facts.rows, start, end);
    const notes: string[] = [];
    if (!column.minDay) notes.push(`the range of ${column.name} was not measured (no index leads with it): adjust "start" and "end" to the data`);
    if (!column.leadingIndex) notes.push(`every partition filters on ${column.name}, which no index leads with: each partition scans the table. Consider: create index on ${qualified} (${column.name})`);
    const cursor = cursorColumn(facts.timestampColumns);
    if (cursor) notes.push(`after the backfill, keep the table current with incrementalWorkflow on ${cursor.name}`);
    if (column.role === 'updated') notes.push(`${column.name} changes when a row is updated: a row updated during the backfill can move between partitions. Prefer an immutable created_at-like column`);
    return build(
      'backfill',
      'Parallel backfill',
      'backfillWorkflow',
      { resource: resource('append'), partitionColumn: column.name, start, end, granularity, parallel: 4 },
      [
        'a one-time historical load: split it into partitions loaded in parallel, each retried on its own and re-runnable without duplicates',
        `${column.name} (${column.type}) partitions ${size} from ${start} to ${end} by ${granularity}`,
      ],
      notes,
    );
  }

  if (options.critical) {
    const notes: string[] = [];
    if (facts.rows >= small) {
      notes.push(`${qualified} is large (${size}): every refresh copies all of it`);
      const cursor = cursorColumn(facts.timestampColumns);
      if (cursor && pk.length) notes.push(`a lighter way to keep it current without ever emptying it: incrementalWorkflow on ${cursor.name} with writeDisposition "merge"`);
    }
    return fullRefresh(
      'swap',
      'Swap (zero-downtime full refresh)',
      [
        'a critical table: readers must never see it empty or half loaded',
        'fullRefreshWorkflow stages every row first and swaps them in within one transaction: readers see the old rows or the new ones, and views and grants on the table keep working',
      ],
      notes,
    );
  }

  if (facts.rows < small) {
    return fullRefresh('full-refresh', 'Full refresh', [
      `${qualified} is small (${size}, under ${formatCount(small)}): copying all of it is cheap`,
      'a full refresh also picks up deleted rows and needs no cursor column; run it daily or hourly (e.g. from a Temporal schedule)',
    ]);
  }

  const cursor = cursorColumn(facts.timestampColumns);
  if (cdc.available) {
    return build(
      'cdc',
      'CDC events',
      'cdcWorkflow',
      { source: { kind: 'postgres', connection: options.connection, tables: [qualified] }, deletes: 'soft' },
      [
        `${qualified} is large (${size}) and the source supports CDC: ${cdc.why}`,
        'cdcWorkflow copies it once, then applies every insert, update and delete from the replication slot in commit order: no cursor column, deletes seen, seconds behind',
      ],
      [
        'the source user needs the REPLICATION attribute; the workflow creates a publication and a slot named after the workflow id',
        `stop it with: temporal workflow signal --workflow-id cdc-${qualified} --name stop --input '{"dropSlot": true}' (a slot nobody reads keeps WAL on the source)`,
        ...(cursor ? [`without CDC: incrementalWorkflow on ${cursor.name}`] : []),
      ],
    );
  }
  const cdcNote: string[] = [];
  if (cursor) {
    const reasons = [`${qualified} is large (${size}, at least ${formatCount(small)}): copying all of it on every run is wasteful`];
    const notes: string[] = [];
    if (cursor.role === 'updated') {
      reasons.push(`${cursor.name} (${cursor.type}) moves whenever a row changes: each sync reads only the rows past the cursor`);
    } else {
      reasons.push(`${cursor.name} (${cursor.type}) is the only timestamp: each sync picks up new rows`);
      notes.push(`${cursor.name} does not change on update: updated rows are not picked up again. Add an updated_at column (set by a trigger) if rows change`);
    }
    if (pk.length) reasons.push(`primary key (${pk.join(', ')}): a changed row replaces its old version (writeDisposition "merge")`);
    else notes.push(`no primary key: rows are appended, so an updated row arrives again as a second row. Declare resource.primaryKey and use "merge" if the table has a unique key`);
    if (!cursor.leadingIndex) notes.push(`no index leads with ${cursor.name}: each sync scans the table. Consider: create index on ${qualified} (${cursor.name})`);
    if (cursor.type === 'date') notes.push(`${cursor.name} is a date: each sync re-reads the current day`);
    notes.push('deleted rows are not seen by a timestamp cursor: run a full refresh now and then, or use CDC (wal_level = logical and a primary key)');
    return build(
      'incremental',
      'Timestamp incremental',
      'incrementalWorkflow',
      { resource: resource(pk.length ? 'merge' : 'append'), cursor: { column: cursor.name }, every: '15m' },
      reasons,
      [...cdcNote, ...notes],
    );
  }

  return fullRefresh(
    'full-refresh',
    'Full refresh',
    [
      `${qualified} is large (${size}) but has no timestamp column that marks new or changed rows, so there is nothing to sync incrementally from`,
      'a full refresh copies it all each time, swapped in atomically',
    ],
    [
      ...cdcNote,
      `to sync it incrementally, add an updated_at column kept by a trigger (and an index on it)`,
      ...(cdc.available ? [] : [`or enable logical replication (wal_level = logical${pk.length ? '' : ' and a primary key'}) for CDC`]),
    ],
  );
}

function cdcSupport(facts: TableFacts): { available: boolean; why: string } {
  const logical = facts.walLevel === 'logical';
  const pk = facts.primaryKey.length > 0;
  if (logical && pk) return { available: true, why: `wal_level is logical and the table has a primary key (${facts.primaryKey.join(', ')})` };
  const missing = [
    ...(logical ? [] : [`wal_level is ${facts.walLevel}, not logical`]),
    ...(pk ? [] : ['the table has no primary key']),
  ];
  return { available: false, why: missing.join(' and ') };
}

/** Best incremental cursor: an updated_at-like timestamp, indexed first; a created_at-like one otherwise. */
function cursorColumn(columns: TimestampColumn[]): TimestampColumn | undefined {
  const rank = (c: TimestampColumn) =>
    (c.role === 'updated' ? 0 : c.role === 'created' ? 10 : 20) + (c.type === 'date' ? 5 : 0) + (c.leadingIndex ? 0 : 1);
  return [...columns].sort((a, b) => rank(a) - rank(b))[0];
}

/** Best backfill partition column: one that never changes (created_at-like) and is indexed. */
function partitionColumn(columns: TimestampColumn[]): TimestampColumn | undefined {
  const rank = (c: TimestampColumn) => (c.role === 'created' ? 0 : c.role === 'other' ? 10 : 20) + (c.leadingIndex ? 0 : 1);
  return [...columns].sort((a, b) => rank(a) - rank(b))[0];
}

/** Aims at partitions of roughly 100K to 5M rows. */
function backfillGranularity(rows: number, start: string, end: string): 'hour' | 'day' | 'month' {
  const days = Math.max(1, (Date.parse(`${end}T00:00:00Z`) - Date.parse(`${start}T00:00:00Z`)) / 86_400_000 + 1);
  const perDay = rows / days;
  if (perDay > 5_000_000) return 'hour';
  if (perDay * 30 < 3_000_000 && days > 90) return 'month';
  return 'day';
}

function addDays(day: string, n: number): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) + n * 86_400_000).toISOString().slice(0, 10);
}

/** The Temporal CLI command, quoted for a POSIX shell. */
export function startCommand(workflowType: AdvisedWorkflow, taskQueue: string, workflowId: string, input: unknown): string {
  return [
    'temporal workflow start',
    `--type ${workflowType}`,
    `--task-queue ${shellQuote(taskQueue)}`,
    `--workflow-id ${shellQuote(workflowId)}`,
    `--input ${shellQuote(JSON.stringify(input))}`,
  ].join(' ');
}

function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

export function formatCount(n: number): string {
  return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
