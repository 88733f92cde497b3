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
  private carry: Buffer = Buffer.alloc(0);
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

  private parse(buf: Buffer): Buffer {
    const out: Buffer[] = [];
    let pos = 0;
    if (!this.headerDone) {
      if (buf.length < HEADER_BYTES) return this.keep(buf, 0, out);
      if (!buf.subarray(0, SIGNATURE.length).equals(SIGNATURE)) throw new Error('not a binary COPY stream (bad signature)');
      if (buf.readUInt32BE(SIGNATURE.length) & HAS_OIDS) throw new Error('binary COPY streams with OIDs are not supported');
      const headerEnd = HEADER_BYTES + buf.readUInt32BE(SIGNATURE.length + 4);
      if (buf.length < headerEnd) return this.keep(buf, 0, out);
      pos = headerEnd;
      this.headerDone = true;
    }
    let from = 0;
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
        if (this.append) {
          out.push(buf.subarray(from, pos), this.append);
          from = pos;
        }
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
        if (this.append) {
          const fields = Buffer.allocUnsafe(2);
          fields.writeInt16BE(count + 1, 0);
          out.push(buf.subarray(from, pos), fields);
          from = pos + 2;
        }
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
    return this.keep(buf, pos, out, from);
  }

  /** Emits what was parsed up to `pos` and keeps the rest (a partial length or count) for the next chunk. */
  private keep(buf: Buffer, pos: number, out: Buffer[], from = 0): Buffer {
    out.push(buf.subarray(from, pos));
    this.carry = pos < buf.length ? Buffer.from(buf.subarray(pos)) : Buffer.alloc(0);
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }
}
