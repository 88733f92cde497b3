/**
 * Definitions every sluice workflow shares: the `progress` query, the control signals, and
 * input validation that fails the workflow at once (no workflow-task retry loop) naming the
 * bad field.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  ContinueAsNew,
  defineQuery,
  defineSignal,
  patched,
  proxyActivities,
  proxyLocalActivities,
  type RetryPolicy,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { Activities } from '../activities';
import type { PreflightCheck } from '../activities/preflight';
import type { LeaseKind, LeaseToken } from '../destinations/postgres/lease';
import { parseInput, type Destination, type Progress, type Resource } from '../inputs';
import { SEARCH_ATTRIBUTES } from '../search-attributes';

/**
 * Start-to-close timeout of every load activity. Only a last resort: a dead worker is noticed by
 * the heartbeat timeout, and a load that stops moving fails its attempt at SLUICE_STALL_TIMEOUT,
 * so this need not be short, and an honest 8-hour load that keeps moving is never killed by it.
 */
export const LOAD_START_TO_CLOSE = '7d';

/**
 * The retry policy of every activity whose work must not be lost (loads, syncs, the lease, state
 * reads): transient errors retry without a cap, so a destination that is down for ten minutes or
 * ten hours costs time, not work; the backoff grows to one attempt every 2 minutes. Permanent
 * errors (src/errors.ts) are non-retryable and fail at once whatever the policy says.
 */
export const RETRY_UNTIL_HEALED: RetryPolicy = { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '2m' };

/** RETRY_UNTIL_HEALED, capped at `maxAttempts` when the input sets one (backfill and files `maxAttempts`). */
export function retryPolicy(maxAttempts?: number): RetryPolicy {
  return maxAttempts === undefined ? RETRY_UNTIL_HEALED : { ...RETRY_UNTIL_HEALED, maximumAttempts: maxAttempts };
}

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

/**
 * Sent by a long activity to its own workflow, at most every 2 s, with the details it heartbeats
 * (workflows cannot read heartbeats): how `progress` and the UI move during one long activity.
 * The name is also in src/activities/context.ts (ACTIVITY_PROGRESS_SIGNAL).
 */
export const activityProgressSignal = defineSignal<[{ activityId: string; details: unknown }]>('activityProgress');

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

/**
 * Whether this run does the preflight check (runs started before it existed do not). Call it
 * first thing, before any await: on replay, a patch marker recorded after a local activity's
 * result is not yet known to code that runs on that result, and the run would fail as
 * nondeterministic.
 */
export function preflightPatched(): boolean {
  return patched('sluice-preflight');
}

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
 * workflow with one non-retryable message naming every problem. `enabled` comes from
 * preflightPatched(): runs started before this check existed skip it, so they replay unchanged.
 */
export async function checkBeforeFanOut(enabled: boolean, workflowType: string, checks: PreflightCheck[], onFailure: () => void = () => undefined): Promise<void> {
  if (!enabled || !checks.length) return;
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

import { formatCount } from '../plan/format';
export { formatCount };

const { acquireResourceLease, releaseResourceLease } = proxyActivities<Activities>({
  startToCloseTimeout: '1m',
  heartbeatTimeout: '15s',
  // A destination that is down when the run starts or ends is waited for; a held lease fails at once (non-retryable).
  retry: RETRY_UNTIL_HEALED,
});

/**
 * Runs `body` as the one owner of the resource (src/destinations/postgres/lease.ts). `body`
 * calls `takeLease()` once its message handlers are set (queries must answer while the lease is
 * asked for): it takes the lease for this run chain (a run that finds the resource held fails
 * at once, naming the holder and how to stop it) and returns the token every commit must
 * present. The lease is given up when the run ends, failed or cancelled too, but not when it
 * continues as new (the next run of the chain takes the same token back). Histories recorded
 * before leases existed replay without one (`takeLease()` returns undefined).
 */
export async function withResourceLease<T>(
  kind: LeaseKind | LeaseKind[],
  destination: Destination,
  resource: Resource,
  body: (takeLease: () => Promise<LeaseToken | undefined>) => Promise<T>,
  patch = 'sluice-resource-lease',
): Promise<T> {
  // With several kinds (a full refresh), the run holds all of them; commits present the first.
  const kinds = Array.isArray(kind) ? kind : [kind];
  // Patches are asked before the first await: a marker must sit at the same point on replay.
  return withResourceLeases(patched(patch), destination, kinds.map((k) => ({ kind: k, resource })), (take) => body(async () => (await take())[0]));
}

/**
 * withResourceLease for a run that owns several resources at once (cdcWorkflow: every
 * destination table and its replication slot; a full refresh: every writer kind of its table):
 * `take()` takes them in order, and a run that finds any of them held gives back those it took
 * and fails at once, naming the holder. `enabled` is the caller's patch (asked before its first
 * await); off, `take()` returns [].
 */
export async function withResourceLeases<T>(
  enabled: boolean,
  destination: Destination,
  wanted: { kind: LeaseKind; resource: Resource }[],
  body: (take: () => Promise<LeaseToken[]>) => Promise<T>,
): Promise<T> {
  const leases: LeaseToken[] = [];
  const release = async () => {
    for (const held of leases.splice(0)) await CancellationScope.nonCancellable(() => releaseResourceLease({ destination, lease: held }));
  };
  const take = async () => {
    if (!enabled) return [];
    for (const { kind, resource } of wanted) {
      try {
        leases.push(await acquireResourceLease({ destination, resource, kind, chain: workflowInfo().firstExecutionRunId }));
      } catch (err) {
        await release();
        throw ApplicationFailure.nonRetryable(rootMessage(err), failureType(err) ?? 'LeaseUnavailable');
      }
    }
    return [...leases];
  };
  let result: T;
  try {
    result = await body(take);
  } catch (err) {
    if (!(err instanceof ContinueAsNew)) await release();
    throw err;
  }
  await release();
  return result;
}

/** The type of the ApplicationFailure behind an activity failure ("LeaseLostError", "InvalidInput"). */
export function failureType(err: unknown): string | undefined {
  let current = err as { cause?: unknown } | undefined;
  while (current) {
    if (current instanceof ApplicationFailure && current.type) return current.type;
    current = current.cause as typeof current;
  }
  return undefined;
}

/** Another run took the resource over: this one must stop, whatever else it has to do. */
export function isLeaseLost(err: unknown): boolean {
  return err instanceof ActivityFailure && failureType(err) === 'LeaseLostError';
}

/**
 * Ends a run in which something failed for good: FAILED, with a message that counts and names
 * the failures and says how to re-run just those, and the run's result in the failure's details
 * (so `temporal workflow result` still shows it).
 */
export function failedRun(type: string, message: string, result: unknown): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true, details: [result] });
}

