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

/**
 * Which column types a value's text certainly fits: bits of FIT, narrowed value by value (a
 * column's Fit is what every one of its values fits). Only forms PostgreSQL's input functions
 * accept whatever the session's settings are: a value that fits a type here is accepted by that
 * type's input function, so a load whose every value fits its column's type can COPY into
 * columns of those types with no value failing. The converse does not hold: PostgreSQL accepts
 * more (" 42", "1e5" as bigint, "yes" as boolean, "Feb 3 2024"); such values just leave the
 * column to the general path (staging as text, each value judged by PostgreSQL).
 */
export const FIT = {
  smallint: 1,
  integer: 2,
  bigint: 4,
  numeric: 8,
  real: 16,
  double: 32,
  boolean: 64,
  date: 128,
  timestamp: 256,
  timestamptz: 512,
  uuid: 1024,
} as const;
const ALL_FITS = 2047;

export interface Fit {
  /** FIT bits every value so far fits (text fits any representable value and has no bit). */
  mask: number;
  /** Numeric values: the most significant digits before the point, and digits after it, of any value. */
  intDigits: number;
  fracDigits: number;
  /** A numeric value had an exponent (then no numeric(p,s) is vouched for). */
  exponent: boolean;
}

export function newFit(): Fit {
  return { mask: ALL_FITS, intDigits: 0, fracDigits: 0, exponent: false };
}

