import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PipelineInput } from '../src/inputs';
import { blockedSteps, dagProblems, downstreamOf, findCycles, pipelineProblems, readySteps, topologicalOrder, type StepStatus } from '../src/plan/dag';

const step = (name: string, ...dependsOn: string[]) => ({ name, dependsOn });
const statusOf = (entries: Record<string, StepStatus>) => new Map(Object.entries(entries));

// extract_a -> transform_a -> report
// extract_b -> transform_b ---^
// audit (independent)
const diamond = [
  step('extract_a'),
  step('extract_b'),
  step('transform_a', 'extract_a'),
  step('transform_b', 'extract_b'),
  step('report', 'transform_a', 'transform_b'),
  step('audit'),
];

describe('dag validation', () => {
  test('a valid graph has no problems', () => {
    assert.deepEqual(dagProblems(diamond), []);
  });

  test('duplicate names are named with both positions', () => {
    const problems = dagProblems([step('a'), step('b'), step('a')]);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /duplicate step name "a" \(steps\[0\] and steps\[2\]\)/);
  });

  test('an unknown dependency names the step, the dependency and the real steps', () => {
    const problems = dagProblems([step('extract'), step('load', 'extarct')]);
    assert.deepEqual(problems, ['step "load" depends on "extarct", which is not a step of this pipeline (steps: extract, load)']);
  });

  test('cycles are shown as paths, self-dependencies too', () => {
    assert.deepEqual(findCycles([step('a', 'c'), step('b', 'a'), step('c', 'b'), step('d')]), [['a', 'c', 'b', 'a']]);
    assert.deepEqual(dagProblems([step('a', 'a')]), ['dependency cycle: a -> a ("x -> y": x dependsOn y)']);
    const problems = dagProblems([step('x'), step('a', 'b'), step('b', 'a'), step('c', 'c')]);
    assert.equal(problems.length, 2);
    assert.match(problems[0]!, /^dependency cycle: a -> b -> a /);
    assert.match(problems[1]!, /^dependency cycle: c -> c /);
  });

  test('every problem is reported at once', () => {
    const problems = dagProblems([step('a', 'b'), step('b', 'a'), step('a'), step('c', 'nope')]);
    assert.equal(problems.length, 3, problems.join('\n'));
  });
});

describe('dag ordering and scheduling', () => {
  test('topological order puts dependencies first, otherwise keeps declaration order', () => {
    assert.deepEqual(topologicalOrder(diamond), ['extract_a', 'extract_b', 'transform_a', 'transform_b', 'report', 'audit']);
    assert.deepEqual(topologicalOrder([step('load', 'extract'), step('extract')]), ['extract', 'load']);
    assert.throws(() => topologicalOrder([step('a', 'b'), step('b', 'a')]), /cycle/);
  });

  test('downstreamOf follows dependencies transitively', () => {
    assert.deepEqual(downstreamOf(diamond, 'extract_a'), ['transform_a', 'report']);
    assert.deepEqual(downstreamOf(diamond, 'audit'), []);
  });

  test('ready steps: pending with every dependency succeeded', () => {
    const all = (s: StepStatus) => new Map(diamond.map((d) => [d.name, s]));
    assert.deepEqual(readySteps(diamond, all('pending')), ['extract_a', 'extract_b', 'audit']);
    const mid = statusOf({ extract_a: 'success', extract_b: 'running', transform_a: 'pending', transform_b: 'pending', report: 'pending', audit: 'success' });
    assert.deepEqual(readySteps(diamond, mid), ['transform_a']);
    const late = statusOf({ extract_a: 'success', extract_b: 'success', transform_a: 'success', transform_b: 'running', report: 'pending', audit: 'success' });
    assert.deepEqual(readySteps(diamond, late), [], 'report waits for every dependency');
  });

  test('a failure blocks its whole downstream cone, blaming the failed step; other branches stay pending', () => {
    const s = statusOf({ extract_a: 'failed', extract_b: 'success', transform_a: 'pending', transform_b: 'pending', report: 'pending', audit: 'pending' });
    assert.deepEqual(blockedSteps(diamond, s), [
      { name: 'transform_a', because: 'extract_a' },
      { name: 'report', because: 'extract_a' },
    ]);
    assert.deepEqual(readySteps(diamond, s), ['transform_b', 'audit']);
  });
});

describe('pipeline input problems', () => {
  const refresh = (table: string) => ({
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table },
    resource: { name: table },
  });
  const parse = (raw: unknown) => PipelineInput.parse(raw);

  test('a valid pipeline has none', () => {
    const input = parse({ name: 'p', steps: [{ name: 'a', workflow: 'fullRefreshWorkflow', input: refresh('public.a') }] });
    assert.deepEqual(pipelineProblems(input), []);
  });

  test('a bad step input is reported up front, naming the step and the field', () => {
    const input = parse({
      name: 'p',
      steps: [
        { name: 'a', workflow: 'fullRefreshWorkflow', input: refresh('public.a') },
        { name: 'b', workflow: 'fullRefreshWorkflow', input: { ...refresh('public.b'), resource: { name: 'b', writeDisposition: 'upsert' } }, dependsOn: ['a'] },
      ],
    });
    const problems = pipelineProblems(input);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^steps\[1\] \("b"\)\.input is not a valid fullRefreshWorkflow input: resource\.writeDisposition/);
  });

  test('a step that never finishes and unknown onlySteps are rejected', () => {
    const input = parse({
      name: 'p',
      onlySteps: ['sync', 'nope'],
      steps: [
        {
          name: 'sync',
          workflow: 'incrementalWorkflow',
          input: { ...refresh('public.a'), cursor: { column: 'updated_at' }, every: '5m' },
        },
      ],
    });
    const problems = pipelineProblems(input);
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.match(problems[0]!, /onlySteps names "nope"/);
    assert.match(problems[1]!, /"every".*use "once": true/);
  });
});
