/**
 * Pipeline DAGs: validation and scheduling as pure functions, safe to run inside workflow code
 * (no I/O, no clock). The workflow keeps the statuses; these functions only read them.
 */
import type { z } from 'zod';
import { BackfillInput, FilesInput, FullRefreshInput, IncrementalInput, parseInput, PipelineInput, type WorkflowType } from '../inputs';

export type StepStatus = 'pending' | 'running' | 'success' | 'failed' | 'skipped';

export interface DagStep {
  name: string;
  dependsOn: readonly string[];
}

/**
 * Every problem with the graph, each naming the steps involved: duplicate names, dependencies
 * on steps that do not exist, and cycles (shown as a path, `a -> b -> a`). Empty when valid.
 */
export function dagProblems(steps: readonly DagStep[]): string[] {
  const problems: string[] = [];
  const firstIndex = new Map<string, number>();
  steps.forEach((step, i) => {
    const seen = firstIndex.get(step.name);
    if (seen === undefined) firstIndex.set(step.name, i);
    else problems.push(`duplicate step name "${step.name}" (steps[${seen}] and steps[${i}]): step names must be unique`);
  });
  const names = [...firstIndex.keys()];
  for (const step of steps) {
    for (const dep of step.dependsOn) {
      if (!firstIndex.has(dep)) {
        problems.push(`step "${step.name}" depends on "${dep}", which is not a step of this pipeline (steps: ${names.join(', ')})`);
      }
    }
  }
  for (const cycle of findCycles(steps)) problems.push(`dependency cycle: ${cycle.join(' -> ')} ("x -> y": x dependsOn y)`);
  return problems;
}

/** Each cycle once, as the path that closes it (`a -> b -> c -> a`); self-dependencies included. */
export function findCycles(steps: readonly DagStep[]): string[][] {
  const deps = dependencyMap(steps);
  const state = new Map<string, 'visiting' | 'done'>();
  const path: string[] = [];
  const cycles: string[][] = [];
  const visit = (name: string) => {
    state.set(name, 'visiting');
    path.push(name);
    for (const dep of deps.get(name) ?? []) {
      if (!deps.has(dep)) continue; // unknown dependency: reported separately
      const s = state.get(dep);
      if (s === 'visiting') cycles.push([...path.slice(path.indexOf(dep)), dep]);
      else if (s === undefined) visit(dep);
    }
    path.pop();
    state.set(name, 'done');
  };
  for (const name of deps.keys()) if (!state.has(name)) visit(name);
  return cycles;
}

/** Steps in an order where every step comes after its dependencies, otherwise in declaration order. */
export function topologicalOrder(steps: readonly DagStep[]): string[] {
  const problems = dagProblems(steps);
  if (problems.length) throw new Error(problems.join('; '));
  const placed = new Set<string>();
  const order: string[] = [];
  while (order.length < steps.length) {
    const next = steps.find((s) => !placed.has(s.name) && s.dependsOn.every((d) => placed.has(d)))!;
    placed.add(next.name);
    order.push(next.name);
  }
  return order;
}

/** Every step that depends on `name`, directly or through other steps, in declaration order. */
export function downstreamOf(steps: readonly DagStep[], name: string): string[] {
  const found = new Set<string>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const step of steps) {
      if (!found.has(step.name) && step.dependsOn.some((d) => d === name || found.has(d))) {
        found.add(step.name);
        grew = true;
      }
    }
  }
  return steps.filter((s) => found.has(s.name)).map((s) => s.name);
}

/** Pending steps whose dependencies all succeeded, in declaration order: what may start now. */
export function readySteps(steps: readonly DagStep[], status: ReadonlyMap<string, StepStatus>): string[] {
  return steps
    .filter((s) => status.get(s.name) === 'pending' && s.dependsOn.every((d) => status.get(d) === 'success'))
    .map((s) => s.name);
}

/**
 * Pending steps that can never run because a dependency failed or was skipped. `because` is
 * the failed step upstream (as far as this call can trace it). The result covers the whole
 * downstream cone at once, because a skipped step blocks its own dependents too.
 */
export function blockedSteps(steps: readonly DagStep[], status: ReadonlyMap<string, StepStatus>): { name: string; because: string }[] {
  const current = new Map(status);
  const blocked: { name: string; because: string }[] = [];
  const rootOf = new Map<string, string>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const step of steps) {
      if (current.get(step.name) !== 'pending') continue;
      const culprit = step.dependsOn.find((d) => current.get(d) === 'failed' || current.get(d) === 'skipped');
      if (culprit !== undefined) {
        const because = rootOf.get(culprit) ?? culprit;
        current.set(step.name, 'skipped');
        rootOf.set(step.name, because);
        blocked.push({ name: step.name, because });
        grew = true;
      }
    }
  }
  return blocked;
}

function dependencyMap(steps: readonly DagStep[]): Map<string, readonly string[]> {
  const deps = new Map<string, readonly string[]>();
  for (const step of steps) if (!deps.has(step.name)) deps.set(step.name, step.dependsOn);
  return deps;
}

/** The schema each workflow type validates its input with, so a pipeline can check its steps up front. */
export const STEP_INPUT_SCHEMAS: Record<WorkflowType, z.ZodType> = {
  backfillWorkflow: BackfillInput,
  incrementalWorkflow: IncrementalInput,
  filesWorkflow: FilesInput,
  fullRefreshWorkflow: FullRefreshInput,
  pipelineWorkflow: PipelineInput,
};

/**
 * Everything wrong with a pipeline before any step runs: the graph (duplicates, unknown
 * dependencies, cycles), `onlySteps` names that are not steps, each step's own input as its
 * workflow would judge it, and steps that would never finish (`every`) and so never let their
 * dependents start. A typo in step 5 fails the pipeline now, not after steps 1 to 4 ran for hours.
 */
export function pipelineProblems(input: PipelineInput, options: Parameters<typeof parseInput>[2] = {}): string[] {
  const problems = dagProblems(input.steps);
  const names = new Set(input.steps.map((s) => s.name));
  for (const only of input.onlySteps ?? []) {
    if (!names.has(only)) problems.push(`onlySteps names "${only}", which is not a step of this pipeline (steps: ${[...names].join(', ')})`);
  }
  input.steps.forEach((step, i) => {
    const where = `steps[${i}] ("${step.name}")`;
    const parsed = parseInput(STEP_INPUT_SCHEMAS[step.workflow], step.input, options);
    if (!parsed.ok) problems.push(`${where}.input is not a valid ${step.workflow} input: ${parsed.message}`);
    if ('every' in step.input && step.input.every !== undefined) {
      problems.push(`${where}.input has "every", so the step would never finish and its dependents never start: use "once": true in a pipeline step`);
    }
  });
  return problems;
}
