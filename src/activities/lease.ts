/**
 * Activities around the resource lease (src/destinations/postgres/lease.ts): a workflow takes
 * its resource at start and gives it up at the end; every commit in between checks the token.
 * Whether a holder is gone is asked of Temporal here (describe its workflow id), so the engine
 * never talks to Temporal.
 */
import { Context } from '@temporalio/activity';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { resolveConnection } from '../config';
import { acquireLease, leaseKey, releaseLease, type HolderLiveness, type LeaseKind, type LeaseToken } from '../destinations/postgres/lease';
import { ensureMetadata } from '../destinations/postgres/loader';
import { durationMs } from '../plan/duration';
import type { Destination, Resource } from '../inputs';
import { destinationTable, withHeartbeat, workflowOf } from './context';

export interface AcquireLeaseRequest {
  destination: Destination;
  resource: Resource;
  kind: LeaseKind;
  /** The run chain (`workflowInfo().firstExecutionRunId`): continue-as-new and retries keep the lease. */
  chain: string;
}

export interface ReleaseLeaseRequest {
  destination: Destination;
  lease: LeaseToken;
}

/**
 * SLUICE_LEASE_TAKEOVER_AFTER ("6h", "1d"): a holder that Temporal still reports running but that
 * committed nothing for this long may be taken over. Unset: only a holder that has ended (or
 * whose workflow Temporal no longer knows) is.
 */
function takeOverAfterMs(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const text = env.SLUICE_LEASE_TAKEOVER_AFTER;
  if (!text) return undefined;
  try {
    return durationMs(text);
  } catch {
    throw new Error(`SLUICE_LEASE_TAKEOVER_AFTER=${text} must be a duration like 30m, 6h or 1d`);
  }
}

/**
 * Whether a lease holder still runs, asked of Temporal: the latest run under its workflow id is
 * running and still belongs to its chain. Shared by the acquire activity and `sluice reset`.
 */
export function holderLiveness(client: Client, warn: (message: string) => void): HolderLiveness {
  return async (holder) => {
    try {
      const described = await client.workflow.getHandle(holder.workflowId).describe();
      const firstRunId = described.raw.workflowExecutionInfo?.firstRunId;
      return described.status.name === 'RUNNING' && (!firstRunId || firstRunId === holder.chain) ? 'running' : 'gone';
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return 'gone';
      warn(`cannot tell whether lease holder ${holder.workflowId} still runs: ${String(err)}`);
      return 'unknown';
    }
  };
}

export function createLeaseActivities() {
  return {
    /** Takes the resource for this run chain, or fails (non-retryably) naming the run that holds it. */
    async acquireResourceLease(req: AcquireLeaseRequest): Promise<LeaseToken> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      const isRunning = holderLiveness(ctx.client, (m) => ctx.log.warn(m));
      return withHeartbeat(async () => {
        const url = resolveConnection(req.destination.connection);
        await ensureMetadata(url, req.destination.schema);
        const acquired = await acquireLease(url, req.destination.schema, {
          key: leaseKey(req.kind, destinationTable(req.resource)),
          holder: { workflowId, chain: req.chain, runId },
          isRunning,
          takeOverAfterMs: takeOverAfterMs(),
          resource: req.resource.name,
        });
        if (acquired.takenOverFrom) {
          ctx.log.info(`took over ${acquired.key} from workflow ${acquired.takenOverFrom.workflowId} (token ${acquired.token})`);
        }
        return { key: acquired.key, token: acquired.token };
      });
    },

    /** Gives the resource up at the end of a run (a lease this run no longer holds is left alone). */
    async releaseResourceLease(req: ReleaseLeaseRequest): Promise<void> {
      await withHeartbeat(async () => {
        const url = resolveConnection(req.destination.connection);
        await ensureMetadata(url, req.destination.schema);
        await releaseLease(url, req.destination.schema, req.lease);
      });
    },
  };
}
