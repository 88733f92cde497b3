/**
 * Column types: inference from values, the widening lattice, and the text form values take on
 * their way into PostgreSQL. Pure functions, no I/O: the destination asks, this answers.
 */

/** Types sluice infers itself; any other PostgreSQL type can still be declared or come from a source. */
export type InferredType = 'boolean' | 'bigint' | 'numeric' | 'double precision' | 'date' | 'timestamp with time zone' | 'jsonb' | 'text';

const ALIASES: Record<string, string> = {
  int: 'integer',
  int4: 'integer',
  int2: 'smallint',
  int8: 'bigint',
  bool: 'boolean',
  float8: 'double precision',
  float4: 'real',
  float: 'double precision',
  decimal: 'numeric',
  timestamptz: 'timestamp with time zone',
  timestamp: 'timestamp without time zone',
  varchar: 'character varying',
  char: 'character',
  timetz: 'time with time zone',
  time: 'time without time zone',
};

/** The spelling PostgreSQL's format_type() uses, so declared and catalog types compare equal. */
export function canonicalType(type: string): string {
  const trimmed = type.trim().toLowerCase().replace(/\s+/g, ' ');
  const match = /^([a-z][a-z0-9_ ]*?)\s*(\(.*\))?(\[\])?$/.exec(trimmed);
  if (!match) return trimmed;
  const [, base, modifier = '', array = ''] = match;
  const name = ALIASES[base!] ?? base!;
  if (modifier && (name === 'timestamp without time zone' || name === 'timestamp with time zone')) {
    const [kind, ...zone] = name.split(' ');
    return `${kind}${modifier.replace(/\s+/g, '')} ${zone.join(' ')}${array}`;
  }
  return `${name}${modifier.replace(/\s+/g, '')}${array}`;
}

/** Where each type sits: same family means lossless widening along `rank`. */
const LATTICE: Record<string, { family: string; rank: number }> = {
  smallint: { family: 'number', rank: 1 },
  integer: { family: 'number', rank: 2 },
  bigint: { family: 'number', rank: 3 },
  real: { family: 'number', rank: 4 },
  'double precision': { family: 'number', rank: 5 },
  numeric: { family: 'number', rank: 6 },
  date: { family: 'time', rank: 1 },
  'timestamp without time zone': { family: 'time', rank: 2 },
  'timestamp with time zone': { family: 'time', rank: 3 },
  json: { family: 'json', rank: 1 },
  jsonb: { family: 'json', rank: 2 },
  boolean: { family: 'boolean', rank: 1 },
  text: { family: 'text', rank: 1 },
};

function latticeEntry(type: string) {
  const canonical = canonicalType(type);
  // numeric(12,2) and varchar(20) widen like their base type.
  const base = canonical.replace(/\(.*\)/, '');
  return LATTICE[canonical] ?? LATTICE[base];
}

/**
 * The narrowest type that holds values of both `a` and `b`: integer + bigint = bigint,
 * bigint + double precision = double precision, anything + numeric = numeric within numbers,
 * date + timestamptz = timestamptz; unrelated families meet at text.
 */
export function widenType(a: string, b: string): string {
  const key = `${a}\u0000${b}`;
  let widened = widened_.get(key);
  if (widened === undefined) {
    widened = widen(a, b);
    // Type names come from a small set (inferred, declared, catalog): the memo stays small.
    if (widened_.size < 10_000) widened_.set(key, widened);
  }
  return widened;
}

const widened_ = new Map<string, string>();

function widen(a: string, b: string): string {
  const ca = canonicalType(a);
  const cb = canonicalType(b);
  if (ca === cb) return ca;
  const ea = latticeEntry(ca);
  const eb = latticeEntry(cb);
  if (ea && eb && ea.family === eb.family) {
    // bigint values do not all fit in a double: bigint + double meets at numeric.
    if (ea.family === 'number') {
      const ints = new Set(['smallint', 'integer', 'bigint']);
      const floats = new Set(['real', 'double precision']);
      const [ba, bb] = [ca.replace(/\(.*\)/, ''), cb.replace(/\(.*\)/, '')];
      if ((ba === 'bigint' && floats.has(bb)) || (bb === 'bigint' && floats.has(ba))) return 'numeric';
      if (ints.has(ba) && ints.has(bb)) return ea.rank >= eb.rank ? ba : bb;
      if (ba === 'numeric' || bb === 'numeric') return 'numeric';
    }
    return ea.rank >= eb.rank ? ca.replace(/\(.*\)/, '') : cb.replace(/\(.*\)/, '');
  }
  return 'text';
}