const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function digitsAt(text: string, from: number, n: number): number {
  let v = 0;
  for (let i = from; i < from + n; i++) {
    const d = text.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** "YYYY-MM-DD" at 0 with a real calendar day (years 1 to 9999). */
function isoDate(text: string): boolean {
  if (text.charCodeAt(4) !== 45 || text.charCodeAt(7) !== 45) return false;
  const y = digitsAt(text, 0, 4);
  const m = digitsAt(text, 5, 2);
  const d = digitsAt(text, 8, 2);
  if (y < 1 || m < 1 || m > 12 || d < 1) return false;
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  return d <= (m === 2 && leap ? 29 : DAYS[m - 1]!);
}

/** "HH:MM[:SS[.fraction]]" from `at` to the end, then an optional zone (Z, ±HH, ±HHMM, ±HH:MM); undefined when it is not that. */
function isoTimeAndZone(text: string, at: number): { zone: boolean } | undefined {
  const h = digitsAt(text, at, 2);
  if (h < 0 || h > 23 || text.charCodeAt(at + 2) !== 58) return undefined;
  const mi = digitsAt(text, at + 3, 2);
  if (mi < 0 || mi > 59) return undefined;
  let i = at + 5;
  if (text.charCodeAt(i) === 58) {
    const s = digitsAt(text, i + 1, 2);
    if (s < 0 || s > 59) return undefined;
    i += 3;
    if (text.charCodeAt(i) === 46) {
      let n = 0;
      for (i++; n < 10 && digitsAt(text, i, 1) >= 0; i++) n++;
      if (n === 0 || n > 9) return undefined;
    }
  }
  if (i === text.length) return { zone: false };
  const c = text.charCodeAt(i);
  if (c === 90) return i + 1 === text.length ? { zone: true } : undefined;
  if (c !== 43 && c !== 45) return undefined;
  const zh = digitsAt(text, i + 1, 2);
  if (zh < 0 || zh > 14) return undefined;
  const rest = text.length - (i + 3);
  if (rest === 0) return { zone: true };
  const m = rest === 3 && text.charCodeAt(i + 3) === 58 ? digitsAt(text, i + 4, 2) : rest === 2 ? digitsAt(text, i + 3, 2) : -1;
  return m >= 0 && m <= 59 ? { zone: true } : undefined;
}

/** The FIT bits of a number's text ([+-]digits[.digits][e[+-]digits]), with its digit counts; 0 when it is not one. */
function numberFits(text: string, fit: Fit): number {
  let i = 0;
  const n = text.length;
  const sign = text.charCodeAt(0);
  if (sign === 43 || sign === 45) i++;
  let leading = true;
  let intDigits = 0;
  let allDigits = 0;
  let nonZero = false;
  for (; i < n; i++) {
    const d = text.charCodeAt(i) - 48;
    if (d < 0 || d > 9) break;
    allDigits++;
    if (d !== 0) nonZero = true;
    if (leading && d === 0) continue;
    leading = false;
    intDigits++;
  }
  let fracDigits = 0;
  let point = false;
  if (i < n && text.charCodeAt(i) === 46) {
    point = true;
    for (i++; i < n; i++) {
      const d = text.charCodeAt(i) - 48;
      if (d < 0 || d > 9) break;
      if (d !== 0) nonZero = true;
      fracDigits++;
    }
  }
  if (allDigits + fracDigits === 0) return 0;
  let exponent = false;
  if (i < n && (text.charCodeAt(i) | 32) === 101) {
    exponent = true;
    i++;
    const s = text.charCodeAt(i);
    if (s === 43 || s === 45) i++;
    let e = 0;
    let digits = 0;
    for (; i < n; i++) {
      const d = text.charCodeAt(i) - 48;
      if (d < 0 || d > 9) break;
      e = e * 10 + d;
      digits++;
    }
    if (digits === 0 || e > 300) return 0;
  }
  if (i !== n || allDigits + fracDigits > 1000) return 0;
  if (intDigits > fit.intDigits) fit.intDigits = intDigits;
  if (fracDigits > fit.fracDigits) fit.fracDigits = fracDigits;
  if (exponent) fit.exponent = true;
  let bits = FIT.numeric;
  const value = Number(text);
  const magnitude = Math.abs(value);
  // Floats: out of range (or a nonzero value that underflows to 0) is an error in PostgreSQL.
  if (!nonZero || (magnitude >= 1e-307 && magnitude <= 1e308)) bits |= FIT.double;
  if (!nonZero || (magnitude >= 1e-37 && magnitude <= 1e38)) bits |= FIT.real;
  if (!point && !exponent) {
    if (intDigits <= 18 || (intDigits === 19 && BigInt(text) >= -(2n ** 63n) && BigInt(text) < 2n ** 63n)) bits |= FIT.bigint;
    if (intDigits <= 10 && value >= -2147483648 && value <= 2147483647) bits |= FIT.integer;
    if (intDigits <= 5 && value >= -32768 && value <= 32767) bits |= FIT.smallint;
  }
  return bits;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Narrows `fit` by one value's text (not null, representable in text). Hot path: per value, while a load may still take the typed path. */
export function narrowFit(fit: Fit, text: string): void {
  if (fit.mask === 0) return;
  let bits = 0;
  const c = text.charCodeAt(0);
  if ((c >= 48 && c <= 57) || c === 43 || c === 45 || c === 46) {
    if (text.length >= 10 && text.charCodeAt(4) === 45 && c !== 43 && c !== 45) {
      if (isoDate(text)) {
        if (text.length === 10) bits = FIT.date | FIT.timestamp | FIT.timestamptz;
        else {
          const sep = text.charCodeAt(10);
          if ((sep === 84 || sep === 32) && isoTimeAndZone(text, 11)) bits = FIT.timestamp | FIT.timestamptz;
        }
      }
      if (bits === 0 && text.length === 36) bits = UUID.test(text) ? FIT.uuid : 0;
    } else {
      bits = numberFits(text, fit);
      if (bits === 0 && text.length === 36 && UUID.test(text)) bits = FIT.uuid;
    }
  } else if (text.length === 4 || text.length === 5) {
    const lower = text.toLowerCase();
    if (lower === 'true' || lower === 'false') bits = FIT.boolean;
  } else if (text.length === 36 && UUID.test(text)) {
    bits = FIT.uuid;
  }
  fit.mask &= bits;
}

const FIT_OF_TYPE: Record<string, number> = {
  smallint: FIT.smallint,
  integer: FIT.integer,
  bigint: FIT.bigint,
  numeric: FIT.numeric,
  real: FIT.real,
  'double precision': FIT.double,
  boolean: FIT.boolean,
  date: FIT.date,
  uuid: FIT.uuid,
};

/** Whether every value of a column with this Fit is accepted by `type` (canonical, as format_type prints it). */
export function fitsType(fit: Fit, type: string): boolean {
  if (type === 'text' || type === 'character varying') return true;
  const bit = FIT_OF_TYPE[type];
  if (bit !== undefined) return (fit.mask & bit) !== 0;
  // A timestamp's precision only rounds; a numeric's precision and scale can overflow.
  if (/^timestamp(\(\d+\))? without time zone$/.test(type)) return (fit.mask & FIT.timestamp) !== 0;
  if (/^timestamp(\(\d+\))? with time zone$/.test(type)) return (fit.mask & FIT.timestamptz) !== 0;
  const numeric = /^numeric\((\d+)(?:,(\d+))?\)$/.exec(type);
  if (numeric) {
    if ((fit.mask & FIT.numeric) === 0 || fit.exponent) return false;
    const precision = Number(numeric[1]);
    const scale = Number(numeric[2] ?? 0);
    const room = precision - scale;
    // Fewer integer digits than room: rounding to the scale cannot carry past it.
    return scale <= precision && (fit.intDigits < room || (fit.intDigits === room && fit.fracDigits <= scale));
  }
  return false;
}
