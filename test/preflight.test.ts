/**
 * Setup errors fail a workflow once, before it fans out: one preflight activity, one
 * non-retryable message that names the field, and no partition, file or sync ever scheduled.
 * Also: a misspelled key fails the workflow at once, through the client, as a user starts it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { testStack, type TestStack } from './helpers';

const EventType = temporal.api.enums.v1.EventType;

interface ActivityCounts {
  scheduled: Record<string, number>;
  failed: number;
  /** Attempts of the last activity that started (retries are not events: the started event carries the count). */
  attempts: number;
  workflowTaskFailures: number;
}

/** Which activities the run scheduled, how many attempts failed, and whether a workflow task ever failed. */
async function activityCounts(handle: WorkflowHandle): Promise<ActivityCounts> {
  const history = await handle.fetchHistory();
  const counts: ActivityCounts = { scheduled: {}, failed: 0, attempts: 0, workflowTaskFailures: 0 };
  for (const event of history.events ?? []) {
    if (event.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) {
      const name = event.activityTaskScheduledEventAttributes?.activityType?.name ?? '?';
      counts.scheduled[name] = (counts.scheduled[name] ?? 0) + 1;
    }
    if (event.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED) counts.failed++;
    if (event.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) counts.attempts = event.activityTaskStartedEventAttributes?.attempt ?? 0;
    if (event.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED) counts.workflowTaskFailures++;
  }
  return counts;
}

