import { bundleWorkflowCode } from '@temporalio/worker';

/** webpack's per-module report is noise in a build log; warnings and errors still show. */
const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (message: string) => console.warn(message),
  error: (message: string) => console.error(message),
};

/**
 * The workflow bundle a worker loads through SLUICE_WORKFLOW_BUNDLE, so it starts without
 * running webpack. Built by the Dockerfile (scripts/bundle-workflows.ts) and by test/run.ts.
 */
export async function bundleWorkflows(): Promise<string> {
  const { code } = await bundleWorkflowCode({ workflowsPath: require.resolve('../workflows'), logger: quietLogger });
  return code;
}
