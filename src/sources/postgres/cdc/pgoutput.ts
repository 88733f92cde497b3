/**
 * The replication protocol's messages and pgoutput's logical messages (protocol version 1),
 * decoded from their wire form. Pure: buffers in, plain objects out.
 *
 * Written here rather than taken from pg-logical-replication: that package turns every value
 * into a JavaScript value with pg's type parsers (a timestamp becomes a Date and loses its
 * microseconds), reports an unchanged TOAST value as `undefined` indistinguishable from a
 * missing column, and its keepalive timer acknowledges the last LSN received. sluice needs the
 * server's own text form of each value (cast back to the column type in the destination) and
 * an explicit "unchanged" marker.
 *
 * https://www.postgresql.org/docs/current/protocol-replication.html
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 */

/** A column value: its text form, null, or UNCHANGED (a TOASTed value the update did not touch). */
export const UNCHANGED = Symbol('sluice.cdc.unchanged');
export type Value = string | null | typeof UNCHANGED;

export interface RelationColumn {
  name: string;
  /** Part of the replica identity (the key pgoutput sends with updates and deletes). */
  key: boolean;
  typeOid: number;
  typeMod: number;
}

export type LogicalMessage =
  | { tag: 'begin'; finalLsn: bigint; commitTime: Date; xid: number }
  | { tag: 'commit'; commitLsn: bigint; endLsn: bigint; commitTime: Date }
  | { tag: 'relation'; relationId: number; schema: string; name: string; replicaIdentity: string; columns: RelationColumn[] }
  | { tag: 'insert'; relationId: number; values: Tuple }
  | { tag: 'update'; relationId: number; old: Tuple | undefined; values: Tuple }
  | { tag: 'delete'; relationId: number; old: Tuple }
  | { tag: 'truncate'; relationIds: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: 'other'; code: string };

export type ReplicationMessage =
  | { readonly tag: 'xlog'; readonly walStart: bigint; readonly walEnd: bigint; readonly message: LogicalMessage }
  | { tag: 'keepalive'; walEnd: bigint; replyRequested: boolean };

/** PostgreSQL's epoch (2000-01-01) in Unix milliseconds. */
const PG_EPOCH_MS = 946_684_800_000;

export function pgTimeToDate(micros: bigint): Date {
  return new Date(PG_EPOCH_MS + Number(micros / 1000n));
}

