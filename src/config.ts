/**
 * Everything sluice reads from the environment, in one place (see CONTRACT.md).
 * Workflow code never imports this: it has no environment.
 */
import { PermanentError } from './errors';

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
 * Workflow inputs name connections by environment variable so secrets never enter history.
 * Only activities call this.
 */
export function resolveConnection(variable: string, env: NodeJS.ProcessEnv = process.env): string {
  const value = env[variable];
  if (!value) {
    throw new MissingConnectionError(variable);
  }
  return value;
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
