/**
 * `sluice start FILE`: validates the file, starts the workflow it describes through the Temporal
 * client, and with `--watch` follows it with a progress bar fed by the `progress` query.
 */
import { WorkflowFailedError, type Client, type WorkflowHandle, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { SingleBar } from 'cli-progress';
import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import { startCommand } from '../advisor/recommend';
import type { SluiceConfig } from '../config';
import type { Progress } from '../inputs';
import { CliError } from './output';
import { readWorkflowFile } from './workflow-file';

export interface StartOptions {
  file: string;
  id?: string;
  watch?: boolean;
}

export async function loadWorkflowFile(file: string) {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError(code === 'ENOENT' ? `${file}: no such file` : `${file}: cannot read it (${code ?? String(err)})`);
  }
  const result = readWorkflowFile(file, text);
  if (!result.ok) throw new CliError(`${file} is not a valid workflow file:\n  ${result.problems.join('\n  ')}`);
  return result.value;
}

/** The workflow id when neither --id nor `id:` gives one: the file's name, so a re-start of one file reuses one id. */
export function defaultWorkflowId(file: string): string {
  return basename(file, extname(file)).replace(/[^\w.-]+/g, '-') || 'sluice';
}

/** The Temporal UI's page of a workflow. The dev server serves its UI on the frontend port + 1000. */
export function workflowUrl(config: SluiceConfig, workflowId: string, env: NodeJS.ProcessEnv = process.env): string {
  let base = env.TEMPORAL_UI_URL?.replace(/\/+$/, '');
  if (!base) {
    const [host, port] = config.temporalAddress.split(':');
    base = `http://${host}:${Number(port || 7233) + 1000}`;
  }
  return `${base}/namespaces/${encodeURIComponent(config.namespace)}/workflows/${encodeURIComponent(workflowId)}`;
}

export function temporalStartCommand(config: SluiceConfig, workflowType: string, workflowId: string, input: unknown): string {
  const flags =
    (config.temporalAddress !== 'localhost:7233' ? ` --address ${config.temporalAddress}` : '') +
    (config.namespace !== 'default' ? ` --namespace ${config.namespace}` : '');
  return startCommand(workflowType as Parameters<typeof startCommand>[0], config.taskQueue, workflowId, input).replace(
    'temporal workflow start',
    `temporal workflow start${flags}`,
  );
}

/** Validates the file before it connects; returns the exit code: 0 once started (or, with --watch, only when the run succeeded). */
export async function start(connect: () => Promise<Client>, config: SluiceConfig, options: StartOptions): Promise<number> {
  const file = await loadWorkflowFile(options.file);
  const workflowId = options.id ?? file.id ?? defaultWorkflowId(options.file);
  const client = await connect();
  let handle: WorkflowHandleWithFirstExecutionRunId;
  try {
    handle = await client.workflow.start(file.workflow, { taskQueue: config.taskQueue, workflowId, args: [file.input] });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new CliError(`workflow ${workflowId} is already running: watch it in ${workflowUrl(config, workflowId)}, or start this file with another --id`);
    }
    throw err;
  }
  console.log(`started ${file.workflow} ${workflowId} (run ${handle.firstExecutionRunId}) on task queue ${config.taskQueue}`);
  console.log(`  UI:       ${workflowUrl(config, workflowId)}`);
  console.log(`  Temporal: ${temporalStartCommand(config, file.workflow, workflowId, file.input)}`);
  if (!options.watch) return 0;
  return watch(handle);
}

function progressLine(p: Progress): Record<string, string | number> {
  return { failed: p.failed, inFlight: p.inFlight, rows: p.rows };
}

/**
 * Follows a run until it ends: a bar of `done` over `total` from the `progress` query, redrawn
 * on a terminal, printed as a line now and then elsewhere. Ctrl-C only stops watching.
 */
export async function watch(handle: WorkflowHandle, pollMs = 1000): Promise<number> {
  const bar = new SingleBar({
    format: '{bar} {value}/{total} done | {failed} failed | {inFlight} in flight | {rows} rows',
    stream: process.stderr,
    noTTYOutput: true,
    notTTYSchedule: 2000,
    hideCursor: true,
  });
  let started = false;
  const poll = async () => {
    try {
      const p = await handle.query<Progress>('progress');
      const total = p.total ?? p.done + p.failed + p.inFlight;
      if (!started) {
        bar.start(total, p.done, progressLine(p));
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(p.done, progressLine(p));
      }
    } catch {
      // The run may not have had its first workflow task yet, or may just have ended.
    }
  };
  const timer = setInterval(() => void poll(), pollMs);
  await poll();
  let detach!: () => void;
  const detached = new Promise<'detached'>((resolve) => (detach = () => resolve('detached')));
  process.once('SIGINT', detach);
  try {
    const outcome = await Promise.race([handle.result().then((result: unknown) => ({ result })), detached]);
    clearInterval(timer);
    if (outcome === 'detached') {
      if (started) bar.stop();
      console.log(`\ndetached: ${handle.workflowId} keeps running (sluice status, or temporal workflow describe --workflow-id ${handle.workflowId})`);
      return 130;
    }
    await poll();
    if (started) bar.stop();
    console.log(`${handle.workflowId} completed: ${JSON.stringify(outcome.result)}`);
    return 0;
  } catch (err) {
    clearInterval(timer);
    if (started) bar.stop();
    if (err instanceof WorkflowFailedError) {
      console.error(`${handle.workflowId} failed: ${rootCause(err)}`);
      return 1;
    }
    throw err;
  } finally {
    process.removeListener('SIGINT', detach);
  }
}

function rootCause(err: Error): string {
  let current: Error = err;
  while (current.cause instanceof Error) current = current.cause;
  return current.message;
}
