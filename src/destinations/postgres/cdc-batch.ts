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
import { BufferPool, copyBytes } from './binary-copy';

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
/**
 * With ENTRY_UPSERT: the batch's first change of its key was an update (of a row that kept its
 * key), so the destination holds the row already: applied by UPDATE, without trying an insert.
 */
const EXISTING = 16;
/**
 * With ENTRY_UPSERT: the batch's first change of its key was an insert, so the row is new to the
 * source and the destination should lack it: applied by a plain INSERT, which costs about half
 * what an upsert's speculative insertion does. (A destination may hold it after all, a
 * soft-deleted row whose key came back, say: the upsert then covers it, see applyTable.)
 */
const FRESH = 32;
/** Asked of setTuple for an insert: FRESH when the key has no change before it in the batch (index() knows). */
const FRESH_IF_FIRST = 64;
const KIND = 7;

const PAGE_BYTES = 1 << 20;
/**
 * Pages of batches already applied, kept for the next ones: a stream then allocates no memory
 * per batch, so its worker's memory stays flat and the garbage collector is not asked for a
 * full collection by every batch's new external memory.
 */
const freePages = new BufferPool(PAGE_BYTES, 64);

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
        this.pages.push(freePages.take());
        this.open = this.pages.length - 1;
        this.pos = 0;
      }
      this.page = this.open;
      this.start = this.pos;
      this.pos += n;
    }
    copyBytes(src, from, to, this.pages[this.page]!, this.start);
  }

  /** The batch is done with (applied or failed): its pages serve the next batches. Nothing may read it after this. */
  release(): void {
    for (const page of this.pages) freePages.give(page);
    this.pages.length = 0;
    this.open = -1;
  }
}

/** FNV-1a over a key's bytes. */
function hashBytes(buf: Buffer, start: number, length: number): number {
  let h = 0x811c9dc5;
  for (let i = start, end = start + length; i < end; i++) h = Math.imul(h ^ buf[i]!, 0x01000193);
  return h | 0;
}

const STRIDE = 7; // page, start, end, count, key page, key start, key length
/** The arrays of Rows already released, kept for the next batches' (as TupleArena keeps pages). */
const spareStorage: { kinds: Uint8Array<ArrayBuffer>; meta: Int32Array<ArrayBuffer>; hashes: Int32Array<ArrayBuffer>; at: Float64Array<ArrayBuffer>; slots: Int32Array<ArrayBuffer>; columnIds: Uint16Array<ArrayBuffer> }[] = [];
const MAX_SPARE_STORAGE = 4;
const DEAD = 0;

/**
 * A table's pending changes, one per key (last change wins). A change of the stream is an entry
 * of typed arrays over its tuple's bytes in the batch's arena, found by its key's bytes through
 * an open-addressing table: no object, string or map entry per change, which a batch of tens of
 * thousands of changes held for a commit would make the garbage collector copy and mark.
 * Changes merged from several (a TOASTed value left out, a key that moved) are Pending objects.
 * Keys read like strings (batchKey); entries come in no particular order.
 */
export class Rows {
  private kinds = new Uint8Array(1024);
  private meta = new Int32Array(STRIDE * 1024);
  private hashes = new Int32Array(1024);
  private at = new Float64Array(1024);
  /** Per entry, its columns as an index in `columnSets` (a table has a few: one per relation message). */
  private columnIds = new Uint16Array(1024);
  private columnSets: (RowColumns | undefined)[] = [undefined];
  private lastColumns: RowColumns | undefined;
  private lastColumnsId = 0;
  private readonly objects = new Map<number, Pending>();
  /** Entries made, live or not. */
  private n = 0;
  private live = 0;
  /** Open addressing: entry + 1 per slot, 0 for none. */
  private slots = new Int32Array(2048);

