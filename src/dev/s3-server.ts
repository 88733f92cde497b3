/**
 * A real S3-compatible server for tests and benchmarks: SeaweedFS (`weed server -s3`), built
 * from the Go module proxy by .ci/run into .sluice/bin/weed (see README, "Object storage").
 * Data lives in a directory of the caller's, so a stopped server started again on the same
 * directory and ports serves the same buckets (the tests cut a load off that way).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { freePort, isListening } from './ports';

export const WEED_INSTALL_HELP =
  'build SeaweedFS once with `bash .ci/run` (or by hand: see README, "Object storage"), or point SLUICE_WEED_PATH at a weed binary';

/** The weed binary: SLUICE_WEED_PATH, then .sluice/bin/weed, then `weed` on PATH. */
export function resolveWeed(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.SLUICE_WEED_PATH) return env.SLUICE_WEED_PATH;
  const local = join(__dirname, '..', '..', '.sluice', 'bin', 'weed');
  if (existsSync(local)) return local;
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'weed'))) return join(dir, 'weed');
  }
  return undefined;
}

export interface S3Server {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** Stops the server (SIGTERM, then SIGKILL); its data stays for `start()`. */
  stop(): Promise<void>;
  /** Starts it again on the same ports and data. */
  start(): Promise<void>;
}

export interface S3ServerOptions {
  dir: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The weed binary; resolveWeed() when omitted. */
  weed?: string;
}

export async function startS3Server(options: S3ServerOptions): Promise<S3Server> {
  const weed = options.weed ?? resolveWeed();
  if (!weed) throw new Error(`no SeaweedFS binary found: ${WEED_INSTALL_HELP}`);
  await mkdir(join(options.dir, 'data'), { recursive: true });
  const config = join(options.dir, 's3.json');
  await writeFile(
    config,
    JSON.stringify({
      identities: [
        {
          name: 'sluice-test',
          credentials: [{ accessKey: options.accessKeyId, secretKey: options.secretAccessKey }],
          actions: ['Admin', 'Read', 'List', 'Tagging', 'Write'],
        },
      ],
    }),
    { mode: 0o600 },
  );
  const ports = {
    master: await freePort(),
    masterGrpc: await freePort(),
    volume: await freePort(),
    volumeGrpc: await freePort(),
    filer: await freePort(),
    filerGrpc: await freePort(),
    s3: await freePort(),
    s3Grpc: await freePort(),
  };
  const args = [
    'server',
    '-ip=127.0.0.1',
    '-ip.bind=127.0.0.1',
    `-dir=${join(options.dir, 'data')}`,
    `-master.port=${ports.master}`,
    `-master.port.grpc=${ports.masterGrpc}`,
    '-master.telemetry=false',
    '-master.volumeSizeLimitMB=64',
    `-volume.port=${ports.volume}`,
    `-volume.port.grpc=${ports.volumeGrpc}`,
    '-volume.max=0',
    '-filer',
    `-filer.port=${ports.filer}`,
    `-filer.port.grpc=${ports.filerGrpc}`,
    '-s3',
    `-s3.port=${ports.s3}`,
    `-s3.port.grpc=${ports.s3Grpc}`,
    '-s3.port.iceberg=0',
    '-s3.port.lance=0',
    `-s3.config=${config}`,
  ];
  const endpoint = `http://127.0.0.1:${ports.s3}`;
  let child: ChildProcess | undefined;
  let output = '';

  const start = async () => {
    output = '';
    const proc = spawn(weed, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    const keep = (d: Buffer) => {
      output = (output + d.toString()).slice(-20_000);
    };
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    const deadline = Date.now() + 120_000;
    // The S3 port answers only once the filer behind it is up; then a bucket listing must work.
    while (!(await isListening(`127.0.0.1:${ports.s3}`, 500)) || !(await answers(endpoint))) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`SeaweedFS (${weed}) exited while starting:\n${output}`);
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`SeaweedFS (${weed}) did not serve S3 on ${endpoint} within 120 s:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  const stop = async () => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  await start();
  return { endpoint, accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey, region: 'us-east-1', stop, start };
}

/** Any HTTP answer from the S3 port (403 without credentials is fine): the gateway is serving. */
async function answers(endpoint: string): Promise<boolean> {
  try {
    const response = await fetch(endpoint, { signal: AbortSignal.timeout(2_000) });
    await response.arrayBuffer();
    return response.status < 500;
  } catch {
    return false;
  }
}
