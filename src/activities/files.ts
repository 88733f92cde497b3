/**
 * Activities of filesWorkflow: plan the next bounded batch of files to load (the listing from a
 * cursor, diffed against _sluice_state), load one file in one transaction (or a group of small
 * files, one after another, each in its own), and, for runs that started before batches, list a
 * whole directory and read which files earlier runs loaded.
 *
 * Loaded files are mirrored to _sluice_state as ONE ROW PER FILE, key
 * `files:<resource>:<path>`, written by the load that loaded the file in the same transaction
 * as its rows. Parallel loads of different files therefore never touch the same state row, so
 * none can overwrite another's entry (a single map per resource would need every load to
 * read-modify-write it, serialized by a lock, or would lose entries to the last writer), and a
 * file is recorded as loaded exactly when its rows are committed. The workflow's own map
 * (path -> fingerprint) is the authoritative copy while it runs; _sluice_state is what a new
 * run starts from.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { resolveConnection } from '../config';
import { ensureMetadata, loadResource, readState, type LoadResult } from '../destinations/postgres/loader';
import type { LeaseToken } from '../destinations/postgres/lease';
import { getPool } from '../destinations/postgres/pool';
import type { Destination, FilesSource, Resource } from '../inputs';
import { qualifiedName } from '../schema/identifiers';
import { extractFile, filesStoreFor, type ListedFile } from '../sources/files';
import { planBatch, type FilesBatch, type StoredFile } from '../sources/files/plan';
import { destinationTable, summarize, toFailure, withHeartbeat, workflowOf, type ActivityDeps, type LoadSummary } from './context';

export interface LoadFileRequest {
  source: FilesSource;
  resource: Resource;
  destination: Destination;
  file: ListedFile;
  /**
   * 1 for a path never loaded before, one more than its previous load for changed content. Part
   * of the load id, so content that changes back to an earlier version is loaded again instead
   * of being taken for that version's finished load.
   */
  version: number;
  /** The resource's lease: the file's commit checks it. */
  lease?: LeaseToken;
}

export interface LoadFileGroupRequest {
  source: FilesSource;
  resource: Resource;
  destination: Destination;
  /** Loaded in this order, each as its own `loadFile` would. */
  files: { file: ListedFile; version: number }[];
  lease?: LeaseToken;
}

/** One file of a group, by its position in the request: counts, or the error it failed with for good. */
export type FileOutcome = { rows: number; rejected: number; alreadyLoaded: boolean } | { error: string };

/** Counts only (and the failures' messages, cut short): a group's result stays small whatever its files hold. */
export interface FileGroupSummary {
  files: FileOutcome[];
}

/** A failed file's message in a group's result: 100 of them stay far under an event's size limit. */
const GROUP_ERROR_CHARS = 1_000;

export interface FileLoadSummary extends LoadSummary {
  path: string;
  fingerprint: string;
  version: number;
}

/** A file an earlier run loaded, as _sluice_state remembers it. */
export interface LoadedFile {
  path: string;
  fingerprint: string;
  version: number;
}

/** What _sluice_state holds for one loaded file. */
interface FileStateValue extends LoadedFile {
  resource: string;
  size: number;
  mtimeMs: number;
  loadId: string;
  /** Local files loaded from a planned batch: unchanged stat data means unchanged bytes (see ListedEntry). */
  statKey?: string;
}

export interface PlanFilesRequest {
  source: FilesSource;
  resource: Resource;
  destination: Destination;
  /** The last path an earlier batch of this pass examined; absent at the start of a pass. */
  after?: string;
  /** At most this many files to load. */
  maxFiles: number;
}

/**
 * Bounds of one planned batch. The result carries at most 128 KiB of files (Temporal refuses
 * payloads over 2 MB and warns far below), and a call examines at most 50,000 files, so a huge
 * unchanged directory moves its progress in steps and a retried call repeats little.
 */
const PLAN_MAX_BYTES = 128 * 1024;
const PLAN_MAX_EXAMINED = 50_000;
/** Paths per _sluice_state query: one indexed `= any($1)` lookup each. */
const PLAN_LOOKUP_BATCH = 1_000;

/** The resource name is URI-encoded so that a ":" in it cannot make two resources' keys meet. */
function fileStatePrefix(resource: string): string {
  return `files:${encodeURIComponent(resource)}:`;
}

