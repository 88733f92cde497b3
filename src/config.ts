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
