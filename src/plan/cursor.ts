/**
 * Cursor logic for incremental loads, pure and safe inside workflow code.
 *
 * A position is a point in (cursor column, primary key) order: everything up to it is loaded.
 * Paging strictly after it costs the same however many rows share one cursor value, and
 * instead of remembering every key seen at the last value (dlt's way, which grows with the ties
 * and goes quadratic), a position keeps a fixed-size summary of them, `tie`: their count and the
 * sum of a 64-bit hash of each key. Both sums are additive, so the summary of a tie group that
 * spans several activity calls is the sum of the calls' summaries, and the next sync compares
 * it with the same summary over the source's rows at that value: any key that arrived (or left)
 * since changes it, and the group is read again.
 */
import type { CursorPosition } from '../inputs';
import { shortHash } from '../schema/identifiers';

export type Tie = NonNullable<CursorPosition['tie']>;



/** Where a first sync (or a reset) starts: at `initialValue` inclusive, or at the beginning. */
export function initialPosition(initialValue: string | number | undefined): CursorPosition {
  return { cursor: initialValue ?? null, tiebreak: null };
}

export function sameTie(a: Tie | undefined, b: Tie | undefined): boolean {
  return a !== undefined && b !== undefined && a.count === b.count && BigInt(a.hash) === BigInt(b.hash);
}

export function addTies(a: Tie, b: Tie): Tie {
  return { count: a.count + b.count, hash: (BigInt(a.hash) + BigInt(b.hash)).toString() };
}

/**
 * The summary of the keys loaded at `last` (the cursor value a sync call ended on). `portion`
 * summarizes the keys at that value that this call read, every page of the call seeing one
 * snapshot. If the call started strictly after a key at that same value, the group began in an
 * earlier call, whose summary `from.tie` is added; if that summary is unknown (a retry resumed
 * from a page that recorded none), so is the result, and the next sync reads the group again.
 */
export function groupTie(from: CursorPosition, last: string, portion: Tie): Tie | undefined {
  const continuesGroup = from.tiebreak !== null && from.cursor !== null && String(from.cursor) === last;
  if (!continuesGroup) return portion;
  return from.tie ? addTies(from.tie, portion) : undefined;
}

/** A short, stable name for a position, for load ids. */
export function positionKey(p: CursorPosition): string {
  return shortHash(JSON.stringify([p.cursor, p.tiebreak]));
}

/** For the UI: `updated_at = 2024-05-01 10:00:00+00 (up to id 4711)`. */
export function describePosition(column: string, p: CursorPosition | undefined): string {
  if (!p || p.cursor === null) return `${column}: from the beginning`;
  if (p.tiebreak === null) return `${column} >= ${p.cursor}`;
  const ties = p.tie ? `, ${p.tie.count} keys at this value` : '';
  return `${column} = ${p.cursor} (up to key ${p.tiebreak.join(', ')}${ties})`;
}

/*
 * Cursor values of code-defined (registered) sources are JavaScript values compared here; a
 * PostgreSQL source's values are compared by PostgreSQL itself.
 */

type Comparable = { kind: 'number'; value: number | bigint } | { kind: 'instant'; seconds: number; nanos: number } | { kind: 'text'; value: string };

const INSTANT = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?$/i;
const NUMBER = /^-?\d+(\.\d+)?(e[+-]?\d+)?$/i;

function instantOf(text: string): Comparable | undefined {
  const m = INSTANT.exec(text.trim());
  if (!m) return undefined;
  const [, y, mo, d, h = '0', mi = '0', s = '0', fraction = '', zone = 'Z'] = m;
  let offsetMinutes = 0;
  if (zone.toUpperCase() !== 'Z') {
    const digits = zone.replace(':', '');
    const sign = digits.startsWith('-') ? -1 : 1;
    offsetMinutes = sign * (Number(digits.slice(1, 3)) * 60 + Number(digits.slice(3, 5) || '0'));
  }
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)) - offsetMinutes * 60_000;
  if (Number.isNaN(ms)) return undefined;
  return { kind: 'instant', seconds: ms / 1000, nanos: Number(fraction.padEnd(9, '0')) };
}

function comparable(value: unknown): Comparable {
  if (typeof value === 'number') {
    if (Number.isNaN(value)) throw new Error('NaN is not a cursor value');
    return { kind: 'number', value };
  }
  if (typeof value === 'bigint') return { kind: 'number', value };
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new Error('an invalid Date is not a cursor value');
    const seconds = Math.floor(ms / 1000);
    return { kind: 'instant', seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
  }
  if (typeof value === 'string') {
    if (NUMBER.test(value.trim())) {
      const n = Number(value);
      return { kind: 'number', value: Number.isSafeInteger(n) || !/^-?\d+$/.test(value.trim()) ? n : BigInt(value.trim()) };
    }
    return instantOf(value) ?? { kind: 'text', value };
  }
  throw new Error(`a ${value === null ? 'null' : typeof value} is not a cursor value (use numbers, dates or strings)`);
}

function compareNumbers(a: number | bigint, b: number | bigint): number {
  if (typeof a === 'bigint' && typeof b === 'bigint') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  // Mixed: a bigint beyond 2^53 against a number; compare exactly when the number is integral.
  const x = typeof a === 'bigint' ? a : Number.isInteger(a) ? BigInt(a) : undefined;
  const y = typeof b === 'bigint' ? b : Number.isInteger(b) ? BigInt(b) : undefined;
  if (x !== undefined && y !== undefined) return x < y ? -1 : x > y ? 1 : 0;
  return Number(a) < Number(b) ? -1 : Number(a) > Number(b) ? 1 : 0;
}

/**
 * Orders two cursor values: numbers numerically (numeric strings too), instants by time (Date
 * objects and ISO strings alike, to the nanosecond, UTC unless an offset is given), other strings
 * by code unit. Throws when the two are not of one kind, so a row with a stray value is rejected
 * rather than placed at random.
 */
export function compareCursorValues(a: unknown, b: unknown): number {
  const x = comparable(a);
  const y = comparable(b);
  if (x.kind === 'number' && y.kind === 'number') return compareNumbers(x.value, y.value);
  if (x.kind === 'instant' && y.kind === 'instant') return x.seconds - y.seconds || x.nanos - y.nanos;
  if (x.kind === 'text' && y.kind === 'text') return x.value < y.value ? -1 : x.value > y.value ? 1 : 0;
  throw new Error(`cannot compare cursor values ${JSON.stringify(String(a))} (${x.kind}) and ${JSON.stringify(String(b))} (${y.kind})`);
}

/** A JavaScript cursor value as a position holds it (numbers stay numbers, dates become ISO text). */
export function cursorValue(value: unknown): string | number {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

/** `value` moved back by `ms`, for the lag window of a code-defined source (instants only). */
export function lagStart(value: string | number, ms: number): string {
  const c = typeof value === 'string' ? instantOf(value) : undefined;
  if (!c || c.kind !== 'instant') throw new Error(`cursor.lag needs a date or timestamp cursor, and ${JSON.stringify(value)} is not one`);
  const start = new Date(c.seconds * 1000 + Math.floor(c.nanos / 1_000_000) - ms);
  // Keep the digits below the millisecond: the window starts exactly `ms` before the cursor.
  const below = String(c.nanos % 1_000_000).padStart(6, '0').replace(/0+$/, '');
  return start.toISOString().replace(/Z$/, `${below}Z`);
}
