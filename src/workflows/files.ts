import * as wf from '@temporalio/workflow';
import type { Activities, LoadSummary } from '../activities';
import type { FileGroupSummary } from '../activities/files';
import { filesLocation, FilesInput, type Progress } from '../inputs';
import type { LeaseToken } from '../destinations/postgres/lease';
import type { ListedFile } from '../sources/files';
import type { FilesBatch, PlannedFile } from '../sources/files/plan';
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

const { readFilesState, listSourceFiles, planFilesBatch } = wf.proxyActivities<Activities>({
  // Listing hashes new and touched files, which takes as long as reading them once.
  startToCloseTimeout: '2h',
  heartbeatTimeout: '30s',
  retry: RETRY_UNTIL_HEALED,
});
const { loadFile, loadFileGroup } = wf.proxyActivities<Activities>({
  startToCloseTimeout: LOAD_START_TO_CLOSE,
  // The activity heartbeats every second while it runs: a killed worker is noticed in 15 s.
  heartbeatTimeout: '15s',
});

/**
 * Failures kept by name, in progress, across continue-as-new and in the result; all of them are
 * counted, and each is a failed row in _sluice_loads with its error.
 */
const FAILURE_SAMPLES = 10;
/** A failure's message as kept in the workflow: a hostile file must not grow history through it. */
const FAILURE_MESSAGE_CHARS = 2_000;

/**
 * Files per planned batch: enough to keep the window full while the next batch is planned, few
 * enough that a run continuing as new mid-batch re-plans little (its started files are skipped).
 */
function batchSize(parallel: number): number {
  return Math.min(500, Math.max(50, parallel * 10));
}

/**
 * With grouped loads: a small file costs an activity's history events and round trip once per
 * group, so a batch is planned for up to GROUP_FILES per slot (planFilesBatch's own bound on its
 * result's bytes cuts it shorter).
 */
function groupedBatchSize(parallel: number, perGroup: number): number {
  return Math.min(5_000, Math.max(50, parallel * perGroup));
}

/** Files and bytes one `loadFileGroup` loads at most; a file over the byte bound loads alone through `loadFile`. */
const GROUP_FILES = 100;
const GROUP_BYTES = 64 * 1024 * 1024;

/**
 * The groups a batch's files load in, consecutive and in order: as many files per group as
 * keeps every slot of the window busy with the batch (at most GROUP_FILES and GROUP_BYTES). A
 * group of one loads through `loadFile`.
 */
function groupFiles(files: PlannedFile[], parallel: number, maxPerGroup: number): PlannedFile[][] {
  const perGroup = Math.min(maxPerGroup, Math.max(1, Math.ceil(files.length / Math.max(1, parallel))));
  const groups: PlannedFile[][] = [];
  let group: PlannedFile[] = [];
  let bytes = 0;
  for (const planned of files) {
    if (group.length && (group.length >= perGroup || bytes + planned.file.size > GROUP_BYTES)) {
      groups.push(group);
      group = [];
      bytes = 0;
    }
    group.push(planned);
    bytes += planned.file.size;
  }
  if (group.length) groups.push(group);
  return groups;
}

export interface FilesResult {
  /** Files the pattern matched. */
  files: number;
  loaded: number;
  /** Already loaded with the same content (by this workflow or, per _sluice_state, an earlier one). */
  skipped: number;
  /** The failed files, or the first few of them when `failedCount` is present. */
  failed: { file: string; error: string }[];
  /** Present when more files failed than `failed` names: how many. */
  failedCount?: number;
  rows: number;
  rejected: number;
}

interface FileState {
  fingerprint: string;
  /** How many times this path has been loaded (a changed file is loaded again as the next version). */
  version: number;
}

/** The files of one batch (before batches: of the whole pass), in objects and bytes, for the progress line. */
interface Batch {
  files: number;
  bytes: number;
  filesDone: number;
  bytesDone: number;
}

interface PassState {
  /** Files the listing matched; null until the pass has listed them (in batches: until the listing ends). */
  listed: number | null;
  /** In batches: files examined so far, up to the cursor (loaded, unchanged, failed or in flight). */
  examined: number;
  /** The last path examined; the next batch starts after it. */
  cursor?: string;
  loaded: number;
  /** Before batches: unchanged files, counted from the whole listing. */
  skipped: number;
  rows: number;
  rejected: number;
  /** Before batches every failure of the pass; in batches the first few. */
  failed: { file: string; error: string; fingerprint: string }[];
  failedCount: number;
}