  constructor(private readonly arena: TupleArena) {
    const spare = spareStorage.pop();
    if (spare) {
      ({ kinds: this.kinds, meta: this.meta, hashes: this.hashes, at: this.at, slots: this.slots, columnIds: this.columnIds } = spare);
      this.slots.fill(0);
    }
  }

  /** Done with: the arrays serve the next batch's tables (see TupleArena.release). */
  release(): void {
    if (spareStorage.length < MAX_SPARE_STORAGE) spareStorage.push({ kinds: this.kinds, meta: this.meta, hashes: this.hashes, at: this.at, slots: this.slots, columnIds: this.columnIds });
    this.columnSets = [undefined];
    this.lastColumns = undefined;
    this.lastColumnsId = 0;
    this.objects.clear();
    this.n = 0;
    this.live = 0;
    this.slots = new Int32Array(2);
  }

  get size(): number {
    return this.live;
  }

  /** Entries made so far: the live ones are those below this for which isLive holds. */
  get entryCount(): number {
    return this.n;
  }

  isLive(e: number): boolean {
    return this.kinds[e] !== DEAD;
  }

  private grow(): void {
    const size = this.kinds.length * 2;
    const kinds = new Uint8Array(size);
    kinds.set(this.kinds);
    this.kinds = kinds;
    const meta = new Int32Array(STRIDE * size);
    meta.set(this.meta);
    this.meta = meta;
    const hashes = new Int32Array(size);
    hashes.set(this.hashes);
    this.hashes = hashes;
    const at = new Float64Array(size);
    at.set(this.at);
    this.at = at;
    const columnIds = new Uint16Array(size);
    columnIds.set(this.columnIds);
    this.columnIds = columnIds;
  }

  private rehash(capacity: number): void {
    this.slots = new Int32Array(capacity);
    const mask = capacity - 1;
    for (let e = 0; e < this.n; e++) {
      if (this.kinds[e] === DEAD) continue;
      let i = this.hashes[e]! & mask;
      while (this.slots[i] !== 0) i = (i + 1) & mask;
      this.slots[i] = e + 1;
    }
  }

  private sameKey(e: number, buf: Buffer, start: number, length: number): boolean {
    const m = STRIDE * e;
    if (this.meta[m + 6] !== length) return false;
    const page = this.arena.pages[this.meta[m + 4]!]!;
    const at = this.meta[m + 5]!;
    for (let i = 0; i < length; i++) if (page[at + i] !== buf[start + i]) return false;
    return true;
  }

  /** The slot of a key: the one holding its entry, or the empty one where it would go. */
  private slotOf(buf: Buffer, start: number, length: number, hash: number): number {
    const mask = this.slots.length - 1;
    let i = hash & mask;
    for (;;) {
      const s = this.slots[i]!;
      if (s === 0 || (this.hashes[s - 1] === hash && this.sameKey(s - 1, buf, start, length))) return i;
      i = (i + 1) & mask;
    }
  }

  /** The live entry of a key given as bytes, or -1. */
  find(buf: Buffer, start: number, length: number): number {
    const s = this.slots[this.slotOf(buf, start, length, hashBytes(buf, start, length))]!;
    return s - 1;
  }

  /** Makes entry `e` the key's (bytes already in the arena at keyPage/keyStart), retiring the one before. */
  private index(e: number, keyPage: number, keyStart: number, keyLength: number): void {
    const page = this.arena.pages[keyPage]!;
    const hash = hashBytes(page, keyStart, keyLength);
    const m = STRIDE * e;
    this.meta[m + 4] = keyPage;
    this.meta[m + 5] = keyStart;
    this.meta[m + 6] = keyLength;
    this.hashes[e] = hash;
    const slot = this.slotOf(page, keyStart, keyLength, hash);
    const before = this.slots[slot]! - 1;
    if ((this.kinds[e]! & FRESH_IF_FIRST) !== 0) this.kinds[e] = (this.kinds[e]! & ~FRESH_IF_FIRST) | (before < 0 ? FRESH : 0);
    if (before >= 0) {
      this.kinds[before] = DEAD;
      this.objects.delete(before);
    } else {
      this.live++;
    }
    this.slots[slot] = e + 1;
    if (2 * this.live > this.slots.length) this.rehash(this.slots.length * 2);
  }

