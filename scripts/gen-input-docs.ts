/**
 * `npm run docs:inputs`: writes docs/inputs.md, the reference of every workflow input field,
 * from the zod schemas in src/inputs.ts (their JSON Schema, descriptions from `.describe()`).
 * test/input-docs.test.ts fails when the committed file is out of step with the schemas.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { renderInputDocs } from '../src/cli/input-docs';

async function main(): Promise<void> {
  const path = join(__dirname, '..', 'docs', 'inputs.md');
  await writeFile(path, renderInputDocs());
  console.log(`wrote ${path}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
