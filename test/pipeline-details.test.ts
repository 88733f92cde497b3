/** The pipeline's current details: a table that stays aligned however the UI renders markdown. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { stepTable } from '../src/plan/step-table';

describe('pipeline current details', () => {
  test('one aligned row per step in a code block, failures and skips explained below', () => {
    const text = stepTable(
      'nightly',
      [
        { name: 'customers', workflow: 'fullRefreshWorkflow', status: 'success', dependsOn: [], rows: 120, durationMs: 9356 },
        { name: 'orders', workflow: 'backfillWorkflow', status: 'failed', dependsOn: ['customers'], rows: 1234567, durationMs: 75_000, error: 'relation "demo.ordres" does not exist' },
        { name: 'report', workflow: 'fullRefreshWorkflow', status: 'skipped', dependsOn: ['orders'], note: 'upstream step "orders" failed' },
        { name: 'audit', workflow: 'incrementalWorkflow', status: 'running', dependsOn: [] },
      ],
      2,
    );
    assert.equal(
      text,
      [
        '**pipeline nightly**: 1/4 succeeded, 1 running, 1 failed, 1 skipped, 0 pending (parallel 2)',
        '',
        '```',
        'step       workflow             status        rows   took  after',
        'customers  fullRefreshWorkflow  success        120   9.4s',
        'orders     backfillWorkflow     failed   1,234,567  1m15s  customers',
        'report     fullRefreshWorkflow  skipped                    orders',
        'audit      incrementalWorkflow  running',
        '```',
        '',
        '- orders failed: relation "demo.ordres" does not exist',
        '- report skipped: upstream step "orders" failed',
      ].join('\n'),
    );
  });

  test('names from input cannot end the code block or break a line; long ones are cut', () => {
    const text = stepTable('p*`x`', [{ name: 'a```\nb', workflow: 'backfillWorkflow', status: 'failed', dependsOn: [], error: 'x'.repeat(500) }], 1);
    const fences = text.split('\n').filter((l) => l.includes('```'));
    assert.deepEqual(fences, ['```', '```'], 'exactly the two fences sluice writes');
    assert.match(text, /^\*\*pipeline p\\\*'x'\*\*/);
    assert.match(text, /^a''' b\s+backfillWorkflow/m);
    assert.ok(text.split('\n').every((l) => l.length < 320), 'long errors are cut');
  });
});
