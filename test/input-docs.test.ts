/**
 * docs/inputs.md is generated from the zod schemas (`npm run docs:inputs`): it must be in step
 * with them, and it must list every field a user can write.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { renderInputDocs } from '../src/cli/input-docs';
import { BackfillInput, Destination, FilesInput, FilesSource, FullRefreshInput, IncrementalInput, PipelineInput, PostgresSource, RegisteredSource, Resource } from '../src/inputs';

test('docs/inputs.md is what `npm run docs:inputs` writes from today\'s schemas', async () => {
  const committed = await readFile(join(__dirname, '..', 'docs', 'inputs.md'), 'utf8');
  assert.ok(committed === renderInputDocs(), 'docs/inputs.md is out of step with src/inputs.ts: run `npm run docs:inputs` and commit the result');
});

test('the reference has a row for every field of every input schema, with its default and description', () => {
  const doc = renderInputDocs();
  const section = (heading: string) => {
    const start = doc.indexOf(`### ${heading}\n`);
    assert.notEqual(start, -1, `no section ${heading}`);
    const end = doc.indexOf('\n### ', start + 1);
    return doc.slice(start, end === -1 ? undefined : end);
  };
  const expectFields = (heading: string, prefix: string, shape: Record<string, unknown>) => {
    const text = section(heading);
    for (const key of Object.keys(shape)) assert.match(text, new RegExp(`^\\| \`${prefix}${key}\` \\|`, 'm'), `${heading} lists ${prefix}${key}`);
  };
  expectFields('`backfillWorkflow`', '', BackfillInput.shape);
  expectFields('`incrementalWorkflow`', '', IncrementalInput.shape);
  expectFields('`filesWorkflow`', '', FilesInput.shape);
  expectFields('`fullRefreshWorkflow`', '', FullRefreshInput.shape);
  expectFields('`pipelineWorkflow`', '', PipelineInput.shape);
  expectFields('`source`', 'source.', { ...PostgresSource.shape, ...RegisteredSource.shape });
  expectFields('`source` of filesWorkflow', 'source.', FilesSource.shape);
  expectFields('`resource`', 'resource.', Resource.shape);
  expectFields('`destination`', 'destination.', Destination.shape);
  assert.match(section('`incrementalWorkflow`'), /^\| `pageSize` \| integer 1 to 1000000 \| default `50000` \| rows per page read from the source/m);
  assert.match(section('`incrementalWorkflow`'), /^\| `cursor.column` \| string \| \*\*required\*\* \| /m);
  assert.match(section('`resource`'), /^\| `resource.writeDisposition` \| `"append"` or `"merge"` or `"replace"` \| default `"append"` \| /m);
  // Internal continue-as-new state is named, not spelled out.
  assert.doesNotMatch(doc, /`continuation\./);
});
