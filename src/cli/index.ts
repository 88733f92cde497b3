/**
 * The `sluice` command (package.json `bin`, `npx sluice ...`): start a workflow from a YAML or
 * JSON file, and look at or reset what a resource has loaded. Temporal and the destination are
 * the ones the worker uses: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, SLUICE_TASK_QUEUE, DATABASE_URL.
 */
import { Client, Connection } from '@temporalio/client';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { readConfig, type SluiceConfig } from '../config';
import { CliError } from './output';
import { reset, rejects, status, withDestination } from './resources';
import { start } from './start';

async function connectTemporal(config: SluiceConfig): Promise<Client> {
  try {
    const connection = await Connection.connect({ address: config.temporalAddress, connectTimeout: '5s' });
    return new Client({ connection, namespace: config.namespace });
  } catch (err) {
    throw new CliError(`cannot reach Temporal at ${config.temporalAddress} (TEMPORAL_ADDRESS): ${(err as Error).message}`);
  }
}

/** Temporal for the read-only commands: they still show the destination's side when it is down. */
async function tryConnectTemporal(config: SluiceConfig): Promise<Client | undefined> {
  return connectTemporal(config).catch(() => undefined);
}

async function withTemporal<T>(client: Client | undefined, fn: (client: Client | undefined) => Promise<T>): Promise<T> {
  try {
    return await fn(client);
  } finally {
    await client?.connection.close();
  }
}

function positiveInt(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number of at least 1');
  return n;
}

const SCHEMA_HELP = 'destination schema (the "destination.schema" of the input)';

export function program(config: SluiceConfig, setExitCode: (code: number) => void): Command {
  const cli = new Command('sluice')
    .description('Start sluice workflows from YAML/JSON files, and look at what a resource loaded.')
    .showHelpAfterError('(add --help for usage)')
    .addHelpText(
      'after',
      `\nEnvironment: TEMPORAL_ADDRESS (${config.temporalAddress}), TEMPORAL_NAMESPACE (${config.namespace}), ` +
        `SLUICE_TASK_QUEUE (${config.taskQueue}), DATABASE_URL (the destination, for status/rejects/reset).\n` +
        'Every input field: docs/inputs.md',
    )
    .exitOverride();

  cli
    .command('start')
    .description('validate FILE (workflow:, id:, input:) and start the workflow it describes')
    .argument('<file>', 'a .yaml/.yml or .json file')
    .option('--id <id>', 'workflow id (default: the file\'s id:, else the file name)')
    .option('--watch', 'follow the run with a progress bar until it ends; exit 0 only if it succeeded (Ctrl-C detaches, the run goes on)')
    .addHelpText(
      'after',
      `
Example file (orders.yaml):
  workflow: backfillWorkflow
  id: backfill-orders
  input:
    source: { kind: postgres, connection: SOURCE_DATABASE_URL, table: demo.orders }
    resource: { name: orders, writeDisposition: merge, primaryKey: [id] }
    destination: { schema: raw }
    partitionColumn: created_at
    start: "2024-01-01"
    end: "2024-03-31"`,
    )
    .action(async (file: string, opts: { id?: string; watch?: boolean }) => {
      let client: Client | undefined;
      const connect = async () => (client = await connectTemporal(config));
      try {
        setExitCode(await start(connect, config, { file, id: opts.id, watch: opts.watch }));
      } finally {
        await client?.connection.close();
      }
    });

  cli
    .command('status')
    .description('recent loads, saved state (cursor or files) and runs of RESOURCE (or recent loads of every resource)')
    .argument('[resource]', 'the resource name ("resource.name" of the input)')
    .option('--schema <schema>', SCHEMA_HELP, 'public')
    .option('--limit <n>', 'how many loads and runs to show', positiveInt, 10)
    .action(async (resource: string | undefined, opts: { schema: string; limit: number }) => {
      const text = await withDestination({ databaseUrl: config.databaseUrl, schema: opts.schema }, async (db) =>
        withTemporal(resource ? await tryConnectTemporal(config) : undefined, (client) => status(db, client, opts.schema, resource, opts.limit)),
      );
      console.log(text);
    });

  cli
    .command('rejects')
    .description('recent rows of RESOURCE that went to _sluice_rejects, with the reason and the source line')
    .argument('<resource>', 'the resource name')
    .option('--schema <schema>', SCHEMA_HELP, 'public')
    .option('--limit <n>', 'how many rejects to show', positiveInt, 20)
    .action(async (resource: string, opts: { schema: string; limit: number }) => {
      console.log(await withDestination({ databaseUrl: config.databaseUrl, schema: opts.schema }, (db) => rejects(db, opts.schema, resource, opts.limit)));
    });

  cli
    .command('reset')
    .description('forget the saved state (cursor, loaded files) of RESOURCE; refused while a run holds it')
    .argument('<resource>', 'the resource name')
    .option('--schema <schema>', SCHEMA_HELP, 'public')
    .action(async (resource: string, opts: { schema: string }) => {
      const text = await withDestination({ databaseUrl: config.databaseUrl, schema: opts.schema }, async (db) =>
        withTemporal(await connectTemporal(config), (client) => reset(db, client, opts.schema, resource)),
      );
      console.log(text);
    });

  return cli;
}

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  try {
    await program(readConfig(), (code) => (exitCode = code)).parseAsync(argv, { from: 'user' });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode; // commander printed help or the usage error
    if (err instanceof CliError) {
      console.error(`sluice: ${err.message}`);
      return err.exitCode;
    }
    throw err;
  }
}
