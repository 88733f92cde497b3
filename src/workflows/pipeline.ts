import * as wf from '@temporalio/workflow';
import { PipelineInput, type Progress, type WorkflowType } from '../inputs';
import { blockedSteps, pipelineProblems, readySteps, type StepStatus } from '../plan/dag';
import { stepTable } from '../plan/step-table';
import { failedRun, handleSetParallel, progressQuery, rootMessage, searchStatus, unknownKeysPolicy, validateInput } from './shared';


export interface StepReport {
  name: string;
  workflow: WorkflowType;
  dependsOn: string[];
  /** The child workflow's id: `<pipeline workflow id>/<step name>`. */
  workflowId: string;
  status: StepStatus;
  /** Workflow time (deterministic), ISO 8601 UTC. */
  startedAt?: string;
  finishedAt?: string;
  durationMs?: number;
  /** Why the step failed: the child's root cause. */
  error?: string;
  /** Why a step did not run: `upstream step "x" failed`, or `not re-run` under onlySteps. */
  note?: string;
  rows?: number;
  /** The child workflow's own result. */
  result?: unknown;
}

export interface PipelineResult {
  name: string;
  status: 'success' | 'failed';
  steps: StepReport[];
  succeeded: number;
  failed: { step: string; error: string }[];
  skipped: string[];
  rows: number;
  /** Failed and skipped steps: pass them as `onlySteps` to a new run to pick up where this one stopped. */
  rerun: string[];
}

/**
 * Runs a DAG of sluice workflows: each step is a child workflow (`<pipeline id>/<step>`, same
 * task queue) that starts once every step it depends on succeeded, at most `parallel` at a time,
 * in declaration order among the ready ones. A step that fails for good marks its whole
 * downstream `skipped`; independent branches go on. The graph and every step's input are
 * checked before anything starts. With `onlySteps`, only those steps run; the others count as
 * succeeded for their dependents and are reported `success` with the note `not re-run`, which
 * is what re-running the failed and skipped steps of an earlier run needs. Nothing is carried
 * across continue-as-new: a pipeline's history grows by a handful of events per step.
 */
