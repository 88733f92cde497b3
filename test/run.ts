/**
 * `npm test`: one real Temporal dev server and one real PostgreSQL for the whole run, shared
 * by every test file (each test isolates itself by schema, task queue and workflow ids), and
 * the workflow bundle built once. Then node's test runner runs the files.
 *
 *   npm test                         every test file
 *   npm test -- test/loader.test.ts  some of them
 *   npm run test:replay              replay tests only (no servers needed)
 */
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleWorkflows } from '../src/dev/bundle';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { startDevServer } from '../src/dev/temporal-server';
import { resolveWeed, startS3Server, WEED_INSTALL_HELP } from '../src/dev/s3-server';
import { randomBytes } from 'node:crypto';

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const replayOnly = args.includes('--replay-only');
  const requested = args.filter((a) => !a.startsWith('--'));
  const nodeTestFlags = args.filter((a) => a.startsWith('--test-'));
  const testDir = __dirname;
  const files = requested.length
    ? requested
    : replayOnly
      ? [join(testDir, 'replay.test.ts')]
      : (await readdir(testDir)).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join(testDir, f));

  const scratch = await mkdtemp(join(tmpdir(), 'sluice-test-'));
  // Under root, PostgreSQL runs as the postgres user, which must be able to enter this directory.
  await chmod(scratch, 0o755);
  const env: NodeJS.ProcessEnv = { ...process.env, SLUICE_TEST_SCRATCH: scratch };
  const stops: (() => Promise<void>)[] = [];
  try {
    const started = Date.now();
    const bundle = await bundleWorkflows();
    const bundlePath = join(scratch, 'workflow-bundle.js');
    await writeFile(bundlePath, bundle);
    env.SLUICE_WORKFLOW_BUNDLE = bundlePath;
    if (!replayOnly) {
      const [server, db] = await Promise.all([
        // Low enough that long tests continue as new, so every workflow's continue-as-new path runs.
        startDevServer({ port: await freePort(), dynamicConfig: { 'limit.historyCount.suggestContinueAsNew': 400 } }),
        startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true }),
      ]);
      stops.push(server.stop, db.stop);
      env.TEMPORAL_ADDRESS = server.address;
      env.DATABASE_URL = db.url;
      console.log(`test stack: Temporal ${server.address}, PostgreSQL ${db.url} (ready in ${Date.now() - started} ms)`);
      // Object storage only for the files that use it (test/s3.ts): it takes seconds to start.
      const needsS3 = (await Promise.all(files.map((f) => readFile(f, 'utf8').catch(() => '')))).some((text) => text.includes('requireS3('));
      if (needsS3) {
        const weed = resolveWeed(env);
        if (weed) {
          const s3 = await startS3Server({ dir: join(scratch, 's3'), weed, accessKeyId: `test${randomBytes(6).toString('hex')}`, secretAccessKey: randomBytes(18).toString('hex') });
          stops.push(s3.stop);
          // Tests name this store as `"connection": "TEST_S3"`.
          Object.assign(env, {
            SLUICE_WEED_PATH: weed,
            TEST_S3_S3_ENDPOINT: s3.endpoint,
            TEST_S3_S3_ACCESS_KEY_ID: s3.accessKeyId,
            TEST_S3_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
            TEST_S3_S3_REGION: s3.region,
            TEST_S3_S3_FORCE_PATH_STYLE: 'true',
          });
          console.log(`test stack: SeaweedFS S3 ${s3.endpoint}`);
        } else {
          env.SLUICE_TEST_S3_MISSING = `no S3 server for the object-storage tests: ${WEED_INSTALL_HELP}`;
        }
      }
    }
    return await new Promise<number>((resolveCode) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...nodeTestFlags, ...files],
        { env, stdio: 'inherit' },
      );
      child.on('exit', (code, signal) => resolveCode(code ?? (signal ? 1 : 0)));
    });
  } finally {
    for (const stop of stops.reverse()) await stop().catch((err) => console.error('teardown:', err));
    await rm(scratch, { recursive: true, force: true }).catch(() => undefined);
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
