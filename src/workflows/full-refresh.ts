import * as wf from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { RefreshSummary } from '../activities/full-refresh';
import type { LeaseKind, LeaseToken } from '../destinations/postgres/lease';
import { filesLocation, FullRefreshInput, type Progress } from '../inputs';
import {
  activityProgressSignal,
  checkBeforeFanOut,
  formatCount,
  preflightCheck,
  preflightPatched,
  progressQuery,
  RETRY_UNTIL_HEALED,
  retryReportOf,
  rootMessage,
  searchStatus,
  validateInput,
  withResourceLease,
  LOAD_START_TO_CLOSE,
  type RetryingItem,
} from './shared';

const { refreshTable } = wf.proxyActivities<Activities>({
  startToCloseTimeout: LOAD_START_TO_CLOSE,
  // The activity heartbeats every second while it runs: a killed worker is noticed in 15 s.
  heartbeatTimeout: '15s',
  // Permanent errors (a missing table, a bad column) are non-retryable and fail at once; an outage is waited out.
  retry: RETRY_UNTIL_HEALED,
});

export interface FullRefreshResult {
  /** `schema.table` of the refreshed live table. */
  table: string;
  rows: number;
  rejected: number;
  loadId: string;
  schemaChanges: string[];
}

/**
 * The leases a full refresh holds: its own, and those of every other kind of run that writes the
 * table. Its swap replaces every row, so anything another run commits to the table meanwhile is
 * lost from the table while that run's cursor or file state says it is loaded (rows an
 * incremental sync merged after the refresh read its snapshot would vanish for good). A refresh
 * therefore waits for no one: it fails at once naming the run that holds any of them, and while
 * it runs, a backfill, incremental or files run of the table fails at once naming the refresh.
 */
const FULL_REFRESH_LEASES: LeaseKind[] = ['full_refresh', 'backfill', 'incremental', 'files'];

/**
 * Reloads a whole table: one `refreshTable` activity extracts the source and loads it with
 * writeDisposition "replace" (whatever the input says), which stages every row and then swaps
 * them in within one transaction. A reader sees the old rows or the new ones, never an empty or
 * partial table; a failure before the swap leaves the live table as it was. The run holds the
 * table's leases (FULL_REFRESH_LEASES) and its swap commits under them. Nothing is carried
 * across runs: every run is a complete refresh.
 */
export async function fullRefreshWorkflow(rawInput: unknown): Promise<FullRefreshResult> {
  const input = validateInput('fullRefreshWorkflow', FullRefreshInput, rawInput);
  const preflightOn = preflightPatched();
  const resource = { ...input.resource, writeDisposition: 'replace' as const };
  // Runs recorded before full refreshes took leases replay without them.
  return withResourceLease(FULL_REFRESH_LEASES, input.destination, resource, (takeLease) => refresh(input, resource, preflightOn, takeLease), 'sluice-full-refresh-lease');
}

async function refresh(
  input: FullRefreshInput,
  resource: FullRefreshInput['resource'],
  preflightOn: boolean,
  takeLease: () => Promise<LeaseToken | undefined>,
): Promise<FullRefreshResult> {
  let state: 'refreshing' | 'completed' | 'failed' = 'refreshing';
  let summary: RefreshSummary | undefined;
  let error: string | undefined;
  let retrying: RetryingItem | undefined;

  const target = () => `${input.destination.schema}.${resource.table ?? resource.name}`;
  const progress = (): Progress => ({
    done: state === 'completed' ? 1 : 0,
    failed: state === 'failed' ? 1 : 0,
    inFlight: state === 'refreshing' ? 1 : 0,
    total: 1,
    rows: summary?.rows ?? 0,
    rejected: summary?.rejected ?? 0,
    state,
    ...(summary ? { table: summary.table } : {}),
    ...(error ? { error } : {}),
    ...(retrying && state === 'refreshing' ? { retrying: [retrying] } : {}),
  });
  const showProgress = () => {
    const lines = [`**${state}** ${target()} from ${describeSource(input.source)}`];
    if (summary) {
      lines.push(
        `${formatCount(summary.rows)} rows swapped in${summary.rejected ? `, ${formatCount(summary.rejected)} rejected (see _sluice_rejects)` : ''}`,
      );
      if (summary.schemaChanges.length) lines.push(`schema: ${summary.schemaChanges.join('; ')}`);
    }
    if (error) lines.push(`failed before the swap, the live table is unchanged: ${error}`);
    if (retrying && state === 'refreshing') lines.push(`retrying: attempt ${retrying.attempt} failed: ${retrying.error}`);
    wf.setCurrentDetails(lines.join('\n\n'));
  };
  wf.setHandler(progressQuery, progress);
  wf.setHandler(activityProgressSignal, ({ details }) => {
    const report = retryReportOf(details);
    if (!report || state !== 'refreshing') return;
    if (!retrying || retrying.attempt <= report.attempt) retrying = { item: target(), ...report };
    showProgress();
  });

  const setStatus = await searchStatus(resource.name);
  setStatus('running');
  showProgress();
  await checkBeforeFanOut(preflightOn, 'fullRefreshWorkflow', [preflightCheck(input)], () => setStatus('failed'));

  try {
    const lease = await takeLease();
    summary = await refreshTable({ source: input.source, resource, destination: input.destination, ...(lease ? { lease } : {}) });
  } catch (err) {
    state = 'failed';
    error = rootMessage(err);
    setStatus('failed');
    showProgress();
    throw err;
  }
  state = 'completed';
  setStatus('completed');
  showProgress();
  return {
    table: summary.table,
    rows: summary.rows,
    rejected: summary.rejected,
    loadId: summary.loadId,
    schemaChanges: summary.schemaChanges,
  };
}

function describeSource(source: FullRefreshInput['source']): string {
  switch (source.kind) {
    case 'postgres':
      return source.table ?? 'a source query';
    case 'registered':
      return source.name;
    case 'files':
      return filesLocation(source);
  }
}
