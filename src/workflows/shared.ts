/**
 * Definitions every sluice workflow shares: the `progress` query, the control signals, and
 * input validation that fails the workflow at once (no workflow-task retry loop) naming the
 * bad field.
 */
import { ApplicationFailure, defineQuery, defineSignal, patched, proxyActivities, proxyLocalActivities, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { z } from 'zod';
import type { Activities } from '../activities';
import type { PreflightCheck } from '../activities/preflight';
import { parseInput, type Progress } from '../inputs';
import { SEARCH_ATTRIBUTES } from '../search-attributes';

export const progressQuery = defineQuery<Progress>('progress');
export const pauseSignal = defineSignal('pause');
export const resumeSignal = defineSignal('resume');
export const setParallelSignal = defineSignal<[number]>('setParallel');
/** Installs the pause and resume signals; `setPaused` updates the workflow's own flag (and its progress line). */
export function handlePauseResume(setPaused: (paused: boolean) => void): void {
  setHandler(pauseSignal, () => setPaused(true));
  setHandler(resumeSignal, () => setPaused(false));
}

/** Installs the setParallel signal; `setParallel` gets only whole numbers of at least 1. */
export function handleSetParallel(setParallel: (n: number) => void): void {
  setHandler(setParallelSignal, (n: number) => {
    if (Number.isInteger(n) && n >= 1) setParallel(n);
  });
}

/** Workflows that run `every` N: start the next pass or sync now instead of after the sleep. */
export const syncNowSignal = defineSignal('syncNow');

const { sluiceEnvironment } = proxyLocalActivities<Activities>({ startToCloseTimeout: '10s' });

/**
 * Returns a function that sets the run's SluiceResource / SluiceStatus search attributes, or
 * does nothing when the namespace lacks them (upserting an unregistered attribute would fail
 * the workflow task). Whether they exist is asked once, through a local activity.
 */
export async function searchStatus(resource: string): Promise<(status: string) => void> {
  const env = await sluiceEnvironment();
  return (status) => {
    if (!env.searchAttributes) return;
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.resource, value: resource },
      { key: SEARCH_ATTRIBUTES.status, value: status },
    ]);
  };
}

/** Runs started before inputs became strict dropped unknown keys; they must replay the same way. */
export function unknownKeysPolicy(): 'reject' | 'strip' {
  return patched('sluice-strict-input') ? 'reject' : 'strip';
}

export function validateInput<S extends z.ZodType>(workflowType: string, schema: S, raw: unknown): z.infer<S> {
  const parsed = parseInput(schema, raw, { unknownKeys: unknownKeysPolicy() });
  if (!parsed.ok) {
    throw ApplicationFailure.nonRetryable(`invalid ${workflowType} input: ${parsed.message}`, 'InvalidInput');
  }
  return parsed.value;
}

const { preflight } = proxyActivities<Activities>({
  startToCloseTimeout: '1m',
  // Permanent problems fail at once; an unreachable database gets a few seconds to come back.
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '5s', maximumAttempts: 4 },
});

/** What to check of a workflow input: its connections, its source and the source columns it names. */
export function preflightCheck(
  input: Pick<PreflightCheck, 'source' | 'resource' | 'destination'> & { partitionColumn?: string; cursor?: { column: string } },
  label?: string,
): PreflightCheck {
  const columns: Record<string, string> = {};
  if (input.partitionColumn) columns.partitionColumn = input.partitionColumn;
  if (input.cursor) columns['cursor.column'] = input.cursor.column;
  return { ...(label ? { label } : {}), source: input.source, resource: input.resource, destination: input.destination, columns };
}

/**
 * Checks once, before the workflow fans out, what would otherwise fail every partition, file or
 * step alike (connection variables set and reachable, table, columns, directory), and fails the
 * workflow with one non-retryable message naming every problem. Runs started before this check
 * existed (no `sluice-preflight` marker) skip it, so they replay unchanged.
 */
export async function checkBeforeFanOut(workflowType: string, checks: PreflightCheck[], onFailure: () => void = () => undefined): Promise<void> {
  if (!checks.length || !patched('sluice-preflight')) return;
  try {
    await preflight(checks);
  } catch (err) {
    onFailure();
    throw ApplicationFailure.nonRetryable(`${workflowType} cannot start: ${rootMessage(err)}`, 'PreflightFailed');
  }
}

/** Failure text for results and the UI: the root cause, not the "Activity task failed" wrapper. */
export function rootMessage(err: unknown): string {
  let current = err as { message?: string; cause?: unknown } | undefined;
  while (current?.cause) current = current.cause as typeof current;
  return current?.message ?? String(err);
}

export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