export async function pipelineWorkflow(rawInput: unknown): Promise<PipelineResult> {
  const input = validateInput('pipelineWorkflow', PipelineInput, rawInput);
  const problems = pipelineProblems(input, { unknownKeys: unknownKeysPolicy() });
  if (problems.length) {
    throw wf.ApplicationFailure.nonRetryable(`invalid pipelineWorkflow input: ${problems.join('; ')}`, 'InvalidInput');
  }

  const info = wf.workflowInfo();
  // Asked before the first await, so the marker sits at the same point on replay.
  const failOnFailures = wf.patched('sluice-fail-on-failures');
  const only = input.onlySteps ? new Set(input.onlySteps) : undefined;
  const steps: StepReport[] = input.steps.map((s) => ({
    name: s.name,
    workflow: s.workflow,
    dependsOn: s.dependsOn,
    workflowId: `${info.workflowId}/${s.name}`,
    status: 'pending',
    ...(only && !only.has(s.name) ? { status: 'success', note: 'not re-run (not in onlySteps)' } : {}),
  }));
  const byName = new Map(steps.map((s) => [s.name, s]));
  let parallel = input.parallel;
  let rows = 0;
  // Bumped whenever something the scheduler depends on changes: a step settles, `parallel` moves.
  let changes = 0;

  const statuses = () => new Map(steps.map((s) => [s.name, s.status]));
  const counted = (status: StepStatus) => steps.filter((s) => s.status === status).length;
  const progress = (): Progress => ({
    done: steps.filter((s) => s.status === 'success' || s.status === 'failed' || s.status === 'skipped').length,
    failed: counted('failed'),
    inFlight: counted('running'),
    total: steps.length,
    rows,
    skipped: counted('skipped'),
    parallel,
    steps: steps.map((s) => ({ ...s })),
  });
  const showProgress = () => wf.setCurrentDetails(stepTable(input.name, steps, parallel));
  wf.setHandler(progressQuery, progress);
  handleSetParallel((n) => {
    parallel = n;
    changes++;
    showProgress();
  });

  const setStatus = await searchStatus(input.name);
  setStatus('running');
  showProgress();

  const runStep = async (step: StepReport, childInput: Record<string, unknown>) => {
    step.status = 'running';
    const started = Date.now();
    step.startedAt = new Date(started).toISOString();
    showProgress();
    try {
      const result = await wf.executeChild<(input: unknown) => Promise<unknown>>(step.workflow, {
        workflowId: step.workflowId,
        taskQueue: info.taskQueue,
        staticSummary: `step "${step.name}" of pipeline "${input.name}"`,
        args: [childInput],
      });
      step.result = result;
      const stepRows = rowsOf(result);
      if (stepRows !== undefined) {
        step.rows = stepRows;
        rows += stepRows;
      }
      const incomplete = incompleteResult(result);
      if (incomplete) {
        step.status = 'failed';
        step.error = incomplete;
      } else {
        step.status = 'success';
      }
    } catch (err) {
      step.status = 'failed';
      step.error = rootMessage(err);
      // A child that ended FAILED because parts of it failed carries its result in the failure.
      const result = failureResult(err);
      if (result !== undefined) {
        step.result = result;
        const stepRows = rowsOf(result);
        if (stepRows !== undefined) {
          step.rows = stepRows;
          rows += stepRows;
        }
      }
    } finally {
      const finished = Date.now();
      step.finishedAt = new Date(finished).toISOString();
      step.durationMs = finished - started;
      changes++;
      showProgress();
    }
  };

  for (;;) {
    for (const { name, because } of blockedSteps(input.steps, statuses())) {
      const step = byName.get(name)!;
      step.status = 'skipped';
      step.note = `upstream step "${because}" failed`;
    }
    const running = counted('running');
    const ready = readySteps(input.steps, statuses()).slice(0, Math.max(0, parallel - running));
    for (const name of ready) void runStep(byName.get(name)!, input.steps.find((s) => s.name === name)!.input);
    showProgress();
    // Nothing running and nothing could start: every step has settled.
    if (counted('running') === 0) break;
    const seen = changes;
    await wf.condition(() => changes !== seen);
  }

  const failed = steps.filter((s) => s.status === 'failed').map((s) => ({ step: s.name, error: s.error ?? 'failed' }));
  const skipped = steps.filter((s) => s.status === 'skipped').map((s) => s.name);
  setStatus(failed.length ? 'failed' : 'completed');
  showProgress();
  const result: PipelineResult = {
    name: input.name,
    status: failed.length ? 'failed' : 'success',
    steps,
    succeeded: counted('success'),
    failed,
    skipped,
    rows,
    rerun: steps.filter((s) => s.status === 'failed' || s.status === 'skipped').map((s) => s.name),
  };
  if (!failed.length || !failOnFailures || input.allowFailures) return result;
  throw failedRun(
    'StepsFailed',
    `pipeline ${input.name}: ${failed.length} of ${steps.length} steps failed (${failed.map((f) => `${f.step}: ${f.error}`).join('; ')})` +
      `${skipped.length ? `, ${skipped.length} skipped (${skipped.join(', ')})` : ''}. ` +
      `Re-run just those with the same input plus ${JSON.stringify({ onlySteps: result.rerun })} (or set "allowFailures": true to complete despite failures)`,
    result,
  );
}

/** The result a child put in its failure's details (see failedRun), if any. */
function failureResult(err: unknown): unknown {
  let current = err as { cause?: unknown } | undefined;
  while (current) {
    if (current instanceof wf.ApplicationFailure && current.details?.length) return current.details[0];
    current = current.cause as typeof current;
  }
  return undefined;
}

/**
 * A child that completed but reports failures of its own (a backfill whose partitions failed,
 * a nested pipeline with a failed step) has not delivered its data: its dependents must not run.
 */
function incompleteResult(result: unknown): string | undefined {
  if (typeof result !== 'object' || result === null || !('failed' in result)) return undefined;
  const failed = result.failed;
  if (!Array.isArray(failed) || failed.length === 0) return undefined;
  const first = failed[0] as { error?: unknown };
  const cause = typeof first?.error === 'string' ? `, first: ${first.error}` : '';
  // Backfills and file loads keep only their first failures in `failed`; `failedCount` counts them all.
  const counted = 'failedCount' in result && typeof result.failedCount === 'number' ? result.failedCount : failed.length;
  return `the child workflow completed with ${counted} failure(s)${cause}`;
}

function rowsOf(result: unknown): number | undefined {
  if (typeof result !== 'object' || result === null || !('rows' in result)) return undefined;
  return typeof result.rows === 'number' ? result.rows : undefined;
}