export function fileStateKey(resource: string, path: string): string {
  return `${fileStatePrefix(resource)}${path}`;
}

export function fileLoadId(workflowId: string, file: { path: string; fingerprint: string }, version: number): string {
  return `${workflowId}/file:${file.path}#${version}@${file.fingerprint}`;
}

function isLoadedFile(value: unknown): value is LoadedFile {
  const v = value as Partial<LoadedFile> | null;
  return typeof v?.path === 'string' && typeof v.fingerprint === 'string' && typeof v.version === 'number';
}

export function createFileActivities(_deps: ActivityDeps) {
  return {
    /**
     * The files the source's directory or prefix and pattern select, with their fingerprints
     * (locally this reads every new or touched file once; object storage lists ETags).
     */
    async listSourceFiles(source: FilesSource): Promise<ListedFile[]> {
      return withHeartbeat(async (progress) => {
        const store = await filesStoreFor(source);
        const listed: ListedFile[] = [];
        for await (const file of store.list(source.pattern, (p) => progress({ ...p }))) listed.push(file);
        return listed;
      });
    },

    /**
     * The next batch of a pass: files after `after` that are new or changed according to
     * _sluice_state, with the version each loads as, and where the next batch starts.
     */
    async planFilesBatch(req: PlanFilesRequest): Promise<FilesBatch> {
      return withHeartbeat(async (progress) => {
        const url = resolveConnection(req.destination.connection);
        await ensureMetadata(url, req.destination.schema);
        const store = await filesStoreFor(req.source);
        let bytesHashed = 0;
        let planned = { examined: 0, toLoad: 0 };
        const report = () => progress({ ...planned, bytesHashed });
        const entries = store.entries(req.source.pattern, req.after, (p) => {
          bytesHashed = p.bytesHashed;
          report();
        });
        const lookup = (paths: string[]) => readStoredFiles(url, req.destination.schema, req.resource.name, paths);
        const limits = { maxFiles: req.maxFiles, maxBytes: PLAN_MAX_BYTES, maxExamined: PLAN_MAX_EXAMINED, lookupBatch: PLAN_LOOKUP_BATCH };
        return planBatch(entries, lookup, limits, (p) => {
          planned = p;
          report();
        });
      });
    },

    /** Files that earlier runs loaded for this resource, so a new run skips them (runs from before planFilesBatch). */
    async readFilesState(destination: Destination, resource: Resource): Promise<LoadedFile[]> {
      return withHeartbeat(async () => {
        const url = resolveConnection(destination.connection);
        await ensureMetadata(url, destination.schema);
        const prefix = fileStatePrefix(resource.name);
        const result = await getPool(url).query<{ state: unknown }>(
          `select state from ${qualifiedName(destination.schema, '_sluice_state')}
            where left(resource, length($1)) = $1 order by resource`,
          [prefix],
        );
        return result.rows
          .map((r) => r.state)
          .filter(isLoadedFile)
          .map(({ path, fingerprint, version }) => ({ path, fingerprint, version }));
      });
    },

    /**
     * Loads one file in one transaction, recording it in _sluice_state in that same transaction.
     * The load id names the workflow, the path, the version and the fingerprint: a retried
     * attempt (or a replayed workflow) finds the committed load and writes nothing twice.
     */
    async loadFile(req: LoadFileRequest): Promise<FileLoadSummary> {
      const ctx = Context.current();
      return withHeartbeat((progress, signal) => loadOneFile(ctx, req, (rows) => progress({ file: req.file.path, rows }), signal), {
        reportToWorkflow: true,
        reportRetriesAs: { file: req.file.path },
      });
    },

    /**
     * Loads a group of small files one after another, each exactly as `loadFile` loads it: its
     * own transaction, load id and _sluice_state row, its commit checking the lease. A file that
     * fails for good is reported in its outcome and the others load; anything that may heal
     * fails the attempt, and the retry finds the files committed before as done (by load id).
     */
    async loadFileGroup(req: LoadFileGroupRequest): Promise<FileGroupSummary> {
      const ctx = Context.current();
      const group = req.files[0]?.file.path;
      return withHeartbeat(
        async (progress, signal) => {
          const files: FileOutcome[] = [];
          let rows = 0;
          for (const [done, { file, version }] of req.files.entries()) {
            const beat = (staged: number) => progress({ group, file: file.path, filesDone: done, rows: rows + staged });
            beat(0);
            try {
              const summary = await loadOneFile(ctx, { ...req, file, version }, beat, signal);
              rows += summary.rows;
              files.push({ rows: summary.rows, rejected: summary.rejected, alreadyLoaded: summary.alreadyLoaded });
            } catch (err) {
              const failure = toFailure(err);
              // The lease is the run's, not the file's: the whole group stops, as the workflow does.
              if (signal.aborted || !(failure instanceof ApplicationFailure) || !failure.nonRetryable || failure.type === 'LeaseLostError') throw failure;
              files.push({ error: failure.message.slice(0, GROUP_ERROR_CHARS) });
            }
          }
          progress({ group, filesDone: req.files.length, rows });
          return { files };
        },
        { reportToWorkflow: true, ...(group === undefined ? {} : { reportRetriesAs: { group } }) },
      );
    },
  };
}

