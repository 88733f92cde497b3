/**
 * A batch of change-stream transactions, collapsed per key before it is applied. Pure.
 *
 * Within one batch only the last change of each key matters (last change wins), with one
 * exception that makes TOAST safe: columns a change did not carry (an unchanged TOASTed value,
 * or a column the source added after the change was made) are not part of that change, so an
 * update merges into the earlier change of its key instead of replacing it, and an update
 * whose key is not in the batch leaves those columns as the destination has them.
 */
import { SPAN_UNCHANGED, UNCHANGED, type Tuple } from '../../sources/postgres/cdc/pgoutput';

/**
 * Values a change carries, by destination column name; a column it does not have is left as it
 * is. A Map is one; RowValues is the compact form the stream builds for every change.
 */
export interface ChangeValues {
  readonly size: number;
  has(column: string): boolean;
  get(column: string): string | null | undefined;
  keys(): IterableIterator<string>;
  [Symbol.iterator](): IterableIterator<[string, string | null]>;
}

/** The columns of one relation, shared by every RowValues of it: destination name of each tuple position. */
export class RowColumns {
  readonly index: Map<string, number>;
  constructor(readonly names: readonly string[]) {
    this.index = new Map(names.map((n, i) => [n, i]));
  }
}

let scratch = new Int32Array(64);
/** The spans of a tuple (see Tuple.spans) in a shared scratch array, valid until the next call. */
export function spansOf(tuple: Tuple): Int32Array {
  if (scratch.length < 2 * tuple.count) scratch = new Int32Array(2 * tuple.count);
  tuple.spans(scratch);
  return scratch;
}

/**
 * A change's values as its tuple arrived: no strings and no map per change (this is built for
 * every change of a stream, and kept until its batch commits); the apply engine copies the
 * values' bytes into COPY text. A value the change did not carry (an unchanged TOAST value) is
 * SPAN_UNCHANGED in the tuple's spans.
 */
export class RowValues implements ChangeValues {
  /** Whether every column of the relation has a value (none was left out). */
  readonly complete: boolean;
  readonly size: number;

  constructor(
    readonly columns: RowColumns,
    readonly tuple: Tuple,
  ) {
    // Counted without an allocation: this runs for every change of the stream.
    const spans = spansOf(tuple);
    const n = Math.min(tuple.count, columns.names.length);
    let size = 0;
    for (let i = 0; i < n; i++) if (spans[2 * i] !== SPAN_UNCHANGED) size++;
    this.size = size;
    this.complete = size === columns.names.length;
  }

  /** Positions of the relation's columns that the change carries, in one pass, decoding nothing. */
  private carried(): number[] {
    const spans = spansOf(this.tuple);
    const out: number[] = [];
    const n = Math.min(this.tuple.count, this.columns.names.length);
    for (let i = 0; i < n; i++) if (spans[2 * i] !== SPAN_UNCHANGED) out.push(i);
    return out;
  }

  private position(column: string): number | undefined {
    const i = this.columns.index.get(column);
    return i !== undefined && i < this.tuple.count ? i : undefined;
  }

  has(column: string): boolean {
    const i = this.position(column);
    return i !== undefined && spansOf(this.tuple)[2 * i] !== SPAN_UNCHANGED;
  }

  get(column: string): string | null | undefined {
    const i = this.position(column);
    if (i === undefined) return undefined;
    const v = this.tuple.value(i);
    return v === UNCHANGED ? undefined : v;
  }

  keys(): IterableIterator<string> {
    return this.carried()
      .map((i) => this.columns.names[i]!)
      [Symbol.iterator]();
  }

  /** [column, value] of what the change carries, decoded in one pass. */
  [Symbol.iterator](): IterableIterator<[string, string | null]> {
    const values = this.tuple.values();
    return this.carried()
      .map((i): [string, string | null] => [this.columns.names[i]!, values[i] as string | null])
      [Symbol.iterator]();
  }
}

export type Pending =
  /** `from`: the key changed from this one; what the change did not carry is that row's (in the destination). */
  | { op: 'upsert'; key: string[]; values: ChangeValues; from?: string[] }
  | { op: 'delete'; key: string[]; at: Date };

