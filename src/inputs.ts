/**
 * Workflow inputs as zod schemas: the one definition that workflows, the CLI, the tests and
 * the docs share (CONTRACT.md). Types are inferred from these, never written twice.
 *
 * This module is bundled into workflow code, so it must stay deterministic and import nothing
 * but zod.
 */
import { z } from 'zod';

/** An environment variable name: connections are named, never inlined, so secrets stay out of history. */
const envVarName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be the NAME of an environment variable (like SOURCE_DATABASE_URL), not a connection string');

const columnName = z.string().min(1, 'must be a non-empty column name');

/**
 * A PostgreSQL type name as written in DDL ("bigint", "numeric(12,2)", "timestamp with time zone",
 * "text[]"). The pattern admits no quotes or semicolons because the name is placed in DDL as is.
 */
export const pgTypeName = z
  .string()
  .regex(
    /^[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?( with(out)? time zone)?(\[\])?$/,
    'must be a PostgreSQL type name such as bigint, numeric(12,2), timestamptz, jsonb or text[]',
  );

const isoDateOrTimestamp = z
  .string()
  .regex(
    /^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?)?$/,
    'must be a date like 2024-01-31 or a UTC timestamp like 2024-01-31T05:00:00Z',
  );

/** "30s", "5m", "1h", "1d": how long to sleep between syncs. */
export const duration = z.string().regex(/^\d+(ms|s|m|h|d)$/, 'must be a duration like 30s, 5m, 1h or 1d');

export const PostgresSource = z
  .strictObject({
    kind: z.literal('postgres'),
    connection: envVarName.describe('NAME of the environment variable that holds the source connection string, like SOURCE_DATABASE_URL'),
    /** `schema.table` or `table`. */
    table: z.string().min(1).optional().describe('`schema.table` or `table`; give exactly one of table or query'),
    /** A SELECT whose result is the resource; partition and cursor filters are wrapped around it. */
    query: z.string().min(1).optional().describe('a SELECT whose result is the resource; partition and cursor filters are wrapped around it'),
  })
  .refine((s) => (s.table === undefined) !== (s.query === undefined), {
    message: 'give exactly one of "table" or "query"',
    path: ['table'],
  });

/**
 * One CSV delimiter, quote or escape character. Control characters are refused: a NUL or a line
 * break as delimiter turns any file (/proc/self/environ, a key file) into "rows" of its contents.
 */
const csvCharacter = z
  .string()
  .length(1, 'must be exactly one character')
  .refine((c) => c === '\t' || !/[\p{Cc}\p{Cs}]/u.test(c), 'must not be a control character such as NUL, CR or LF (tab is allowed as a delimiter)');

/** `s3://bucket/prefix/`: an object-storage location (any S3-compatible store). */
const s3Url = z
  .string()
  .regex(
    /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[^\u0000-\u001f]*)?$/,
    'must be an object-storage URL like s3://bucket/prefix/ (bucket names are lower case letters, digits, dots and dashes)',
  );

