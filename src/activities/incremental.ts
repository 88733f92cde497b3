/**
 * Activities of incrementalWorkflow: read the saved cursor, and sync (page through the rows past
 * the cursor, each page one load in one transaction).
 *
 * The cursor position is written to _sluice_state (key `incremental:<table>`) by the same
 * transaction that writes a page's rows, so the destination always holds exactly the rows up to
 * the position it records. Load ids are `<workflow id>/incremental/<first run id>:<sync>/page:<n>@<start>`:
 * a retried attempt first reads _sluice_state (and its own heartbeat details) to find the pages
 * this sync already committed and continues after the last of them, and a page that did commit
 * is never applied twice.
 *
 * Ties and late rows (see src/plan/cursor.ts): a sync starts strictly after the saved
 * (cursor, key) only if the summary of the source's keys at the saved cursor value, up to the
 * saved key, equals the summary of the keys loaded there (rows that arrive with a higher key are
 * simply read next). If a row arrived below the saved key, or one left, or no summary was saved
 * (a crash between pages of one call), the whole group at that value is read again: merge
 * upserts it; append deletes the destination's rows at (or past) that value and inserts the group
 * again, in the first page's transaction. With `lag`, every sync instead starts `lag` before the
 * cursor, inclusive, with the same rules. Rows whose cursor is null are never read: they have no
 * place in the order.
 */
import { Context } from '@temporalio/activity';
import { z } from 'zod';
import { resolveConnection } from '../config';
import { ensureMetadata, loadResource, readState, type LoadRequest, type LoadResult } from '../destinations/postgres/loader';
import { getPool } from '../destinations/postgres/pool';
import { PermanentError } from '../errors';
import {
  CursorPosition,
  SyncMode,
  type CursorSpec,
  type Destination,
  type PostgresSource,
  type RegisteredSource,
  type Resource,
} from '../inputs';
import { compareCursorValues, cursorValue, groupTie, lagStart, positionKey, sameTie } from '../plan/cursor';
import { durationMs } from '../plan/duration';
import { ColumnNamer, qualifiedName, quoteIdent } from '../schema/identifiers';
import { extract } from '../sources';
import {
  hasRowsPast,
  isTimeType,
  lagStartSql,
  openSnapshot,
  pageSql,
  PageTap,
  readTieRange,
  resolveKeyset,
} from '../sources/postgres/incremental';
import { ROW_REJECT, type Extracted, type Row } from '../sources/types';
import { destinationTable, withHeartbeat, workflowOf } from './context';

export function incrementalStateKey(resource: Resource): string {
  return `incremental:${destinationTable(resource)}`;
}

/** What _sluice_state holds for an incremental resource: the position, and which sync wrote it. */
const IncrementalState = CursorPosition.extend({
  column: z.string(),
  sync: z.object({ id: z.string(), pages: z.number().int().min(0) }),
});
type IncrementalState = z.infer<typeof IncrementalState>;

/** What the sync activity heartbeats (and reads back from a dead attempt). */
const SyncProgress = z.object({
  syncId: z.string(),
  position: CursorPosition,
  rows: z.number().int(),
  pages: z.number().int(),
  rejected: z.number().int(),
});

export interface SyncCounts {
  rows: number;
  pages: number;
  rejected: number;
}

export interface SyncRequest {
  source: PostgresSource | RegisteredSource;
  resource: Resource;
  destination: Destination;
  cursor: CursorSpec;
  pageSize: number;
  /** Which run chain (the first run id: it survives continue-as-new) and which sync of it. */
  chain: string;
  sync: number;
  /**
   * `start`: a new sync from a saved position (verify the tie group, or apply the lag window).
   * `continue`: on from `position` as it is (the next call of a sync, or a first sync).
   * `restart`: from `position` inclusive, replacing (append) what the destination holds from there on (`reset`).
   */
  mode: SyncMode;
  position: CursorPosition;
  /** Counts of this sync before this call: one sync may take several calls. */
  done: SyncCounts;
  /** Return at the first page boundary after this long, so the workflow records the position. */
  budgetMs?: number;
}

export interface SyncResult extends SyncCounts {
  position: CursorPosition;
  /** False when the call returned at its time budget with rows still to read. */
  caughtUp: boolean;
}

