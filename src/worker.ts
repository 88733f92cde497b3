/**
 * The composition root: one worker process polls the sluice task queue, runs every workflow
 * type and every activity, and loads into the databases its environment names. Start as many
 * as you like on one task queue; Temporal spreads the work between them.
 */
import { NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createActivities } from './activities';
import { readConfig, shutdownGraceMs, type SluiceConfig } from './config';
import { closePools } from './destinations/postgres/pool';
import { SEARCH_ATTRIBUTES } from './search-attributes';
import { registerSource, type SourceDefinition } from './sources/registered';
import { demoSource } from './sources/registered/demo';

export interface SluiceWorkerOptions {
  config?: SluiceConfig;
  connection?: NativeConnection;
  /** A prebuilt workflow bundle (see test/run.ts); otherwise workflows are bundled at start. */
  workflowBundlePath?: string;
  overrides?: Partial<WorkerOptions>;
}

/**
 * `npm run worker` registers only tsx's CommonJS hook (package.json: its ESM hook would cost a
 * loader thread of its own, about 30 MB), so a source module is required; an ES module that
 * require cannot load (.mjs, top-level await) is imported instead.
 */
async function loadModule(path: string): Promise<Record<string, unknown>> {
  try {
    return require(path) as Record<string, unknown>;
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_REQUIRE_ESM' && (err as { code?: string }).code !== 'ERR_REQUIRE_ASYNC_MODULE') throw err;
    return (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  }
}

/** Loads user source modules named in SLUICE_SOURCES ("./my-sources.ts,./more.ts"). */
export async function loadSourceModules(list: string | undefined = process.env.SLUICE_SOURCES): Promise<void> {
  registerSource(demoSource);
  for (const path of (list ?? '').split(',').map((p) => p.trim()).filter(Boolean)) {
    const mod = await loadModule(resolve(path));
    const sources = Object.values(mod).filter(
      (v): v is SourceDefinition => typeof v === 'object' && v !== null && 'resources' in v && 'name' in v,
    );
    if (sources.length === 0) throw new Error(`SLUICE_SOURCES module ${path} exports no source (use defineSource)`);
    sources.forEach(registerSource);
  }
}

async function searchAttributesRegistered(connection: NativeConnection, namespace: string): Promise<boolean> {
  try {
    const response = await connection.operatorService.listSearchAttributes({ namespace });
    const custom = response.customAttributes ?? {};
    return Object.values(SEARCH_ATTRIBUTES).every((key) => key.name in custom);
  } catch {
    return false;
  }
}

export async function createSluiceWorker(options: SluiceWorkerOptions = {}): Promise<{ worker: Worker; connection: NativeConnection }> {
  const config = options.config ?? readConfig();
  const connection = options.connection ?? (await NativeConnection.connect({ address: config.temporalAddress }));
  await loadSourceModules();
  const bundlePath = options.workflowBundlePath ?? process.env.SLUICE_WORKFLOW_BUNDLE;
  const worker = await Worker.create({
    connection,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
    ...(bundlePath ? { workflowBundle: { codePath: bundlePath } } : { workflowsPath: require.resolve('./workflows') }),
    activities: createActivities({ searchAttributesRegistered: await searchAttributesRegistered(connection, config.namespace) }),
    maxConcurrentActivityTaskExecutions: config.maxActivities,
    shutdownGraceTime: shutdownGraceMs(),
    ...options.overrides,
  });
  return { worker, connection };
}

async function main(): Promise<void> {
  const config = readConfig();
  if (!config.databaseUrl) {
    console.warn('DATABASE_URL is not set: workflows whose destination uses the default connection will fail until it is.');
  }
  Runtime.install({ shutdownSignals: ['SIGINT', 'SIGTERM'] });
  const { worker, connection } = await createSluiceWorker({ config });
  console.log(`sluice worker polling task queue "${config.taskQueue}" on ${config.temporalAddress} (namespace ${config.namespace})`);
  try {
    await worker.run();
  } finally {
    await closePools();
    await connection.close();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