export const FilesSource = z
  .strictObject({
    kind: z.literal('files'),
    /** A local directory; give this or `url`. */
    path: z.string().min(1, 'must be a directory').optional().describe('a local directory (inside SLUICE_FILES_ROOTS); give this or `url`'),
    /** Object storage: `s3://bucket/prefix/`; give this or `path`. */
    url: s3Url.optional().describe('object storage: `s3://bucket/prefix/`; give this or `path`'),
    /**
     * With `url`: NAME of the credentials, read by the worker from NAME_S3_ENDPOINT,
     * NAME_S3_ACCESS_KEY_ID, NAME_S3_SECRET_ACCESS_KEY, NAME_S3_REGION, NAME_S3_FORCE_PATH_STYLE.
     * Absent: the standard AWS chain (AWS_* variables, profiles, instance roles).
     */
    connection: envVarName.optional().describe('with `url`: NAME of the credentials, read from NAME_S3_ENDPOINT, NAME_S3_ACCESS_KEY_ID, NAME_S3_SECRET_ACCESS_KEY, NAME_S3_REGION, NAME_S3_FORCE_PATH_STYLE; absent: the standard AWS chain'),
    /** Glob relative to `path` (or to the URL's prefix); `**` descends into subdirectories. */
    pattern: z.string().min(1).default('*').describe('glob relative to `path` (or to the URL\'s prefix); `**` descends into subdirectories'),
    format: z.enum(['csv', 'jsonl', 'parquet']).describe('how the files are written; `.gz` CSV and JSON Lines are decompressed either way'),
    csv: z
      .strictObject({
        delimiter: csvCharacter.default(',').describe('one character between fields (no control characters)'),
        /** The quote character (default "); `escape` escapes a quote inside a quoted field (default: the quote itself). */
        quote: csvCharacter.optional().describe('the quote character (default ")'),
        escape: csvCharacter.optional().describe('escapes a quote inside a quoted field (default: the quote itself)'),
        /** false when the file has no header row; columns are then named column_1, column_2, ... */
        header: z.boolean().default(true).describe('false when the file has no header row; columns are then named column_1, column_2, ...'),
      })
      .optional()
      .describe('CSV options'),
  })
  .superRefine((s, ctx) => {
    if ((s.path === undefined) === (s.url === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['path'], message: 'give exactly one of "path" (a local directory) or "url" (s3://bucket/prefix/)' });
    }
    if (s.connection !== undefined && s.url === undefined) {
      ctx.addIssue({ code: 'custom', path: ['connection'], message: '"connection" names object-storage credentials: it goes with "url", not "path"' });
    }
  });

/** Where a files source reads: its directory or its s3:// URL, for messages and progress lines. */
export function filesLocation(source: FilesSource): string {
  return source.url ?? source.path ?? '';
}

export const RegisteredSource = z.strictObject({
  kind: z.literal('registered'),
  /** `source.resource`, as registered in the worker's source registry (e.g. "demo.events"). */
  name: z.string().regex(/^[\w-]+\.[\w-]+$/, 'must be "source.resource", like demo.events').describe('`source.resource` as registered in the worker (SLUICE_SOURCES), like demo.events'),
  /** Free-form options handed to the resource's extract function. */
  options: z.record(z.string(), z.unknown()).optional().describe("free-form options handed to the resource's extract function"),
});

export const Source = z.discriminatedUnion('kind', [PostgresSource, FilesSource, RegisteredSource]);

export const ContractMode = z.enum(['evolve', 'freeze', 'discard_row', 'discard_value']);

/**
 * What may change in the destination schema, in the style of dlt's schema contracts.
 * `dataTypes` governs values that do not fit an existing column: safe widening
 * (integer -> bigint -> numeric, date -> timestamptz) always happens; `evolve` also allows
 * widening to text, `discard_row` (the default) sends the row to _sluice_rejects.
 */
export const SchemaContract = z.strictObject({
  tables: ContractMode.default('evolve').describe('whether a new table may be created'),
  columns: ContractMode.default('evolve').describe('whether new columns may be added'),
  dataTypes: ContractMode.default('discard_row').describe('values that do not fit their column: `evolve` widens it to text, `discard_row` sends the row to _sluice_rejects (safe widening always happens)'),
});

const keyList = z
  .union([columnName, z.array(columnName).min(1)])
  .transform((k) => (typeof k === 'string' ? [k] : k));

