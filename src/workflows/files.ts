import * as wf from '@temporalio/workflow';
import type { Activities, LoadSummary } from '../activities';
import { filesLocation, FilesInput, type Progress } from '../inputs';
import type { LeaseToken } from '../destinations/postgres/lease';
import type { ListedFile } from '../sources/files';
import {
  checkBeforeFanOut,
  failedRun,
  handlePauseResume,
  handleSetParallel,
  isLeaseLost,
  preflightCheck,
  preflightPatched,
  progressQuery,
  rootMessage,
  searchStatus,
  SlidingWindow,
  syncNowSignal,
  validateInput,
  windowLines,
  withResourceLease,
  LOAD_START_TO_CLOSE,
  activityProgressSignal,
  formatBytes,
  RETRY_UNTIL_HEALED,
  retryPolicy,
  retryReportOf,
  RetryBoard,
} from './shared';
import { durationMs } from '../plan/duration';
import { formatCount } from '../plan/format';

const { readFilesState, listSourceFiles } = wf.proxyActivities<Activities>({
  // Listing hashes new and touched files, which takes as long as reading them once.
  startToCloseTimeout: '2h',
  heartbeatTimeout: '30s',
  retry: RETRY_UNTIL_HEALED,
});
const { loadFile } = wf.proxyActivities<Activities>({
  startToCloseTimeout: LOAD_START_TO_CLOSE,
  // The activity heartbeats every second while it runs: a killed worker is noticed in 15 s.
  heartbeatTimeout: '15s',
});

/** Starts the next pass of an `every` workflow now instead of at the end of its sleep. */

export interface FilesResult {
  /** Files the pattern matched. */
  files: number;
  loaded: number;
  /** Already loaded with the same content (by this workflow or, per _sluice_state, an earlier one). */
  skipped: number;
  failed: { file: string; error: string }[];
  rows: number;
  rejected: number;
}

interface FileState {
  fingerprint: string;
  /** How many times this path has been loaded (a changed file is loaded again as the next version). */
  version: number;
}

interface PassState {
  /** Files the listing matched; null until the pass has listed them. */
  listed: number | null;
  loaded: number;
  skipped: number;
  rows: number;
  rejected: number;
  failed: { file: string; error: string; fingerprint: string }[];
}



/**
 * Loads the files of a directory: lists them (path, size, modification time and a content hash),
 * then runs one `loadFile` activity per new or changed file, at most `parallel` in flight. A file
 * that fails for good is recorded and the others carry on. The set of loaded files
 * (path -> fingerprint) is workflow state, and each load also writes its file to _sluice_state
 * in its own transaction, so a new run skips what earlier runs loaded.
 *
 * `once` runs one pass and returns what it did. `every` sleeps between passes (the `syncNow`
 * signal cuts the sleep short) and tries each pass's failed files again in the next one; both
 * obey pause, resume and setParallel, and continue as new when history grows long, even in the
 * middle of a pass, carrying the loaded files (as [path, fingerprint, version]) and the counts.
 */
export async function filesWorkflow(rawInput: unknown): Promise<FilesResult> {
  const input = validateInput('filesWorkflow', FilesInput, rawInput);
  return withResourceLease('files', input.destination, input.resource, (takeLease) => loadFiles(rawInput, input, takeLease));
}

