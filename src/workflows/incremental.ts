import * as wf from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { SyncCounts, SyncResult } from '../destinations/postgres/incremental-sync';
import { CursorPosition, IncrementalInput, type Progress, type SyncMode } from '../inputs';
import { describePosition, initialPosition } from '../plan/cursor';
import { durationMs } from '../plan/duration';
import type { LeaseToken } from '../destinations/postgres/lease';
import {
  checkBeforeFanOut,
  formatCount,
  handlePauseResume,
  isLeaseLost,
  preflightCheck,
  preflightPatched,
  progressQuery,
  rootMessage,
  searchStatus,
  syncNowSignal,
  validateInput,
  withResourceLease,
  LOAD_START_TO_CLOSE,
  activityProgressSignal,
  RETRY_UNTIL_HEALED,
  retryReportOf,
  type RetryingItem,
} from './shared';

const { readIncrementalState } = wf.proxyActivities<Activities>({
  startToCloseTimeout: '1m',
  retry: RETRY_UNTIL_HEALED,
});
const SYNC_OPTIONS: wf.ActivityOptions = {
  // One call returns after about two minutes (SLUICE_SYNC_BUDGET) at a page boundary; one huge page may take longer.
  startToCloseTimeout: LOAD_START_TO_CLOSE,
  // The activity heartbeats every second while it runs (and fails at SLUICE_STALL_TIMEOUT if nothing moves):
  // a killed worker is noticed in 15 s, and
  // the retry continues after the last page the dead attempt committed.
  heartbeatTimeout: '15s',
  // A sync never fails for an outage: its retries resume from the last committed page once the database is back.
  retry: RETRY_UNTIL_HEALED,
};
const { syncIncrementalPages } = wf.proxyActivities<Activities>(SYNC_OPTIONS);

/** Starts the next sync of an `every` workflow now instead of at the end of its sleep. */

export interface IncrementalResult {
  /** Rows written by the sync (rows of a tie group or lag window read again count again). */
  rows: number;
  /** The cursor value everything up to which is loaded, in the source's text form. */
  cursor: string | number | null;
  /** The primary key of the last row loaded at `cursor` (PostgreSQL sources). */
  tiebreak: string[] | null;
  pages: number;
  rejected: number;
}

/**
 * Loads the rows past a cursor: each sync runs the `syncIncrementalPages` activity until it has
 * caught up, one page per transaction, each page committing its rows together with the new
 * position in _sluice_state. The position (cursor value, primary key of the last row, and a
 * fixed-size summary of the keys at that cursor value) is workflow state; a new workflow resumes
 * from _sluice_state unless `cursor.reset` is set.
 *
 * `once` runs one sync and returns it. `every` sleeps between syncs (the `syncNow` signal cuts
 * the sleep short), obeys pause and resume, and continues as new when history grows long, even
 * in the middle of a sync, carrying the position and the counts.
 */
export async function incrementalWorkflow(rawInput: unknown): Promise<IncrementalResult> {
  const input = validateInput('incrementalWorkflow', IncrementalInput, rawInput);
  // One owner per destination table's cursor: every page's commit checks the lease.
  return withResourceLease('incremental', input.destination, input.resource, (takeLease) => syncResource(rawInput, input, takeLease));
}