class Reader {
  constructor(
    private readonly buf: Buffer,
    private offset = 0,
  ) {}
  u8(): number {
    return this.buf.readUInt8(this.offset++);
  }
  i16(): number {
    const v = this.buf.readInt16BE(this.offset);
    this.offset += 2;
    return v;
  }
  i32(): number {
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  u32(): number {
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  u64(): bigint {
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  i64(): bigint {
    const v = this.buf.readBigInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.offset);
    if (end < 0) throw new Error('pgoutput: unterminated string');
    const s = this.buf.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return s;
  }
  get buffer(): Buffer {
    return this.buf;
  }
  get position(): number {
    return this.offset;
  }
  skip(n: number): void {
    if (n < 0 || this.offset + n > this.buf.length) throw new RangeError('pgoutput: value runs past the end of its message');
    this.offset += n;
  }
}

/** One CopyData payload of a START_REPLICATION stream. */
export function decodeReplicationMessage(payload: Buffer): ReplicationMessage | undefined {
  const kind = payload[0];
  if (kind === 0x77 /* w */) {
    // The header's positions and send time (1 + 8 + 8 + 8 bytes) are not needed per change: the
    // transaction's begin and commit carry the LSNs that matter. Read only when asked.
    return new XLogData(payload);
  }
  if (kind === 0x6b /* k */) {
    const r = new Reader(payload);
    r.u8();
    const walEnd = r.u64();
    r.i64(); // send time
    return { tag: 'keepalive', walEnd, replyRequested: r.u8() === 1 };
  }
  return undefined;
}

/** An XLogData message; its logical message is decoded once, on first use. */
class XLogData {
  readonly tag = 'xlog';
  private decoded: LogicalMessage | undefined;
  constructor(private readonly payload: Buffer) {}
  get walStart(): bigint {
    return this.payload.readBigUInt64BE(1);
  }
  get walEnd(): bigint {
    return this.payload.readBigUInt64BE(9);
  }
  get message(): LogicalMessage {
    return (this.decoded ??= decodeLogicalMessage(this.payload, 25));
  }
}

const KIND_NULL = 0x6e; // n
const KIND_UNCHANGED = 0x75; // u
const KIND_TEXT = 0x74; // t

/** What `Tuple.spans` writes for a value without bytes. */
export const SPAN_NULL = -1;
export const SPAN_UNCHANGED = -2;

/**
 * A TupleData as it arrived, in its frame: nothing is decoded until asked. A stream decodes the
 * key columns of every change and copies the other values' bytes straight into COPY text, so
 * a change's values never become strings.
 */
export class Tuple {
  constructor(
    /** The frame holding the tuple. */
    public buf: Buffer,
    /** Offset of the first value's kind byte. */
    public start: number,
    /** Number of values. */
    public count: number,
    /** Offset just past the last value. */
    public end: number,
  ) {}

  /**
   * The same tuple in a buffer of its own: a frame is often a slice of a whole socket read,
   * which a change kept until its batch commits would otherwise hold in memory.
   */
  detach(): Tuple {
    return new Tuple(Buffer.from(this.buf.subarray(this.start, this.end)), 0, this.count, this.end - this.start);
  }

  /**
   * Where each value's bytes are: out[2i] is the offset in `buf` (or SPAN_NULL, SPAN_UNCHANGED),
   * out[2i + 1] the length. One pass, no allocation; `out` holds at least 2 * count numbers.
   */
  spans(out: Int32Array): void {
    tupleSpans(this.buf, this.start, this.count, out);
  }

  /** The value at position i (text, null, or UNCHANGED), decoded. */
  value(i: number): Value {
    const buf = this.buf;
    let off = this.start;
    for (let j = 0; ; j++) {
      const kind = buf[off++];
      if (kind === KIND_TEXT) {
        const len = buf.readInt32BE(off);
        off += 4;
        if (j === i) return buf.toString('utf8', off, off + len);
        off += len;
      } else if (kind === KIND_NULL || kind === KIND_UNCHANGED) {
        if (j === i) return kind === KIND_NULL ? null : UNCHANGED;
      } else {
        throw new Error(`pgoutput: unexpected tuple value kind '${String.fromCharCode(kind ?? 0)}'`);
      }
      if (j + 1 >= this.count) throw new RangeError(`pgoutput: no value ${i} in a tuple of ${this.count}`);
    }
  }

  /** Every value, decoded (one pass). */
  values(): Value[] {
    const spans = new Int32Array(2 * this.count);
    this.spans(spans);
    return Array.from({ length: this.count }, (_, i) => {
      const offset = spans[2 * i]!;
      return offset >= 0 ? this.buf.toString('utf8', offset, offset + spans[2 * i + 1]!) : offset === SPAN_NULL ? null : UNCHANGED;
    });
  }
}

/**
 * Where each of `count` values starting at `start` in `buf` is (see Tuple.spans); returns
 * whether every value was there (none was an unchanged TOAST value).
 */
export function tupleSpans(buf: Buffer, start: number, count: number, out: Int32Array): boolean {
  let off = start;
  let all = true;
  for (let i = 0; i < count; i++) {
    const kind = buf[off++];
    if (kind === KIND_TEXT) {
      const len = buf.readInt32BE(off);
      off += 4;
      out[2 * i] = off;
      out[2 * i + 1] = len;
      off += len;
    } else if (kind === KIND_NULL) {
      out[2 * i] = SPAN_NULL;
      out[2 * i + 1] = 0;
    } else if (kind === KIND_UNCHANGED) {
      out[2 * i] = SPAN_UNCHANGED;
      out[2 * i + 1] = 0;
      all = false;
    } else {
      // 'b' (binary) only comes with the binary option, which sluice never asks for.
      throw new Error(`pgoutput: unexpected tuple value kind '${String.fromCharCode(kind ?? 0)}'`);
    }
  }
  return all;
}

/** Reads past one TupleData (validating its kinds and lengths, see tupleAt) and returns it undecoded. */
function tuple(r: Reader): Tuple {
  const t = new Tuple(r.buffer, 0, 0, 0);
  r.skip(tupleAt(r.buffer, r.position, r.buffer.length, t) - r.position);
  return t;
}

export const CHANGE_INSERT = 0x49; // I
export const CHANGE_UPDATE = 0x55; // U
export const CHANGE_DELETE = 0x44; // D

/**
 * An insert, update or delete read in place by readChange: its tuples are views of the frame,
 * reused for every change (copy what must outlive the next message, see Tuple.detach).
 */
export class ChangeRef {
  tag = 0;
  relationId = 0;
  /** The new values (insert, update). */
  readonly values = new Tuple(Buffer.alloc(0), 0, 0, 0);
  /** The old key or old row (delete; update that changed the key, or with REPLICA IDENTITY FULL). */
  readonly old = new Tuple(Buffer.alloc(0), 0, 0, 0);
  hasOld = false;
}

/** Reads past one TupleData at `off` into `into` (validating kinds and lengths up to `end`); returns the offset after it. */
function tupleAt(buf: Buffer, off: number, end: number, into: Tuple): number {
  if (off + 2 > end) throw new RangeError('pgoutput: tuple runs past the end of its message');
  const n = buf.readInt16BE(off);
  off += 2;
  const start = off;
  for (let i = 0; i < n; i++) {
    if (off >= end) throw new RangeError('pgoutput: tuple runs past the end of its message');
    const kind = buf[off++];
    if (kind === KIND_TEXT) {
      if (off + 4 > end) throw new RangeError('pgoutput: value runs past the end of its message');
      const len = buf.readInt32BE(off);
      off += 4;
      if (len < 0 || off + len > end) throw new RangeError('pgoutput: value runs past the end of its message');
      off += len;
    } else if (kind !== KIND_NULL && kind !== KIND_UNCHANGED) {
      throw new Error(`pgoutput: unexpected tuple value kind '${String.fromCharCode(kind ?? 0)}'`);
    }
  }
  into.buf = buf;
  into.start = start;
  into.count = n;
  into.end = off;
  return off;
}

/**
 * Reads the insert, update or delete at `offset` (its message ending at `end`) into `ref`
 * without allocating; false for any other message (decodeLogicalMessage reads those).
 */
export function readChange(buf: Buffer, offset: number, end: number, ref: ChangeRef): boolean {
  const code = buf[offset];
  if (code !== CHANGE_INSERT && code !== CHANGE_UPDATE && code !== CHANGE_DELETE) return false;
  if (offset + 6 > end) throw new RangeError('pgoutput: change runs past the end of its message');
  ref.tag = code;
  ref.relationId = buf.readUInt32BE(offset + 1);
  let off = offset + 5;
  let part = buf[off++];
  ref.hasOld = false;
  if (code !== CHANGE_INSERT && (part === 0x4b /* K */ || part === 0x4f) /* O */) {
    off = tupleAt(buf, off, end, ref.old);
    ref.hasOld = true;
    if (code === CHANGE_DELETE) return true;
    part = buf[off++];
  }
  if (code === CHANGE_DELETE) throw new Error(`pgoutput: unexpected delete part '${String.fromCharCode(part ?? 0)}'`);
  if (part !== 0x4e /* N */) throw new Error(`pgoutput: unexpected ${code === CHANGE_UPDATE ? 'update' : 'insert'} part '${String.fromCharCode(part ?? 0)}'`);
  tupleAt(buf, off, end, ref.values);
  return true;
}

/** The logical message in `buf` from `offset` on (an XLogData's starts after its 25-byte header). */
export function decodeLogicalMessage(buf: Buffer, offset = 0): LogicalMessage {
  const r = new Reader(buf, offset);
  const code = String.fromCharCode(r.u8());
  switch (code) {
    case 'B': {
      const finalLsn = r.u64();
      const commitTime = pgTimeToDate(r.i64());
      return { tag: 'begin', finalLsn, commitTime, xid: r.u32() };
    }
    case 'C': {
      r.u8(); // flags
      const commitLsn = r.u64();
      const endLsn = r.u64();
      return { tag: 'commit', commitLsn, endLsn, commitTime: pgTimeToDate(r.i64()) };
    }
    case 'R': {
      const relationId = r.u32();
      const schema = r.cstring();
      const name = r.cstring();
      const replicaIdentity = String.fromCharCode(r.u8());
      const n = r.i16();
      const columns: RelationColumn[] = [];
      for (let i = 0; i < n; i++) {
        const flags = r.u8();
        columns.push({ key: (flags & 1) === 1, name: r.cstring(), typeOid: r.u32(), typeMod: r.i32() });
      }
      return { tag: 'relation', relationId, schema, name, replicaIdentity, columns };
    }
    case 'I': {
      const relationId = r.u32();
      r.u8(); // 'N'
      return { tag: 'insert', relationId, values: tuple(r) };
    }
    case 'U': {
      const relationId = r.u32();
      let sub = String.fromCharCode(r.u8());
      let old: Tuple | undefined;
      if (sub === 'K' || sub === 'O') {
        old = tuple(r);
        sub = String.fromCharCode(r.u8());
      }
      if (sub !== 'N') throw new Error(`pgoutput: unexpected update part '${sub}'`);
      return { tag: 'update', relationId, old, values: tuple(r) };
    }
    case 'D': {
      const relationId = r.u32();
      r.u8(); // 'K' or 'O'
      return { tag: 'delete', relationId, old: tuple(r) };
    }
    case 'T': {
      const n = r.u32();
      const flags = r.u8();
      const relationIds: number[] = [];
      for (let i = 0; i < n; i++) relationIds.push(r.u32());
      return { tag: 'truncate', relationIds, cascade: (flags & 1) === 1, restartIdentity: (flags & 2) === 2 };
    }
    default:
      // 'Y' (type), 'O' (origin), 'M' (message): nothing to apply.
      return { tag: 'other', code };
  }
}

/** A Standby Status Update: everything up to `flushed` is durable on our side. */
export function standbyStatus(flushed: bigint, replyRequested: boolean, now: number = Date.now()): Buffer {
  const buf = Buffer.alloc(34);
  buf.write('r', 0);
  buf.writeBigUInt64BE(flushed, 1); // written
  buf.writeBigUInt64BE(flushed, 9); // flushed
  buf.writeBigUInt64BE(flushed, 17); // applied
  buf.writeBigInt64BE(BigInt(now - PG_EPOCH_MS) * 1000n, 25);
  buf.writeUInt8(replyRequested ? 1 : 0, 33);
  return buf;
}

/** "16/B374D848" <-> 0x16B374D848. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (!m) throw new Error(`"${text}" is not an LSN like 16/B374D848`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}
