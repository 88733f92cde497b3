import { TestWorkflowEnvironment } from '@temporalio/testing';
import { SEARCH_ATTRIBUTES } from '../search-attributes';
import { resolveTemporalCli, TEMPORAL_CLI_INSTALL_HELP } from './temporal-cli';

export interface DevServerOptions {
  /** SQLite file that keeps workflow history across restarts; in-memory when omitted. */
  dbFilename?: string;
  port?: number;
  uiPort?: number;
  namespace?: string;
  /** Dynamic config, e.g. { 'limit.historyCount.suggestContinueAsNew': 300 } to exercise continue-as-new in tests. */
  dynamicConfig?: Record<string, string | number | boolean>;
}

export interface DevServer {
  address: string;
  uiUrl: string | undefined;
  stop(): Promise<void>;
}

/**
 * Starts a real Temporal dev server (the CLI's `server start-dev`) with sluice's search
 * attributes registered. Used by `npm start`, the test runner and the benchmarks.
 */
export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const cli = resolveTemporalCli();
  const executable =
    cli.source === 'sdk-download' ? { type: 'cached-download' as const } : { type: 'existing-path' as const, path: cli.path };
  let env: TestWorkflowEnvironment;
  try {
    env = await TestWorkflowEnvironment.createLocal({
      server: {
        executable,
        dbFilename: options.dbFilename,
        port: options.port,
        ui: options.uiPort !== undefined,
        uiPort: options.uiPort,
        namespace: options.namespace,
        searchAttributes: Object.values(SEARCH_ATTRIBUTES),
        extraArgs: [
          '--log-level',
          'error',
          ...Object.entries(options.dynamicConfig ?? {}).flatMap(([k, v]) => ['--dynamic-config-value', `${k}=${JSON.stringify(v)}`]),
        ],
      },
    });
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(
      cli.source === 'sdk-download'
        ? `No Temporal CLI found (TEMPORAL_CLI_PATH unset, no 'temporal' on PATH) and the SDK download failed: ${why}\n${TEMPORAL_CLI_INSTALL_HELP}`
        : `The Temporal dev server at ${cli.path} (from ${cli.source}) failed to start: ${why}`,
    );
  }
  const address = env.connection.options.address;
  return {
    address,
    uiUrl: options.uiPort !== undefined ? `http://localhost:${options.uiPort}` : undefined,
    stop: () => env.teardown(),
  };
}
