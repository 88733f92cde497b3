#!/usr/bin/env node
// `npx sluice ...`: runs the TypeScript CLI (src/cli/index.ts) through tsx, with the repository's own dependencies.
require('tsx/cjs');
const { main } = require('../src/cli/index.ts');
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
