/**
 * What every activity module shares: the worker's dependencies, the heartbeat wrapper, error
 * mapping and the load summary. The sibling activity modules import this; index.ts composes them.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { LoadResult } from '../destinations/postgres/loader';
import { errorMessage, hintFor, isTransient } from '../errors';
import type { Resource } from '../inputs';
import { normalizeIdentifier } from '../schema/identifiers';

export interface ActivityDeps {
  /** Whether the namespace has sluice's search attributes, checked once at worker start. */
  searchAttributesRegistered: boolean;
}

export interface LoadSummary {
  loadId: string;
  rows: number;
  rejected: number;
  alreadyLoaded: boolean;
  schemaChanges: string[];
}

/** Heartbeats on a timer for as long as the activity runs: a dead worker is noticed in one heartbeat timeout. */
export async function withHeartbeat<T>(fn: (progress: (details: unknown) => void) => Promise<T>): Promise<T> {
  const ctx = Context.current();
  let details: unknown;
  const timer = setInterval(() => ctx.heartbeat(details), 1_000);
  try {
    return await fn((d) => {
      details = d;
      ctx.heartbeat(d);
    });
  } catch (err) {
    throw toFailure(err);
  } finally {
    clearInterval(timer);
  }
}

/** Permanent errors become non-retryable failures that carry the hint; the rest retry. */
export function toFailure(err: unknown, context: { disposition?: string; connectionVariable?: string } = {}): unknown {
  if (err instanceof ApplicationFailure) return err;
  const message = errorMessage(err);
  const hint = hintFor(err, context);
  const text = hint ? `${message} (hint: ${hint})` : message;
  const type = err instanceof Error ? err.name : 'Error';
  return isTransient(err)
    ? ApplicationFailure.retryable(text, type, { hint })
    : ApplicationFailure.nonRetryable(text, type, { hint });
}

export function workflowOf(ctx: Context): { workflowId: string; runId: string } {
  const execution = ctx.info.workflowExecution;
  if (!execution) throw ApplicationFailure.nonRetryable('sluice activities run inside workflows: load ids derive from the workflow id');
  return execution;
}

/** What an activity reports of a load: counts only, never rows (row data stays out of history). */
export function summarize(result: LoadResult): LoadSummary {
  return {
    loadId: result.loadId,
    rows: result.rowsLoaded,
    rejected: result.rowsRejected,
    alreadyLoaded: result.alreadyLoaded,
    schemaChanges: result.schemaChanges,
  };
}

export function destinationTable(resource: Resource): string {
  return normalizeIdentifier(resource.table ?? resource.name);
}
