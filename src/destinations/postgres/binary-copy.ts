/**
 * PostgreSQL's binary COPY format, as a stream: counts the tuples passing through and can append
 * one constant field (the load id) to every tuple, so a source's `COPY ... TO STDOUT (FORMAT
 * binary)` goes straight into `COPY target (..., _sluice_load_id) FROM STDIN (FORMAT binary)`
 * without a row ever being decoded.
 *
 * The format (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"): an
 * 11-byte signature, a 32-bit flags field, a 32-bit header-extension length and the extension;
 * then tuples, each a 16-bit field count followed by, per field, a 32-bit length (-1 for null)
 * and that many bytes; then a 16-bit -1 trailer. Integers are big-endian.
 */
import { Transform, type TransformCallback } from 'node:stream';

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
const HEADER_BYTES = SIGNATURE.length + 8;
/** Flags bit 16: every tuple carries an OID field first (WITH OIDS, gone since PostgreSQL 12). */
const HAS_OIDS = 1 << 16;
const EMPTY = Buffer.alloc(0);

/**
 * Copies src[from, to) to dst at `at`. A short run byte by byte: Buffer#copy of part of a buffer
 * makes a Uint8Array view per call (Node's _copyActual), which for the tens of bytes of a
 * change was most of what a stream allocated.
 */
export function copyBytes(src: Buffer, from: number, to: number, dst: Buffer, at: number): void {
  if (to - from > 96) {
    src.copy(dst, at, from, to);
    return;
  }
  for (let i = from; i < to; i++) dst[at++] = src[i]!;
}

/** A field of binary COPY holding `text` as a `text` value: its length, then its UTF-8 bytes. */
export function binaryTextField(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const field = Buffer.allocUnsafe(4 + bytes.length);
  field.writeInt32BE(bytes.length, 0);
  bytes.copy(field, 4);
  return field;
}

/**
 * Passes a binary COPY stream through, counting tuples (`rows`) and, with `append`, adding that
 * field (from binaryTextField) at the end of every tuple. A stream that is not binary COPY, or
 * that ends mid-tuple, fails with an error instead of reaching the destination half-parsed.
 */
export class BinaryCopyTap extends Transform {
  rows = 0;
  private carry: Buffer = EMPTY;
  private headerDone = false;
  private ended = false;
  /** Fields of the current tuple still to read; -1 between tuples. */
  private fieldsLeft = -1;
  /** Bytes of the current field's value still to pass. */
  private bodyLeft = 0;
  private readonly append: Buffer | undefined;
  private readonly onRows: ((rows: number) => void) | undefined;
  private reported = 0;

  constructor(options: { append?: Buffer; onProgress?: (rows: number) => void } = {}) {
    super();
    this.append = options.append;
    this.onRows = options.onProgress;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      const out = this.parse(this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk);
      if (this.onRows && this.rows - this.reported >= 10_000) {
        this.reported = this.rows;
        this.onRows(this.rows);
      }
      done(null, out);
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    if (!this.ended || this.carry.length) done(new Error('the binary COPY stream ended in the middle of a row'));
    else done();
  }

  /** Input offsets (of the buffer being parsed) where a tuple ends, and where a field count starts: where `append` changes the bytes. */
  private readonly tupleEnds: number[] = [];
  private readonly fieldCounts: number[] = [];

