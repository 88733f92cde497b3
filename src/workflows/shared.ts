/**
 * Definitions every sluice workflow shares: the `progress` query, the control signals, and
 * input validation that fails the workflow at once (no workflow-task retry loop) naming the
 * bad field.
 */
import { ApplicationFailure, defineQuery, defineSignal } from '@temporalio/workflow';
import type { z } from 'zod';
import { parseInput, type Progress } from '../inputs';

export const progressQuery = defineQuery<Progress>('progress');
export const pauseSignal = defineSignal('pause');
export const resumeSignal = defineSignal('resume');
export const setParallelSignal = defineSignal<[number]>('setParallel');

export function validateInput<S extends z.ZodType>(workflowType: string, schema: S, raw: unknown): z.infer<S> {
  const parsed = parseInput(schema, raw);
  if (!parsed.ok) {
    throw ApplicationFailure.nonRetryable(`invalid ${workflowType} input: ${parsed.message}`, 'InvalidInput');
  }
  return parsed.value;
}

/** Failure text for results and the UI: the root cause, not the "Activity task failed" wrapper. */
export function rootMessage(err: unknown): string {
  let current = err as { message?: string; cause?: unknown } | undefined;
  while (current?.cause) current = current.cause as typeof current;
  return current?.message ?? String(err);
}

export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
