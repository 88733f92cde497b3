/**
 * Activities: thin side-effect wrappers. They read connections from the environment,
 * heartbeat, translate errors into retryable or non-retryable failures, and call the engine.
 * They return counts, never rows: row data does not pass through workflow history.
 */
import { Context } from '@temporalio/activity';
import { resolveConnection } from '../config';
import { loadResource } from '../destinations/postgres/loader';
import type { Destination, Resource, Source } from '../inputs';
import { extract } from '../sources';
import { createCdcActivities } from './cdc';
import { createFullRefreshActivities } from './full-refresh';
import { createFileActivities } from './files';
import { createIncrementalActivities } from './incremental';
import { destinationTable, summarize, withHeartbeat, workflowOf, type ActivityDeps, type LoadSummary } from './context';
import { createPreflightActivities } from './preflight';
import type { PartitionRange } from '../sources/types';

export type { ActivityDeps, LoadSummary } from './context';

export interface LoadPartitionRequest {
  source: Source;
  resource: Resource;
  destination: Destination;
  partitionColumn: string;
  partition: PartitionRange;
  /** Append backfills replace the partition's range, so re-running one never duplicates rows. */
  replacePartition: boolean;
}

export function createActivities(deps: ActivityDeps) {
  return {
    ...createFullRefreshActivities(),
    ...createFileActivities(deps),
    ...createIncrementalActivities(),
    ...createCdcActivities(),
    ...createPreflightActivities(),

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