  private entry(kind: number, columns: RowColumns | undefined): number {
    if (this.n === this.kinds.length) this.grow();
    const e = this.n++;
    this.kinds[e] = kind;
    this.columnIds[e] = this.columnsId(columns);
    return e;
  }

  private columnsId(columns: RowColumns | undefined): number {
    if (columns === undefined) return 0;
    if (columns !== this.lastColumns) {
      let id = this.columnSets.indexOf(columns);
      if (id < 0) {
        if (this.columnSets.length > 0xffff) throw new Error('a batch of more than 65,535 relation versions of one table');
        id = this.columnSets.push(columns) - 1;
      }
      this.lastColumns = columns;
      this.lastColumnsId = id;
    }
    return this.lastColumnsId;
  }

  /**
   * The change of a tuple as it arrived: its bytes go to the arena. `key` is where its key's bytes
   * are: inside the tuple (a one-column key, then found in the arena's copy), or a buffer of its own.
   */
  setTuple(kind: typeof ENTRY_UPSERT | typeof ENTRY_DELETE, columns: RowColumns, tuple: Tuple, complete: boolean, atMs: number, keyBuf: Buffer, keyStart: number, keyLength: number, origin = 0): void {
    const e = this.entry(kind | (complete ? COMPLETE : 0) | origin, columns);
    this.arena.add(tuple.buf, tuple.start, tuple.end);
    const m = STRIDE * e;
    const page = this.arena.page;
    const start = this.arena.start;
    this.meta[m] = page;
    this.meta[m + 1] = start;
    this.meta[m + 2] = start + (tuple.end - tuple.start);
    this.meta[m + 3] = tuple.count;
    this.at[e] = atMs;
    if (keyBuf === tuple.buf && keyStart >= tuple.start && keyStart + keyLength <= tuple.end) {
      this.index(e, page, start + (keyStart - tuple.start), keyLength);
    } else {
      this.arena.add(keyBuf, keyStart, keyStart + keyLength);
      this.index(e, this.arena.page, this.arena.start, keyLength);
    }
  }

  set(key: string, pending: Pending): void {
    const e = this.entry(ENTRY_OBJECT, undefined);
    this.objects.set(e, pending);
    const bytes = Buffer.from(key, 'utf8');
    this.arena.add(bytes, 0, bytes.length);
    this.index(e, this.arena.page, this.arena.start, bytes.length);
  }

  /** The live entry of a key, or undefined. */
  entryOf(key: string): number | undefined {
    const bytes = Buffer.from(key, 'utf8');
    const e = this.find(bytes, 0, bytes.length);
    return e < 0 ? undefined : e;
  }

  has(key: string): boolean {
    return this.entryOf(key) !== undefined;
  }

  get(key: string): Pending | undefined {
    const e = this.entryOf(key);
    return e === undefined ? undefined : this.pending(e);
  }

  delete(key: string): void {
    const e = this.entryOf(key);
    if (e === undefined) return;
    this.removeWhere((x) => x === e);
  }

  /** Removes every live entry `drop` holds for (one pass, one reindex). */
  removeWhere(drop: (e: number) => boolean): void {
    for (let e = 0; e < this.n; e++) {
      if (this.kinds[e] === DEAD || !drop(e)) continue;
      this.kinds[e] = DEAD;
      this.objects.delete(e);
      this.live--;
    }
    this.rehash(this.slots.length);
  }

  clear(): void {
    this.kinds.fill(DEAD, 0, this.n);
    this.objects.clear();
    this.live = 0;
    this.slots.fill(0);
  }