export interface TableCounts {
  inserts: number;
  updates: number;
  deletes: number;
  truncates: number;
}

/** Keys whose first column (an integer) is in [lo, hi); null is unbounded. */
export interface FirstKeyRange {
  lo: string | null;
  hi: string | null;
}

export interface TableBatch {
  /** Set when the batch truncates the table: applied before the batch's own later changes. */
  truncatedAt?: Date;
  /**
   * With truncatedAt: only these key ranges are emptied (a TRUNCATE that committed while the
   * table's snapshot was copied in chunks, which some chunks' copies already show). Absent: all.
   */
  truncateRanges?: FirstKeyRange[];
  rows: Map<string, Pending>;
  counts: TableCounts;
}

export function emptyCounts(): TableCounts {
  return { inserts: 0, updates: 0, deletes: 0, truncates: 0 };
}

/** A key's entry in TableBatch.rows: a one-column key is its value (every key of a table has the same columns), others JSON. */
export const batchKey = (key: string[]): string => (key.length === 1 ? key[0]! : JSON.stringify(key));
const keyOf = batchKey;

export class ChangeBatch {
  readonly tables = new Map<string, TableBatch>();
  /** Changes received (before collapsing): what `batchChanges` limits. */
  changes = 0;

  private table(name: string): TableBatch {
    let t = this.tables.get(name);
    if (!t) {
      t = { rows: new Map(), counts: emptyCounts() };
      this.tables.set(name, t);
    }
    return t;
  }

  insert(table: string, key: string[], values: ChangeValues): void {
    const t = this.table(table);
    t.rows.set(keyOf(key), { op: 'upsert', key, values });
    t.counts.inserts++;
    this.changes++;
  }

  /** `oldKey` differs from `key` when the update changed the key: the old key's row goes. */
  update(table: string, key: string[], values: ChangeValues, oldKey: string[] | undefined, at: Date): void {
    const t = this.table(table);
    const k = keyOf(key);
    let merged = values;
    const moved = oldKey !== undefined && keyOf(oldKey) !== k;
    const previous = t.rows.get(moved ? keyOf(oldKey) : k);
    // A moved row not in the batch yet takes what the change lacks from the old key's destination row.
    let from = moved ? oldKey : undefined;
    if (previous?.op === 'upsert') {
      const union = new Map(previous.values);
      for (const [c, v] of values) union.set(c, v);
      merged = union;
      // Moved again or for the first time: what neither change carried is still the first old key's.
      from = previous.from ?? (moved ? oldKey : undefined);
    }
    if (moved) t.rows.set(keyOf(oldKey), { op: 'delete', key: oldKey, at });
    const pending: Pending = { op: 'upsert', key, values: merged };
    if (from) pending.from = from;
    t.rows.set(k, pending);
    t.counts.updates++;
    this.changes++;
  }

  delete(table: string, key: string[], at: Date): void {
    const t = this.table(table);
    t.rows.set(keyOf(key), { op: 'delete', key, at });
    t.counts.deletes++;
    this.changes++;
  }

  /** Everything the batch holds for the table so far is void; later changes apply after the truncate. */
  truncate(table: string, at: Date, ranges?: FirstKeyRange[]): void {
    const t = this.table(table);
    if (ranges) {
      for (const [k, pending] of t.rows) if (ranges.some((r) => inRange(r, pending.key[0]!))) t.rows.delete(k);
      // A whole-table truncate earlier in the batch stays whole.
      if (!t.truncatedAt || t.truncateRanges) t.truncateRanges = [...(t.truncateRanges ?? []), ...ranges];
    } else {
      t.rows.clear();
      delete t.truncateRanges;
    }
    t.truncatedAt = at;
    t.counts.truncates++;
    this.changes++;
  }

  get empty(): boolean {
    return this.changes === 0;
  }
}

export function inRange(range: FirstKeyRange, firstKey: string): boolean {
  const k = BigInt(firstKey);
  return (range.lo === null || k >= BigInt(range.lo)) && (range.hi === null || k < BigInt(range.hi));
}
