/**
 * What every activity module shares: the worker's dependencies, the heartbeat wrapper, error
 * mapping and the load summary. The sibling activity modules import this; index.ts composes them.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { LoadResult } from '../destinations/postgres/loader';
import { stallTimeoutMs } from '../config';
import { errorMessage, hintFor, isPermanent, redactSecrets } from '../errors';

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
  /** With skipLoaded: an earlier run had committed this partition, and nothing was loaded. */
  skipped?: boolean;
}

/**
 * Tells progress from a heartbeat that merely repeats itself: details that differ from the last
 * ones are progress. Pure, so the stall rule is unit-tested without Temporal.
 */
export class ProgressWatch {
  private last: string | undefined;
  private movedAt: number;

  constructor(
    readonly stallTimeoutMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.movedAt = now();
  }

  /** Records details; returns whether they say something moved. */
  record(details: unknown): boolean {
    const text = JSON.stringify(details ?? null);
    if (text === this.last) return false;
    this.last = text;
    this.movedAt = this.now();
    return true;
  }

  /** Milliseconds since anything moved, once that is at least the stall timeout; otherwise undefined. */
  stalledFor(): number | undefined {
    const idle = this.now() - this.movedAt;
    return this.stallTimeoutMs > 0 && idle >= this.stallTimeoutMs ? idle : undefined;
  }
}

/** An attempt that made no progress for the stall timeout: retried, like any hang that may heal. */
export class StalledError extends Error {
  constructor(idleMs: number) {
    super(`no progress for ${Math.round(idleMs / 1000)} s (SLUICE_STALL_TIMEOUT): this attempt is abandoned and retried`);
    this.name = 'StalledError';
  }
}

/** The signal an activity sends its own workflow with throttled progress (workflows cannot read heartbeats). */
export const ACTIVITY_PROGRESS_SIGNAL = 'activityProgress';
const PROGRESS_SIGNAL_INTERVAL_MS = 2_000;

export interface HeartbeatOptions {
  /** Sends the latest details to the workflow at most every 2 s as `activityProgress` ({ activityId, details }). */
  reportToWorkflow?: boolean;
  /**
   * Fields that name the activity's item (`{ partition }`, `{ file }`, `{ syncId }`): an attempt
   * that fails retryably sends them to the workflow with `retrying: { attempt, error }`, so the
   * run's progress shows what is waiting on a retry and why (retries of transient errors do not
   * give up, so an outage would otherwise look like a hang).
   */
  reportRetriesAs?: Record<string, unknown>;
}

const RETRY_REPORT_TIMEOUT_MS = 5_000;
const RETRY_REPORT_EVERY_ATTEMPT = 10;

/** Tells the workflow that this attempt failed and will be retried; best effort, and never longer than 5 s. */
async function reportRetry(ctx: Context, identity: Record<string, unknown>, failure: unknown): Promise<void> {
  if (!(failure instanceof ApplicationFailure) || failure.nonRetryable) return;
  // Every report is a history event and an outage may last days: the first attempts, then every tenth.
  const attempt = ctx.info.attempt;
  if (attempt > RETRY_REPORT_EVERY_ATTEMPT && attempt % RETRY_REPORT_EVERY_ATTEMPT !== 0) return;
  const execution = ctx.info.workflowExecution;
  if (!execution) return;
  const details = { ...identity, retrying: { attempt, error: failure.message } };
  try {
    const sent = ctx.client.workflow
      .getHandle(execution.workflowId, execution.runId)
      .signal(ACTIVITY_PROGRESS_SIGNAL, { activityId: ctx.info.activityId, details })
      .catch(() => undefined);
    await Promise.race([sent, new Promise((resolveLater) => setTimeout(resolveLater, RETRY_REPORT_TIMEOUT_MS).unref())]);
  } catch {
    // No client (a test's MockActivityEnvironment), or the run is gone: nothing to tell.
  }
}