async function loadFiles(rawInput: unknown, input: FilesInput, takeLease: () => Promise<LeaseToken | undefined>): Promise<FilesResult> {
  const everyMs = input.every ? durationMs(input.every) : undefined;
  const carried = input.continuation;
  // Asked before the first await, so the marker sits at the same point on replay.
  const failOnFailures = wf.patched('sluice-fail-on-failures');
  const preflight = preflightPatched();

  const known = new Map<string, FileState>((carried?.files ?? []).map(([path, fingerprint, version]) => [path, { fingerprint, version }]));
  let passes = carried?.passes ?? 0;
  let rows = carried?.rows ?? 0;
  let rejected = carried?.rejected ?? 0;
  let paused = carried?.paused ?? false;
  let parallel = carried?.parallel ?? input.parallel;
  let pass: PassState = { listed: null, skipped: 0, ...(carried?.pass ?? { loaded: 0, rows: 0, rejected: 0, failed: [] }) };
  let phase: 'starting' | 'listing' | 'loading' | 'waiting' | 'done' = 'starting';
  let syncRequested = false;
  let nextPassAt: number | undefined;
  let lastPassAt: number | undefined;
  let listError: string | undefined;
  const window = new SlidingWindow(
    () => parallel,
    () => paused,
  );
  const inFlight = window.inFlight;
  let leaseLost: unknown;
  // Rows each file in flight has staged so far, as its loadFile activity reports them (activityProgress).
  const staged = new Map<string, number>();
  const stagedRows = () => [...staged.values()].reduce((a, b) => a + b, 0);
  const retrying = new RetryBoard();
  // The batch of this pass (files to load), in objects and bytes, for the progress line.
  let batch = { files: 0, bytes: 0, filesDone: 0, bytesDone: 0 };

  const progress = (): Progress => ({
    done: pass.loaded + pass.skipped + pass.failed.length,
    failed: pass.failed.length,
    inFlight: inFlight.size,
    total: pass.listed,
    rows,
    rejected,
    loaded: pass.loaded,
    skipped: pass.skipped,
    failedFiles: pass.failed.map(({ file, error }) => ({ file, error })),
    inFlightFiles: [...inFlight],
    rowsInFlight: stagedRows(),
    knownFiles: known.size,
    batchFiles: batch.files,
    batchBytes: batch.bytes,
    batchFilesDone: batch.filesDone,
    batchBytesDone: batch.bytesDone,
    passes,
    phase,
    paused,
    parallel,
    retrying: retrying.list(),
    ...(listError ? { listError } : {}),
    ...(lastPassAt !== undefined ? { lastPassAt: new Date(lastPassAt).toISOString() } : {}),
    ...(nextPassAt !== undefined ? { nextPassAt: new Date(nextPassAt).toISOString() } : {}),
  });
  const showProgress = () => {
    const p = progress();
    const what = paused ? 'paused' : phase === 'loading' ? 'loading files' : phase;
    const counts =
      pass.listed === null
        ? `${known.size} files loaded so far`
        : `${p.done}/${pass.listed} files (${pass.loaded} loaded, ${pass.skipped} unchanged; ` +
          `batch ${batch.filesDone}/${batch.files} objects, ${formatBytes(batch.bytesDone)} of ${formatBytes(batch.bytes)})`;
    const [main, ...rest] = windowLines({
      head: `**${what}** ${input.resource.name} from ${filesLocation(input.source)}/${input.source.pattern}: ${counts}`,
      rows,
      rejected,
      failed: pass.failed.length,
      parallel,
      // A long file shows its rows as its load reports them, before it commits.
      inFlight: [...inFlight].map((path) => (staged.get(path) ? `${path} (${formatCount(staged.get(path)!)} rows so far)` : path)),
      failures: pass.failed.map((f) => `${f.file} (${f.error})`),
    });
    const lines = [main!];
    if (everyMs !== undefined) {
      lines.push(
        `every ${input.every}: ${passes} passes done` +
          (phase === 'waiting' && nextPassAt !== undefined ? `, next at ${new Date(nextPassAt).toISOString()} (signal syncNow to start it now)` : ''),
      );
    }
    if (listError) lines.push(`listing failed: ${listError}`);
    const retryLine = retrying.line();
    if (retryLine) lines.push(retryLine);
    lines.push(...rest);
    wf.setCurrentDetails(lines.join('\n\n'));
  };
  wf.setHandler(progressQuery, progress);
  handlePauseResume((p) => {
    paused = p;
    showProgress();
  });
  handleSetParallel((n) => {
    parallel = n;
    showProgress();
  });
  wf.setHandler(syncNowSignal, () => {
    syncRequested = true;
  });
  wf.setHandler(activityProgressSignal, ({ details }) => {
    const beat = details as { file?: unknown; rows?: unknown } | null;
    if (typeof beat?.file !== 'string' || !inFlight.has(beat.file)) return;
    const report = retryReportOf(details);
    if (report) retrying.note(beat.file, report);
    else if (typeof beat.rows === 'number') staged.set(beat.file, beat.rows);
    else return;
    showProgress();
  });

  const setStatus = await searchStatus(input.resource.name);
  setStatus('running');
  showProgress();
  if (!carried) await checkBeforeFanOut(preflight, 'filesWorkflow', [preflightCheck(input)], () => setStatus('failed'));
  const lease = await takeLease();

  if (!carried) {
    // A new run starts from what earlier runs committed; continued runs carry the map instead.
    for (const file of await readFilesState(input.destination, input.resource)) {
      known.set(file.path, { fingerprint: file.fingerprint, version: file.version });
    }
  }

  const runFile = async (file: ListedFile) => {
    showProgress();
    const version = (known.get(file.path)?.version ?? 0) + 1;
    try {
      const summary: LoadSummary = await loadFile.executeWithOptions(
        {
          startToCloseTimeout: LOAD_START_TO_CLOSE,
          heartbeatTimeout: '15s',
          summary: `file ${file.path}`,
          retry: retryPolicy(input.maxAttempts),
        },
        [{ source: input.source, resource: input.resource, destination: input.destination, file, version, ...(lease ? { lease } : {}) }],
      );
      known.set(file.path, { fingerprint: file.fingerprint, version });
      pass.loaded++;
      pass.rows += summary.rows;
      pass.rejected += summary.rejected;
      rows += summary.rows;
      rejected += summary.rejected;
    } catch (err) {
      if (isLeaseLost(err)) leaseLost ??= err;
      // A cancelled workflow cancels its loads: that is not the file's failure.
      if (!wf.isCancellation(err)) pass.failed.push({ file: file.path, error: rootMessage(err), fingerprint: file.fingerprint });
    } finally {
      staged.delete(file.path);
      retrying.clear(file.path);
      batch.filesDone++;
      batch.bytesDone += file.size;
      showProgress();
    }
  };

  const continueAsNew = async (midPass: boolean): Promise<never> => {
    await wf.condition(wf.allHandlersFinished);
    return wf.continueAsNew<typeof filesWorkflow>({
      ...(rawInput as object),
      continuation: {
        files: [...known].map(([path, f]) => [path, f.fingerprint, f.version] as [string, string, number]),
        passes,
        rows,
        rejected,
        pass: midPass ? { loaded: pass.loaded, rows: pass.rows, rejected: pass.rejected, failed: pass.failed } : undefined,
        paused,
        parallel,
      },
    });
  };

  for (;;) {
    await wf.condition(() => !paused);
    syncRequested = false;
    phase = 'listing';
    nextPassAt = undefined;
    showProgress();
    let listing: ListedFile[];
    try {
      listing = await listSourceFiles(input.source);
      listError = undefined;
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      listError = rootMessage(err);
      if (everyMs === undefined) {
        setStatus('failed');
        showProgress();
        throw wf.ApplicationFailure.nonRetryable(`cannot list ${filesLocation(input.source)}/${input.source.pattern}: ${listError}`, 'ListFailed');
      }
      // A long-running sync outlives a directory that is briefly unavailable: try again next pass.
      listing = [];
    }

    // A pass resumed after continue-as-new does not retry what already failed in it.
    const failedEarlier = new Map(pass.failed.map((f) => [f.file, f.fingerprint]));
    const todo = listing.filter((f) => known.get(f.path)?.fingerprint !== f.fingerprint && failedEarlier.get(f.path) !== f.fingerprint);
    pass.listed = listing.length;
    batch = { files: todo.length, bytes: todo.reduce((sum, f) => sum + f.size, 0), filesDone: 0, bytesDone: 0 };
    pass.skipped = Math.max(0, listing.length - todo.length - pass.loaded - pass.failed.length);
    phase = 'loading';
    showProgress();

    let cut = false;
    for (const file of todo) {
      if (!(await window.slot(() => leaseLost !== undefined))) {
        cut = leaseLost === undefined;
        break;
      }
      window.start(file.path, () => runFile(file));
    }
    await window.drain();
    if (leaseLost) {
      setStatus('failed');
      throw wf.ApplicationFailure.nonRetryable(rootMessage(leaseLost), 'LeaseLostError');
    }
    if (cut) await continueAsNew(true);

    passes++;
    lastPassAt = Date.now();
    if (everyMs === undefined) {
      setStatus(pass.failed.length ? 'failed' : 'completed');
      phase = 'done';
      showProgress();
      const result: FilesResult = {
        files: pass.listed,
        loaded: pass.loaded,
        skipped: pass.skipped,
        failed: pass.failed.map(({ file, error }) => ({ file, error })),
        rows: pass.rows,
        rejected: pass.rejected,
      };
      if (!failOnFailures || !pass.failed.length || input.allowFailures) return result;
      const named = result.failed.slice(0, 5).map((f) => `${f.file} (${f.error})`).join('; ');
      throw failedRun(
        'FilesFailed',
        `files load of ${input.resource.name}: ${result.failed.length} of ${pass.listed} files failed: ${named}${result.failed.length > 5 ? '; ...' : ''}. ` +
          'Fix them and start the same input again: files already loaded are skipped, so only these load ' +
          '(or set "allowFailures": true to complete despite failures)',
        result,
      );
    }

    phase = 'waiting';
    nextPassAt = Date.now() + everyMs;
    showProgress();
    await wf.condition(() => syncRequested, everyMs);
    await wf.condition(() => !paused);
    if (wf.workflowInfo().continueAsNewSuggested) await continueAsNew(false);
    pass = { listed: null, loaded: 0, skipped: 0, rows: 0, rejected: 0, failed: [] };
  }
}
