/**
 * Activities: thin side-effect wrappers. They read connections from the environment,
 * heartbeat, translate errors into retryable or non-retryable failures, and call the engine.
 * They return counts, never rows: row data does not pass through workflow history.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { resolveConnection } from '../config';
import { ensureMetadata, loadResource, type LoadResult } from '../destinations/postgres/loader';
import { errorMessage, hintFor, isTransient } from '../errors';
import type { Destination, Resource, Source } from '../inputs';
import { normalizeIdentifier, qualifiedName } from '../schema/identifiers';
import { extract } from '../sources';
import { createFullRefreshActivities } from './full-refresh';
import { createFileActivities } from './files';
import { createIncrementalActivities } from './incremental';
import { createLeaseActivities } from './lease';
import type { LeaseToken } from '../destinations/postgres/lease';
import { getPool } from '../destinations/postgres/pool';
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
  /**
   * The run chain (first run id): load ids are `<workflow id>/<chain>/<partition>`, so a new run
   * under the same workflow id loads again. Absent in runs recorded before it (`<workflow id>/<partition>`).
   */
  chain?: string;
  /** The resource's lease: the partition's commit checks it. */
  lease?: LeaseToken;
  /** Skip the partition (loading nothing) when an earlier run committed it. */
  skipLoaded?: boolean;
}

export interface LoadSummary {
  loadId: string;
  rows: number;
  rejected: number;
  alreadyLoaded: boolean;
  schemaChanges: string[];
  /** With skipLoaded: an earlier run had committed this partition, and nothing was loaded. */
  skipped?: boolean;
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
    ...createLeaseActivities(),

    async sluiceEnvironment(): Promise<{ searchAttributes: boolean }> {
      return { searchAttributes: deps.searchAttributesRegistered };
    },

    /** Extracts one backfill partition and loads it in one transaction. */
    async loadPartition(req: LoadPartitionRequest): Promise<LoadSummary> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(async (progress) => {
        const url = resolveConnection(req.destination.connection);
        const table = destinationTable(req.resource);
        if (req.skipLoaded) {
          const earlier = await committedPartition(url, req.destination.schema, req.resource.name, table, req.partition.key);
          if (earlier) return { ...earlier, alreadyLoaded: true, schemaChanges: [], skipped: true };
        }
        const data = await extract({
          source: req.source,
          partition: { column: req.partitionColumn, range: req.partition },
          heartbeat: progress,
          signal: ctx.cancellationSignal,
          log: (m) => ctx.log.info(m),
        });
        const result = await loadResource({
          url,
          schema: req.destination.schema,
          table,
          resource: req.resource,
          loadId: req.chain ? `${workflowId}/${req.chain}/${req.partition.key}` : `${workflowId}/${req.partition.key}`,
          lease: req.lease,
          workflowId,
          runId,
          partition: req.partition.key,
          attempt: ctx.info.attempt,
          data,
          supersede: req.replacePartition
            ? { kind: 'range', column: req.partitionColumn, start: req.partition.start, end: req.partition.end }
            : undefined,
          onProgress: (rows) => progress({ partition: req.partition.key, rows }),
        });
        return summarize(result);
      });
    },
  };
}

/** The latest committed backfill load of a partition of this resource and table, by any run. */
async function committedPartition(url: string, schema: string, resource: string, table: string, partition: string) {
  await ensureMetadata(url, schema);
  const r = await getPool(url).query<{ load_id: string; rows_loaded: string; rows_rejected: string }>(
    `select load_id, rows_loaded, rows_rejected from ${qualifiedName(schema, '_sluice_loads')}
      where resource = $1 and table_name = $2 and partition = $3 and status = 'completed'
      order by finished_at desc limit 1`,
    [resource, table, partition],
  );
  const row = r.rows[0];
  return row && { loadId: row.load_id, rows: Number(row.rows_loaded), rejected: Number(row.rows_rejected) };
}

export type Activities = ReturnType<typeof createActivities>;