  /** The key of a live entry, as batchKey writes it. */
  keyText(e: number): string {
    const m = STRIDE * e;
    return this.arena.pages[this.meta[m + 4]!]!.toString('utf8', this.meta[m + 5]!, this.meta[m + 5]! + this.meta[m + 6]!);
  }

  *keys(): IterableIterator<string> {
    for (const e of this.entries()) yield this.keyText(e);
  }

  /** The live entries, one per key (hot loops go by entryCount and isLive: a generator makes an object per entry). */
  *entries(): IterableIterator<number> {
    for (let e = 0; e < this.n; e++) if (this.kinds[e] !== DEAD) yield e;
  }

  *values(): IterableIterator<Pending> {
    for (const e of this.entries()) yield this.pending(e);
  }

  kind(e: number): number {
    return this.kinds[e]! & KIND;
  }
  /** An ENTRY_UPSERT whose tuple has every column of its relation. */
  complete(e: number): boolean {
    return (this.kinds[e]! & COMPLETE) !== 0;
  }
  /** An ENTRY_UPSERT of a row the destination holds already (see EXISTING). */
  existing(e: number): boolean {
    return (this.kinds[e]! & EXISTING) !== 0;
  }
  /** An ENTRY_UPSERT of a row new to the source in this batch (see FRESH). */
  fresh(e: number): boolean {
    return (this.kinds[e]! & FRESH) !== 0;
  }
  object(e: number): Pending {
    return this.objects.get(e)!;
  }
  columns(e: number): RowColumns {
    return this.columnSets[this.columnIds[e]!]!;
  }
  buf(e: number): Buffer {
    return this.arena.pages[this.meta[STRIDE * e]!]!;
  }
  start(e: number): number {
    return this.meta[STRIDE * e + 1]!;
  }
  count(e: number): number {
    return this.meta[STRIDE * e + 3]!;
  }
  /** An ENTRY_DELETE's commit time, in Unix milliseconds. */
  atMs(e: number): number {
    return this.at[e]!;
  }
  tuple(e: number): Tuple {
    const m = STRIDE * e;
    return new Tuple(this.buf(e), this.meta[m + 1]!, this.meta[m + 3]!, this.meta[m + 2]!);
  }

  /** The key values of an entry's change. */
  key(e: number): string[] {
    if (this.kind(e) === ENTRY_OBJECT) return this.object(e).key;
    return keyValues(this.columns(e), this.tuple(e));
  }

  private pending(e: number): Pending {
    const kind = this.kind(e);
    if (kind === ENTRY_OBJECT) return this.object(e);
    if (kind === ENTRY_DELETE) return { op: 'delete', key: this.key(e), at: new Date(this.atMs(e)) };
    return { op: 'upsert', key: this.key(e), values: new RowValues(this.columns(e), this.tuple(e)) };
  }
}

/** The key values of a tuple (at its relation's key positions). */
export function keyValues(columns: RowColumns, tuple: Tuple, table?: string): string[] {
  return columns.keyIndex.map((i) => {
    const v = i < tuple.count ? tuple.value(i) : undefined;
    if (typeof v !== 'string') throw new Error(`key column ${columns.names[i]}${table ? ` of ${table}` : ''} arrived without a value`);
    return v;
  });
}

/**
 * Where a tuple's key is as batchKey bytes: a one-column key is its value's bytes in the tuple;
 * others are encoded (batchKey of the values) into a buffer of their own. Sets keyAt.
 */
