/**
 * A batch of change-stream transactions, collapsed per key before it is applied. Pure.
 *
 * Within one batch only the last change of each key matters (last change wins), with one
 * exception that makes TOAST safe: columns a change did not carry (an unchanged TOASTed value,
 * or a column the source added after the change was made) are not part of that change, so an
 * update merges into the earlier change of its key instead of replacing it, and an update
 * whose key is not in the batch leaves those columns as the destination has them.
 */
import { SPAN_UNCHANGED, Tuple, tupleSpans, UNCHANGED } from '../../sources/postgres/cdc/pgoutput';

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
  constructor(
    readonly names: readonly string[],
    /** Tuple positions of the key columns, in key order (the stream's relations have them). */
    readonly keyIndex: readonly number[] = [],
  ) {
    this.index = new Map(names.map((n, i) => [n, i]));
  }
}

let scratch = new Int32Array(64);
function scratchFor(count: number): Int32Array {
  if (scratch.length < 2 * count) scratch = new Int32Array(2 * count);
  return scratch;
}
/** The spans of a tuple (see Tuple.spans) in a shared scratch array, valid until the next call. */
export function spansOf(tuple: Tuple): Int32Array {
  const out = scratchFor(tuple.count);
  tuple.spans(out);
  return out;
}
/** The same for a tuple's values at `start` in `buf` (a batch entry's, see Rows). */
export function spansAt(buf: Buffer, start: number, count: number): Int32Array {
  const out = scratchFor(count);
  tupleSpans(buf, start, count, out);
  return out;
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

export class TableBatch {
  /** Set when the batch truncates the table: applied before the batch's own later changes. */
  truncatedAt?: Date;
  /**
   * With truncatedAt: only these key ranges are emptied (a TRUNCATE that committed while the
   * table's snapshot was copied in chunks, which some chunks' copies already show). Absent: all.
   */
  truncateRanges?: FirstKeyRange[];
  readonly counts: TableCounts = emptyCounts();
  readonly rows: Rows;
  constructor(arena: TupleArena) {
    this.rows = new Rows(arena);
  }
}

export function emptyCounts(): TableCounts {
  return { inserts: 0, updates: 0, deletes: 0, truncates: 0 };
}

/** How a Rows entry holds its change. */
export const ENTRY_UPSERT = 1;
export const ENTRY_DELETE = 2;
export const ENTRY_OBJECT = 3;
/** With ENTRY_UPSERT: the tuple carries every column of its relation. */
const COMPLETE = 8;
const KIND = 7;

const PAGE_BYTES = 1 << 20;

/**
 * The tuple bytes of a batch's changes, copied into shared pages: a change kept until its
 * batch commits costs its bytes and no buffer of its own.
 */
export class TupleArena {
  readonly pages: Buffer[] = [];
  /** The page being filled (an index in pages), and how far. */
  private open = -1;
  private pos = 0;
  /** Where the last add put its bytes. */
  page = 0;
  start = 0;

  add(src: Buffer, from: number, to: number): void {
    const n = to - from;
    if (n > PAGE_BYTES / 4) {
      // A big tuple gets a page of its own; the open page stays open.
      this.pages.push(Buffer.allocUnsafe(n));
      this.page = this.pages.length - 1;
      this.start = 0;
    } else {
      if (this.open < 0 || this.pos + n > PAGE_BYTES) {
        this.pages.push(Buffer.allocUnsafe(PAGE_BYTES));
        this.open = this.pages.length - 1;
        this.pos = 0;
      }
      this.page = this.open;
      this.start = this.pos;
      this.pos += n;
    }
    src.copy(this.pages[this.page]!, this.start, from, to);
  }
}

/**
 * A table's pending changes, one per key (last change wins). A change of the stream is an entry
 * of typed arrays over its tuple's bytes in the batch's arena: no object per change, which a
 * batch of tens of thousands of changes held for a commit would make the garbage collector
 * copy and mark. Changes merged from several (a TOASTed value left out, a key that moved) are
 * Pending objects. Reads like a Map of Pending (materialized when asked).
 */
export class Rows {
  private readonly index = new Map<string, number>();
  private kinds = new Uint8Array(1024);
  /** Per entry: page, start, end, count. */
  private meta = new Int32Array(4 * 1024);
  private at = new Float64Array(1024);
  private readonly columnsOf: RowColumns[] = [];
  private readonly objects = new Map<number, Pending>();
  private n = 0;

  constructor(private readonly arena: TupleArena) {}

  get size(): number {
    return this.index.size;
  }

  private grow(): void {
    const kinds = new Uint8Array(this.kinds.length * 2);
    kinds.set(this.kinds);
    this.kinds = kinds;
    const meta = new Int32Array(this.meta.length * 2);
    meta.set(this.meta);
    this.meta = meta;
    const at = new Float64Array(this.at.length * 2);
    at.set(this.at);
    this.at = at;
  }

  private entry(kind: number, columns: RowColumns | undefined): number {
    if (this.n === this.kinds.length) this.grow();
    const e = this.n++;
    this.kinds[e] = kind;
    this.columnsOf[e] = columns!;
    return e;
  }

  /** The change of a tuple as it arrived: its bytes go to the arena. */
  setTuple(key: string, kind: typeof ENTRY_UPSERT | typeof ENTRY_DELETE, columns: RowColumns, tuple: Tuple, complete: boolean, atMs = 0): void {
    const e = this.entry(kind | (complete ? COMPLETE : 0), columns);
    this.arena.add(tuple.buf, tuple.start, tuple.end);
    const m = 4 * e;
    this.meta[m] = this.arena.page;
    this.meta[m + 1] = this.arena.start;
    this.meta[m + 2] = this.arena.start + (tuple.end - tuple.start);
    this.meta[m + 3] = tuple.count;
    this.at[e] = atMs;
    this.index.set(key, e);
  }

  set(key: string, pending: Pending): void {
    const e = this.entry(ENTRY_OBJECT, undefined);
    this.objects.set(e, pending);
    this.index.set(key, e);
  }

  has(key: string): boolean {
    return this.index.has(key);
  }

  /** The entry of a key (see the entry readers below), or undefined. */
  entryOf(key: string): number | undefined {
    return this.index.get(key);
  }

  get(key: string): Pending | undefined {
    const e = this.index.get(key);
    return e === undefined ? undefined : this.pending(e);
  }

  delete(key: string): void {
    this.index.delete(key);
  }

  clear(): void {
    this.index.clear();
    this.objects.clear();
  }

  keys(): IterableIterator<string> {
    return this.index.keys();
  }

  /** The entries, one per key, in the order their keys first came. */
  entries(): IterableIterator<number> {
    return this.index.values();
  }

  *values(): IterableIterator<Pending> {
    for (const e of this.index.values()) yield this.pending(e);
  }

  kind(e: number): number {
    return this.kinds[e]! & KIND;
  }
  /** An ENTRY_UPSERT whose tuple has every column of its relation. */
  complete(e: number): boolean {
    return (this.kinds[e]! & COMPLETE) !== 0;
  }
  object(e: number): Pending {
    return this.objects.get(e)!;
  }
  columns(e: number): RowColumns {
    return this.columnsOf[e]!;
  }
  buf(e: number): Buffer {
    return this.arena.pages[this.meta[4 * e]!]!;
  }
  start(e: number): number {
    return this.meta[4 * e + 1]!;
  }
  count(e: number): number {
    return this.meta[4 * e + 3]!;
  }
  /** An ENTRY_DELETE's commit time, in Unix milliseconds. */
  atMs(e: number): number {
    return this.at[e]!;
  }
  tuple(e: number): Tuple {
    const m = 4 * e;
    return new Tuple(this.buf(e), this.meta[m + 1]!, this.meta[m + 3]!, this.meta[m + 2]!);
  }

  /** The key values of an entry's change. */
  key(e: number): string[] {
    if (this.kind(e) === ENTRY_OBJECT) return this.object(e).key;
    const t = this.tuple(e);
    return this.columns(e).keyIndex.map((i) => t.value(i) as string);
  }

  private pending(e: number): Pending {
    const kind = this.kind(e);
    if (kind === ENTRY_OBJECT) return this.object(e);
    if (kind === ENTRY_DELETE) return { op: 'delete', key: this.key(e), at: new Date(this.atMs(e)) };
    return { op: 'upsert', key: this.key(e), values: new RowValues(this.columns(e), this.tuple(e)) };
  }
}

/** A key's entry in TableBatch.rows: a one-column key is its value (every key of a table has the same columns), others JSON. */
export const batchKey = (key: string[]): string => (key.length === 1 ? key[0]! : JSON.stringify(key));
const keyOf = batchKey;

export class ChangeBatch {
  readonly tables = new Map<string, TableBatch>();
  /** Changes received (before collapsing): what `batchChanges` limits. */
  changes = 0;
  private readonly arena = new TupleArena();

  private table(name: string): TableBatch {
    let t = this.tables.get(name);
    if (!t) {
      t = new TableBatch(this.arena);
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

  /** An insert as its tuple arrived (`key`: batchKey of its key values; `columns` with the relation's keyIndex). */
  insertTuple(table: string, key: string, columns: RowColumns, tuple: Tuple): void {
    const t = this.table(table);
    t.rows.setTuple(key, ENTRY_UPSERT, columns, tuple, carriesAll(columns, tuple));
    t.counts.inserts++;
    this.changes++;
  }

  /**
   * An update as its tuple arrived. One that carries every column replaces what the batch holds
   * for its key; one that left a column out merges into an earlier change of its key (see update).
   */
  updateTuple(table: string, keyValues: string[], columns: RowColumns, tuple: Tuple, oldKey: string[] | undefined, at: Date): void {
    const t = this.table(table);
    const key = keyOf(keyValues);
    if (oldKey === undefined || keyOf(oldKey) === key) {
      const all = carriesAll(columns, tuple);
      const e = t.rows.entryOf(key);
      const previous = e === undefined ? ENTRY_DELETE : t.rows.kind(e);
      // Replacing is merging when nothing earlier could add to it: no earlier upsert, or one of
      // the same columns that this one carries whole.
      if (previous === ENTRY_DELETE || (all && previous === ENTRY_UPSERT && t.rows.columns(e!) === columns)) {
        t.rows.setTuple(key, ENTRY_UPSERT, columns, tuple, all);
        t.counts.updates++;
        this.changes++;
        return;
      }
    }
    this.update(table, keyValues, new RowValues(columns, tuple.detach()), oldKey, at);
  }

  /** A delete with its old-key tuple as it arrived. */
  deleteTuple(table: string, key: string, columns: RowColumns, old: Tuple, at: Date): void {
    const t = this.table(table);
    t.rows.setTuple(key, ENTRY_DELETE, columns, old, false, at.getTime());
    t.counts.deletes++;
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
      for (const [k, e] of [...t.rows.keys()].map((k) => [k, t.rows.entryOf(k)!] as const)) {
        if (ranges.some((r) => inRange(r, t.rows.key(e)[0]!))) t.rows.delete(k);
      }
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

/** Whether a tuple has a value for every column of its relation (no unchanged TOAST value left out). */
function carriesAll(columns: RowColumns, tuple: Tuple): boolean {
  if (tuple.count < columns.names.length) return false;
  return tupleSpans(tuple.buf, tuple.start, tuple.count, scratchFor(tuple.count));
}

export function inRange(range: FirstKeyRange, firstKey: string): boolean {
  const k = BigInt(firstKey);
  return (range.lo === null || k >= BigInt(range.lo)) && (range.hi === null || k < BigInt(range.hi));
}
