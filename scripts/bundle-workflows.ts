/**
 * Prebuilds the workflow bundle so a worker starts without running webpack:
 *
 *   tsx scripts/bundle-workflows.ts /app/workflow-bundle.js
 *
 * The worker loads it when SLUICE_WORKFLOW_BUNDLE names the file (see src/worker.ts). The
 * Dockerfile builds it at image build time; test/run.ts builds the same bundle in-process.
 * Rebuild it whenever src/workflows changes: a stale bundle runs yesterday's workflow code.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { bundleWorkflows } from '../src/dev/bundle';

async function main(): Promise<void> {
  const out = process.argv[2];
  if (!out) {
    throw new Error('usage: tsx scripts/bundle-workflows.ts <output .js path>');
  }
  const path = resolve(out);
  const code = await bundleWorkflows();
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, code);
  console.log(`workflow bundle written to ${path} (${Math.round(code.length / 1024)} KiB)`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
