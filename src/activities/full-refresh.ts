/**
 * The full-refresh activity: the whole source through the load engine with writeDisposition
 * "replace". The engine stages every row first and only then, in one transaction, empties the
 * live table and fills it from staging (see loadResource), so readers see the old rows or the
 * new ones, and the table keeps its identity: views, grants and indexes on it survive.
 */
import { Context } from '@temporalio/activity';
import { resolveConnection } from '../config';
import { loadResource } from '../destinations/postgres/loader';
import type { Destination, Resource, Source } from '../inputs';
import type { LeaseToken } from '../destinations/postgres/lease';
import { extract } from '../sources';
import { destinationTable, summarize, withHeartbeat, workflowOf } from './context';

export interface RefreshTableRequest {
  source: Source;
  resource: Resource;
  destination: Destination;
  /** The table's full-refresh lease: the swap's commit checks it. */
  lease?: LeaseToken;
}

export interface RefreshSummary {
  loadId: string;
  /** `schema.table` of the live table that now holds the new rows. */
  table: string;
  rows: number;
  rejected: number;
  alreadyLoaded: boolean;
  schemaChanges: string[];
}

export function createFullRefreshActivities() {
  return {
    /** Extracts the whole source and swaps it in as the table's new contents in one transaction. */
    async refreshTable(req: RefreshTableRequest): Promise<RefreshSummary> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      const table = destinationTable(req.resource);
      return withHeartbeat(async (progress, signal) => {
        const data = await extract({
          source: req.source,
          heartbeat: progress,
          signal,
          log: (m) => ctx.log.info(m),
        });
        const result = await loadResource({
          url: resolveConnection(req.destination.connection),
          schema: req.destination.schema,
          table,
          resource: { ...req.resource, writeDisposition: 'replace' },
          // Retries of one run share the id (a refresh that committed is not redone); a later run
          // under the same workflow id (a schedule, a pipeline re-run) is a new refresh.
          loadId: `${workflowId}/full/${runId}`,
          lease: req.lease,
          workflowId,
          runId,
          partition: 'full',
          attempt: ctx.info.attempt,
          data,
          onProgress: (rows) => progress({ rows }),
        });
        return { ...summarize(result), table: `${req.destination.schema}.${table}` };
      }, { reportRetriesAs: { table } });
    },
  };
}