export const Resource = z
  .strictObject({
    name: z.string().min(1).describe('the resource name, as _sluice_loads, _sluice_rejects and `sluice status` know it'),
    /** Destination table; defaults to the normalized resource name. */
    table: z.string().min(1).optional().describe('destination table; defaults to the normalized resource name'),
    writeDisposition: z.enum(['append', 'merge', 'replace']).default('append').describe('`append` inserts, `merge` upserts on primaryKey, `replace` swaps the whole table'),
    primaryKey: keyList.optional().describe('column or columns that identify a row; needed by `merge`; rows without it are rejected'),
    /** With merge: delete every destination row whose merge key occurs in the load, then insert. */
    mergeKey: keyList.optional().describe('with merge: delete every destination row whose merge key occurs in the load, then insert'),
    /** With merge: rows whose value in this column is true are deleted from the destination. */
    hardDelete: columnName.optional().describe('with merge: rows whose value in this column is true are deleted from the destination'),
    columns: z.record(z.string(), pgTypeName).optional().describe('declared PostgreSQL column types, like {"amount": "numeric(12,2)"}; a value that does not cast is rejected; other columns are inferred'),
    schemaContract: SchemaContract.optional().describe('what may change in the destination schema (dlt-style schema contract)'),
  })
  .superRefine((r, ctx) => {
    if (r.writeDisposition === 'merge' && !r.primaryKey && !r.mergeKey) {
      ctx.addIssue({
        code: 'custom',
        path: ['primaryKey'],
        message: 'writeDisposition "merge" needs a primaryKey (or a mergeKey); use "append" for immutable events',
      });
    }
    if (r.hardDelete && r.writeDisposition !== 'merge') {
      ctx.addIssue({ code: 'custom', path: ['hardDelete'], message: 'hardDelete only applies to writeDisposition "merge"' });
    }
  });

export const Destination = z.strictObject({
  connection: envVarName.default('DATABASE_URL').describe('NAME of the environment variable that holds the destination connection string'),
  schema: z.string().min(1).default('public').describe('destination schema; created when missing'),
});

const defaultDestination = { connection: 'DATABASE_URL', schema: 'public' };

/**
 * Optional cap on the attempts of one partition or file. Unset (the default), transient errors
 * (a database that is down, a lost connection) retry until they heal; permanent ones fail at once.
 */
function maxAttempts(item: 'partition' | 'file') {
  return z
    .number()
    .int()
    .min(1)
    .max(100)
    .optional()
    .describe(
      `cap on attempts per ${item} before it is recorded as failed; unset (the default): transient errors (a database that is down, a lost connection) ` +
        'retry until they heal, permanent ones (bad data, an unreadable file, a missing table) fail at once',
    );
}

const common = {
  source: Source,
  resource: Resource,
  destination: Destination.default(defaultDestination),
};

export const Granularity = z.enum(['hour', 'day', 'month']);

