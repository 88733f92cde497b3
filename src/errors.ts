/**
 * Which failures are worth retrying. The default is to retry: a worker shutdown, a lost or reset
 * connection, a half-read stream, an internal server error or a bug that a new deploy fixes all
 * heal, and a load that fails for good over one of those is work lost. Only errors that are
 * known not to heal (bad input, permissions, missing objects, data errors) are permanent, so a
 * bad input still fails in seconds.
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

/**
 * Work this worker cannot do but another one on the task queue may (a registered source it does
 * not load): retried, so Temporal can hand it to a worker that has it, and the message says
 * which worker to start.
 */
export class WrongWorkerError extends TransientError {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'WrongWorkerError';
  }
}

interface PgLikeError {
  code?: string;
  message?: string;
  column?: string;
  table?: string;
  constraint?: string;
}

/**
 * SQLSTATE classes that retrying cannot fix (https://www.postgresql.org/docs/current/errcodes-appendix.html):
 *   0A feature not supported, 22 data exception (a value the column cannot hold),
 *   23 integrity constraint violation (duplicate key, not null), 28 invalid authorization,
 *   2B dependent privilege descriptors still exist, 2F SQL routine exception,
 *   3D invalid catalog (database) name, 3F invalid schema name, 42 syntax error or access rule
 *   violation (missing table or column, permission denied), 44 WITH CHECK OPTION violation.
 * Everything else retries: 08 connection, 40 serialization/deadlock, 53 resources, 55 lock not
 * available, 57 operator intervention (statement timeout, admin shutdown), 58 and XX internal,
 * and classes like 25 (transaction state) and 26 (prepared statement gone behind a pooler) that
 * a fresh connection clears.
 */
const PERMANENT_SQLSTATE_CLASSES = new Set(['0A', '22', '23', '28', '2B', '2F', '3D', '3F', '42', '44']);

/**
 * Errors of a permanent class that concurrent DDL raises as a race and a retry resolves:
 * CREATE ... IF NOT EXISTS run by two sessions at once fails one of them with a unique violation
 * on a catalog index, or with "already exists".
 */
const RACE_SQLSTATES = new Set(['42P06', '42P07', '42710']);

/** Node system errors about the input itself: a path that is missing, unreadable or of the wrong kind. */
const PERMANENT_NODE_CODES = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ENAMETOOLONG', 'ELOOP']);

/** Names of error classes that say the input or configuration is wrong. */
const PERMANENT_ERROR_NAMES = new Set(['ZodError', 'MissingConnectionError', 'InvalidInput']);

/** True only for errors that cannot heal by retrying; unknown errors are not permanent. */
export function isPermanent(err: unknown): boolean {
  if (err instanceof PermanentError) return true;
  if (err instanceof TransientError) return false;
  if (!(err instanceof Error)) return false;
  // Temporal's failures, told apart by name so that engine code need not import the SDK:
  // an ApplicationFailure keeps the verdict it was made with; a cancellation (worker shutdown,
  // timeout) is never permanent.
  if (err.name === 'ApplicationFailure') return (err as Error & { nonRetryable?: boolean }).nonRetryable === true;
  if (err.name === 'CancelledFailure' || err.name === 'AbortError') return false;
  if (PERMANENT_ERROR_NAMES.has(err.name)) return true;
  const { code, constraint } = err as Error & PgLikeError;
  if (typeof code !== 'string') return false;
  if (PERMANENT_NODE_CODES.has(code)) return true;
  // SQLSTATEs are five characters of digits and capitals; Node codes (ECONNRESET...) are longer words.
  if (!/^[0-9A-Z]{5}$/.test(code)) return false;
  if (RACE_SQLSTATES.has(code)) return false;
  if (code === '23505' && constraint?.startsWith('pg_')) return false;
  return PERMANENT_SQLSTATE_CLASSES.has(code.slice(0, 2));
}

/** The complement of isPermanent, for callers that ask the question the other way round. */
export function isTransient(err: unknown): boolean {
  return !isPermanent(err);
}

/** A sentence that tells the user what to change, for the common ways a load fails. */
export function hintFor(err: unknown, context: { disposition?: string; connectionVariable?: string } = {}): string | undefined {
  if ((err instanceof PermanentError || err instanceof WrongWorkerError) && err.hint) return err.hint;
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
    return redactSecrets(e.code && !e.message.includes(e.code) ? `${e.message} (SQLSTATE ${e.code})` : e.message);
  }
  return redactSecrets(String(err));
}

const REDACTED = '***';

/**
 * The one redaction point: every message that leaves an activity (failure, _sluice_loads.error,
 * hint, log line) passes through here. It removes the worker's connection strings and their
 * passwords, then any password still spelled inside a URL (`scheme://user:PASSWORD@`) or as
 * `password=...`, so a driver that quotes its connection string in an error cannot leak it.
 * `secrets` defaults to the connection variables of this process (see config.ts).
 */
export function redactSecrets(text: string, secrets: readonly string[] = secretsOfProcess()): string {
  let out = text;
  const needles = new Set<string>();
  for (const secret of secrets) {
    needles.add(secret);
    for (const password of passwordsIn(secret)) needles.add(password);
  }
  // Longest first, so a whole URL goes before the password inside it.
  for (const needle of [...needles].filter((n) => n.length >= 4).sort((a, b) => b.length - a.length)) {
    out = out.split(needle).join(REDACTED);
  }
  return out
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)[^\s@]*@/gi, `$1${REDACTED}@`)
    .replace(/(\bpassword\s*[=:]\s*)('[^']*'|"[^"]*"|[^\s&;,]+)/gi, `$1${REDACTED}`);
}

function passwordsIn(secret: string): string[] {
  const found: string[] = [];
  const userinfo = /^[a-z][a-z0-9+.-]*:\/\/[^:/@]*:(.*)@[^@]*$/i.exec(secret);
  if (userinfo?.[1]) found.push(userinfo[1]);
  const param = /[?&]password=([^&]*)/i.exec(secret);
  if (param?.[1]) found.push(param[1]);
  for (const raw of [...found]) {
    try {
      const decoded = decodeURIComponent(raw);
      if (decoded !== raw) found.push(decoded);
    } catch {
      // not percent-encoded: the raw form is all there is
    }
  }
  return found;
}

let secretSource: () => readonly string[] = () => [];

/** Set once by config.ts, so this module stays free of environment reads and imports. */
export function setSecretSource(source: () => readonly string[]): void {
  secretSource = source;
}

function secretsOfProcess(): readonly string[] {
  return secretSource();
}
