/**
 * How a chunk goes to a COPY with backpressure (the load engine writes COPY text, the CDC apply
 * engine binary COPY: binary-copy.ts).
 */
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';

/**
 * Writes a chunk to a COPY sink and waits for room when its buffer is full; a COPY that fails
 * meanwhile never drains, so its failure ends the wait instead.
 */
export async function writeChunk(sink: Writable, chunk: string | Buffer): Promise<void> {
  if (!sink.write(chunk)) await Promise.race([once(sink, 'drain'), finished(sink)]);
}