/**
 * Runs `fn`, heartbeating its progress. The timer re-sends the last details every second, so a
 * dead worker is noticed in one heartbeat timeout; but only details that change count as
 * progress, and when nothing has moved for the stall timeout the attempt fails (retryably) and
 * `signal` aborts, so a load stuck on a lock or a dead socket is retried instead of
 * heartbeating for hours. `signal` also aborts when Temporal cancels the activity.
 */
export async function withHeartbeat<T>(
  fn: (progress: (details: unknown) => void, signal: AbortSignal) => Promise<T>,
  options: HeartbeatOptions = {},
): Promise<T> {
  const ctx = Context.current();
  const watch = new ProgressWatch(stallTimeoutMs());
  const abort = new AbortController();
  const onCancel = () => abort.abort(ctx.cancellationSignal.reason);
  ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });
  let details: unknown;
  // The first report waits the interval too: short activities never signal (history stays small).
  let reportedAt = Date.now();
  let reported: unknown;
  const report = () => {
    if (!options.reportToWorkflow || details === reported || Date.now() - reportedAt < PROGRESS_SIGNAL_INTERVAL_MS) return;
    const execution = ctx.info.workflowExecution;
    if (!execution) return;
    reportedAt = Date.now();
    reported = details;
    // Best effort: the run may have ended or continued as new; progress is only for display.
    try {
      ctx.client.workflow
        .getHandle(execution.workflowId, execution.runId)
        .signal(ACTIVITY_PROGRESS_SIGNAL, { activityId: ctx.info.activityId, details })
        .catch(() => undefined);
    } catch {
      // No client (a test's MockActivityEnvironment): nothing to report to.
    }
  };
  let stalled: (err: StalledError) => void = () => undefined;
  const stall = new Promise<never>((_, reject) => {
    stalled = reject;
  });
  const timer = setInterval(() => {
    const idle = watch.stalledFor();
    if (idle !== undefined) {
      const err = new StalledError(idle);
      abort.abort(err);
      stalled(err);
      return;
    }
    ctx.heartbeat(details);
    report();
  }, 1_000);
  try {
    // Racing `ctx.cancelled` ends the attempt when Temporal cancels it (worker shutdown after its
    // grace time, a heartbeat timeout) even if the engine is deep in a statement that ignores the
    // signal; an engine left running cannot commit twice: every load takes its load id's lock and
    // finds a committed load done.
    return await Promise.race([
      // Progress is heartbeated by the timer, never at once: the first heartbeat of an attempt
      // goes to the server right away (later ones are throttled), and an activity shorter than
      // the interval (a small backfill partition) would pay a server round trip for nothing.
      fn((d) => {
        details = d;
        watch.record(d);
        report();
      }, abort.signal),
      stall,
      ctx.cancelled,
    ]);
  } catch (err) {
    // A cancellation the workflow asked for is reported as a cancellation, not as a failure.
    if (ctx.cancellationDetails?.cancelRequested && ctx.cancellationSignal.aborted) throw err;
    const failure = toFailure(err);
    if (options.reportRetriesAs && !ctx.cancellationSignal.aborted) await reportRetry(ctx, options.reportRetriesAs, failure);
    throw failure;
  } finally {
    clearInterval(timer);
    ctx.cancellationSignal.removeEventListener('abort', onCancel);
  }
}

/** Permanent errors become non-retryable failures that carry the hint; everything else retries with backoff. */
export function toFailure(err: unknown, context: { disposition?: string; connectionVariable?: string } = {}): unknown {
  if (err instanceof ApplicationFailure) return err;
  const message = errorMessage(err);
  // Hints can quote what the error was about (a path, a value): redacted like the message.
  const found = hintFor(err, context);
  const hint = found === undefined ? undefined : redactSecrets(found);
  const text = hint ? `${message} (hint: ${hint})` : message;
  const type = err instanceof Error ? err.name : 'Error';
  return isPermanent(err)
    ? ApplicationFailure.nonRetryable(text, type, { hint })
    : ApplicationFailure.retryable(text, type, { hint });
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

export { destinationTable } from '../schema/identifiers';
