import { resolve as resolvePath } from 'node:path';
import { PermanentError, setSecretSource } from './errors';
import { durationMs } from './plan/duration';

/**
 * Everything sluice reads from the environment, in one place (see CONTRACT.md).
 * Workflow code never imports this: it has no environment.
 */
export interface SluiceConfig {
  temporalAddress: string;
  namespace: string;
  taskQueue: string;
  /** Set when the destination is configured; `npm start` fills it in with the embedded database. */
  databaseUrl: string | undefined;
  /** Activities one worker runs at once (SLUICE_MAX_ACTIVITIES): bounds the load one process puts on the databases. */
  maxActivities: number;
}

export function readConfig(env: NodeJS.ProcessEnv = process.env): SluiceConfig {
  return {
    temporalAddress: env.TEMPORAL_ADDRESS || 'localhost:7233',
    namespace: env.TEMPORAL_NAMESPACE || 'default',
    taskQueue: env.SLUICE_TASK_QUEUE || 'sluice',
    databaseUrl: env.DATABASE_URL || undefined,
    maxActivities: positiveInt('SLUICE_MAX_ACTIVITIES', env.SLUICE_MAX_ACTIVITIES, 100),
  };
}

function positiveInt(name: string, text: string | undefined, fallback: number): number {
  if (!text) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name}=${text} must be a whole number of at least 1`);
  return n;
}

/**
 * Which environment variables a workflow input may name as a connection: SLUICE_CONNECTIONS
 * (comma-separated names), by default every variable whose name ends in `_URL`. Whoever can
 * start a workflow must not be able to make the worker read PATH, HOME or AWS_SECRET_ACCESS_KEY.
 */
export function allowedConnection(variable: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const listed = env.SLUICE_CONNECTIONS?.trim();
  if (listed) return listed.split(',').map((n) => n.trim()).includes(variable);
  return /^[A-Za-z_][A-Za-z0-9_]*_URL$/.test(variable);
}

/**
 * Workflow inputs name connections by environment variable so secrets never enter history.
 * Only activities call this.
 */
export function resolveConnection(variable: string, env: NodeJS.ProcessEnv = process.env): string {
  if (!allowedConnection(variable, env)) throw new ConnectionNotAllowedError(variable, env);
  const value = env[variable];
  if (!value) {
    throw new MissingConnectionError(variable);
  }
  return value;
}

/** Thrown before the variable is read: its value (if any) stays out of every message. */
export class ConnectionNotAllowedError extends PermanentError {
  constructor(
    readonly variable: string,
    env: NodeJS.ProcessEnv,
  ) {
    const setting = env.SLUICE_CONNECTIONS?.trim()
      ? `SLUICE_CONNECTIONS (${env.SLUICE_CONNECTIONS.trim()})`
      : 'SLUICE_CONNECTIONS (unset: only variables whose names end in _URL)';
    super(
      `connection ${variable} is not allowed on this worker by ${setting}: a workflow input may name only ` +
        `the connection variables the worker allows`,
      `name an allowed variable, or add ${variable} to SLUICE_CONNECTIONS on the worker if it really is a connection`,
    );
    this.name = 'ConnectionNotAllowedError';
  }
}

export class MissingConnectionError extends Error {
  constructor(readonly variable: string) {
    super(
      `environment variable ${variable} is not set on this worker: workflow inputs name a connection by ` +
        `variable, and the worker must be started with ${variable}=postgres://user:pass@host:5432/db`,
    );
    this.name = 'MissingConnectionError';
  }
}

/**
 * How long a load may make no progress (no row, no page, no file read) before its attempt fails
 * and is retried: SLUICE_STALL_TIMEOUT, a duration like 90s or 10m. Honest loads may run for
 * days as long as they progress; this is what catches a stuck one (a lock, a half-open socket).
 */
export function stallTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  return durationSetting('SLUICE_STALL_TIMEOUT', env.SLUICE_STALL_TIMEOUT, 5 * 60_000);
}

/**
 * statement_timeout of sluice's sessions (SLUICE_STATEMENT_TIMEOUT, a duration, 0 for none).
 * None by default: one COPY of a large table is one long statement, and stall detection
 * already ends statements that stop moving.
 */
export function statementTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  return durationSetting('SLUICE_STATEMENT_TIMEOUT', env.SLUICE_STATEMENT_TIMEOUT, 0);
}

/**
 * How long one call of the incremental sync activity pages before it returns to the workflow
 * at a page boundary (SLUICE_SYNC_BUDGET, default 2m): the workflow then records the position,
 * and may continue as new, in the middle of a long sync.
 */
