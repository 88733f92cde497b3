/** pgoutput messages built by hand, byte by byte, for the decoder and the batch tests. */
import { decodeLogicalMessage, UNCHANGED, type Tuple } from '../src/sources/postgres/cdc/pgoutput';

export class Wire {
  private parts: Buffer[] = [];
  u8(v: number) { const b = Buffer.alloc(1); b.writeUInt8(v); this.parts.push(b); return this; }
  char(c: string) { return this.u8(c.charCodeAt(0)); }
  i16(v: number) { const b = Buffer.alloc(2); b.writeInt16BE(v); this.parts.push(b); return this; }
  i32(v: number) { const b = Buffer.alloc(4); b.writeInt32BE(v); this.parts.push(b); return this; }
  u64(v: bigint) { const b = Buffer.alloc(8); b.writeBigUInt64BE(v); this.parts.push(b); return this; }
  str(s: string) { this.parts.push(Buffer.from(s + '\0')); return this; }
  text(s: string) { const b = Buffer.from(s); return this.char('t').i32(b.length).bytes(b); }
  bytes(b: Buffer) { this.parts.push(b); return this; }
  done() { return Buffer.concat(this.parts); }
}

/** A TupleData of these values as pgoutput sends it, decoded by the real decoder (an insert's). */
export function tupleOf(values: (string | null | typeof UNCHANGED)[]): Tuple {
  const w = new Wire().char('I').i32(1).char('N').i16(values.length);
  for (const v of values) if (v === null) w.char('n'); else if (v === UNCHANGED) w.char('u'); else w.text(v);
  const m = decodeLogicalMessage(w.done());
  if (m.tag !== 'insert') throw new Error('not an insert');
  return m.values;
}

