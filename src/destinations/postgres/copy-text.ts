/**
 * COPY's text format written as bytes (https://www.postgresql.org/docs/current/sql-copy.html):
 * fields separated by tabs, rows by newlines, NULL as \N, and backslash, tab, newline and
 * carriage return escaped. Values that arrive as UTF-8 bytes (a change stream's tuples) are
 * copied without ever becoming strings. And how a chunk goes to a COPY with backpressure.
 */
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { copyField } from '../../schema/types';

/**
 * Writes a chunk to a COPY sink and waits for room when its buffer is full; a COPY that fails
 * meanwhile never drains, so its failure ends the wait instead.
 */
export async function writeChunk(sink: Writable, chunk: string | Buffer): Promise<void> {
  if (!sink.write(chunk)) await Promise.race([once(sink, 'drain'), finished(sink)]);
}

const BACKSLASH = 0x5c;
const TAB = 0x09;
const NEWLINE = 0x0a;
const RETURN = 0x0d;
export const COPY_TAB = TAB;
export const COPY_NEWLINE = NEWLINE;

export class CopyTextWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(private readonly chunkBytes = 256 * 1024) {
    this.buf = Buffer.allocUnsafe(chunkBytes);
  }

  /** Bytes written and not taken yet. */
  get length(): number {
    return this.pos;
  }

  /** What was written since the last take; the writer goes on in a new buffer (the returned one is the caller's). */
  take(): Buffer {
    const out = this.buf.subarray(0, this.pos);
    this.buf = Buffer.allocUnsafe(this.chunkBytes);
    this.pos = 0;
    return out;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** One byte: a separator (TAB, NEWLINE). */
  byte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
  }

  /** \N, the null field. */
  nullField(): void {
    this.room(2);
    this.buf[this.pos++] = BACKSLASH;
    this.buf[this.pos++] = 0x4e;
  }

  /** Text written as it is: separators, \N, field text already escaped (ASCII). */
  raw(ascii: string): void {
    this.room(ascii.length);
    const out = this.buf;
    let p = this.pos;
    for (let i = 0; i < ascii.length; i++) out[p++] = ascii.charCodeAt(i);
    this.pos = p;
  }

  /** One field's value, escaped; null is \N. */
  text(value: string | null): void {
    if (value === null) return this.nullField();
    const n = value.length;
    this.room(n * 3 + n);
    const out = this.buf;
    let p = this.pos;
    // Short ASCII text byte by byte (a native write per field costs more than the field);
    // anything else through the UTF-8 encoder.
    if (n <= 64) {
      let i = 0;
      for (; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c >= 0x80) break;
        if (c === BACKSLASH || c === TAB || c === NEWLINE || c === RETURN) {
          out[p++] = BACKSLASH;
          out[p++] = c === BACKSLASH ? BACKSLASH : c === TAB ? 0x74 : c === NEWLINE ? 0x6e : 0x72;
        } else {
          out[p++] = c;
        }
      }
      if (i === n) {
        this.pos = p;
        return;
      }
      p = this.pos;
    }
    this.pos = p + out.write(copyField(value), p, 'utf8');
  }

  /** One field's value from its UTF-8 bytes, escaped. */
  bytes(src: Buffer, start: number, length: number): void {
    this.room(length * 2);
    const out = this.buf;
    let p = this.pos;
    for (let i = start, end = start + length; i < end; i++) {
      const c = src[i]!;
      if (c === BACKSLASH || c === TAB || c === NEWLINE || c === RETURN) {
        out[p++] = BACKSLASH;
        out[p++] = c === BACKSLASH ? BACKSLASH : c === TAB ? 0x74 : c === NEWLINE ? 0x6e : 0x72;
      } else {
        out[p++] = c;
      }
    }
    this.pos = p;
  }
}