/** What the engine needs from its caller: an activity, or a benchmark with no Temporal. */
export interface SyncHooks {
  workflowId: string;
  runId?: string;
  attempt?: number;
  heartbeat: (details: unknown) => void;
  signal?: AbortSignal;
  log: (message: string) => void;
  /** The details a dead attempt heartbeated last. */
  heartbeatDetails?: unknown;
}

const DEFAULT_BUDGET_MS = 120_000;

function syncId(req: SyncRequest): string {
  return `${req.chain}:${req.sync}`;
}

function loadIdPrefix(workflowId: string, req: SyncRequest): string {
  return `${workflowId}/incremental/${syncId(req)}/`;
}

/** The saved position, or undefined; a position saved for another cursor column is an error the user must resolve. */
async function readSaved(url: string, destination: Destination, resource: Resource, column: string): Promise<IncrementalState | undefined> {
  const raw = await readState(url, destination.schema, incrementalStateKey(resource));
  if (raw === undefined) return undefined;
  const parsed = IncrementalState.safeParse(raw);
  if (!parsed.success) {
    throw new PermanentError(
      `_sluice_state holds an unreadable cursor for ${incrementalStateKey(resource)}: ${parsed.error.issues[0]?.message}`,
      'start over with "cursor": { "reset": true }',
    );
  }
  if (parsed.data.column !== column) {
    throw new PermanentError(
      `the saved cursor of ${resource.name} is on column "${parsed.data.column}", not "${column}"`,
      'start over with "cursor": { "reset": true } to move the cursor to the new column',
    );
  }
  return parsed.data;
}

async function countsOfSync(url: string, destination: Destination, prefix: string): Promise<Omit<SyncCounts, 'pages'>> {
  const r = await getPool(url).query<{ rows: string; rejected: string }>(
    `select coalesce(sum(rows_loaded), 0)::bigint as rows, coalesce(sum(rows_rejected), 0)::bigint as rejected
       from ${qualifiedName(destination.schema, '_sluice_loads')}
      where left(load_id, length($1)) = $1 and status = 'completed'`,
    [prefix],
  );
  return { rows: Number(r.rows[0]!.rows), rejected: Number(r.rows[0]!.rejected) };
}

/**
 * Where this call really starts: the request, unless a dead attempt of this sync got further
 * (its heartbeat says so), unless _sluice_state, written with the rows, says further still.
 */
async function resumePoint(
  url: string,
  req: SyncRequest,
  hooks: SyncHooks,
): Promise<{ position: CursorPosition; counts: SyncCounts; mode: SyncMode }> {
  let point = { position: req.position, counts: { ...req.done }, mode: req.mode };
  const beat = SyncProgress.safeParse(hooks.heartbeatDetails);
  if (beat.success && beat.data.syncId === syncId(req) && beat.data.pages > point.counts.pages) {
    const { position, rows, pages, rejected } = beat.data;
    point = { position, counts: { rows, pages, rejected }, mode: 'continue' };
  }
  const saved = await readSaved(url, req.destination, req.resource, req.cursor.column);
  if (!saved) return point;
  const { cursor, tiebreak, tie } = saved;
  if (saved.sync.id === syncId(req) && saved.sync.pages > point.counts.pages) {
    const counts = await countsOfSync(url, req.destination, loadIdPrefix(hooks.workflowId, req));
    point = { position: { cursor, tiebreak, tie }, counts: { ...counts, pages: saved.sync.pages }, mode: 'continue' };
  } else if (req.mode === 'start' && saved.sync.id.startsWith(`${req.chain}:`)) {
    // This workflow wrote the state, so it is at or past the workflow's position: past it when a
    // sync failed after committing pages the workflow never heard of.
    point = { ...point, position: { cursor, tiebreak, tie } };
  }
  return point;
}

/**
 * Appends that read a value again delete the destination's rows from that value on: an index on
 * the cursor column keeps that a range scan. Created the first time it is needed, so loads that
 * never meet a late row pay nothing for it.
 */
async function ensureCursorIndex(url: string, schema: string, table: string, column: string): Promise<void> {
  const pool = getPool(url);
  const exists = await pool.query(`select 1 from pg_attribute where attrelid = to_regclass($1) and attname = $2 and not attisdropped`, [
    qualifiedName(schema, table),
    column,
  ]);
  if (!exists.rowCount) return;
  await pool.query(`create index if not exists ${quoteIdent(`${table.slice(0, 40)}_sluice_cursor`)} on ${qualifiedName(schema, table)} (${quoteIdent(column)})`);
}

