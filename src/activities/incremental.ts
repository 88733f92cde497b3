/**
 * Activities of incrementalWorkflow: read the saved cursor, and sync. The engine (resume logic,
 * paging, the tie rules) is src/destinations/postgres/incremental-sync.ts; these wrap it with the
 * heartbeat, error mapping and the activity's context.
 */
import { Context } from '@temporalio/activity';
import { resolveConnection, syncBudgetMs } from '../config';
import { readSaved, syncIncremental, type SyncRequest, type SyncResult } from '../destinations/postgres/incremental-sync';
import type { CursorPosition, Destination, Resource } from '../inputs';
import { withHeartbeat, workflowOf } from './context';

export { incrementalStateKey, syncIncremental } from '../destinations/postgres/incremental-sync';
export type { SyncCounts, SyncHooks, SyncRequest, SyncResult } from '../destinations/postgres/incremental-sync';

export function createIncrementalActivities() {
  return {
    /** The position _sluice_state saved for this resource, or null when it has none. */
    async readIncrementalState(destination: Destination, resource: Resource, column: string): Promise<CursorPosition | null> {
      return withHeartbeat(async () => {
        const saved = await readSaved(resolveConnection(destination.connection), destination, resource, column);
        return saved ? { cursor: saved.cursor, tiebreak: saved.tiebreak, ...(saved.tie ? { tie: saved.tie } : {}) } : null;
      });
    },

    /** Pages through the rows past the position, each page and its position committed together (see incremental-sync.ts). */
    async syncIncrementalPages(req: SyncRequest): Promise<SyncResult> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(
        (progress, signal) =>
          syncIncremental({ ...req, budgetMs: req.budgetMs ?? syncBudgetMs() }, {
            workflowId,
            runId,
            attempt: ctx.info.attempt,
            heartbeat: progress,
            signal,
            log: (m) => ctx.log.info(m),
            heartbeatDetails: ctx.info.heartbeatDetails,
          }),
        { reportToWorkflow: true, reportRetriesAs: { syncId: `${req.chain}:${req.sync}` } },
      );
    },
  };
}