export const BackfillInput = z
  .strictObject({
    ...common,
    partitionColumn: columnName.describe('the date or timestamp column that partitions the source'),
    start: isoDateOrTimestamp.describe('first partition: a date like 2024-01-01 or a UTC timestamp like 2024-01-01T05:00:00Z'),
    /** Inclusive: the partition that contains `end` is the last one. */
    end: isoDateOrTimestamp.describe('last partition, inclusive: the partition that contains `end` is the last one'),
    granularity: Granularity.default('day').describe('one partition per hour, day or month (UTC)'),
    parallel: z.number().int().min(1).max(500).default(4).describe('at most this many partitions in flight; the setParallel signal changes it'),
    /** Re-run only these partition keys (e.g. the failed ones of an earlier run). */
    onlyPartitions: z.array(z.string().min(1)).optional().describe('re-run only these partition keys, e.g. the failed ones of an earlier run'),
    maxAttempts: maxAttempts('partition'),
    /** Skip partitions an earlier run (any workflow id) committed; the result lists them. */
    skipLoaded: z.boolean().optional().describe('skip partitions an earlier run (any workflow id) committed; the result lists them'),
    /** Complete (not FAILED) even when partitions failed for good. */
    allowFailures: z.boolean().optional().describe('complete (not FAILED) even when partitions, files or steps failed for good'),
    /**
     * Stop starting partitions after this many failed for good in a row (the run then ends
     * FAILED). 10: a broken setup (wrong table, column or connection) fails every partition, so it
     * stops after ten instead of failing the whole range, while scattered bad partitions, each
     * followed by good ones, never stop it.
     */
    maxConsecutiveFailures: z.number().int().min(1).default(10).describe('stop starting partitions after this many failed for good in a row (the run then ends FAILED)'),
    /** Internal: what a run hands to its continue-as-new successor. */
    continuation: z
      .strictObject({
        nextIndex: z.number().int().min(0),
        succeeded: z.number().int().min(0),
        rows: z.number().int().min(0),
        rejected: z.number().int().min(0),
        /** The first few failures; `failedCount` counts them all. */
        failed: z.array(z.strictObject({ partition: z.string(), error: z.string() })),
        failedCount: z.number().int().min(0).optional(),
        skipped: z.array(z.string()).optional(),
        skippedCount: z.number().int().min(0).optional(),
        consecutiveFailures: z.number().int().min(0).optional(),
        paused: z.boolean(),
        parallel: z.number().int().min(1),
      })
      .optional()
      .describe('Internal: what a run hands to its continue-as-new successor; never set it yourself'),
  })
  .superRefine((b, ctx) => {
    if (b.source.kind === 'files') {
      ctx.addIssue({ code: 'custom', path: ['source', 'kind'], message: 'backfillWorkflow reads "postgres" or "registered" sources; use filesWorkflow for files' });
    }
    if (b.resource.writeDisposition === 'replace') {
      ctx.addIssue({ code: 'custom', path: ['resource', 'writeDisposition'], message: 'a backfill loads partition by partition: use "append" (each partition\'s range is replaced) or "merge"; use fullRefreshWorkflow to replace a whole table' });
    }
    if (b.start > b.end) {
      ctx.addIssue({ code: 'custom', path: ['end'], message: `end (${b.end}) is before start (${b.start})` });
    }
  });

export const CursorSpec = z.strictObject({
  column: columnName.describe('the column that grows with every change, like updated_at'),
  initialValue: z.union([z.string(), z.number()]).optional().describe('where the first sync starts (rows past it); from the beginning when omitted'),
  /** Start over from initialValue, ignoring the cursor saved in _sluice_state. */
  reset: z.boolean().default(false).describe('start over from initialValue, ignoring the cursor saved in _sluice_state'),
  /** Re-read this far behind the cursor, for sources that stamp rows before they commit. */
  lag: duration.optional().describe('re-read this far behind the cursor (like 5m), for sources that stamp rows before they commit'),
});

const schedule = {
  once: z.boolean().optional().describe('true: run once and finish; give either once or every'),
  every: duration.optional().describe('keep running, once per this interval (30s, 5m, 1h, 1d); the syncNow signal runs at once'),
};

function requireSchedule(s: { once?: boolean; every?: string }, ctx: z.RefinementCtx) {
  if (!s.once && !s.every) {
    ctx.addIssue({ code: 'custom', path: ['once'], message: 'give "once": true for one sync or "every": "5m" to keep syncing' });
  }
  if (s.once && s.every) {
    ctx.addIssue({ code: 'custom', path: ['every'], message: 'give either "once" or "every", not both' });
  }
}

/**
 * Where an incremental load stands: everything up to (cursor, tiebreak) in (cursor column,
 * primary key) order is loaded. `tiebreak: null` means nothing AT `cursor` is loaded yet (the
 * next rows are those with cursor >= `cursor`; `cursor: null` means from the beginning). `tie`
 * summarizes the primary keys loaded at `cursor` (their count and the sum of their hashes), so
 * the next sync can tell whether rows arrived at that value late without keeping the keys.
 * Not user input (it is read back from _sluice_state and heartbeats), so it is not strict.
 */
export const CursorPosition = z.object({
  cursor: z.union([z.string(), z.number()]).nullable(),
  tiebreak: z.array(z.string()).nullable(),
  tie: z.object({ count: z.number().int().min(0), hash: z.string().regex(/^-?\d+$/) }).optional(),
});