describe('preflight: setup errors fail once, before fan-out', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('preflight');
    await stack.db.query(`
      create table ${stack.sourceSchema}.orders (id bigint primary key, created_at timestamptz not null, updated_at timestamptz not null);
      insert into ${stack.sourceSchema}.orders select i, timestamptz '2024-01-01' + i * interval '1 hour', now() from generate_series(1, 100) i;`);
  });
  after(async () => {
    delete process.env.PREFLIGHT_UNSET_URL;
    await stack.close();
  });

  const backfill = (extra: Record<string, unknown> = {}) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.orders` },
    resource: { name: 'orders', writeDisposition: 'merge', primaryKey: ['id'] },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
    partitionColumn: 'created_at',
    start: '2024-01-01',
    end: '2024-01-31',
    parallel: 4,
    ...extra,
  });

  /** Starts the workflow, expects it to fail, and returns the failure message and what ran. */
  async function failure(workflowType: string, input: unknown, id: string): Promise<{ message: string; type?: string; nonRetryable?: boolean; counts: ActivityCounts }> {
    const handle = await stack.client.workflow.start(workflowType, { taskQueue: stack.taskQueue, workflowId: `${id}-${stack.schema}`, args: [input] });
    const err = await stack.withWorker(() => handle.result().catch((e: unknown) => e));
    assert.ok(err instanceof WorkflowFailedError, `expected the run to fail, got ${JSON.stringify(err)}`);
    const cause = err.cause as Error & { type?: string; nonRetryable?: boolean };
    return { message: cause.message, type: cause.type, nonRetryable: cause.nonRetryable, counts: await activityCounts(handle) };
  }

  test('a wrong table: one preflight failure, not 31 partitions', async () => {
    const { message, type, nonRetryable, counts } = await failure(
      'backfillWorkflow',
      backfill({ source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.ordres` } }),
      'preflight-table',
    );
    assert.equal(type, 'PreflightFailed');
    assert.equal(nonRetryable, true);
    assert.match(message, /^backfillWorkflow cannot start: source\.table: .*ordres.*does not exist/);
    assert.deepEqual(counts.scheduled, { preflight: 1 }, 'no partition was scheduled');
    assert.equal(counts.failed, 1);
    assert.equal(counts.attempts, 1, 'no retries of a permanent error');
  });

  test('an unset connection variable: one attempt, naming the variable, no 15 s of retries', async () => {
    delete process.env.PREFLIGHT_UNSET_URL;
    const { message, counts } = await failure(
      'backfillWorkflow',
      backfill({ source: { kind: 'postgres', connection: 'PREFLIGHT_UNSET_URL', table: `${stack.sourceSchema}.orders` } }),
      'preflight-unset',
    );
    assert.match(message, /source\.connection: environment variable PREFLIGHT_UNSET_URL is not set on this worker/);
    assert.deepEqual(counts.scheduled, { preflight: 1 });
    assert.equal(counts.attempts, 1);
  });

  test('a wrong partition column names the field and suggests the real column', async () => {
    const { message, counts } = await failure('backfillWorkflow', backfill({ partitionColumn: 'created' }), 'preflight-column');
    assert.match(message, /partitionColumn: column "created" is not in table .*orders; did you mean "created_at"\?/);
    assert.deepEqual(counts.scheduled, { preflight: 1 });
  });

  test('every problem in one message: a wrong primary key and an unset destination variable together', async () => {
    delete process.env.PREFLIGHT_UNSET_URL;
    const { message, counts } = await failure(
      'backfillWorkflow',
      backfill({ resource: { name: 'orders', writeDisposition: 'merge', primaryKey: ['order_id'] }, destination: { connection: 'PREFLIGHT_UNSET_URL', schema: stack.schema } }),
      'preflight-two',
    );
    assert.match(message, /destination\.connection: environment variable PREFLIGHT_UNSET_URL is not set/);
    assert.match(message, /resource\.primaryKey: column "order_id" is not in table/);
    assert.equal(counts.failed, 1);
  });

  test('a destination that refuses connections fails after a few quick attempts, naming the variable but not its value', async () => {
    process.env.PREFLIGHT_UNSET_URL = 'postgres://someone:s3cret-password@127.0.0.1:1/nowhere';
    try {
      const { message, counts } = await failure('fullRefreshWorkflow', { source: backfill().source, resource: { name: 'orders_fr' }, destination: { connection: 'PREFLIGHT_UNSET_URL' } }, 'preflight-refused');
      assert.match(message, /destination\.connection: cannot connect with PREFLIGHT_UNSET_URL: .*ECONNREFUSED/);
      assert.doesNotMatch(message, /s3cret/);
      assert.deepEqual(counts.scheduled, { preflight: 1 }, 'the refresh itself never ran');
      assert.equal(counts.attempts, 4, 'retried as a transient error, then given up');
    } finally {
      delete process.env.PREFLIGHT_UNSET_URL;
    }
  });

  test('incremental: a wrong cursor column; files: a missing directory', async () => {
    const inc = await failure(
      'incrementalWorkflow',
      { source: backfill().source, resource: { name: 'orders_inc', writeDisposition: 'merge', primaryKey: ['id'] }, destination: backfill().destination, cursor: { column: 'updatedat' }, once: true },
      'preflight-cursor',
    );
    assert.match(inc.message, /^incrementalWorkflow cannot start: cursor\.column: column "updatedat" is not in table .*; did you mean "updated_at"\?/);
    assert.deepEqual(inc.counts.scheduled, { preflight: 1 });

    const files = await failure(
      'filesWorkflow',
      { source: { kind: 'files', path: `/nonexistent/${stack.schema}`, pattern: '*.csv', format: 'csv' }, resource: { name: 'drops' }, destination: backfill().destination, once: true },
      'preflight-files',
    );
    assert.match(files.message, /^filesWorkflow cannot start: source\.path: directory \/nonexistent\/\S+ does not exist/);
    assert.deepEqual(files.counts.scheduled, { preflight: 1 });
  });

  test('a misspelled key fails at once through the client, non-retryably, with the path and the key meant', async () => {
    const input = backfill({ resource: { name: 'orders', writeDispositon: 'merge', primaryKey: ['id'] } });
    const { message, type, nonRetryable, counts } = await failure('backfillWorkflow', input, 'strict-input');
    assert.equal(message, 'invalid backfillWorkflow input: resource.writeDispositon: unknown field, did you mean writeDisposition?');
    assert.equal(type, 'InvalidInput');
    assert.equal(nonRetryable, true);
    assert.deepEqual(counts.scheduled, {}, 'nothing ran');
    assert.equal(counts.workflowTaskFailures, 0, 'no workflow task retry loop');
  });

  test('a good input passes the preflight and loads', async () => {
    const handle = await stack.client.workflow.start('backfillWorkflow', { taskQueue: stack.taskQueue, workflowId: `preflight-ok-${stack.schema}`, args: [backfill({ end: '2024-01-03' })] });
    const result = (await stack.withWorker(() => handle.result())) as { rows: number; failed: unknown[] };
    assert.deepEqual(result.failed, []);
    assert.equal(result.rows, 71);
    assert.equal((await activityCounts(handle)).scheduled.preflight, 1);
  });
});