/** Syncs rows past the position into the destination, page by page, until caught up or out of budget. */
export async function syncIncremental(req: SyncRequest, hooks: SyncHooks): Promise<SyncResult> {
  const url = resolveConnection(req.destination.connection);
  await ensureMetadata(url, req.destination.schema);
  const start = await resumePoint(url, req, hooks);
  return req.source.kind === 'postgres' ? syncPostgres(url, req, req.source, hooks, start) : syncRegistered(url, req, req.source, hooks, start);
}

interface PageLoad {
  from: CursorPosition;
  pageNumber: number;
  data: Extracted;
  /** The position after the page, asked for when the loader writes the state: after the page has streamed. */
  next: () => CursorPosition;
  replaceFrom?: string | null;
}

/** Loads one page with its position in one transaction. */
async function loadPage(url: string, req: SyncRequest, hooks: SyncHooks, page: PageLoad, onProgress: (rows: number) => void): Promise<LoadResult> {
  const table = destinationTable(req.resource);
  const sync = { id: syncId(req), pages: page.pageNumber };
  const request: LoadRequest = {
    url,
    schema: req.destination.schema,
    table,
    resource: req.resource,
    loadId: `${loadIdPrefix(hooks.workflowId, req)}page:${page.pageNumber}@${positionKey(page.from)}`,
    workflowId: hooks.workflowId,
    runId: hooks.runId,
    partition: `sync ${req.sync} page ${page.pageNumber}`,
    attempt: hooks.attempt,
    data: page.data,
    // The loader reads the state at the end of its transaction, after the rows have streamed:
    // only then is the page's last row, and so the new position, known.
    state: {
      key: incrementalStateKey(req.resource),
      get value(): IncrementalState {
        return { ...page.next(), column: req.cursor.column, sync };
      },
    },
    onProgress,
  };
  if (page.replaceFrom !== undefined) {
    const column = new ColumnNamer().name(req.cursor.column);
    await ensureCursorIndex(url, req.destination.schema, table, column);
    request.replaceFrom = { column: req.cursor.column, value: page.replaceFrom };
  }
  return loadResource(request);
}

/**
 * Pages through a PostgreSQL source. All pages of one call read one snapshot; the call's last
 * page (the sync caught up, or the time budget is spent) also records the summary of the keys at
 * its last cursor value, taken in that snapshot. Pages before it record their position without
 * one: if a crash leaves such a page as the last committed, the next sync reads that one tie
 * group again, which is exact and merely costs the re-read.
 */