/** How a call of the sync activity starts: see src/activities/incremental.ts. */
export const SyncMode = z.enum(['start', 'continue', 'restart']);

export const IncrementalInput = z
  .strictObject({
    ...common,
    cursor: CursorSpec.describe('which column orders the changes, and where to start'),
    ...schedule,
    /** Rows per page read from the source; each page is committed with its cursor. */
    pageSize: z.number().int().min(1).max(1_000_000).default(50_000).describe('rows per page read from the source; each page is committed together with its cursor'),
    continuation: z
      .strictObject({
        cursor: z.unknown(),
        tiebreak: z.unknown().optional(),
        syncs: z.number().int(),
        rows: z.number().int(),
        tie: CursorPosition.shape.tie,
        pages: z.number().int().min(0).optional(),
        rejected: z.number().int().min(0).optional(),
        /** Syncs that failed (with `every`, a failed sync is retried at the next one). */
        failed: z.number().int().min(0).optional(),
        paused: z.boolean().optional(),
        lastSyncAt: z.string().optional(),
        lastError: z.string().optional(),
        /** Present when the run continued as new in the middle of a sync: that sync's mode and counts so far. */
        inSync: z
          .strictObject({
            mode: SyncMode,
            rows: z.number().int().min(0),
            pages: z.number().int().min(0),
            rejected: z.number().int().min(0),
          })
          .optional(),
      })
      .optional()
      .describe('Internal: what a run hands to its continue-as-new successor; never set it yourself'),
  })
  .superRefine((s, ctx) => {
    requireSchedule(s, ctx);
    if (s.source.kind === 'files') {
      ctx.addIssue({ code: 'custom', path: ['source', 'kind'], message: 'incrementalWorkflow reads "postgres" or "registered" sources; use filesWorkflow for files' });
    }
    if (s.resource.writeDisposition === 'replace') {
      ctx.addIssue({ code: 'custom', path: ['resource', 'writeDisposition'], message: 'an incremental load adds to the table: use "append" or "merge"; use fullRefreshWorkflow to replace a whole table' });
    }
  });

export const FilesInput = z
  .strictObject({
    ...common,
    source: FilesSource,
    parallel: z.number().int().min(1).max(500).default(4).describe('at most this many files in flight; the setParallel signal changes it'),
    ...schedule,
    maxAttempts: maxAttempts('file'),
    filesPerActivity: z
      .number()
      .int()
      .min(1)
      .max(100)
      .default(1)
      .describe('small files one activity may load one after another (64 MiB in all), each still in its own transaction; 1 (the default): one activity per file'),
    /** With `once`: complete (not FAILED) even when files failed for good. */
    allowFailures: z.boolean().optional().describe('complete (not FAILED) even when partitions, files or steps failed for good'),
    /** Internal: what a run hands to its continue-as-new successor. */
    continuation: z
      .strictObject({
        /**
         * Runs from before batches: every file loaded so far, as [path, fingerprint, version].
         * Runs now carry no files at all (_sluice_state records them), only the pass's cursor.
         */
        files: z.array(z.tuple([z.string(), z.string(), z.number().int().min(1)])).optional(),
        /** Passes completed ("every"). */
        passes: z.number().int().min(0),
        /** Totals over all passes. */
        rows: z.number().int().min(0),
        rejected: z.number().int().min(0),
        /** Present when the run continued as new in the middle of a pass: that pass's counts so far. */
        pass: z
          .strictObject({
            loaded: z.number().int().min(0),
            rows: z.number().int().min(0),
            rejected: z.number().int().min(0),
            /** The pass's failures, all of them before batches; now the first few (failedCount counts them all). */
            failed: z.array(z.strictObject({ file: z.string(), error: z.string(), fingerprint: z.string() })),
            failedCount: z.number().int().min(0).optional(),
            /** Files examined so far in the pass (loaded, unchanged or failed). */
            examined: z.number().int().min(0).optional(),
            /** The last path examined: the pass goes on after it. */
            cursor: z.string().optional(),
          })
          .optional(),
        paused: z.boolean(),
        parallel: z.number().int().min(1),
      })
      .optional()
      .describe('Internal: what a run hands to its continue-as-new successor; never set it yourself'),
  })
  .superRefine(requireSchedule);

