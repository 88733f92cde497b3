import * as wf from '@temporalio/workflow';
import type { Activities, LoadSummary } from '../activities';
import type { LeaseToken } from '../destinations/postgres/lease';
import { BackfillInput, type Progress } from '../inputs';
import { partitionAt, partitionCount, partitionFromKey } from '../plan/partitions';
import type { PartitionRange } from '../sources/types';
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
  validateInput,
  windowLines,
  withResourceLease,
  LOAD_START_TO_CLOSE,
  activityProgressSignal,
  retryPolicy,
  retryReportOf,
  RetryBoard,
} from './shared';

const { loadPartition } = wf.proxyActivities<Activities>({
  startToCloseTimeout: LOAD_START_TO_CLOSE,
  // The activity heartbeats every second while it runs: a killed worker is noticed in 15 s.
  heartbeatTimeout: '15s',
});

export interface BackfillResult {
  partitions: number;
  succeeded: number;
  /** The first failures (every one stays in _sluice_loads, status 'failed'): see `failedCount`. */
  failed: { partition: string; error: string }[];
  /** How many partitions failed for good. */
  failedCount?: number;
  rows: number;
  rejected: number;
  /** With skipLoaded: partitions an earlier run had committed, left alone (the first few; see `skippedCount`). */
  skipped?: string[];
  skippedCount?: number;
  /** Set when the backfill stopped early after `maxConsecutiveFailures` failures in a row. */
  stoppedAt?: string;
  /** The input fields that re-run just what did not load: merge them into this run's input. */
  rerun?: { onlyPartitions: string[] } | { skipLoaded: true };
}

/** Failures (and skipped partitions) a result and a continue-as-new carry by name: the rest are counted. */
const KEPT = 20;

/**
 * Backfills a date range: one `loadPartition` activity per hour, day or month partition, at
 * most `parallel` in flight (a sliding window: a slow partition never holds up the others).
 * The run owns its destination table's backfill lease while it runs. A partition that fails
 * for good is recorded and the rest carry on, until `maxConsecutiveFailures` fail in a row;
 * a run with failures ends FAILED unless `allowFailures`. Load ids come from the run chain, so
 * a new run under the same workflow id loads again (`skipLoaded` skips what earlier runs
 * committed). Pause, resume and `setParallel` signals steer it while it runs. When history
 * grows long it continues as new, carrying the next partition index, the totals and the first
 * few failures, so the range can be any length.
 */
export async function backfillWorkflow(rawInput: unknown): Promise<BackfillResult> {
  const input = validateInput('backfillWorkflow', BackfillInput, rawInput);
  let partitions: (index: number) => PartitionRange;
  let total: number;
  try {
    if (input.onlyPartitions) {
      const chosen = input.onlyPartitions.map((key) => partitionFromKey(key, input.granularity));
      partitions = (i) => chosen[i]!;
      total = chosen.length;
    } else {
      partitions = (i) => partitionAt(input.start, input.granularity, i);
      total = partitionCount(input.start, input.end, input.granularity);
    }
  } catch (err) {
    throw wf.ApplicationFailure.nonRetryable(`invalid backfillWorkflow input: ${rootMessage(err)}`, 'InvalidInput');
  }
  return withResourceLease('backfill', input.destination, input.resource, (takeLease) => backfill(rawInput, input, partitions, total, takeLease));
}

