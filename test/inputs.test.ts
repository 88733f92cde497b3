/**
 * Input validation as a user meets it: misspelled keys anywhere are refused with the path and
 * the key that was meant, missing fields say "required", and every input sluice itself prints
 * or sends (npm start's examples, continue-as-new state) still parses.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EXAMPLES } from '../src/dev/examples';
import { BackfillInput, closestName, editDistance, FilesInput, FullRefreshInput, IncrementalInput, parseInput, PipelineInput } from '../src/inputs';
import { pipelineProblems } from '../src/plan/dag';

const backfill = {
  source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: 'demo.orders' },
  resource: { name: 'orders', writeDisposition: 'merge', primaryKey: ['id'] },
  partitionColumn: 'created_at',
  start: '2024-01-01',
  end: '2024-01-31',
};

function messageOf(result: ReturnType<typeof parseInput>): string {
  assert.equal(result.ok, false, 'expected the input to be refused');
  return (result as { message: string }).message;
}

describe('edit distance and suggestions', () => {
  test('counts insertions, deletions, substitutions and adjacent swaps as one edit each', () => {
    assert.equal(editDistance('writedispositon', 'writedisposition'), 1);
    assert.equal(editDistance('paralel', 'parallel'), 1);
    assert.equal(editDistance('primaryKye', 'primaryKey'), 1);
    assert.equal(editDistance('colunm', 'column'), 1);
    assert.equal(editDistance('kitten', 'sitting'), 3);
    assert.equal(editDistance('', 'abc'), 3);
    assert.equal(editDistance('same', 'same'), 0);
  });

  test('suggests the nearest known name, ignoring case, and nothing for a different word', () => {
    const known = ['name', 'table', 'writeDisposition', 'primaryKey', 'mergeKey', 'hardDelete', 'columns'];
    assert.equal(closestName('writeDispositon', known), 'writeDisposition');
    assert.equal(closestName('primarykey', known), 'primaryKey');
    assert.equal(closestName('colums', known), 'columns');
    assert.equal(closestName('xyzzy', known), undefined);
    assert.equal(closestName('nme', ['name', 'end']), 'name');
    assert.equal(closestName('a', ['b']), 'b', 'a one-letter key is one edit from any other one-letter key');
    assert.equal(closestName('id', ['end', 'start']), undefined);
    assert.equal(closestName('created', ['id', 'created_at', 'updated_at']), 'created_at', 'a cut-off name');
    assert.equal(closestName('up', ['updated_at']), undefined, 'two letters are too few to guess from');
  });
});

describe('strict inputs', () => {
  test('the issue example: a misspelled resource key names the path and the key meant', () => {
    const message = messageOf(parseInput(BackfillInput, { ...backfill, resource: { name: 'orders', writeDispositon: 'merge', primaryKey: ['id'] } }));
    assert.equal(message, 'resource.writeDispositon: unknown field, did you mean writeDisposition?');
  });

  test('unknown keys at every depth, each with its own path', () => {
    const cases: [unknown, unknown, string][] = [
      [BackfillInput, { ...backfill, paralel: 8 }, 'paralel: unknown field, did you mean parallel?'],
      [BackfillInput, { ...backfill, source: { ...backfill.source, tabel: 'x', table: undefined } }, 'source.tabel: unknown field, did you mean table?'],
      [BackfillInput, { ...backfill, destination: { schema: 'raw', shema: 'x' } }, 'destination.shema: unknown field, did you mean schema?'],
      [BackfillInput, { ...backfill, resource: { ...backfill.resource, schemaContract: { column: 'freeze' } } }, 'resource.schemaContract.column: unknown field, did you mean columns?'],
      [IncrementalInput, { ...backfill, partitionColumn: undefined, start: undefined, end: undefined, once: true, cursor: { colum: 'updated_at' } }, 'cursor.colum: unknown field, did you mean column?'],
      [FilesInput, { ...backfill, source: { kind: 'files', path: '/d', format: 'csv', csv: { delimeter: ';' } }, partitionColumn: undefined, start: undefined, end: undefined, once: true }, 'source.csv.delimeter: unknown field, did you mean delimiter?'],
      [PipelineInput, { name: 'p', steps: [{ name: 'a', workflow: 'fullRefreshWorkflow', input: {}, dependson: [] }] }, 'steps.0.dependson: unknown field, did you mean dependsOn?'],
    ];
    for (const [schema, raw, expected] of cases) {
      const message = messageOf(parseInput(schema as typeof BackfillInput, JSON.parse(JSON.stringify(raw))));
      assert.ok(message.includes(expected), `expected "${expected}" in: ${message}`);
    }
  });

  test('a key too far from any known one lists the known keys, but never the internal continuation', () => {
    const message = messageOf(parseInput(FullRefreshInput, { source: backfill.source, resource: backfill.resource, fancy: true }));
    assert.match(message, /^fancy: unknown field \(known: source, resource, destination\)$/);
    const top = messageOf(parseInput(BackfillInput, { ...backfill, zzzzzzzz: 1 }));
    assert.doesNotMatch(top, /continuation/);
  });

  test('a missing field says required, not zod jargon', () => {
    const { partitionColumn: _omit, ...withoutColumn } = backfill;
    assert.equal(messageOf(parseInput(BackfillInput, withoutColumn)), 'partitionColumn: required');
    const noKind = messageOf(parseInput(BackfillInput, { ...backfill, source: { connection: 'X', table: 't' } }));
    assert.match(noKind, /^source\.kind: required \(.*postgres.*\)$/);
    const noName = messageOf(parseInput(BackfillInput, { ...backfill, resource: { writeDisposition: 'append' } }));
    assert.equal(noName, 'resource.name: required');
    assert.doesNotMatch(noName, /received undefined/);
  });

  test('a pipeline refuses a misspelled key inside a step input before any step runs', () => {
    const input = PipelineInput.parse({
      name: 'p',
      steps: [{ name: 'load', workflow: 'backfillWorkflow', input: { ...backfill, granularty: 'month' } }],
    });
    const problems = pipelineProblems(input);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /steps\[0\] \("load"\)\.input .*granularty: unknown field, did you mean granularity\?/);
  });

  test('strip mode (runs started before inputs were strict) drops unknown keys and still refuses real errors', () => {
    const stripped = parseInput(BackfillInput, { ...backfill, resource: { ...backfill.resource, writeDispositon: 'append' } }, { unknownKeys: 'strip' });
    assert.ok(stripped.ok);
    assert.equal(stripped.value.resource.writeDisposition, 'merge');
    assert.equal('writeDispositon' in stripped.value.resource, false);
    const stillBad = parseInput(BackfillInput, { ...backfill, parallel: 0, extra: 1 }, { unknownKeys: 'strip' });
    assert.equal(stillBad.ok, false);
    assert.match((stillBad as { message: string }).message, /parallel/);
  });

  test('every input npm start prints parses', () => {
    const schemas = { backfillWorkflow: BackfillInput, incrementalWorkflow: IncrementalInput, filesWorkflow: FilesInput, fullRefreshWorkflow: FullRefreshInput, pipelineWorkflow: PipelineInput };
    for (const example of EXAMPLES) {
      const parsed = parseInput(schemas[example.workflowType as keyof typeof schemas], example.input);
      assert.ok(parsed.ok, `${example.workflowId}: ${parsed.ok ? '' : parsed.message}`);
      if (example.workflowType === 'pipelineWorkflow') assert.deepEqual(pipelineProblems(PipelineInput.parse(example.input)), []);
    }
  });

  test('continue-as-new state a workflow writes for itself is accepted', () => {
    const parsed = parseInput(BackfillInput, {
      ...backfill,
      continuation: { nextIndex: 3, succeeded: 2, rows: 10, rejected: 0, failed: [{ partition: '2024-01-02', error: 'x' }], paused: false, parallel: 4 },
    });
    assert.ok(parsed.ok, parsed.ok ? '' : parsed.message);
  });
});