export const FullRefreshInput = z.strictObject({ ...common }).superRefine((s, ctx) => {
  if (s.source.kind === 'files') {
    ctx.addIssue({ code: 'custom', path: ['source', 'kind'], message: 'fullRefreshWorkflow reads "postgres" or "registered" sources' });
  }
});

/** `schema.table` as written in cdcWorkflow's source.tables: both parts required, no quoting. */
const qualifiedTable = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$/, 'must be a schema-qualified table name like public.orders');

/** An identifier sluice creates on the source (slot, publication): PostgreSQL's slot-name rules. */
const replicationName = z.string().regex(/^[a-z0-9_]{1,63}$/, 'must be 1-63 lower-case letters, digits or underscores');

export const CdcSource = z.strictObject({
  kind: z.literal('postgres'),
  connection: envVarName.describe('the variable holding the source connection string (a role with REPLICATION and SELECT)'),
  tables: z.array(qualifiedTable).min(1, 'name at least one table, like ["public.orders"]').describe('schema-qualified tables to capture; each lands as <destination.schema>.<table>'),
});

/**
 * cdcWorkflow: snapshot, then logical-replication changes (CONTRACT.md). Unknown keys are
 * refused (strict objects): a misspelt "delete" must not silently fall back to soft deletes.
 */
export const CdcInput = z
  .strictObject({
    source: CdcSource.describe('the PostgreSQL database (wal_level=logical) and the tables to capture'),
    destination: z.strictObject(Destination.shape).default(defaultDestination),
    deletes: z.enum(['hard', 'soft']).default('soft').describe('hard deletes the destination row; soft sets its _sluice_deleted_at'),
    /** An initial copy of each table, consistent with the stream. */
    snapshot: z.boolean().default(true).describe('copy each table first, consistent with the stream (false: changes from now on only)'),
    /** Replication slot and publication on the source; default: derived from the workflow id, created when missing. */
    slot: replicationName.optional().describe('replication slot on the source (default: derived from the workflow id, created when missing)'),
    publication: replicationName.optional().describe('publication on the source (default: derived from the workflow id, created when missing)'),
    /** Snapshot chunks (of any table) copied at once. */
    parallel: z.number().int().min(1).max(64).default(4).describe('snapshot chunks (of any table) copied at once'),
    /**
     * Rows per snapshot chunk: a larger table whose key starts with an integer column is copied
     * in key ranges of about this many rows, each its own activity (a crash redoes one chunk).
     */
    snapshotChunkRows: z.number().int().min(1).default(1_000_000).describe('a larger table whose key starts with an integer column is copied in key ranges of about this many rows, one activity each'),
    /** A batch closes at the first commit after this many changes ... */
    batchChanges: z.number().int().min(1).max(1_000_000).default(10_000).describe('a batch closes at the first commit after this many changes ...'),
    /** ... or this long after its first change. */
    batchWait: duration.default('1s').describe('... or this long after its first change'),
    /** How long one streaming activity runs before it reports back (history stays bounded). */
    streamWindow: duration.default('1m').describe('how long one streaming activity runs before it reports back (keeps history bounded)'),
    /** Internal: what a run hands to its continue-as-new successor. */
    continuation: z
      .strictObject({
        slot: z.string(),
        publication: z.string(),
        createdSlot: z.boolean(),
        createdPublication: z.boolean(),
        snapshotDone: z.boolean(),
        paused: z.boolean(),
      })
      .optional()
      .describe('Internal: what a run hands to its continue-as-new successor; never set it yourself'),
  })
  .superRefine((c, ctx) => {
    const seen = new Map<string, string>();
    c.source.tables.forEach((t, i) => {
      const name = t.split('.')[1]?.toLowerCase();
      if (name === undefined) return; // not schema-qualified: reported by the pattern
      const other = seen.get(name);
      if (other !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['source', 'tables', i], message: `${t} and ${other} would both land as ${c.destination.schema}.${name}: load them with two workflows into different destination schemas` });
      }
      seen.set(name, t);
    });
  });