/**
 * The sliding window of backfillWorkflow and filesWorkflow (and CDC table snapshots): at most
 * `limit()` items in flight, none started while `paused()`, a slow item never holds up the
 * others. `inFlight` names what runs (for progress); `settled` bumps when one finishes.
 */
export class SlidingWindow {
  readonly inFlight = new Set<string>();

  constructor(
    private readonly limit: () => number,
    private readonly paused: () => boolean,
  ) {}

  /**
   * Waits for a free slot. Returns false instead when the run should stop starting work: history
   * is long enough to continue as new, or `stop()` says so (checked while it waits too).
   */
  async slot(stop: () => boolean = () => false): Promise<boolean> {
    await condition(() => stop() || (!this.paused() && this.inFlight.size < this.limit()));
    if (stop()) return false;
    return !workflowInfo().continueAsNewSuggested;
  }

  /** Runs `work` in the window under `key`; `work` handles its own failures. */
  start(key: string, work: () => Promise<void>): void {
    this.inFlight.add(key);
    void work().finally(() => this.inFlight.delete(key));
  }

  /** Waits until nothing is in flight. */
  drain(): Promise<void> {
    return condition(() => this.inFlight.size === 0);
  }
}

/** The figures of a fan-out's progress line in the UI's current details. */
export interface WindowLine {
  /** "**backfilling** orders: 12/31 partitions" */
  head: string;
  rows: number;
  rejected: number;
  failed: number;
  parallel: number;
  inFlight: Iterable<string>;
  /** The first few failures, as `name (error)`. */
  failures: string[];
}

/** One readable progress line (and its in-flight and failure lines) for a sliding window. */
export function windowLines(p: WindowLine): string[] {
  const lines = [
    `${p.head}, ${formatCount(p.rows)} rows${p.rejected ? `, ${formatCount(p.rejected)} rejected` : ''}, ${p.failed} failed, parallel ${p.parallel}`,
  ];
  const inFlight = [...p.inFlight];
  if (inFlight.length) lines.push(`in flight: ${inFlight.join(', ')}`);
  if (p.failures.length) lines.push(`failed: ${p.failures.slice(0, 5).join('; ')}${p.failed > 5 ? `; ... (${p.failed} in all)` : ''}`);
  return lines;
}

/** 1536 -> "1.5 KiB", for progress lines. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** An activity between attempts: the attempt that failed and its error. */
export interface RetryingItem {
  /** The partition key, file path or sync the activity works on. */
  item: string;
  attempt: number;
  error: string;
}

/**
 * What a failed attempt reports through `activityProgress` (see retryReport in
 * src/activities/context.ts): `{ retrying: { attempt, error } }` beside the fields that name
 * its item. Undefined for any other details.
 */
export function retryReportOf(details: unknown): { attempt: number; error: string } | undefined {
  const retrying = (details as { retrying?: { attempt?: unknown; error?: unknown } } | null)?.retrying;
  if (typeof retrying?.attempt !== 'number' || typeof retrying.error !== 'string') return undefined;
  return { attempt: retrying.attempt, error: retrying.error.slice(0, 500) };
}

/**
 * The items whose activity is retrying (a database that is down, a lost connection): retries no
 * longer give up on transient errors, so `progress` and the UI say what is waiting and why
 * rather than showing a run that only looks stuck. An item leaves when its activity ends.
 */
export class RetryBoard {
  private readonly items = new Map<string, RetryingItem>();

  note(item: string, report: { attempt: number; error: string }): void {
    const known = this.items.get(item);
    // Reports may arrive out of order: keep the latest attempt.
    if (!known || known.attempt <= report.attempt) this.items.set(item, { item, ...report });
  }

  clear(item: string): void {
    this.items.delete(item);
  }

  list(): RetryingItem[] {
    return [...this.items.values()];
  }

  /** "retrying: 2024-01-03 (attempt 7 failed: connection refused); ..." or undefined when nothing retries. */
  line(): string | undefined {
    const items = this.list();
    if (!items.length) return undefined;
    const named = items.slice(0, 5).map((r) => `${r.item} (attempt ${r.attempt} failed: ${r.error})`);
    return `retrying: ${named.join('; ')}${items.length > 5 ? `; ... (${items.length} in all)` : ''}`;
  }
}