  private parse(buf: Buffer): Buffer {
    const append = this.append !== undefined;
    this.tupleEnds.length = 0;
    this.fieldCounts.length = 0;
    let pos = 0;
    if (!this.headerDone) {
      if (buf.length < HEADER_BYTES) return this.keep(buf, 0);
      if (!buf.subarray(0, SIGNATURE.length).equals(SIGNATURE)) throw new Error('not a binary COPY stream (bad signature)');
      if (buf.readUInt32BE(SIGNATURE.length) & HAS_OIDS) throw new Error('binary COPY streams with OIDs are not supported');
      const headerEnd = HEADER_BYTES + buf.readUInt32BE(SIGNATURE.length + 4);
      if (buf.length < headerEnd) return this.keep(buf, 0);
      pos = headerEnd;
      this.headerDone = true;
    }
    while (pos < buf.length || (this.fieldsLeft === 0 && this.bodyLeft === 0)) {
      if (this.bodyLeft > 0) {
        const n = Math.min(this.bodyLeft, buf.length - pos);
        pos += n;
        this.bodyLeft -= n;
        if (this.bodyLeft > 0) break;
        continue;
      }
      if (this.fieldsLeft === 0) {
        // End of a tuple.
        if (append) this.tupleEnds.push(pos);
        this.rows++;
        this.fieldsLeft = -1;
        continue;
      }
      if (this.ended) throw new Error('data after the end of a binary COPY stream');
      if (this.fieldsLeft === -1) {
        if (buf.length - pos < 2) break;
        const count = buf.readInt16BE(pos);
        if (count === -1) {
          this.ended = true;
          pos += 2;
          continue;
        }
        if (count < 0) throw new Error(`bad field count ${count} in a binary COPY stream`);
        if (append) this.fieldCounts.push(pos);
        pos += 2;
        this.fieldsLeft = count;
        continue;
      }
      if (buf.length - pos < 4) break;
      const length = buf.readInt32BE(pos);
      if (length < -1) throw new Error(`bad field length ${length} in a binary COPY stream`);
      pos += 4;
      this.fieldsLeft--;
      if (length > 0) this.bodyLeft = length;
    }
    return this.keep(buf, pos);
  }

  /**
   * Emits what was parsed up to `pos` and keeps the rest (a partial length or count) for the next
   * chunk. With `append`, the output is one buffer per chunk: the input's bytes with the field
   * after every tuple and every field count one higher (not a buffer per tuple: a load moves
   * millions of them, and each would be garbage for the collector).
   */
  private keep(buf: Buffer, pos: number): Buffer {
    this.carry = pos < buf.length ? Buffer.from(buf.subarray(pos)) : EMPTY;
    const ends = this.tupleEnds;
    const counts = this.fieldCounts;
    if (!this.append || (ends.length === 0 && counts.length === 0)) return buf.subarray(0, pos);
    const field = this.append;
    const out = Buffer.allocUnsafe(pos + ends.length * field.length);
    let o = 0;
    let from = 0;
    let c = 0;
    const copyTo = (end: number) => {
      buf.copy(out, o, from, end);
      // Field counts in [from, end) sit at the same distance from `from` in the output.
      for (; c < counts.length && counts[c]! < end; c++) out.writeInt16BE(buf.readInt16BE(counts[c]!) + 1, o + counts[c]! - from);
      o += end - from;
      from = end;
    };
    for (const end of ends) {
      copyTo(end);
      o += field.copy(out, o);
    }
    copyTo(pos);
    return out;
  }
}

/** Bytes a writer's user takes a chunk at: below the chunk's buffer, so rows up to the difference never grow it. */
export const CHUNK_TAKE_BYTES = 256 * 1024;
/**
 * Buffers of one size kept for reuse, at most `max` of them: a stream that allocated one per
 * batch or per chunk would allocate as much memory as it moves, and have the garbage collector
 * run full collections for it.
 */
export class BufferPool {
  private readonly spare: Buffer[] = [];
  constructor(
    readonly size: number,
    readonly max: number,
  ) {}

  take(): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafe(this.size);
  }

  /** A buffer nothing reads or writes any more (one of another size is let go). */
  give(buffer: Buffer): void {
    if (buffer.length === this.size && this.spare.length < this.max) this.spare.push(buffer);
  }
}

/** Chunk buffers of completed COPYs, for the next CopyBinaryWriter (see release()). */
const chunks = new BufferPool(512 * 1024, 32);
const EMPTY_CHUNK = Buffer.alloc(0);