async function syncResource(rawInput: unknown, input: IncrementalInput, takeLease: () => Promise<LeaseToken | undefined>): Promise<IncrementalResult> {
  // Asked before the first await, so the marker sits at the same point when another worker replays.
  const preflight = preflightPatched();
  const source = input.source;
  if (source.kind === 'files') throw wf.ApplicationFailure.nonRetryable('incrementalWorkflow reads "postgres" or "registered" sources', 'InvalidInput');
  const everyMs = input.every ? durationMs(input.every) : undefined;
  const chain = wf.workflowInfo().firstExecutionRunId;
  const carried = input.continuation;

  let position: CursorPosition | undefined;
  if (carried) {
    const parsed = CursorPosition.safeParse({ cursor: carried.cursor, tiebreak: carried.tiebreak ?? null, tie: carried.tie });
    if (!parsed.success) throw wf.ApplicationFailure.nonRetryable(`invalid incrementalWorkflow input: continuation: ${parsed.error.issues[0]?.message}`, 'InvalidInput');
    position = parsed.data;
  }
  let syncs = carried?.syncs ?? 0;
  let rows = carried?.rows ?? 0;
  let pages = carried?.pages ?? 0;
  let rejected = carried?.rejected ?? 0;
  let failed = carried?.failed ?? 0;
  let paused = carried?.paused ?? false;
  let lastSyncAt = carried?.lastSyncAt;
  let lastError = carried?.lastError;
  let resumeSync = carried?.inSync;
  let phase: 'starting' | 'syncing' | 'waiting' | 'done' = 'starting';
  let current: SyncCounts | undefined;
  // What the running sync activity last reported (its pages commit before it returns), and the
  // rows it is staging in the page in flight.
  let live: (SyncCounts & { staging: number }) | undefined;
  let lastSync: SyncCounts | undefined;
  let syncRequested = false;
  let nextSyncAt: number | undefined;
  // The running sync's activity between attempts (the attempt that failed and why).
  let retrying: RetryingItem | undefined;

  // Rows and pages the running activity committed that the workflow has not yet been told of by its result.
  const ahead = (): SyncCounts =>
    live && current
      ? { rows: Math.max(0, live.rows - current.rows), pages: Math.max(0, live.pages - current.pages), rejected: Math.max(0, live.rejected - current.rejected) }
      : { rows: 0, pages: 0, rejected: 0 };
  const progress = (): Progress => ({
    done: syncs,
    failed,
    inFlight: phase === 'syncing' ? 1 : 0,
    total: null,
    rows: rows + ahead().rows,
    rejected: rejected + ahead().rejected,
    pages: pages + ahead().pages,
    cursor: position?.cursor ?? null,
    tiebreak: position?.tiebreak ?? null,
    lastSyncAt: lastSyncAt ?? null,
    phase,
    paused,
    ...(current ? { currentSync: live && live.pages >= current.pages ? live : current } : {}),
    ...(lastSync ? { lastSync } : {}),
    ...(lastError ? { lastError } : {}),
    ...(retrying ? { retrying: [retrying] } : {}),
    ...(nextSyncAt !== undefined ? { nextSyncAt: new Date(nextSyncAt).toISOString() } : {}),
  });
  const showProgress = () => {
    const what = paused ? 'paused' : phase;
    const lines = [
      `**${what}** ${input.resource.name} (${input.resource.writeDisposition}) from ${source.kind === 'postgres' ? (source.table ?? 'query') : source.name}`,
      `cursor ${describePosition(input.cursor.column, position)}`,
      `${syncs} syncs, ${formatCount(rows)} rows in ${formatCount(pages)} pages${rejected ? `, ${formatCount(rejected)} rejected` : ''}, ${failed} failed`,
    ];
    if (current) {
      const now = live && live.pages >= current.pages ? live : { ...current, staging: 0 };
      const staging = now.staging ? ` (${formatCount(now.staging)} more in the page being loaded)` : '';
      lines.push(`sync ${syncs + 1} running: ${formatCount(now.pages)} pages, ${formatCount(now.rows)} rows so far${staging}`);
    }
    if (lastSyncAt) lines.push(`last sync ${lastSyncAt}${lastSync ? `: ${formatCount(lastSync.rows)} rows` : ''}`);
    if (phase === 'waiting' && nextSyncAt !== undefined) lines.push(`next sync at ${new Date(nextSyncAt).toISOString()} (signal syncNow to start it now)`);
    if (lastError) lines.push(`last error: ${lastError}`);
    if (retrying) lines.push(`retrying: sync ${syncs + 1} (attempt ${retrying.attempt} failed: ${retrying.error})`);
    wf.setCurrentDetails(lines.join('\n\n'));
  };
  wf.setHandler(progressQuery, progress);
  handlePauseResume((p) => {
    paused = p;
    showProgress();
  });
  wf.setHandler(syncNowSignal, () => {
    syncRequested = true;
  });
  let runningSync: string | undefined;
  // A result supersedes the reports that came before it (a late one is ignored: it is behind).
  const forgetLiveUpTo = (pagesDone: number) => {
    if (live && live.pages <= pagesDone) live = undefined;
  };
  wf.setHandler(activityProgressSignal, ({ details }) => {
    const beat = details as { syncId?: unknown; rows?: unknown; pages?: unknown; rejected?: unknown; staging?: unknown } | null;
    if (!current || typeof beat?.syncId !== 'string' || beat.syncId !== runningSync) return;
    const report = retryReportOf(details);
    if (report) {
      if (!retrying || retrying.attempt <= report.attempt) retrying = { item: `sync ${beat.syncId}`, ...report };
      showProgress();
      return;
    }
    const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
    live = { rows: n(beat.rows), pages: n(beat.pages), rejected: n(beat.rejected), staging: n(beat.staging) };
    showProgress();
  });

  const setStatus = await searchStatus(input.resource.name);
  setStatus('running');
  showProgress();
  if (!carried) await checkBeforeFanOut(preflight, 'incrementalWorkflow', [preflightCheck(input)], () => setStatus('failed'));
  const lease = await takeLease();

  // A first sync from saved state checks the tie group ('start'); one from nothing just reads
  // ('continue'); a reset reads from initialValue and replaces what the destination has from there.
  let mode: SyncMode = 'start';
  if (!position) {
    const initial = initialPosition(input.cursor.initialValue);
    if (input.cursor.reset) {
      position = initial;
      mode = 'restart';
    } else {
      const saved = await readIncrementalState(input.destination, input.resource, input.cursor.column);
      position = saved ?? initial;
      mode = saved ? 'start' : 'continue';
    }
  }

  const continueAsNew = async (inSync?: SyncCounts): Promise<never> => {
    await wf.condition(wf.allHandlersFinished);
    return wf.continueAsNew<typeof incrementalWorkflow>({
      ...(rawInput as object),
      continuation: {
        cursor: position!.cursor,
        tiebreak: position!.tiebreak,
        tie: position!.tie,
        syncs,
        rows,
        pages,
        rejected,
        failed,
        paused,
        lastSyncAt,
        lastError,
        inSync: inSync && { mode: 'continue', ...inSync },
      },
    });
  };

  for (;;) {
    await wf.condition(() => !paused);
    syncRequested = false;
    nextSyncAt = undefined;
    const sync = syncs + 1;
    let counts: SyncCounts = resumeSync ? { rows: resumeSync.rows, pages: resumeSync.pages, rejected: resumeSync.rejected } : { rows: 0, pages: 0, rejected: 0 };
    let syncMode: SyncMode = resumeSync?.mode ?? mode;
    resumeSync = undefined;
    phase = 'syncing';
    current = counts;
    live = undefined;
    runningSync = `${chain}:${sync}`;
    showProgress();
    let succeeded = true;
    try {
      for (;;) {
        const result: SyncResult = await syncIncrementalPages.executeWithOptions(
          { ...SYNC_OPTIONS, summary: `sync ${sync}: ${describePosition(input.cursor.column, position)}` },
          [
            {
              source,
              resource: input.resource,
              destination: input.destination,
              cursor: input.cursor,
              pageSize: input.pageSize,
              chain,
              sync,
              mode: syncMode,
              position: position!,
              done: counts,
              ...(lease ? { lease } : {}),
            },
          ],
        );
        retrying = undefined;
        rows += result.rows - counts.rows;
        pages += result.pages - counts.pages;
        rejected += result.rejected - counts.rejected;
        counts = { rows: result.rows, pages: result.pages, rejected: result.rejected };
        position = result.position;
        syncMode = 'continue';
        current = counts;
        forgetLiveUpTo(counts.pages);
        showProgress();
        if (result.caughtUp) break;
        if (wf.workflowInfo().continueAsNewSuggested) await continueAsNew(counts);
      }
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      // continueAsNew throws to end the run: it is not a failed sync. Histories recorded before
      // this fix counted it as one, and replay the same way.
      if (err instanceof wf.ContinueAsNew && wf.patched('incremental-continue-as-new-mid-sync')) throw err;
      // Another run took the resource over: retrying at the next sync would only fail again.
      if (isLeaseLost(err)) throw wf.ApplicationFailure.nonRetryable(rootMessage(err), 'LeaseLostError');
      failed++;
      lastError = rootMessage(err);
      succeeded = false;
      if (everyMs === undefined) {
        phase = 'done';
        current = undefined;
        setStatus('failed');
        showProgress();
        throw wf.ApplicationFailure.nonRetryable(`incremental sync of ${input.resource.name} failed: ${lastError}`, 'SyncFailed');
      }
    }
    current = undefined;
    live = undefined;
    retrying = undefined;
    // The next sync starts from the saved position; the activity also takes any pages a failed
    // sync committed from _sluice_state, so they are neither lost nor loaded twice.
    mode = 'start';
    if (succeeded) {
      syncs++;
      lastSyncAt = new Date(Date.now()).toISOString();
      lastSync = counts;
      lastError = undefined;
    }
    if (everyMs === undefined) {
      phase = 'done';
      setStatus('completed');
      showProgress();
      return { rows: counts.rows, cursor: position!.cursor, tiebreak: position!.tiebreak, pages: counts.pages, rejected: counts.rejected };
    }
    phase = 'waiting';
    nextSyncAt = Date.now() + everyMs;
    showProgress();
    await wf.condition(() => syncRequested, everyMs);
    await wf.condition(() => !paused);
    if (wf.workflowInfo().continueAsNewSuggested) await continueAsNew();
  }
}