async function syncPostgres(
  url: string,
  req: SyncRequest,
  source: PostgresSource,
  hooks: SyncHooks,
  start: { position: CursorPosition; counts: SyncCounts; mode: SyncMode },
): Promise<SyncResult> {
  const sourceUrl = resolveConnection(source.connection);
  const { columns, keyset } = await resolveKeyset(sourceUrl, source, req.cursor.column, req.resource.primaryKey);
  const lagMs = req.cursor.lag ? durationMs(req.cursor.lag) : undefined;
  if (lagMs !== undefined && !isTimeType(keyset.cursor.type)) {
    throw new PermanentError(
      `cursor.lag needs a date or timestamp cursor column, and "${keyset.cursor.name}" is ${keyset.cursor.type}`,
      'remove cursor.lag, or use a timestamp cursor column',
    );
  }
  const append = req.resource.writeDisposition === 'append';
  const budgetMs = req.budgetMs ?? DEFAULT_BUDGET_MS;
  const startedAt = Date.now();
  let { position } = start;
  const counts = { ...start.counts };

  const snapshot = await openSnapshot(sourceUrl);
  try {
    // Where this call starts reading, and (append) what of the destination its first page
    // replaces: decided in the call's snapshot, so a row committed after the check is read too.
    let from = position;
    let replaceFrom: string | null | undefined;
    if (start.mode === 'restart') {
      from = { cursor: position.cursor, tiebreak: null };
      if (append) replaceFrom = position.cursor === null ? null : String(position.cursor);
    } else if (start.mode === 'start' && position.cursor !== null) {
      if (lagMs !== undefined) {
        const [row] = await snapshot.query<{ start: string }>(lagStartSql(keyset), [String(position.cursor), lagMs]);
        from = { cursor: row!.start, tiebreak: null };
        if (append) replaceFrom = row!.start;
      } else if (position.tiebreak !== null) {
        // Keys past the tiebreak are read by going on; only keys at or before it can have been missed.
        const at = String(position.cursor);
        const now = await readTieRange(snapshot, source, keyset, { cursor: at, tiebreak: null }, { cursor: at, tiebreak: position.tiebreak });
        if (!sameTie(now, position.tie)) {
          hooks.log(
            `rows at ${req.cursor.column} = ${position.cursor} changed since the last sync ` +
              `(${position.tie?.count ?? 'unknown'} keys loaded, ${now.count} now): reading that value again`,
          );
          from = { cursor: position.cursor, tiebreak: null };
          if (append) replaceFrom = String(position.cursor);
        }
      }
    }
    const callFrom = from;
    let more = await hasRowsPast(snapshot, source, keyset, from);

    for (;;) {
      hooks.signal?.throwIfAborted();
      if (!more && replaceFrom === undefined) return { position, ...counts, caughtUp: true };
      const lastOfCall = Date.now() - startedAt >= budgetMs;
      const pageFrom = from;
      const pageHasRows = more;
      const tap = new PageTap();
      let next: CursorPosition | undefined;
      let lastPage = true;
      const data: Extracted = {
        kind: 'copy',
        columns,
        copyTo: async (sink) => {
          if (!pageHasRows) {
            sink.end();
            return;
          }
          await snapshot.copyOut(pageSql(source, columns, keyset, pageFrom, req.pageSize), sink, tap);
          const last = tap.lastRow(columns, keyset)!;
          lastPage = tap.rows < req.pageSize || !(await hasRowsPast(snapshot, source, keyset, { ...last }));
          const tie = lastPage || lastOfCall ? groupTie(callFrom, last.cursor, await readTieRange(snapshot, source, keyset, callFrom, last)) : undefined;
          next = { ...last, ...(tie ? { tie } : {}) };
        },
      };
      // An empty page that replaces still commits: the destination drops what the source no
      // longer has from that value on. A lag window that found nothing never moves the cursor back.
      const unchanged = lagMs !== undefined && start.mode === 'start' ? position : pageFrom;
      const pageNumber = counts.pages + 1;
      const result = await loadPage(url, req, hooks, { from: pageFrom, pageNumber, data, next: () => next ?? unchanged, replaceFrom }, (rows) =>
        hooks.heartbeat({ syncId: syncId(req), position, ...counts, staging: rows }),
      );
      replaceFrom = undefined;
      if (result.alreadyLoaded) {
        // Another attempt committed this page (with whatever rows the source had then): go on from
        // what it recorded, in a fresh call (this snapshot may not have its rows).
        const resumed = await resumePoint(url, { ...req, position, done: counts, mode: 'continue' }, { ...hooks, heartbeatDetails: undefined });
        if (resumed.counts.pages <= counts.pages) throw new Error(`page ${pageNumber} of sync ${syncId(req)} committed but _sluice_state does not show it`);
        return { position: resumed.position, ...resumed.counts, caughtUp: false };
      }
      position = next ?? unchanged;
      from = position;
      counts.pages = pageNumber;
      counts.rows += result.rowsLoaded;
      counts.rejected += result.rowsRejected;
      hooks.heartbeat({ syncId: syncId(req), position, ...counts });
      if (lastPage) return { position, ...counts, caughtUp: true };
      if (lastOfCall) return { position, ...counts, caughtUp: false };
      more = true;
    }
  } finally {
    await snapshot.close();
  }
}

/**
 * A code-defined source yields its rows in any order, so a sync is one pass and one load. The
 * extractor gets `ctx.cursor` (the saved value, or the start of the lag window) and may yield
 * everything at or past it, or everything: rows before it are skipped here, and the rows AT it
 * are always read again (a generator cannot be asked for "the keys after k"): merge upserts them,
 * append replaces the destination's rows from that value on. Linear in the rows yielded.
 */