export function syncBudgetMs(env: NodeJS.ProcessEnv = process.env): number {
  return durationSetting('SLUICE_SYNC_BUDGET', env.SLUICE_SYNC_BUDGET, 120_000);
}

/**
 * How long a worker told to stop (SIGTERM, SIGINT) lets running activities finish before it
 * cancels them (SLUICE_SHUTDOWN_GRACE, default 8s: inside `docker stop`'s 10 s). A cancelled
 * activity is retried on another worker from its last commit; nothing is failed.
 */
export function shutdownGraceMs(env: NodeJS.ProcessEnv = process.env): number {
  return durationSetting('SLUICE_SHUTDOWN_GRACE', env.SLUICE_SHUTDOWN_GRACE, 8_000);
}

function durationSetting(name: string, text: string | undefined, fallback: number): number {
  if (!text) return fallback;
  if (text === '0') return 0;
  try {
    return durationMs(text);
  } catch {
    throw new Error(`${name}=${text} must be a duration like 30s, 5m or 1h`);
  }
}

/** The values of every connection variable this worker allows: what redaction keeps out of messages. */
export function connectionSecrets(env: NodeJS.ProcessEnv = process.env): string[] {
  return Object.keys(env)
    .filter((name) => allowedConnection(name, env) || /_SECRET|PASSWORD|_TOKEN/i.test(name))
    .map((name) => env[name])
    .filter((value): value is string => typeof value === 'string' && value.length > 0);
}

// Every message errors.ts builds is redacted against this worker's connection strings.
setSecretSource(() => connectionSecrets(process.env));

/**
 * The directories a files source may read (SLUICE_FILES_ROOTS, comma-separated), absolute.
 * By default `.sluice/drops` and `drops` under the worker's working directory: where `npm start`
 * seeds its demo drop folder and where the README's examples put files. Anything else on the
 * machine (/proc/self/environ, ~/.ssh, other services' data) stays unreadable however a workflow
 * input names it.
 */
export function filesRoots(env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): string[] {
  const listed = env.SLUICE_FILES_ROOTS?.trim();
  const roots = listed ? listed.split(',').map((r) => r.trim()).filter((r) => r !== '') : ['.sluice/drops', 'drops'];
  return roots.map((root) => resolvePath(cwd, root));
}

/** Object-storage credentials a files source names by `"connection": "<NAME>"` (CONTRACT.md). */
export interface S3Connection {
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** Absent: the standard AWS chain (AWS_* variables, shared profiles, instance roles). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/**
 * Reads `<NAME>_S3_ENDPOINT`, `_ACCESS_KEY_ID`, `_SECRET_ACCESS_KEY`, `_REGION` and
 * `_FORCE_PATH_STYLE`; without a name, only the AWS chain applies. Only activities call this.
 * Errors name the variables, never their values.
 */
export function resolveS3Connection(name: string | undefined, env: NodeJS.ProcessEnv = process.env): S3Connection {
  if (name === undefined) return { region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1' };
  const read = (suffix: string) => env[`${name}_S3_${suffix}`] || undefined;
  const keyId = read('ACCESS_KEY_ID');
  const secret = read('SECRET_ACCESS_KEY');
  const endpoint = read('ENDPOINT');
  const region = read('REGION');
  const pathStyle = read('FORCE_PATH_STYLE');
  if (!keyId && !secret && !endpoint && !region) throw new MissingS3ConnectionError(name, 'none of them is set');
  if (!keyId !== !secret) throw new MissingS3ConnectionError(name, `${name}_S3_ACCESS_KEY_ID and ${name}_S3_SECRET_ACCESS_KEY go together`);
  if (pathStyle !== undefined && !/^(true|false|1|0)$/i.test(pathStyle)) {
    throw new MissingS3ConnectionError(name, `${name}_S3_FORCE_PATH_STYLE must be true or false`);
  }
  return {
    endpoint,
    region: region ?? 'us-east-1',
    forcePathStyle: pathStyle !== undefined && /^(true|1)$/i.test(pathStyle),
    credentials: keyId && secret ? { accessKeyId: keyId, secretAccessKey: secret } : undefined,
  };
}

export class MissingS3ConnectionError extends PermanentError {
  constructor(readonly connection: string, why: string) {
    super(
      `object-storage connection ${connection} is not usable on this worker (${why}): start the worker with ` +
        `${connection}_S3_ACCESS_KEY_ID, ${connection}_S3_SECRET_ACCESS_KEY and, for a store other than AWS, ` +
        `${connection}_S3_ENDPOINT (plus ${connection}_S3_REGION, ${connection}_S3_FORCE_PATH_STYLE=true as the store needs)`,
    );
    this.name = 'MissingS3ConnectionError';
  }
}