/** True when every value of `from` is a value of `to` without going through text. */
export function isLosslessWidening(from: string, to: string): boolean {
  const cf = canonicalType(from);
  const ct = canonicalType(to);
  if (cf === ct) return true;
  if (ct === 'text') return cf === 'text';
  return widenType(cf, ct) === ct;
}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;
const ISO_TIMESTAMP_TZ = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$/i;
// No leading zeros: 00123 (a zip code, a phone number, an account number) is text, not 123.
const INTEGER = /^[+-]?(0|[1-9]\d{0,17})$/;
const DECIMAL = /^[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const BOOLEAN = /^(true|false)$/i;

/**
 * The type a single value suggests, or undefined for null. `fromText` is for formats where
 * every value arrives as a string (CSV): "42" then suggests bigint, "4.20" numeric.
 */
export function inferType(value: unknown, fromText = false): InferredType | undefined {
  if (value === null || value === undefined) return undefined;
  switch (typeof value) {
    case 'boolean':
      return 'boolean';
    case 'number':
      return Number.isSafeInteger(value) ? 'bigint' : 'double precision';
    case 'bigint':
      return value >= -(2n ** 63n) && value < 2n ** 63n ? 'bigint' : 'numeric';
    case 'string':
      if (fromText) {
        if (value === '') return undefined;
        if (INTEGER.test(value)) return 'bigint';
        if (DECIMAL.test(value)) return 'numeric';
        if (BOOLEAN.test(value)) return 'boolean';
      }
      if (ISO_TIMESTAMP_TZ.test(value) && !Number.isNaN(Date.parse(value))) return 'timestamp with time zone';
      if (ISO_DATE.test(value) && !Number.isNaN(Date.parse(value))) return 'date';
      return 'text';
    case 'object':
      if (value instanceof Date) return 'timestamp with time zone';
      if (Buffer.isBuffer(value)) return 'text';
      return 'jsonb';
    default:
      return 'text';
  }
}

/** Widen `current` (possibly unknown yet) by one value's type. Hot path: called per value. */
export function widenByValue(current: string | undefined, value: unknown, fromText = false): string | undefined {
  const t = inferType(value, fromText);
  if (t === undefined || t === current) return current;
  return current === undefined ? t : widenType(current, t);
}

/** A value as text, the form staging tables hold and PostgreSQL's input functions parse. */
export function valueToText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case 'string':
      return value;
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      return Number.isFinite(value) ? String(value) : Number.isNaN(value) ? 'NaN' : value > 0 ? 'Infinity' : '-Infinity';
    case 'bigint':
      return value.toString();
    case 'object':
      if (value instanceof Date) return value.toISOString();
      if (Buffer.isBuffer(value)) return `\\x${value.toString('hex')}`;
      return JSON.stringify(value);
    default:
      return String(value);
  }
}

/** Escapes one field for COPY's text format (tab-separated, \N for null). */
export function copyField(text: string | null): string {
  if (text === null) return '\\N';
  if (!/[\\\t\n\r]/.test(text)) return text;
  return text.replace(/[\\\t\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r'));
}

/**
 * Why PostgreSQL `text` cannot hold this string exactly, or undefined when it can: NUL has no
 * place in a PostgreSQL string, and a lone UTF-16 surrogate has no UTF-8 form (it would arrive
 * as U+FFFD). The loader rejects such a row rather than store something else.
 */
/** String.prototype.isWellFormed (Node 20; the project's TypeScript lib predates it): no lone UTF-16 surrogate. */
export function isWellFormed(text: string): boolean {
  return (text as string & { isWellFormed(): boolean }).isWellFormed();
}

export function unrepresentableInText(text: string): string | undefined {
  if (text.includes('\u0000')) return 'contains a NUL character, which PostgreSQL text cannot store';
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text)) {
    return 'contains a lone UTF-16 surrogate, which has no UTF-8 form';
  }
  return undefined;
}
