/**
 * Activities: thin side-effect wrappers. They read connections from the environment,
 * heartbeat, translate errors into retryable or non-retryable failures, and call the engine.
 * They return counts, never rows: row data does not pass through workflow history.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { resolveConnection } from '../config';
import { loadResource, type LoadResult } from '../destinations/postgres/loader';
import { errorMessage, hintFor, isTransient } from '../errors';
import type { Destination, Resource, Source } from '../inputs';
import { normalizeIdentifier } from '../schema/identifiers';
import { extract } from '../sources';
import { createCdcActivities } from './cdc';
import { createFullRefreshActivities } from './full-refresh';
import { createFileActivities } from './files';
import { createIncrementalActivities } from './incremental';
import type { PartitionRange } from '../sources/types';

export interface ActivityDeps {
  /** Whether the namespace has sluice's search attributes, checked once at worker start. */
  searchAttributesRegistered: boolean;
}

export interface LoadPartitionRequest {
  source: Source;
  resource: Resource;
  destination: Destination;
  partitionColumn: string;
  partition: PartitionRange;
  /** Append backfills replace the partition's range, so re-running one never duplicates rows. */
  replacePartition: boolean;
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

export function createActivities(deps: ActivityDeps) {
  return {
    ...createFullRefreshActivities(),
    ...createFileActivities(deps),
    ...createIncrementalActivities(),
    ...createCdcActivities(),

    async sluiceEnvironment(): Promise<{ searchAttributes: boolean }> {
      return { searchAttributes: deps.searchAttributesRegistered };
    },

    /** Extracts one backfill partition and loads it in one transaction. */
    async loadPartition(req: LoadPartitionRequest): Promise<LoadSummary> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(async (progress) => {
        const data = await extract({
          source: req.source,
          partition: { column: req.partitionColumn, range: req.partition },
          heartbeat: progress,
          signal: ctx.cancellationSignal,
          log: (m) => ctx.log.info(m),
        });
        const result = await loadResource({
          url: resolveConnection(req.destination.connection),
          schema: req.destination.schema,
          table: destinationTable(req.resource),
          resource: req.resource,
          loadId: `${workflowId}/${req.partition.key}`,
          workflowId,
          runId,
          partition: req.partition.key,
          attempt: ctx.info.attempt,
          data,
          replaceRange: req.replacePartition
            ? { column: req.partitionColumn, start: req.partition.start, end: req.partition.end }
            : undefined,
          onProgress: (rows) => progress({ partition: req.partition.key, rows }),
        });
        return summarize(result);
      });
    },
  };
}

export type Activities = ReturnType<typeof createActivities>;