async function backfill(
  rawInput: unknown,
  input: BackfillInput,
  partitions: (index: number) => PartitionRange,
  total: number,
  takeLease: () => Promise<LeaseToken | undefined>,
): Promise<BackfillResult> {
  const carried = input.continuation;
  let nextIndex = carried?.nextIndex ?? 0;
  let succeeded = carried?.succeeded ?? 0;
  let rows = carried?.rows ?? 0;
  let rejected = carried?.rejected ?? 0;
  const failed = [...(carried?.failed ?? [])];
  let failedCount = carried?.failedCount ?? failed.length;
  const skipped = [...(carried?.skipped ?? [])];
  let skippedCount = carried?.skippedCount ?? skipped.length;
  let consecutiveFailures = carried?.consecutiveFailures ?? 0;
  let paused = carried?.paused ?? false;
  let parallel = carried?.parallel ?? input.parallel;
  let stopReason: string | undefined;
  const window = new SlidingWindow(
    () => parallel,
    () => paused,
  );
  const retrying = new RetryBoard();
  // Load ids from the run chain, and the maxConsecutiveFailures stop: both new with this patch.
  const chain = wf.patched('sluice-rerun-load-ids') ? wf.workflowInfo().firstExecutionRunId : undefined;
  const failOnFailures = wf.patched('sluice-fail-on-failures');
  const preflight = preflightPatched();

  const progress = (): Progress => ({
    done: succeeded + failedCount,
    failed: failedCount,
    inFlight: window.inFlight.size,
    total,
    rows,
    rejected,
    paused,
    parallel,
    skipped: skippedCount,
    inFlightPartitions: [...window.inFlight],
    retrying: retrying.list(),
  });
  const source =
    input.source.kind === 'postgres' ? `postgres ${input.source.table ?? 'query'}` : input.source.kind === 'registered' ? input.source.name : input.source.path;
  const what = input.onlyPartitions
    ? `${input.onlyPartitions.length} chosen ${input.granularity} partitions`
    : `${input.start} .. ${input.end} by ${input.granularity}`;
  const showProgress = () => {
    const p = progress();
    const state = paused ? 'paused' : stopReason ? 'stopping' : p.done === total && !window.inFlight.size ? 'done' : 'backfilling';
    const lines = [
      `backfill **${input.resource.name}** (${input.resource.writeDisposition}) from ${source}, ${what}, into ${input.destination.schema}`,
      ...windowLines({
        head: `**${state}** ${input.resource.name}: ${p.done}/${total} partitions${skippedCount ? ` (${skippedCount} skipped, loaded earlier)` : ''}`,
        rows,
        rejected,
        failed: failedCount,
        parallel,
        inFlight: window.inFlight,
        failures: failed.map((f) => `${f.partition} (${f.error})`),
      }),
    ];
    const retryLine = retrying.line();
    if (retryLine) lines.push(retryLine);
    if (stopReason) lines.push(stopReason);
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
  wf.setHandler(activityProgressSignal, ({ details }) => {
    const report = retryReportOf(details);
    const partition = (details as { partition?: unknown } | null)?.partition;
    if (!report || typeof partition !== 'string' || !window.inFlight.has(partition)) return;
    retrying.note(partition, report);
    showProgress();
  });

  const setStatus = await searchStatus(input.resource.name);
  setStatus('running');
  showProgress();
  if (!carried) await checkBeforeFanOut(preflight, 'backfillWorkflow', [preflightCheck(input)], () => setStatus('failed'));
  const lease = await takeLease();

  let leaseLost: unknown;
  const runPartition = async (partition: PartitionRange) => {
    try {
      const summary: LoadSummary = await loadPartition.executeWithOptions(
        {
          startToCloseTimeout: LOAD_START_TO_CLOSE,
          heartbeatTimeout: '15s',
          summary: `partition ${partition.key}`,
          retry: retryPolicy(input.maxAttempts),
        },
        [
          {
            source: input.source,
            resource: input.resource,
            destination: input.destination,
            partitionColumn: input.partitionColumn,
            partition,
            replacePartition: input.resource.writeDisposition === 'append',
            ...(chain ? { chain } : {}),
            ...(lease ? { lease } : {}),
            ...(input.skipLoaded ? { skipLoaded: true } : {}),
          },
        ],
      );
      succeeded++;
      consecutiveFailures = 0;
      if (summary.skipped) {
        skippedCount++;
        if (skipped.length < KEPT) skipped.push(partition.key);
      } else {
        rows += summary.rows;
        rejected += summary.rejected;
      }
    } catch (err) {
      if (isLeaseLost(err)) leaseLost ??= err;
      failedCount++;
      consecutiveFailures++;
      if (failed.length < KEPT) failed.push({ partition: partition.key, error: rootMessage(err) });
      // Runs recorded before this rule (no chain) keep going, so their histories replay.
      if (chain && consecutiveFailures >= input.maxConsecutiveFailures && !stopReason) {
        stopReason = `stopped after ${consecutiveFailures} partitions failed in a row (maxConsecutiveFailures ${input.maxConsecutiveFailures}); the last: ${partition.key}`;
      }
    } finally {
      retrying.clear(partition.key);
      showProgress();
    }
  };

  const stop = () => stopReason !== undefined || leaseLost !== undefined;
  let cut = false;
  while (nextIndex < total) {
    if (!(await window.slot(stop))) {
      cut = !stop();
      break;
    }
    const partition = partitions(nextIndex++);
    window.start(partition.key, () => runPartition(partition));
  }
  await window.drain();
  if (leaseLost) {
    setStatus('failed');
    throw wf.ApplicationFailure.nonRetryable(rootMessage(leaseLost), 'LeaseLostError');
  }

  if (cut && nextIndex < total) {
    await wf.condition(wf.allHandlersFinished);
    await wf.continueAsNew<typeof backfillWorkflow>({
      ...(rawInput as object),
      continuation: { nextIndex, succeeded, rows, rejected, failed, failedCount, skipped, skippedCount, consecutiveFailures, paused, parallel },
    });
  }
  setStatus(failedCount ? 'failed' : 'completed');
  showProgress();
  const result: BackfillResult = { partitions: total, succeeded, failed, rows, rejected };
  if (!failOnFailures) return result;
  if (failedCount !== failed.length) result.failedCount = failedCount;
  if (input.skipLoaded) {
    result.skipped = skipped;
    result.skippedCount = skippedCount;
  }
  if (stopReason) result.stoppedAt = partitions(nextIndex - 1).key;
  if (failedCount === 0 && !stopReason) return result;
  // Every failure is named when all are known; otherwise skipLoaded re-runs whatever did not commit.
  result.rerun = failedCount === failed.length && !stopReason ? { onlyPartitions: failed.map((f) => f.partition) } : { skipLoaded: true };
  result.failedCount = failedCount;
  if (input.allowFailures) return result;
  const named = failed.slice(0, 5).map((f) => `${f.partition} (${f.error})`).join('; ');
  throw failedRun(
    'PartitionsFailed',
    `backfill of ${input.resource.name}: ${failedCount} of ${total} partitions failed: ${named}${failedCount > 5 ? `; ... (${failedCount} in all, see _sluice_loads)` : ''}` +
      (stopReason ? `; ${stopReason}, ${total - nextIndex} partitions not started` : '') +
      `. Re-run just those with the same input plus ${JSON.stringify(result.rerun)}` +
      ' (or set "allowFailures": true to complete despite failures)',
    result,
  );
}