/**
 * Writes binary COPY (the format above) into chunks, field by field: what the CDC apply engine
 * stages. A field's bytes go in as they are, behind their length, so a value copied from a
 * pgoutput tuple (whose text values are a length and bytes too) needs no escaping, and the
 * server reads lengths instead of scanning for delimiters.
 */
export class CopyBinaryWriter {
  private buf: Buffer;
  private pos = 0;
  /** The buffers taken so far (whole), for release(). */
  private readonly taken: Buffer[] = [];

  /** `chunkBytes`: each chunk's buffer; a writer takes chunks before they fill it (see CHUNK_TAKE_BYTES). */
  constructor(private readonly chunkBytes = chunks.size) {
    this.buf = this.fresh();
    this.room(HEADER_BYTES);
    SIGNATURE.copy(this.buf, 0);
    this.buf.writeInt32BE(0, SIGNATURE.length);
    this.buf.writeInt32BE(0, SIGNATURE.length + 4);
    this.pos = HEADER_BYTES;
  }

  /** Bytes written and not taken yet. */
  get length(): number {
    return this.pos;
  }

  /** What was written since the last take; the writer goes on in a new buffer (the returned one is the caller's). */
  take(): Buffer {
    const out = this.buf.subarray(0, this.pos);
    // Only as many as the pool keeps: a big COPY's other chunks are the garbage collector's once written.
    if (this.taken.length < chunks.max) this.taken.push(this.buf);
    this.buf = this.fresh();
    this.pos = 0;
    return out;
  }

  /**
   * Every chunk taken has been written out (the COPY they went to is complete): their buffers
   * serve the next writers. A stager that allocated a buffer per chunk had a stream allocate
   * as much memory as it staged, and the garbage collector run full collections for it.
   */
  release(): void {
    // The buffer being written to (nothing in it since the last take) goes back as well.
    if (this.pos === 0) this.taken.push(this.buf);
    for (const b of this.taken) chunks.give(b);
    this.taken.length = 0;
    // Whatever is written after this goes to a buffer of its own.
    this.buf = EMPTY_CHUNK;
    this.pos = 0;
  }

  private fresh(): Buffer {
    return this.chunkBytes === chunks.size ? chunks.take() : Buffer.allocUnsafe(this.chunkBytes);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  private int32(v: number): void {
    const out = this.buf;
    const p = this.pos;
    out[p] = v >>> 24;
    out[p + 1] = (v >>> 16) & 0xff;
    out[p + 2] = (v >>> 8) & 0xff;
    out[p + 3] = v & 0xff;
    this.pos = p + 4;
  }

  /** A tuple of `fields` fields starts. */
  row(fields: number): void {
    this.room(2);
    this.buf[this.pos++] = fields >>> 8;
    this.buf[this.pos++] = fields & 0xff;
  }

  nullField(): void {
    this.room(4);
    this.int32(-1);
  }

  /** `count` null fields. */
  nulls(count: number): void {
    for (let i = 0; i < count; i++) this.nullField();
  }

  /** A field of ASCII text (an op code, an ISO timestamp). */
  ascii(text: string): void {
    const n = text.length;
    this.room(4 + n);
    this.int32(n);
    const out = this.buf;
    let p = this.pos;
    for (let i = 0; i < n; i++) out[p++] = text.charCodeAt(i);
    this.pos = p;
  }

  /** A field holding `value` as text (UTF-8); null is the null field. */
  text(value: string | null): void {
    if (value === null) return this.nullField();
    const n = Buffer.byteLength(value, 'utf8');
    this.room(4 + n);
    this.int32(n);
    this.pos += this.buf.write(value, this.pos, 'utf8');
  }

  /** A field of `length` bytes of `src` from `start`. */
  bytes(src: Buffer, start: number, length: number): void {
    this.room(4 + length);
    this.int32(length);
    copyBytes(src, start, start + length, this.buf, this.pos);
    this.pos += length;
  }

  /** The end of the data. */
  trailer(): void {
    this.room(2);
    this.buf[this.pos++] = 0xff;
    this.buf[this.pos++] = 0xff;
  }
}
