/**
 * Partition ranges for backfills: pure date arithmetic in UTC, safe to run inside workflow
 * code. A partition is addressed by index, so a 100,000-partition backfill never holds a list.
 */
import type { Granularity } from '../inputs';

/** A partition of a backfill: rows with start <= partitionColumn < end (UTC instants). */
export interface PartitionRange {
  key: string;
  start: string;
  end: string;
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** "2024-01-01", "2024-01-01T05", "2024-01-01T05:30:00Z" -> epoch ms (UTC unless an offset is given). */
export function parseInstant(text: string): number {
  let normalized = text.trim().replace(' ', 'T');
  if (/^\d{4}-\d{2}-\d{2}$/.test(normalized)) normalized += 'T00:00:00Z';
  else if (/^\d{4}-\d{2}-\d{2}T\d{2}$/.test(normalized)) normalized += ':00:00Z';
  else if (!/(Z|[+-]\d{2}:?\d{2})$/i.test(normalized)) normalized += 'Z';
  const ms = Date.parse(normalized);
  if (Number.isNaN(ms)) throw new Error(`"${text}" is not a date or timestamp`);
  return ms;
}

function floorTo(ms: number, granularity: Granularity): number {
  switch (granularity) {
    case 'hour':
      return Math.floor(ms / HOUR) * HOUR;
    case 'day':
      return Math.floor(ms / DAY) * DAY;
    case 'month': {
      const d = new Date(ms);
      return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
    }
  }
}

function monthIndex(ms: number): number {
  const d = new Date(ms);
  return d.getUTCFullYear() * 12 + d.getUTCMonth();
}

/** Number of partitions from the one holding `start` to the one holding `end`, inclusive. */
export function partitionCount(start: string, end: string, granularity: Granularity): number {
  const a = floorTo(parseInstant(start), granularity);
  const b = floorTo(parseInstant(end), granularity);
  if (b < a) return 0;
  if (granularity === 'month') return monthIndex(b) - monthIndex(a) + 1;
  return Math.round((b - a) / (granularity === 'hour' ? HOUR : DAY)) + 1;
}

function keyOf(ms: number, granularity: Granularity): string {
  const iso = new Date(ms).toISOString();
  return granularity === 'hour' ? iso.slice(0, 13) : granularity === 'day' ? iso.slice(0, 10) : iso.slice(0, 7);
}

function rangeAt(startMs: number, granularity: Granularity): PartitionRange {
  let endMs: number;
  if (granularity === 'month') {
    const d = new Date(startMs);
    endMs = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  } else {
    endMs = startMs + (granularity === 'hour' ? HOUR : DAY);
  }
  return { key: keyOf(startMs, granularity), start: new Date(startMs).toISOString(), end: new Date(endMs).toISOString() };
}

/** The `index`-th partition (0-based) of a backfill that starts at `start`. */
export function partitionAt(start: string, granularity: Granularity, index: number): PartitionRange {
  const first = floorTo(parseInstant(start), granularity);
  if (granularity === 'month') {
    const d = new Date(first);
    return rangeAt(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + index, 1), granularity);
  }
  return rangeAt(first + index * (granularity === 'hour' ? HOUR : DAY), granularity);
}

const KEY_PATTERN: Record<Granularity, RegExp> = {
  hour: /^\d{4}-\d{2}-\d{2}T\d{2}$/,
  day: /^\d{4}-\d{2}-\d{2}$/,
  month: /^\d{4}-\d{2}$/,
};

/** The partition a key names ("2024-01-05" for days, "2024-01-05T13" for hours, "2024-01" for months). */
export function partitionFromKey(key: string, granularity: Granularity): PartitionRange {
  if (!KEY_PATTERN[granularity].test(key)) {
    throw new Error(`"${key}" is not a ${granularity} partition key (expected ${granularity === 'hour' ? '2024-01-05T13' : granularity === 'day' ? '2024-01-05' : '2024-01'})`);
  }
  const range = rangeAt(parseInstant(granularity === 'month' ? `${key}-01` : key), granularity);
  if (range.key !== key) throw new Error(`"${key}" is not a valid ${granularity}`);
  return range;
}