export function locateKey(columns: RowColumns, tuple: Tuple): void {
  if (columns.keyIndex.length === 1) {
    const i = columns.keyIndex[0]!;
    const spans = scratchFor(tuple.count);
    if (i < tuple.count) tupleSpans(tuple.buf, tuple.start, tuple.count, spans);
    const offset = i < tuple.count ? spans[2 * i]! : SPAN_UNCHANGED;
    if (offset < 0) throw new Error(`key column ${columns.names[i]} arrived without a value`);
    keyAt.buf = tuple.buf;
    keyAt.start = offset;
    keyAt.length = spans[2 * i + 1]!;
    return;
  }
  const bytes = Buffer.from(batchKey(keyValues(columns, tuple)), 'utf8');
  keyAt.buf = bytes;
  keyAt.start = 0;
  keyAt.length = bytes.length;
}
/** What locateKey found, until its next call. */
export const keyAt: { buf: Buffer; start: number; length: number } = { buf: Buffer.alloc(0), start: 0, length: 0 };

/** Whether two tuples of a relation have the same key. */
export function sameKeyOf(columns: RowColumns, a: Tuple, b: Tuple): boolean {
  locateKey(columns, a);
  const { buf, start, length } = keyAt;
  locateKey(columns, b);
  if (keyAt.length !== length) return false;
  for (let i = 0; i < length; i++) if (keyAt.buf[keyAt.start + i] !== buf[start + i]) return false;
  return true;
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

  /** An insert as its tuple arrived (`columns` with the relation's keyIndex). */
  insertTuple(table: string, columns: RowColumns, tuple: Tuple): void {
    const t = this.table(table);
    const all = carriesAll(columns, tuple);
    locateKey(columns, tuple);
    t.rows.setTuple(ENTRY_UPSERT, columns, tuple, all, 0, keyAt.buf, keyAt.start, keyAt.length, FRESH_IF_FIRST);
    t.counts.inserts++;
    this.changes++;
  }

  /**
   * An update as its tuple arrived; `old`: the old key's tuple when the update changed the key.
   * One that carries every column replaces what the batch holds for its key; one that left a
   * column out merges into an earlier change of its key (see update).
   */
  updateTuple(table: string, columns: RowColumns, tuple: Tuple, old: Tuple | undefined, at: Date): void {
    const t = this.table(table);
    if (old === undefined) {
      const all = carriesAll(columns, tuple);
      locateKey(columns, tuple);
      const e = t.rows.find(keyAt.buf, keyAt.start, keyAt.length);
      const previous = e < 0 ? ENTRY_DELETE : t.rows.kind(e);
      // Replacing is merging when nothing earlier could add to it: no earlier upsert, or one of
      // the same columns that this one carries whole.
      if (previous === ENTRY_DELETE || (all && previous === ENTRY_UPSERT && t.rows.columns(e) === columns)) {
        // The first change of its key in the batch, or one after such an update: the row is there
        // before the batch. (After a delete of the key in this batch it may not be.) One after an
        // insert of this batch is of a row still new to the source.
        const origin = e < 0 || (previous === ENTRY_UPSERT && t.rows.existing(e)) ? EXISTING : previous === ENTRY_UPSERT && t.rows.fresh(e) ? FRESH : 0;
        t.rows.setTuple(ENTRY_UPSERT, columns, tuple, all, 0, keyAt.buf, keyAt.start, keyAt.length, origin);
        t.counts.updates++;
        this.changes++;
        return;
      }
    }
    this.update(table, keyValues(columns, tuple), new RowValues(columns, tuple.detach()), old && keyValues(columns, old), at);
  }

  /** A delete with its old-key tuple as it arrived. */
  deleteTuple(table: string, columns: RowColumns, old: Tuple, at: Date): void {
    const t = this.table(table);
    locateKey(columns, old);
    t.rows.setTuple(ENTRY_DELETE, columns, old, false, at.getTime(), keyAt.buf, keyAt.start, keyAt.length);
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
      t.rows.removeWhere((e) => ranges.some((r) => inRange(r, t.rows.key(e)[0]!)));
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

  /** Done with: its memory serves the next batches (see TupleArena.release). */
  release(): void {
    for (const t of this.tables.values()) t.rows.release();
    this.tables.clear();
    this.arena.release();
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