async function syncRegistered(
  url: string,
  req: SyncRequest,
  source: RegisteredSource,
  hooks: SyncHooks,
  start: { position: CursorPosition; counts: SyncCounts; mode: SyncMode },
): Promise<SyncResult> {
  if (start.counts.pages > 0) return { position: start.position, ...start.counts, caughtUp: true };
  const { position, mode } = start;
  const column = req.cursor.column;
  const append = req.resource.writeDisposition === 'append';
  let from = position.cursor;
  let replaceFrom: string | null | undefined;
  if (mode === 'restart') {
    if (append) replaceFrom = from === null ? null : String(from);
  } else if (mode === 'start' && from !== null) {
    if (req.cursor.lag) {
      try {
        from = lagStart(from, durationMs(req.cursor.lag));
      } catch (err) {
        throw new PermanentError((err as Error).message, 'remove cursor.lag, or yield a timestamp in the cursor column');
      }
    }
    if (append) replaceFrom = String(from);
  }

  const data = await extract({
    source,
    cursor: from === null ? undefined : { column, value: from },
    heartbeat: hooks.heartbeat,
    signal: hooks.signal ?? new AbortController().signal,
    log: hooks.log,
  });
  if (data.kind !== 'rows') throw new Error('registered sources yield rows');
  const yielded = data.rows;
  let max: unknown;
  async function* pastCursor(): AsyncIterable<Row> {
    for await (const row of yielded) {
      const value = row[column];
      if (row[ROW_REJECT] !== undefined) {
        yield row;
        continue;
      }
      if (value === null || value === undefined) {
        yield { ...row, [ROW_REJECT]: `cursor column "${column}" is missing` };
        continue;
      }
      try {
        if (from !== null && compareCursorValues(value, from) < 0) continue;
        if (max === undefined || compareCursorValues(value, max) > 0) max = value;
      } catch (err) {
        yield { ...row, [ROW_REJECT]: `cursor column "${column}": ${(err as Error).message}` };
        continue;
      }
      yield row;
    }
  }
  // The new position is known only when the pass has ended, which is before the loader writes
  // the state (at the end of its transaction): so the state is read through a getter.
  const next = (): CursorPosition => ({ cursor: max === undefined ? position.cursor : cursorValue(max), tiebreak: null });
  const table = destinationTable(req.resource);
  const state = { column, sync: { id: syncId(req), pages: 1 } };
  const pageFrom: CursorPosition = { cursor: from, tiebreak: null };
  const request: LoadRequest = {
    url,
    schema: req.destination.schema,
    table,
    resource: req.resource,
    loadId: `${loadIdPrefix(hooks.workflowId, req)}page:1@${positionKey(pageFrom)}`,
    workflowId: hooks.workflowId,
    runId: hooks.runId,
    partition: `sync ${req.sync}`,
    attempt: hooks.attempt,
    data: { ...data, rows: pastCursor() },
    state: {
      key: incrementalStateKey(req.resource),
      get value(): IncrementalState {
        return { ...next(), ...state };
      },
    },
    onProgress: (rows) => hooks.heartbeat({ syncId: syncId(req), position, rows: 0, pages: 0, rejected: 0, staging: rows }),
  };
  if (replaceFrom !== undefined) {
    await ensureCursorIndex(url, req.destination.schema, table, new ColumnNamer().name(column));
    request.replaceFrom = { column, value: replaceFrom };
  }
  const result = await loadResource(request);
  if (result.alreadyLoaded) {
    const resumed = await resumePoint(url, { ...req, mode: 'continue' }, { ...hooks, heartbeatDetails: undefined });
    return { position: resumed.position, ...resumed.counts, caughtUp: true };
  }
  return { position: next(), rows: result.rowsLoaded, pages: 1, rejected: result.rowsRejected, caughtUp: true };
}

export function createIncrementalActivities() {
  return {
    /** The position _sluice_state saved for this resource, or null when it has none. */
    async readIncrementalState(destination: Destination, resource: Resource, column: string): Promise<CursorPosition | null> {
      return withHeartbeat(async () => {
        const saved = await readSaved(resolveConnection(destination.connection), destination, resource, column);
        return saved ? { cursor: saved.cursor, tiebreak: saved.tiebreak, ...(saved.tie ? { tie: saved.tie } : {}) } : null;
      });
    },

    /** Pages through the rows past the position, each page and its position committed together (see the module comment). */
    async syncIncrementalPages(req: SyncRequest): Promise<SyncResult> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat((progress) =>
        syncIncremental(req, {
          workflowId,
          runId,
          attempt: ctx.info.attempt,
          heartbeat: progress,
          signal: ctx.cancellationSignal,
          log: (m) => ctx.log.info(m),
          heartbeatDetails: ctx.info.heartbeatDetails,
        }),
      );
    },
  };
}