export const WorkflowType = z.enum([
  'backfillWorkflow',
  'incrementalWorkflow',
  'filesWorkflow',
  'fullRefreshWorkflow',
  'pipelineWorkflow',
]);

export const PipelineStep = z.strictObject({
  name: z.string().min(1).describe('the step name, unique in the pipeline'),
  workflow: WorkflowType.describe('the workflow type the step runs as a child workflow'),
  /** The child workflow's own input; validated by the child when it starts. */
  input: z.record(z.string(), z.unknown()).describe("the child workflow's own input (see its section); checked before any step runs"),
  dependsOn: z.array(z.string().min(1)).default([]).describe('steps that must succeed first; a failed step skips everything downstream'),
});

export const PipelineInput = z.strictObject({
  name: z.string().min(1).describe('the pipeline name'),
  steps: z.array(PipelineStep).min(1, 'a pipeline needs at least one step').describe('the steps, run in dependency order'),
  parallel: z.number().int().min(1).max(100).default(2).describe('at most this many steps running at once'),
  /** Re-run only these steps (and nothing else), e.g. the failed and skipped ones of an earlier run. */
  onlySteps: z.array(z.string().min(1)).optional().describe("re-run only these steps, e.g. the result's `rerun` of an earlier run"),
  /** Complete (not FAILED) even when steps failed. */
  allowFailures: z.boolean().optional().describe('complete (not FAILED) even when partitions, files or steps failed for good'),
});

export type Source = z.infer<typeof Source>;
export type PostgresSource = z.infer<typeof PostgresSource>;
export type FilesSource = z.infer<typeof FilesSource>;
export type RegisteredSource = z.infer<typeof RegisteredSource>;
export type Resource = z.infer<typeof Resource>;
export type Destination = z.infer<typeof Destination>;
export type SchemaContract = z.infer<typeof SchemaContract>;
export type ContractMode = z.infer<typeof ContractMode>;
export type Granularity = z.infer<typeof Granularity>;
export type BackfillInput = z.infer<typeof BackfillInput>;
export type IncrementalInput = z.infer<typeof IncrementalInput>;
export type CursorSpec = z.infer<typeof CursorSpec>;
export type CursorPosition = z.infer<typeof CursorPosition>;
export type SyncMode = z.infer<typeof SyncMode>;
export type FilesInput = z.infer<typeof FilesInput>;
export type FullRefreshInput = z.infer<typeof FullRefreshInput>;
export type PipelineInput = z.infer<typeof PipelineInput>;
export type PipelineStep = z.infer<typeof PipelineStep>;
export type WorkflowType = z.infer<typeof WorkflowType>;
export type CdcInput = z.infer<typeof CdcInput>;
export type CdcSource = z.infer<typeof CdcSource>;

/** The `progress` query answer every sluice workflow gives (CONTRACT.md). */
export interface Progress {
  done: number;
  failed: number;
  inFlight: number;
  total: number | null;
  rows: number;
  [extra: string]: unknown;
}

/**
 * Validates `raw` and names every bad field: `resource.writeDispositon: unknown field, did you
 * mean writeDisposition?`, `partitionColumn: required`. Returns the parsed value or the message;
 * callers decide how to fail (workflows fail non-retryably, the CLI prints and exits).
 *
 * `unknownKeys: 'strip'` drops unknown keys instead of refusing them: what inputs parsed
 * before the schemas became strict did, so workflows started then still replay.
 */
