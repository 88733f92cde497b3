/**
 * Which failures are worth retrying. Temporal retries activities by default; sluice marks
 * configuration and data errors non-retryable so a bad input fails in seconds, and leaves
 * connection trouble, deadlocks and serialization failures to the retry policy.
 */

/** A failure that will not go away by retrying: bad configuration, a frozen schema, a missing table. */
export class PermanentError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'PermanentError';
  }
}

/** A failure that a retry can heal (a dropped connection to object storage, a 503): always retried. */
export class TransientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransientError';
  }
}

interface PgLikeError {
  code?: string;
  message?: string;
  column?: string;
  table?: string;
  constraint?: string;
}

const TRANSIENT_SQLSTATE_CLASSES = ['08', '40', '53', '55', '57', '58'];
const TRANSIENT_NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

export function isTransient(err: unknown): boolean {
  if (err instanceof PermanentError) return false;
  if (err instanceof TransientError) return true;
  const code = (err as PgLikeError | undefined)?.code;
  if (typeof code !== 'string') {
    // Errors without a code are lost connections and the like ("Connection terminated unexpectedly").
    const message = err instanceof Error ? err.message : String(err);
    return /connection|terminat|timeout|socket/i.test(message);
  }
  if (TRANSIENT_NODE_CODES.has(code)) return true;
  if (code === '57014') return true; // query_canceled (statement timeout)
  return TRANSIENT_SQLSTATE_CLASSES.some((c) => code.startsWith(c));
}

/** A sentence that tells the user what to change, for the common ways a load fails. */
export function hintFor(err: unknown, context: { disposition?: string; connectionVariable?: string } = {}): string | undefined {
  if (err instanceof PermanentError && err.hint) return err.hint;
  const e = (err ?? {}) as PgLikeError;
  switch (e.code) {
    case '23505':
      return context.disposition === 'append'
        ? 'duplicate key on append: use writeDisposition "merge" with a primaryKey, or remove duplicates in the source'
        : 'duplicate key: check that primaryKey really identifies a row';
    case '22P02':
    case '22003':
    case '22007':
    case '22008':
    case '42804':
      return 'column type mismatch: declare the column in resource.columns, or set schemaContract.dataTypes to "evolve" or "discard_row"';
    case '42P01':
      return 'table does not exist: check source.table (schema-qualified, like public.orders)';
    case '42703':
      return 'column does not exist: check the column names in the input (partitionColumn, cursor.column, primaryKey)';
    case '28P01':
    case '28000':
      return `authentication failed: check the user and password in ${context.connectionVariable ?? 'the connection variable'}`;
    case '3D000':
      return `database does not exist: check the database name in ${context.connectionVariable ?? 'the connection variable'}`;
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
      return `connection refused: check host and port in ${context.connectionVariable ?? 'DATABASE_URL'} and that PostgreSQL is running`;
    default:
      return undefined;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    const e = err as Error & PgLikeError;
    return e.code && !e.message.includes(e.code) ? `${e.message} (SQLSTATE ${e.code})` : e.message;
  }
  return String(err);
}
