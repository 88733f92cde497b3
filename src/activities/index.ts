/**
 * Activities: thin side-effect wrappers. They read connections from the environment,
 * heartbeat, translate errors into retryable or non-retryable failures, and call the engine.
 * They return counts, never rows: row data does not pass through workflow history.
 */
import { Context } from '@temporalio/activity';
import { resolveConnection } from '../config';
import { ensureMetadata, loadResource } from '../destinations/postgres/loader';
import type { Destination, Resource, Source } from '../inputs';
import { qualifiedName } from '../schema/identifiers';
import { extract } from '../sources';
import { createCdcActivities } from './cdc';
import { createFullRefreshActivities } from './full-refresh';
import { createFileActivities } from './files';
import { createIncrementalActivities } from './incremental';
import { destinationTable, summarize, withHeartbeat, workflowOf, type ActivityDeps, type LoadSummary } from './context';
import { createPreflightActivities } from './preflight';
import { createLeaseActivities } from './lease';
import type { LeaseToken } from '../destinations/postgres/lease';
import { getPool } from '../destinations/postgres/pool';
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

export function createActivities(deps: ActivityDeps) {
  return {
    ...createFullRefreshActivities(),
    ...createFileActivities(deps),
    ...createIncrementalActivities(),
    ...createLeaseActivities(),
    ...createCdcActivities(),
    ...createPreflightActivities(),

    async sluiceEnvironment(): Promise<{ searchAttributes: boolean }> {
      return { searchAttributes: deps.searchAttributesRegistered };
    },

    /** Extracts one backfill partition and loads it in one transaction. */
    async loadPartition(req: LoadPartitionRequest): Promise<LoadSummary> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(async (progress, signal) => {
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
          signal,
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
      }, { reportRetriesAs: { partition: req.partition.key } });
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
