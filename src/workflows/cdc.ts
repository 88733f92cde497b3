import * as wf from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { CdcPosition, CdcSetupResult } from '../activities/cdc';
import { durationMs } from '../plan/duration';
import { shortHash } from '../schema/identifiers';
import type { LeaseToken } from '../destinations/postgres/lease';
import { CdcInput, type Progress, type Resource } from '../inputs';
import {
  checkBeforeFanOut,
  formatCount,
  handlePauseResume,
  progressQuery,
  RETRY_UNTIL_HEALED,
  rootMessage,
  searchStatus,
  validateInput,
  withResourceLeases,
} from './shared';

const { cdcSetup, cdcReadPosition, cdcDropSlot, cdcPlanSnapshot } = wf.proxyActivities<Activities>({ startToCloseTimeout: '5m', heartbeatTimeout: '30s', retry: RETRY_UNTIL_HEALED });
const { cdcSnapshotTable } = wf.proxyActivities<Activities>({
  // One table in one transaction: as long as the copy takes. It heartbeats as rows stream in.
  startToCloseTimeout: '24h',
  heartbeatTimeout: '30s',
  retry: RETRY_UNTIL_HEALED,
});
const { cdcStream } = wf.proxyActivities<Activities>({
  // One call streams for `streamWindow` and returns; it heartbeats every second, so a killed
  // worker is noticed in 15 s and the retry resumes from the LSN the destination committed.
  startToCloseTimeout: '1h',
  heartbeatTimeout: '15s',
  // pause and stop cancel the call; it finishes the batch in hand and lets go of the slot first.
  cancellationType: wf.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: RETRY_UNTIL_HEALED,
});

export const stopSignal = wf.defineSignal<[{ dropSlot?: boolean }?]>('stop');

export interface CdcResult {
  lsn: string | null;
  batches: number;
  changes: number;
  tables: CdcPosition['tables'];
  droppedSlot: boolean;
}

/** Slot and publication names from the workflow id: stable across continue-as-new and restarts, valid PostgreSQL names. */
export function cdcNames(workflowId: string): { slot: string; publication: string } {
  const base = `sluice_${workflowId.toLowerCase().replace(/[^a-z0-9_]+/g, '_').slice(0, 40)}_${shortHash(workflowId)}`;
  return { slot: base, publication: base };
}