/**
 * Loads the files of a directory or object-storage prefix, one `loadFile` activity per new or
 * changed file, at most `parallel` in flight; a file that fails for good is recorded and the
 * others carry on. Each load writes its file to _sluice_state (`files:<resource>:<path>`) in its
 * own transaction, and that is the one record of what is loaded: the `planFilesBatch` activity
 * lists the source from a cursor in a stable order, diffs it against _sluice_state and hands
 * back a bounded batch of files to load, with the next cursor. The workflow carries the cursor,
 * counts and the first few failures, never the listing or the loaded files, so history and
 * payloads stay small at any directory size.
 *
 * `once` runs one pass and returns what it did. `every` sleeps between passes (the `syncNow`
 * signal cuts the sleep short); each pass starts its cursor over, so files that failed are tried
 * again in the next one (within a pass they are not: the cursor is past them). Both obey pause,
 * resume and setParallel, and continue as new when history grows long, between batches or in the
 * middle of one (carrying the path of the last file started; files loaded since are skipped by
 * the next plan, their state having committed with their rows).
 *
 * Runs from before batches (no `files-bounded-batches` marker) list the whole source in one
 * activity and carry every loaded file through continue-as-new; they replay that way.
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
  const inBatches = wf.patched('files-bounded-batches');
  // Small files load many to an activity (each still in its own transaction): see runGroup.
  const groupedLoads = inBatches && wf.patched('files-grouped-loads');
  // Runs from before `filesPerActivity` grouped every batch (up to GROUP_FILES a group); runs now
  // group only when the input asks (the contract's default is one activity per file).
  const perGroup = !groupedLoads ? 1 : wf.patched('files-grouped-opt-in') ? input.filesPerActivity : GROUP_FILES;
  const grouped = groupedLoads && perGroup > 1;

  // Before batches: every file loaded, the workflow's own record. In batches only a run that a
  // run from before batches continued carries it, and only uses it to finish that pass as it began.
  const known = new Map<string, FileState>((carried?.files ?? []).map(([path, fingerprint, version]) => [path, { fingerprint, version }]));
  let passes = carried?.passes ?? 0;
  let rows = carried?.rows ?? 0;
  let rejected = carried?.rejected ?? 0;
  let paused = carried?.paused ?? false;
  let parallel = carried?.parallel ?? input.parallel;
  const newPass = (): PassState => ({ listed: null, examined: 0, loaded: 0, skipped: 0, rows: 0, rejected: 0, failed: [], failedCount: 0 });
  let pass: PassState = newPass();
  if (carried?.pass) {
    const { failed, failedCount, ...counts } = carried.pass;
    pass = { ...pass, ...counts, failed: inBatches ? failed.slice(0, FAILURE_SAMPLES) : failed, failedCount: failedCount ?? failed.length };
  }
  // A run from before batches that continued mid-pass named the files that failed in it.
  const failedEarlierInPass = new Map(inBatches && carried?.files ? (carried.pass?.failed ?? []).map((f) => [f.file, f.fingerprint]) : []);
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
  // Rows each file (or group) in flight has staged so far, as its activity reports them (activityProgress).
  const staged = new Map<string, number>();
  // Groups in flight by their first path (what their heartbeats name): window key, files, files
  // done as the activity reports them, and files the workflow has counted (when the group falls
  // back to one activity per file).
  const groups = new Map<string, { key: string; files: number; done: number; counted: number }>();
  // Files in flight: the window's slots, a group counting as its files not yet counted.
  const filesInFlight = () => inFlight.size + [...groups.values()].reduce((n, g) => n + g.files - g.counted - 1, 0);
  const stagedRows = () => [...staged.values()].reduce((a, b) => a + b, 0);
  const retrying = new RetryBoard();
  // The batch being loaded (files to load), in objects and bytes, for the progress line.
  let batch: Batch = { files: 0, bytes: 0, filesDone: 0, bytesDone: 0 };
  let batches = 0;
  // In batches, unchanged files are what was examined and neither loaded, failed nor in flight.
  const skipped = () => (inBatches ? Math.max(0, pass.examined - pass.loaded - pass.failedCount - filesInFlight()) : pass.skipped);

  const progress = (): Progress => ({
    done: pass.loaded + skipped() + pass.failedCount,
    failed: pass.failedCount,
    inFlight: filesInFlight(),
    total: pass.listed,
    rows,
    rejected,
    loaded: pass.loaded,
    skipped: skipped(),
    failedFiles: pass.failed.map(({ file, error }) => ({ file, error })),
    inFlightFiles: [...inFlight],
    rowsInFlight: stagedRows(),
    ...(inBatches ? { examined: pass.examined, batches } : { knownFiles: known.size }),
    ...(grouped ? { groupsInFlight: groups.size } : {}),
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
    const detail =
      `(${pass.loaded} loaded, ${skipped()} unchanged; ` +
      `batch ${inBatches ? `${batches} ` : ''}${batch.filesDone}/${batch.files} objects, ${formatBytes(batch.bytesDone)} of ${formatBytes(batch.bytes)})`;
    const counts =
      pass.listed !== null
        ? `${p.done}/${pass.listed} files ${detail}`
        : inBatches
          ? `${p.done} files so far, listing goes on ${detail}`
          : `${known.size} files loaded so far`;
    const [main, ...rest] = windowLines({
      head: `**${what}** ${input.resource.name} from ${filesLocation(input.source)}/${input.source.pattern}: ${counts}`,
      rows,
      rejected,
      failed: pass.failedCount,
      parallel,
      // A group shows how far it is (its files done, rows so far); a long file its rows so far, before it commits.
      inFlight: [...inFlight].map((key) => {
        const group = [...groups.values()].find((g) => g.key === key);
        const rowsSoFar = staged.get(key) ? `${formatCount(staged.get(key)!)} rows so far` : '';
        if (group) return `${key} (${group.done}/${group.files} done${rowsSoFar ? `, ${rowsSoFar}` : ''})`;
        return rowsSoFar ? `${key} (${rowsSoFar})` : key;
      }),
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
    const beat = details as { file?: unknown; rows?: unknown; group?: unknown; filesDone?: unknown } | null;
    const report = retryReportOf(details);
    if (typeof beat?.group === 'string' && grouped) {
      const group = groups.get(beat.group);
      if (!group) return;
      if (report) retrying.note(group.key, report);
      else if (typeof beat.rows === 'number') {
        staged.set(group.key, beat.rows);
        if (typeof beat.filesDone === 'number') group.done = Math.min(group.files, Math.max(group.done, beat.filesDone));
      } else return;
      showProgress();
      return;
    }
    if (typeof beat?.file !== 'string' || !inFlight.has(beat.file)) return;
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

  if (!carried && !inBatches) {
    // A new run starts from what earlier runs committed; continued runs carry the map instead.
    for (const file of await readFilesState(input.destination, input.resource)) {
      known.set(file.path, { fingerprint: file.fingerprint, version: file.version });
    }
  }

  const recordFailure = (failure: PassState['failed'][number]) => {
    pass.failedCount++;
    if (!inBatches) pass.failed.push(failure);
    else if (pass.failed.length < FAILURE_SAMPLES) pass.failed.push({ ...failure, error: failure.error.slice(0, FAILURE_MESSAGE_CHARS) });
  };

  const loadOptions = (summary: string): wf.ActivityOptions => ({
    startToCloseTimeout: LOAD_START_TO_CLOSE,
    heartbeatTimeout: '15s',
    summary,
    retry: retryPolicy(input.maxAttempts),
  });

  const runFile = async (file: ListedFile, version: number, of: Batch) => {
    showProgress();
    try {
      const summary: LoadSummary = await loadFile.executeWithOptions(
        loadOptions(`file ${file.path}`),
        [{ source: input.source, resource: input.resource, destination: input.destination, file, version, ...(lease ? { lease } : {}) }],
      );
      if (!inBatches) known.set(file.path, { fingerprint: file.fingerprint, version });
      pass.loaded++;
      pass.rows += summary.rows;
      pass.rejected += summary.rejected;
      rows += summary.rows;
      rejected += summary.rejected;
    } catch (err) {
      if (isLeaseLost(err)) leaseLost ??= err;
      // A cancelled workflow cancels its loads: that is not the file's failure.
      if (!wf.isCancellation(err)) recordFailure({ file: file.path, error: rootMessage(err), fingerprint: file.fingerprint });
    } finally {
      staged.delete(file.path);
      retrying.clear(file.path);
      of.filesDone++;
      of.bytesDone += file.size;
      showProgress();
    }
  };

  /**
   * Loads consecutive small files in one `loadFileGroup` activity: one activity's events and
   * round trip for the group, each file still its own transaction, load id and _sluice_state
   * row. A file that fails for good fails alone (its outcome says so). When the group itself
   * fails for good (what it hit kept failing through every attempt), its files go through
   * `loadFile` one at a time, as ungrouped files do: those it committed are found done by load
   * id, and whichever file the failure is really about fails alone.
   */
  const runGroup = async (files: PlannedFile[], key: string, of: Batch) => {
    const first = files[0]!.file.path;
    const group = { key, files: files.length, done: 0, counted: 0 };
    groups.set(first, group);
    showProgress();
    let outcomes: FileGroupSummary['files'] | undefined;
    try {
      const summary = await loadFileGroup.executeWithOptions(loadOptions(`${files.length} files from ${first}`), [
        {
          source: input.source,
          resource: input.resource,
          destination: input.destination,
          files: files.map(({ file, version }) => ({ file, version })),
          ...(lease ? { lease } : {}),
        },
      ]);
      if (summary.files.length === files.length) outcomes = summary.files;
    } catch (err) {
      retrying.clear(key);
      if (isLeaseLost(err)) leaseLost ??= err;
      // A cancelled workflow cancels its loads: that is not the files' failure.
      if (leaseLost !== undefined || wf.isCancellation(err)) {
        groups.delete(first);
        staged.delete(key);
        of.filesDone += files.length;
        of.bytesDone += files.reduce((sum, f) => sum + f.file.size, 0);
        showProgress();
        return;
      }
    }
    staged.delete(key);
    retrying.clear(key);
    if (outcomes) {
      groups.delete(first);
      for (const [i, outcome] of outcomes.entries()) {
        const { file } = files[i]!;
        if ('error' in outcome) {
          recordFailure({ file: file.path, error: outcome.error, fingerprint: file.fingerprint });
        } else {
          pass.loaded++;
          pass.rows += outcome.rows;
          pass.rejected += outcome.rejected;
          rows += outcome.rows;
          rejected += outcome.rejected;
        }
        of.filesDone++;
        of.bytesDone += file.size;
      }
      showProgress();
      return;
    }
    for (const { file, version } of files) {
      if (leaseLost !== undefined) {
        of.filesDone++;
        of.bytesDone += file.size;
      } else {
        await runFile(file, version, of);
      }
      group.counted++;
      group.done = group.counted;
    }
    groups.delete(first);
  };

  const continueAsNew = async (midPass: boolean): Promise<never> => {
    await wf.condition(wf.allHandlersFinished);
    if (inBatches) {
      return wf.continueAsNew<typeof filesWorkflow>({
        ...(rawInput as object),
        continuation: {
          passes,
          rows,
          rejected,
          pass: midPass
            ? {
                loaded: pass.loaded,
                rows: pass.rows,
                rejected: pass.rejected,
                failed: pass.failed,
                failedCount: pass.failedCount,
                examined: pass.examined,
                ...(pass.cursor !== undefined ? { cursor: pass.cursor } : {}),
              }
            : undefined,
          paused,
          parallel,
        },
      });
    }
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

  /** The listing failed: `once` fails the run, `every` ends the pass with what it did and tries again next pass. */
  const listingFailed = async (err: unknown): Promise<void> => {
    if (wf.isCancellation(err)) throw err;
    listError = rootMessage(err);
    if (everyMs === undefined) {
      if (inBatches) await window.drain();
      setStatus('failed');
      showProgress();
      throw wf.ApplicationFailure.nonRetryable(`cannot list ${filesLocation(input.source)}/${input.source.pattern}: ${listError}`, 'ListFailed');
    }
  };

  /**
   * One pass in planned batches, from the pass's cursor on. The next batch is planned while the
   * last files of the one before are still loading. Returns 'cut' when history is long enough to
   * continue as new: every file up to the cursor has then been started (and, once the window
   * drains, settled), none after it.
   */
  const passInBatches = async (): Promise<'done' | 'cut'> => {
    for (;;) {
      if (leaseLost !== undefined) return 'done';
      if (wf.workflowInfo().continueAsNewSuggested) return 'cut';
      let planned: FilesBatch;
      try {
        planned = await planFilesBatch({
          source: input.source,
          resource: input.resource,
          destination: input.destination,
          ...(pass.cursor !== undefined ? { after: pass.cursor } : {}),
          maxFiles: grouped ? groupedBatchSize(parallel, perGroup) : batchSize(parallel),
        });
        listError = undefined;
      } catch (err) {
        await listingFailed(err);
        pass.listed = pass.examined;
        return 'done';
      }
      const examinedBefore = pass.examined;
      const of: Batch = { files: planned.files.length, bytes: planned.files.reduce((sum, f) => sum + f.file.size, 0), filesDone: 0, bytesDone: 0 };
      if (of.files) {
        batch = of;
        batches++;
      }
      phase = 'loading';
      showProgress();
      // Settled by the run from before batches that this one continues.
      const settled = ({ file }: PlannedFile) => failedEarlierInPass.get(file.path) === file.fingerprint || known.get(file.path)?.fingerprint === file.fingerprint;
      if (grouped) {
        for (const { file } of planned.files.filter(settled)) {
          of.filesDone++;
          of.bytesDone += file.size;
        }
        for (const group of groupFiles(planned.files.filter((f) => !settled(f)), parallel, perGroup)) {
          if (!(await window.slot(() => leaseLost !== undefined))) return leaseLost === undefined ? 'cut' : 'done';
          const [{ file, version }] = group as [PlannedFile];
          const key = `${group.length} files from ${file.path}`;
          if (group.length === 1) window.start(file.path, () => runFile(file, version, of));
          else window.start(key, () => runGroup(group, key, of));
          // Every file up to the cursor has started: a run that continues as new resumes after the group.
          const last = group[group.length - 1]!;
          pass.examined = examinedBefore + last.examined;
          pass.cursor = last.file.path;
        }
      } else {
        for (const one of planned.files) {
          const { file, version, examined } = one;
          if (!settled(one)) {
            if (!(await window.slot(() => leaseLost !== undefined))) return leaseLost === undefined ? 'cut' : 'done';
            window.start(file.path, () => runFile(file, version, of));
          } else {
            of.filesDone++;
            of.bytesDone += file.size;
          }
          pass.examined = examinedBefore + examined;
          pass.cursor = file.path;
        }
      }
      pass.examined = examinedBefore + planned.examined;
      if (planned.cursor !== undefined) pass.cursor = planned.cursor;
      showProgress();
      if (planned.exhausted) {
        pass.listed = pass.examined;
        return 'done';
      }
    }
  };

  /** One pass the way runs from before batches make it: the whole listing in one activity result. */
  const passFromListing = async (): Promise<boolean> => {
    let listing: ListedFile[];
    try {
      listing = await listSourceFiles(input.source);
      listError = undefined;
    } catch (err) {
      await listingFailed(err);
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

    for (const file of todo) {
      if (!(await window.slot(() => leaseLost !== undefined))) return leaseLost === undefined;
      window.start(file.path, () => runFile(file, (known.get(file.path)?.version ?? 0) + 1, batch));
    }
    return false;
  };

  for (;;) {
    await wf.condition(() => !paused);
    syncRequested = false;
    phase = 'listing';
    nextPassAt = undefined;
    showProgress();
    const cut = inBatches ? (await passInBatches()) === 'cut' : await passFromListing();
    await window.drain();
    if (leaseLost) {
      setStatus('failed');
      throw wf.ApplicationFailure.nonRetryable(rootMessage(leaseLost), 'LeaseLostError');
    }
    if (cut) await continueAsNew(true);

    passes++;
    lastPassAt = Date.now();
    if (everyMs === undefined) {
      setStatus(pass.failedCount ? 'failed' : 'completed');
      phase = 'done';
      showProgress();
      const files = pass.listed ?? pass.examined;
      const result: FilesResult = {
        files,
        loaded: pass.loaded,
        skipped: skipped(),
        failed: pass.failed.map(({ file, error }) => ({ file, error })),
        ...(pass.failedCount > pass.failed.length ? { failedCount: pass.failedCount } : {}),
        rows: pass.rows,
        rejected: pass.rejected,
      };
      if (!failOnFailures || !pass.failedCount || input.allowFailures) return result;
      const named = result.failed.slice(0, 5).map((f) => `${f.file} (${f.error})`).join('; ');
      throw failedRun(
        'FilesFailed',
        `files load of ${input.resource.name}: ${pass.failedCount} of ${files} files failed: ${named}${pass.failedCount > 5 ? '; ...' : ''}. ` +
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
    pass = newPass();
    if (inBatches) {
      failedEarlierInPass.clear();
      known.clear();
    }
  }
}