/** The body of `loadFile`, shared with `loadFileGroup`; `progress` gets the rows staged so far. */
async function loadOneFile(ctx: Context, req: LoadFileRequest, progress: (rows: number) => void, signal: AbortSignal): Promise<FileLoadSummary> {
  const { workflowId, runId } = workflowOf(ctx);
  const { file, version } = req;
  const loadId = fileLoadId(workflowId, file, version);
  const state: FileStateValue = {
    resource: req.resource.name,
    path: file.path,
    fingerprint: file.fingerprint,
    version,
    size: file.size,
    mtimeMs: file.mtimeMs,
    loadId,
    ...(file.statKey !== undefined ? { statKey: file.statKey } : {}),
  };
  let result: LoadResult;
  const url = resolveConnection(req.destination.connection);
  // A changed file replaces what its previous version loaded, whatever the disposition:
  // with append its old rows would otherwise stay beside the new ones.
  const previous = version > 1 ? await previousLoadId(url, req.destination.schema, fileStateKey(req.resource.name, file.path)) : undefined;
  try {
    result = await loadResource({
      lease: req.lease,
      // With merge, by key: only keys no other loaded file provides go (_sluice_file_keys).
      supersede: { kind: 'file', file: file.path, ...(previous === undefined ? {} : { previousLoadId: previous }) },
      url,
      schema: req.destination.schema,
      table: destinationTable(req.resource),
      resource: req.resource,
      loadId,
      workflowId,
      runId,
      partition: file.path,
      attempt: ctx.info.attempt,
      data: await extractFile(req.source, file, { signal }),
      state: { key: fileStateKey(req.resource.name, file.path), value: state },
      onProgress: progress,
    });
  } catch (err) {
    // Cancelled, timed out or shutting down: the file is fine and the rollback left nothing
    // behind, so another attempt (on another worker) may load it.
    if (signal.aborted) {
      throw ApplicationFailure.retryable(`loading ${file.path} was interrupted: ${String(signal.reason)}`, 'LoadInterrupted');
    }
    throw err;
  }
  return {
    ...summarize(result),
    path: file.path,
    fingerprint: file.fingerprint,
    version,
  };
}

/** The stored state of those of `paths` that are loaded, by path: one query for the whole key batch. */
async function readStoredFiles(url: string, schema: string, resource: string, paths: string[]): Promise<Map<string, StoredFile>> {
  const result = await getPool(url).query<{ state: unknown }>(
    `select state from ${qualifiedName(schema, '_sluice_state')} where resource = any($1::text[])`,
    [paths.map((path) => fileStateKey(resource, path))],
  );
  const stored = new Map<string, StoredFile>();
  for (const { state } of result.rows) {
    if (!isLoadedFile(state)) continue;
    const statKey = (state as Partial<FileStateValue>).statKey;
    stored.set(state.path, { fingerprint: state.fingerprint, version: state.version, ...(typeof statKey === 'string' ? { statKey } : {}) });
  }
  return stored;
}

async function previousLoadId(url: string, schema: string, key: string): Promise<string | undefined> {
  const state = (await readState(url, schema, key)) as Partial<FileStateValue> | undefined;
  return typeof state?.loadId === 'string' ? state.loadId : undefined;
}
