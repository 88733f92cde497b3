/**
 * Every committed history under test/histories/ replays against today's workflow code: a change
 * that would break running workflows (a reordered activity, a removed timer) fails here.
 * Version such changes with patched(). Record new histories with `npm run record:histories`.
 */
import { Worker } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { requireEnv } from './helpers';

const dir = join(__dirname, 'histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

interface Fixture {
  workflowId: string;
  history: Parameters<typeof workflowTypeOf>[0];
}

/** test/histories/<scenario>.json holds { workflowId, history } (see saveHistory in helpers.ts). */
function readFixture(file: string): Fixture {
  const parsed = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Partial<Fixture> & Fixture['history'];
  return parsed.workflowId && parsed.history ? (parsed as Fixture) : { workflowId: file.replace(/\.json$/, ''), history: parsed };
}

function workflowTypeOf(history: { events?: { workflowExecutionStartedEventAttributes?: { workflowType?: { name?: string } } }[] }): string | undefined {
  return history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name;
}

describe('replay of committed histories', () => {
  test('every workflow type has at least one committed history', async () => {
    const workflows = Object.keys(await import('../src/workflows'));
    const covered = new Set(files.map((f) => workflowTypeOf(readFixture(f).history)));
    const missing = workflows.filter((w) => !covered.has(w));
    assert.deepEqual(missing, [], `workflow types without a history in test/histories: ${missing.join(', ')}`);
  });

  for (const file of files) {
    test(`replays ${file}`, async () => {
      const { workflowId, history } = readFixture(file);
      await Worker.runReplayHistory({ workflowBundle: { codePath: requireEnv('SLUICE_WORKFLOW_BUNDLE') }, replayName: file }, history, workflowId);
    });
  }
});
