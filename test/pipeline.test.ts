import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import type { Progress } from '../src/inputs';
import type { PipelineResult, StepReport } from '../src/workflows/pipeline';
import { count, failedRun, saveHistory, testStack, type TestStack } from './helpers';

describe('pipelineWorkflow', () => {
  let stack: TestStack;
  const refresh = (table: string, name: string) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table },
    resource: { name },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
  });
  const fromQuery = (query: string, name: string) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', query },
    resource: { name },
    destination: { connection: 'DATABASE_URL', schema: stack.schema },
  });

  //   extract_a ─┐
  //   extract_b ─┴─ report
  //   broken (source table missing) ── after_broken ── after_after
  //   extract_c (independent)
  const pipeline = () => ({
    name: 'nightly',
    parallel: 2,
    steps: [
      { name: 'extract_a', workflow: 'fullRefreshWorkflow', input: refresh(`${stack.sourceSchema}.a`, 'a') },
      { name: 'extract_b', workflow: 'fullRefreshWorkflow', input: refresh(`${stack.sourceSchema}.b`, 'b') },
      {
        name: 'report',
        workflow: 'fullRefreshWorkflow',
        dependsOn: ['extract_a', 'extract_b'],
        input: fromQuery(`select a.id, a.v as a_v, b.v as b_v from ${stack.schema}.a join ${stack.schema}.b using (id)`, 'report'),
      },
      { name: 'broken', workflow: 'fullRefreshWorkflow', input: refresh(`${stack.sourceSchema}.missing`, 'missing') },
      {
        name: 'after_broken',
        workflow: 'fullRefreshWorkflow',
        dependsOn: ['broken'],
        input: fromQuery(`select id, v from ${stack.schema}.missing`, 'after_broken'),
      },
      {
        name: 'after_after',
        workflow: 'fullRefreshWorkflow',
        dependsOn: ['after_broken'],
        input: fromQuery(`select id, v from ${stack.schema}.after_broken`, 'after_after'),
      },
      { name: 'extract_c', workflow: 'fullRefreshWorkflow', input: refresh(`${stack.sourceSchema}.c`, 'c') },
    ],
  });
  const workflowId = () => `pipeline-nightly-${stack.schema}`;

  before(async () => {
    stack = await testStack('pipeline');
    for (const t of ['a', 'b', 'c']) {
      await stack.db.query(`create table ${stack.sourceSchema}.${t} as select i as id, '${t}' || i as v from generate_series(1, 100) i`);
    }
  });
  after(() => stack.close());

  test('a failed step skips its downstream, independent branches finish, at most `parallel` steps at once; the pipeline ends FAILED', async () => {
    // Queries need a worker: read the progress and the UI details before it stops.
    const { failure, result, handle, progress, details } = await stack.withWorker(async () => {
      const handle = await stack.client.workflow.start('pipelineWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: workflowId(),
        args: [pipeline()],
      });
      const failure = await failedRun<PipelineResult>(handle.result());
      const progress = await handle.query<Progress & { steps: StepReport[] }>('progress');
      return { failure, result: failure.result, handle, progress, details: await currentDetails(handle) };
    });
    assert.equal(failure.type, 'StepsFailed');
    assert.match(failure.message, /1 of 7 steps failed \(broken: .*does not exist.*\), 2 skipped \(after_broken, after_after\)/);
    assert.match(failure.message, /"onlySteps":\["broken","after_broken","after_after"\]/);
    const step = (name: string) => result.steps.find((s) => s.name === name)!;
    assert.deepEqual(
      Object.fromEntries(result.steps.map((s) => [s.name, s.status])),
      {
        extract_a: 'success',
        extract_b: 'success',
        report: 'success',
        broken: 'failed',
        after_broken: 'skipped',
        after_after: 'skipped',
        extract_c: 'success',
      },
    );
    assert.equal(result.status, 'failed');
    assert.equal(result.succeeded, 4);
    assert.deepEqual(result.skipped, ['after_broken', 'after_after']);
    assert.deepEqual(result.rerun, ['broken', 'after_broken', 'after_after']);
    assert.equal(result.failed.length, 1);
    assert.equal(result.failed[0]!.step, 'broken');
    assert.match(result.failed[0]!.error, /missing.*does not exist/);
    assert.equal(step('after_broken').note, 'upstream step "broken" failed');
    assert.equal(step('after_after').note, 'upstream step "broken" failed');
    assert.equal(step('after_after').startedAt, undefined, 'a skipped step never starts');
    assert.equal(step('broken').workflowId, `${workflowId()}/broken`);
    // A permanent error in a child fails the step in seconds, not after a retry loop.
    assert.ok(step('broken').durationMs! < 15_000, `broken took ${step('broken').durationMs} ms`);
    assert.equal(result.rows, 400, 'a, b, c and report each loaded 100 rows');
    assert.equal(await count(stack.db, `${stack.schema}.report`), 100);

    const ran = result.steps.filter((s) => s.startedAt);
    for (const s of ran) assert.ok(s.finishedAt && s.durationMs !== undefined, `${s.name} has its timing`);
    assert.ok(Date.parse(step('report').startedAt!) >= Date.parse(step('extract_a').finishedAt!), 'report starts after extract_a');
    assert.ok(Date.parse(step('report').startedAt!) >= Date.parse(step('extract_b').finishedAt!), 'report starts after extract_b');
    assert.ok(maxConcurrency(ran) <= 2, `at most 2 steps at once, saw ${maxConcurrency(ran)}`);

    assert.deepEqual(
      { done: progress.done, failed: progress.failed, inFlight: progress.inFlight, total: progress.total, rows: progress.rows },
      { done: 7, failed: 1, inFlight: 0, total: 7, rows: 400 },
    );
    assert.deepEqual(progress.steps.map((s) => s.status), result.steps.map((s) => s.status));
    assert.match(details, /^step +workflow +status +rows +took +after$/m);
    assert.match(details, /^after_broken +fullRefreshWorkflow +skipped +broken$/m);
    assert.match(details, /^- after_broken skipped: upstream step "broken" failed$/m);
    await saveHistory(handle, 'pipeline-skips-downstream');
    await saveHistory(handle, 'lease-pipeline-step-fails');
  });

  test('a step whose child completed with failures counts all of them, not just the ones it lists', async () => {
    // 25 daily partitions that all fail for good (division by zero in every row); the backfill
    // lists the first 20 in `failed` and counts 25 in `failedCount`.
    await stack.db.query(`create table ${stack.sourceSchema}.days as select i as id, timestamptz '2024-03-01' + (i - 1) * interval '1 day' as created_at from generate_series(1, 25) i`);
    const result = await stack.withWorker(() =>
      stack.client.workflow.execute('pipelineWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `pipeline-counted-${stack.schema}`,
        args: [{
          name: 'counted',
          allowFailures: true,
          steps: [{
            name: 'days',
            workflow: 'backfillWorkflow',
            input: {
              source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', query: `select id, created_at, 1 / (id - id) as boom from ${stack.sourceSchema}.days` },
              resource: { name: 'days', writeDisposition: 'append' },
              destination: { connection: 'DATABASE_URL', schema: stack.schema },
              partitionColumn: 'created_at',
              start: '2024-03-01',
              end: '2024-03-25',
              parallel: 4,
              allowFailures: true,
              maxConsecutiveFailures: 100,
            },
          }],
        }],
      }),
    ) as PipelineResult;
    const step = result.steps.find((s) => s.name === 'days')!;
    assert.equal(step.status, 'failed');
    assert.match(step.error ?? '', /^the child workflow completed with 25 failure\(s\), first: .*division by zero/);
  });

  test('a re-run with onlySteps runs just the failed and skipped steps', async () => {
    await stack.db.query(`create table ${stack.sourceSchema}.missing as select i as id, 'm' || i as v from generate_series(1, 10) i`);
    const loadsBefore = await count(stack.db, `${stack.schema}._sluice_loads`);
    const { result, handle } = await stack.withWorker(async () => {
      // Same workflow id as the first run: the children reuse their ids, as a user re-running "nightly" would.
      const handle = await stack.client.workflow.start('pipelineWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: workflowId(),
        args: [{ ...pipeline(), onlySteps: ['broken', 'after_broken', 'after_after'] }],
      });
      return { result: (await handle.result()) as PipelineResult, handle };
    });
    assert.equal(result.status, 'success');
    assert.deepEqual(result.rerun, []);
    for (const s of result.steps) {
      assert.equal(s.status, 'success', s.name);
      const rerun = ['broken', 'after_broken', 'after_after'].includes(s.name);
      assert.equal(s.startedAt !== undefined, rerun, `${s.name} ${rerun ? 'ran' : 'did not run'}`);
      if (!rerun) assert.equal(s.note, 'not re-run (not in onlySteps)');
    }
    assert.equal(await count(stack.db, `${stack.schema}.after_after`), 10);
    assert.equal(await count(stack.db, `${stack.schema}._sluice_loads`), loadsBefore + 3, 'only the three re-run steps loaded');
    await saveHistory(handle, 'pipeline-rerun-failed');
  });

  test('cycles, unknown dependencies and duplicate names fail at once, naming the steps', async () => {
    await stack.withWorker(async () => {
      const step = (name: string, ...dependsOn: string[]) => ({
        name,
        workflow: 'fullRefreshWorkflow',
        dependsOn,
        input: refresh(`${stack.sourceSchema}.a`, name),
      });
      const started = Date.now();
      const handle = await stack.client.workflow.start('pipelineWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `pipeline-cycle-${stack.schema}`,
        args: [{ name: 'cyclic', steps: [step('load'), step('a', 'c'), step('b', 'a'), step('c', 'b'), step('d', 'nope'), step('load')] }],
      });
      const err = await handle.result().catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${String(err)}`);
      const cause = err.cause as Error & { type?: string; nonRetryable?: boolean };
      assert.equal(cause.type, 'InvalidInput');
      assert.equal(cause.nonRetryable, true);
      assert.match(cause.message, /dependency cycle: a -> c -> b -> a/);
      assert.match(cause.message, /step "d" depends on "nope", which is not a step/);
      assert.match(cause.message, /duplicate step name "load"/);
      assert.ok(Date.now() - started < 10_000);
      const children = await stack.db.query(`select count(*)::int as n from information_schema.tables where table_schema = $1 and table_name = 'load'`, [stack.schema]);
      assert.equal(children.rows[0].n, 0, 'no step ran');
      await saveHistory(handle, 'pipeline-invalid-dag');
    });
  });
});

/** The most steps whose [startedAt, finishedAt) intervals overlap at one instant. */
function maxConcurrency(steps: StepReport[]): number {
  const events = steps.flatMap((s) => [
    { t: Date.parse(s.startedAt!), d: 1 },
    { t: Date.parse(s.finishedAt!), d: -1 },
  ]);
  events.sort((x, y) => x.t - y.t || x.d - y.d);
  let now = 0;
  let max = 0;
  for (const e of events) {
    now += e.d;
    max = Math.max(max, now);
  }
  return max;
}

async function currentDetails(handle: WorkflowHandle): Promise<string> {
  const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  return metadata.currentDetails ?? '';
}