export function parseInput<S extends z.ZodType>(
  schema: S,
  raw: unknown,
  options: { unknownKeys?: 'reject' | 'strip' } = {},
): { ok: true; value: z.infer<S> } | { ok: false; message: string; problems: InputProblem[] } {
  const problems: InputProblem[] = [];
  const unknown: PropertyKey[][] = [];
  const result = schema.safeParse(raw, {
    error: (issue) => {
      if (issue.code === 'unrecognized_keys') {
        // The strict object that raised it knows its own keys: suggest the nearest one.
        const shape = (issue.inst as { _zod?: { def?: { shape?: object } } } | undefined)?._zod?.def?.shape ?? {};
        const known = Object.keys(shape).filter((key) => !INTERNAL_KEYS.has(key));
        for (const key of issue.keys) {
          const path = [...(issue.path ?? []), key];
          unknown.push(path);
          const near = closestName(key, known);
          problems.push({ path, message: `unknown field${near ? `, did you mean ${near}?` : known.length ? ` (known: ${known.join(', ')})` : ''}` });
        }
        return 'unknown field';
      }
      if (issue.input === undefined && issue.code === 'invalid_type') return 'required';
      return undefined;
    },
  });
  if (result.success) return { ok: true, value: result.data };
  const others = result.error.issues.filter((issue) => issue.code !== 'unrecognized_keys');
  if (options.unknownKeys === 'strip' && others.length === 0) return parseInput(schema, withoutPaths(raw, unknown));
  for (const issue of others) {
    // A missing discriminator ("kind") comes back as a union issue with zod's own wording.
    const missing = issue.code === 'invalid_union' && valueAt(raw, issue.path) === undefined;
    problems.push({ path: issue.path, message: missing ? `required (${issue.message})` : issue.message });
  }
  const lines = problems.map((p) => `${pathText(p.path)}: ${p.message}`);
  return { ok: false, message: [...new Set(lines)].join("; "), problems };
}

/** One bad field: where it is in the input, and what is wrong with it. */
export interface InputProblem {
  path: readonly PropertyKey[];
  message: string;
}

/** Keys the workflows write for themselves (continue-as-new state): never suggested to users. */
const INTERNAL_KEYS = new Set(['continuation']);

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let node = raw;
  for (const step of path) node = node && typeof node === 'object' ? (node as Record<PropertyKey, unknown>)[step] : undefined;
  return node;
}

function pathText(path: readonly PropertyKey[] | undefined): string {
  return path?.length ? path.map(String).join('.') : '(input)';
}

/** A copy of `raw` without the keys at `paths` (each path ends in the key to drop). */
function withoutPaths(raw: unknown, paths: PropertyKey[][]): unknown {
  // Inputs arrive as JSON, so a JSON round trip copies them exactly (and works inside the workflow sandbox).
  const copy = JSON.parse(JSON.stringify(raw)) as unknown;
  for (const path of paths) {
    const node = valueAt(copy, path.slice(0, -1));
    if (node && typeof node === 'object') delete (node as Record<PropertyKey, unknown>)[path[path.length - 1]!];
  }
  return copy;
}

/**
 * The known name a misspelled `name` most likely meant: the nearest by edit distance (a swap of
 * two neighbouring letters counts as one edit), ignoring case, if it is close enough to be a
 * typo rather than a different word, or a name that begins with it. Undefined when nothing is that close.
 */
export function closestName(name: string, known: readonly string[]): string | undefined {
  const wanted = name.toLowerCase();
  const limit = Math.max(1, Math.min(3, Math.floor(wanted.length / 3)));
  let best: { name: string; distance: number } | undefined;
  for (const candidate of known) {
    const lower = candidate.toLowerCase();
    const distance = editDistance(wanted, lower);
    // A cut-off name ("created" for created_at) is a typo too, however many letters are missing.
    const close = distance <= limit || (wanted.length >= 3 && lower.startsWith(wanted));
    if (close && (!best || distance < best.distance)) best = { name: candidate, distance };
  }
  return best?.name;
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}
