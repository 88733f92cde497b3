/**
 * filesWorkflow during one long file: `progress` and the UI's current details move while the
 * file's single load activity runs, before it commits; the finished run still answers
 * `progress`.
 */
import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import type { Progress } from '../src/inputs';
import type { FilesResult } from '../src/workflows/files';
import { count, testStack, waitFor, type TestStack } from './helpers';

const ROWS = 3_000_000;

interface FilesProgress extends Progress {
  phase: string;
  rowsInFlight: number;
}

describe('filesWorkflow: one long file', () => {
  let stack: TestStack;
  let root: string;
  before(async () => {
    stack = await testStack('fileslive');
    root = await mkdtemp(join(process.env.SLUICE_TEST_SCRATCH ?? tmpdir(), 'files-live-'));
  });
  after(async () => {
    await stack.close();
    await rm(root, { recursive: true, force: true });
  });

  test('progress and the UI move while one file loads, before it commits; the finished run answers progress', async () => {
    const out = createWriteStream(join(root, 'big.csv'));
    out.write('id,v\n');
    for (let i = 1; i <= ROWS; i += 10_000) {
      let chunk = '';
      for (let j = i; j < i + 10_000 && j <= ROWS; j++) chunk += `${j},v${j % 997}\n`;
      if (!out.write(chunk)) await new Promise<void>((resolveDrain) => out.once('drain', () => resolveDrain()));
    }
    out.end();
    await finished(out);

    const handle = await stack.client.workflow.start('filesWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `files-live-${stack.schema}`,
      args: [{
        source: { kind: 'files', path: root, pattern: '*.csv', format: 'csv' },
        resource: { name: 'big', columns: { id: 'bigint' } },
        destination: { schema: stack.schema },
        once: true,
      }],
    });
    await stack.withWorker(async () => {
      // The whole file is one activity: only its reports can move progress before it commits.
      const seen = await waitFor('rows of the file in flight', async () => {
        const p = await handle.query<FilesProgress>('progress');
        return p.phase === 'loading' && p.inFlight === 1 && p.rowsInFlight > 0 && p.rows === 0 && p;
      }, 180_000);
      const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      assert.match(meta.currentDetails ?? '', /in flight: big\.csv \([1-9][\d,]* rows so far\)/);
      const later = await waitFor('more rows', async () => {
        const p = await handle.query<FilesProgress>('progress');
        return (p.rowsInFlight > seen.rowsInFlight || p.phase === 'done') && p;
      }, 180_000);
      assert.ok(later.phase === 'done' || later.rowsInFlight > seen.rowsInFlight, `rows in flight went on from ${seen.rowsInFlight}`);

      const result = (await handle.result()) as FilesResult;
      assert.equal(result.rows, ROWS);
      // A finished run is replayed to answer: its progress is the final one.
      const final = await handle.query<FilesProgress>('progress');
      assert.equal(final.phase, 'done');
      assert.equal(final.rows, ROWS);
      assert.equal(final.inFlight, 0);
    });
    assert.equal(await count(stack.db, `${stack.schema}.big`), ROWS);
  });
});
