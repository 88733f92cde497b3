import * as wf from '@temporalio/workflow';
import type { Activities, LoadSummary } from '../activities';
import { BackfillInput, type Progress } from '../inputs';
import { partitionAt, partitionCount, partitionFromKey } from '../plan/partitions';
import type { PartitionRange } from '../sources/types';
import { checkBeforeFanOut, formatCount, handlePauseResume, handleSetParallel, preflightCheck, progressQuery, rootMessage, searchStatus, validateInput } from './shared';

const { loadPartition } = wf.proxyActivities<Activities>({
  startToCloseTimeout: '6h',
  // The activity heartbeats every second while it runs: a killed worker is noticed in 15 s.
  heartbeatTimeout: '15s',
});

export interface BackfillResult {
  partitions: number;
  succeeded: number;
  failed: { partition: string; error: string }[];
  rows: number;
  rejected: number;
}

/**
 * Backfills a date range: one `loadPartition` activity per hour, day or month partition, at
 * most `parallel` in flight (a sliding window: a slow partition never holds up the others).
 * A partition that fails for good is recorded and the rest carry on. Pause, resume and
 * `setParallel` signals steer it while it runs. When history grows long it continues as new,
 * carrying the next partition index and the totals, so the range can be any length.
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

  const carried = input.continuation;
  let nextIndex = carried?.nextIndex ?? 0;
  let succeeded = carried?.succeeded ?? 0;
  let rows = carried?.rows ?? 0;
  let rejected = carried?.rejected ?? 0;
  const failed = [...(carried?.failed ?? [])];
  let paused = carried?.paused ?? false;
  let parallel = carried?.parallel ?? input.parallel;
  const inFlight = new Set<string>();

  const progress = (): Progress => ({
    done: succeeded + failed.length,
    failed: failed.length,
    inFlight: inFlight.size,
    total,
    rows,
    rejected,
    paused,
    parallel,
    inFlightPartitions: [...inFlight],
  });
  const source =
    input.source.kind === 'postgres' ? `postgres ${input.source.table ?? 'query'}` : input.source.kind === 'registered' ? input.source.name : input.source.path;
  const what = input.onlyPartitions
    ? `${input.onlyPartitions.length} chosen ${input.granularity} partitions`
    : `${input.start} .. ${input.end} by ${input.granularity}`;
  const showProgress = () => {
    const p = progress();
    const lines = [
      `backfill **${input.resource.name}** (${input.resource.writeDisposition}) from ${source}, ${what}, into ${input.destination.schema}`,
      `**${paused ? 'paused' : p.done === total && !inFlight.size ? 'done' : 'backfilling'}** ${input.resource.name}: ${p.done}/${total} partitions, ${formatCount(rows)} rows` +
        `${rejected ? `, ${formatCount(rejected)} rejected` : ''}, ${failed.length} failed, parallel ${parallel}`,
    ];
    if (inFlight.size) lines.push(`in flight: ${[...inFlight].join(', ')}`);
    if (failed.length) lines.push(`failed: ${failed.slice(-5).map((f) => `${f.partition} (${f.error})`).join('; ')}`);
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

  const setStatus = await searchStatus(input.resource.name);
  setStatus('running');
  showProgress();
  if (!carried) await checkBeforeFanOut('backfillWorkflow', [preflightCheck(input)], () => setStatus('failed'));

  const runPartition = async (partition: PartitionRange) => {
    inFlight.add(partition.key);
    try {
      const summary: LoadSummary = await loadPartition.executeWithOptions(
        {
          startToCloseTimeout: '6h',
          heartbeatTimeout: '15s',
          summary: `partition ${partition.key}`,
          retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m', maximumAttempts: input.maxAttempts },
        },
        [
          {
            source: input.source,
            resource: input.resource,
            destination: input.destination,
            partitionColumn: input.partitionColumn,
            partition,
            replacePartition: input.resource.writeDisposition === 'append',
          },
        ],
      );
      succeeded++;
      rows += summary.rows;
      rejected += summary.rejected;
    } catch (err) {
      failed.push({ partition: partition.key, error: rootMessage(err) });
    } finally {
      inFlight.delete(partition.key);
      showProgress();
    }
  };

  while (nextIndex < total) {
    await wf.condition(() => !paused && inFlight.size < parallel);
    if (wf.workflowInfo().continueAsNewSuggested) break;
    void runPartition(partitions(nextIndex++));
  }
  await wf.condition(() => inFlight.size === 0);

  if (nextIndex < total) {
    await wf.condition(wf.allHandlersFinished);
    await wf.continueAsNew<typeof backfillWorkflow>({
      ...(rawInput as object),
      continuation: { nextIndex, succeeded, rows, rejected, failed, paused, parallel },
    });
  }
  setStatus(failed.length ? 'failed' : 'completed');
  showProgress();
  return { partitions: total, succeeded, failed, rows, rejected };
}