function formatBytes(n: number | null): string {
  if (n === null) return '?';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * Change data capture from PostgreSQL: `cdcSetup` checks the source and creates the
 * publication and the slot, one `cdcSnapshotTable` per table copies it (at most `parallel` at
 * once), then `cdcStream` calls, each streaming for `streamWindow`, apply the changes batch by
 * batch. The stream's position is in the destination (_sluice_state), committed with each
 * batch; the workflow only shows it. `pause` / `resume` / `stop` signals; continues as new when
 * history grows long, carrying the slot and publication names and whether the snapshot is done.
 */
export async function cdcWorkflow(rawInput: unknown): Promise<CdcResult> {
  const input = validateInput('cdcWorkflow', CdcInput, rawInput);
  // Patches are asked before the first await: a marker must sit at the same point on replay.
  // Runs started before them neither check first nor take leases, and copy each table whole.
  const owned = wf.patched('sluice-cdc-owner');
  const chunked = wf.patched('sluice-cdc-chunks');
  const carried = input.continuation;
  const derived = cdcNames(wf.workflowInfo().workflowId);
  const slot = carried?.slot ?? input.slot ?? derived.slot;
  const publication = carried?.publication ?? input.publication ?? derived.publication;
  // One owner per destination table and per slot (in this destination): a second run fails at once naming the first.
  const wanted = [
    ...input.source.tables.map((t) => ({ kind: 'cdc' as const, resource: { name: t.split('.')[1]! } as Resource })),
    { kind: 'cdc_slot' as const, resource: { name: slot } as Resource },
  ];
  return withResourceLeases(owned, input.destination, wanted, (take) => streamChanges(rawInput, input, { owned, chunked, slot, publication }, take));
}

async function streamChanges(
  rawInput: unknown,
  input: CdcInput,
  run: { owned: boolean; chunked: boolean; slot: string; publication: string },
  takeLeases: () => Promise<LeaseToken[]>,
): Promise<CdcResult> {
  const carried = input.continuation;
  const { slot, publication } = run;
  let paused = carried?.paused ?? false;
  let stop: { dropSlot: boolean } | undefined;
  let phase: 'setup' | 'snapshot' | 'streaming' | 'paused' | 'stopped' = 'setup';
  let position: CdcPosition | undefined;
  let snapshotDone = carried?.snapshotDone ?? !input.snapshot;
  let snapshotRows = 0;
  let tablesCopied = 0;
  let chunks = 0;
  let chunksCopied = 0;
  let streaming: wf.CancellationScope | undefined;
  let lastError: string | undefined;
  const schemaChanges: string[] = [];
  const tableList = input.source.tables.join(', ');

  const progress = (): Progress => ({
    done: position?.batches ?? 0,
    failed: 0,
    inFlight: streaming ? 1 : 0,
    total: null,
    rows: position?.changes ?? 0,
    phase,
    paused,
    slot,
    publication,
    lsn: position?.lsn ?? null,
    lagBytes: position?.lagBytes ?? null,
    lagSeconds: position?.lagSeconds ?? null,
    lastCommitAt: position?.lastCommitAt ?? null,
    changesPerSecond: position?.rate ?? 0,
    tables: position?.tables ?? {},
    snapshot: { done: snapshotDone, tablesCopied, tables: input.source.tables.length, rows: snapshotRows, ...(chunks ? { chunks, chunksCopied } : {}) },
    schemaChanges: schemaChanges.slice(-20),
    ...(lastError ? { lastError } : {}),
  });
  const showProgress = () => {
    const lines = [`**${paused && phase === 'streaming' ? 'paused' : phase}** cdc ${tableList} -> ${input.destination.schema} (${input.deletes} deletes), slot ${slot}`];
    if (!snapshotDone) {
      const ofChunks = chunks ? ` (${chunksCopied}/${chunks} chunks)` : '';
      lines.push(`snapshot: ${tablesCopied}/${input.source.tables.length} tables${ofChunks}, ${formatCount(snapshotRows)} rows`);
    }
    if (position) {
      lines.push(`lsn ${position.lsn ?? '-'}, lag ${formatBytes(position.lagBytes)} / ${position.lagSeconds === null ? '?' : position.lagSeconds.toFixed(1)} s, last commit seen ${position.lastCommitAt ?? 'none yet'}`);
      lines.push(`${formatCount(position.changes)} changes in ${formatCount(position.batches)} batches, ${formatCount(position.rate ?? 0)} changes/s`);
      const perTable = Object.entries(position.tables).map(([t, c]) => `${t} +${formatCount(c.inserts)} ~${formatCount(c.updates)} -${formatCount(c.deletes)}${c.truncates ? ` truncated ${c.truncates}x` : ''}`);
      if (perTable.length) lines.push(perTable.join(' · '));
    }
    if (schemaChanges.length) lines.push(`schema: ${schemaChanges.slice(-3).join('; ')}`);
    if (lastError) lines.push(`last error: ${lastError}`);
    wf.setCurrentDetails(lines.join('\n\n'));
  };
  wf.setHandler(progressQuery, progress);
  handlePauseResume((p) => {
    paused = p;
    if (p) streaming?.cancel();
    showProgress();
  });
  wf.setHandler(stopSignal, (options) => {
    stop = { dropSlot: options?.dropSlot === true };
    streaming?.cancel();
  });

  const setStatus = await searchStatus(`cdc:${slot}`);
  setStatus('running');
  showProgress();

  if (!carried) {
    const checks = [{ destination: input.destination, cdc: { connection: input.source.connection, tables: input.source.tables } }];
    await checkBeforeFanOut(run.owned, 'cdcWorkflow', checks, () => setStatus('failed'));
  }
  const leases = await takeLeases();
  const leaseOf = (target: string) => leases.find((l) => l.key === `lease:cdc:${target}`);

  let setup: CdcSetupResult;
  try {
    setup = await cdcSetup({ source: input.source, slot, publication, ...(run.owned ? { owner: wf.workflowInfo().workflowId } : {}) });
  } catch (err) {
    setStatus('failed');
    throw wf.ApplicationFailure.nonRetryable(`cdcWorkflow cannot stream from the source: ${rootMessage(err)}`, 'CdcSetupFailed');
  }
  const createdSlot = carried?.createdSlot ?? setup.createdSlot;
  const createdPublication = carried?.createdPublication ?? setup.createdPublication;
  if (carried) position = await cdcReadPosition({ destination: input.destination, slot });

  if (!snapshotDone) {
    phase = 'snapshot';
    showProgress();
    if (run.chunked) {
      // Each table is planned into key-range chunks (one for a small table); every chunk is an
      // activity of its own, at most `parallel` in flight over all tables, and a crash redoes one chunk.
      const planned = await Promise.all(
        setup.tables.map(async (table) => {
          const plan = await cdcPlanSnapshot({ source: input.source, destination: input.destination, table, slot, slotLsn: setup.slotLsn, chunkRows: input.snapshotChunkRows });
          return Array.from({ length: plan.chunks }, (_, index) => ({ table, chunk: { index, of: plan.chunks } }));
        }),
      );
      const left = new Map(planned.map((p) => [p[0]!.table.target, p.length]));
      const queue = planned.flat();
      chunks = queue.length;
      showProgress();
      const copyNext = async (): Promise<void> => {
        for (let item = queue.shift(); item; item = queue.shift()) {
          const { table, chunk } = item;
          try {
            const lease = leaseOf(table.target);
            const r = await cdcSnapshotTable({ source: input.source, destination: input.destination, table, slot, slotLsn: setup.slotLsn, chunk, ...(lease ? { lease } : {}) });
            snapshotRows += r.rows;
            chunksCopied++;
            const remaining = left.get(table.target)! - 1;
            left.set(table.target, remaining);
            if (remaining === 0) tablesCopied++;
            showProgress();
          } catch (err) {
            setStatus('failed');
            const where = chunk.of > 1 ? ` (chunk ${chunk.index + 1} of ${chunk.of})` : '';
            throw wf.ApplicationFailure.nonRetryable(`snapshot of ${table.source}${where} failed: ${rootMessage(err)}`, 'CdcSnapshotFailed');
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(input.parallel, queue.length) }, copyNext));
    } else {
      const queue = [...setup.tables];
      const copyNext = async (): Promise<void> => {
        for (let table = queue.shift(); table; table = queue.shift()) {
          try {
            const r = await cdcSnapshotTable({ source: input.source, destination: input.destination, table, slot, slotLsn: setup.slotLsn });
            snapshotRows += r.rows;
            tablesCopied++;
            showProgress();
          } catch (err) {
            setStatus('failed');
            throw wf.ApplicationFailure.nonRetryable(`snapshot of ${table.source} failed: ${rootMessage(err)}`, 'CdcSnapshotFailed');
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(input.parallel, queue.length) }, copyNext));
    }
    snapshotDone = true;
  }

  const continueAsNew = async (): Promise<never> => {
    await wf.condition(wf.allHandlersFinished);
    return wf.continueAsNew<typeof cdcWorkflow>({
      ...(rawInput as object),
      continuation: { slot, publication, createdSlot, createdPublication, snapshotDone, paused },
    });
  };

  phase = 'streaming';
  showProgress();
  while (!stop) {
    if (paused) {
      phase = 'paused';
      setStatus('paused');
      showProgress();
      await wf.condition(() => !paused || stop !== undefined);
      if (stop) break;
      phase = 'streaming';
      setStatus('running');
      showProgress();
    }
    streaming = new wf.CancellationScope();
    try {
      position = await streaming.run(() =>
        cdcStream({
          source: input.source,
          destination: input.destination,
          tables: setup.tables,
          slot,
          publication,
          deletes: input.deletes,
          batchChanges: input.batchChanges,
          batchWaitMs: durationMs(input.batchWait),
          windowMs: durationMs(input.streamWindow),
          ...(run.owned ? { leases, owner: wf.workflowInfo().workflowId } : {}),
        }),
      );
      schemaChanges.push(...position.schemaChanges);
      lastError = undefined;
    } catch (err) {
      if (!wf.isCancellation(err)) {
        setStatus('failed');
        throw wf.ApplicationFailure.nonRetryable(`change stream failed: ${rootMessage(err)}`, 'CdcStreamFailed');
      }
      // A pause or stop cancelled the call; whether it was cancelled as a whole workflow is asked next.
      if (!paused && !stop) {
        phase = 'stopped';
        setStatus('cancelled');
        throw err;
      }
      position = await cdcReadPosition({ destination: input.destination, slot });
    } finally {
      streaming = undefined;
    }
    showProgress();
    if (!stop && wf.workflowInfo().continueAsNewSuggested) await continueAsNew();
  }

  let droppedSlot = false;
  if (stop?.dropSlot && createdSlot) {
    await cdcDropSlot({ source: input.source, slot, publication: createdPublication ? publication : undefined });
    droppedSlot = true;
  }
  phase = 'stopped';
  setStatus('stopped');
  showProgress();
  return { lsn: position?.lsn ?? null, batches: position?.batches ?? 0, changes: position?.changes ?? 0, tables: position?.tables ?? {}, droppedSlot };
}
