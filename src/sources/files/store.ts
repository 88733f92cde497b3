/**
 * Where a files source's bytes live: a local directory or an object-storage prefix, behind one
 * small interface, so listing, the CSV/JSONL reader and the Parquet reader work the same on
 * both. A store lists files with their fingerprints (never reading rows), streams a listed
 * file's stored bytes, and reads byte ranges for formats that need random access (Parquet).
 *
 * Every read is of the LISTED version: a file whose bytes are no longer those the fingerprint
 * names fails with FileChangedError (local: the SHA-256 of the bytes read; S3: the ETag), so
 * the rows loaded are exactly what the load id and _sluice_state say.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { PermanentError } from '../../errors';
import { listEntries, listFiles, type ListedEntry, type ListedFile, type ListProgress } from './list';
import { openContained, realRoots } from './roots';

/** The part of a listed file a read needs: which file, and which version of it. */
export type FileRef = Pick<ListedFile, 'path' | 'fingerprint'> & { size?: number };

/** Random access to one listed file (Parquet reads its footer, then each row group's columns). */
export interface RandomAccessFile {
  size: number;
  /** Bytes [start, end) of the listed version. */
  read(start: number, end: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

export interface FilesStore {
  /** The directory or s3:// URL, for messages. */
  readonly location: string;
  /** Files whose path (relative to the location, "/"-separated) matches the pattern, streamed. */
  list(pattern: string, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedFile>;
  /**
   * The same files in the same stable order, streamed from just after `after` (a path an earlier
   * listing returned), each fingerprinted only when asked: how a listing is resumed from a cursor.
   */
  entries(pattern: string, after: string | undefined, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedEntry>;
  /** The stored bytes (before gunzip) of the listed version, as a stream whose errors are the file's. */
  open(file: FileRef, options: { signal?: AbortSignal }): Promise<Readable>;
  openRandomAccess(file: FileRef, options: { signal?: AbortSignal }): Promise<RandomAccessFile>;
}

/** The file's bytes are no longer those it was listed with: it is being written, or was replaced. */
export class FileChangedError extends PermanentError {
  constructor(path: string, expected: string, actual: string) {
    super(
      `${path} changed while it was being loaded (listed as ${expected}, read as ${actual}); nothing of it was loaded`,
      'write files under a temporary name and rename them into place when complete; the new content is loaded on the next run or pass',
    );
    this.name = 'FileChangedError';
  }
}

/** The absolute path of a listed file, refusing any relative path that leaves the source directory. */
export function resolveInside(dir: string, path: string): string {
  const root = resolve(dir);
  const absolute = resolve(root, path);
  const inside = relative(root, absolute);
  if (inside === '' || inside.startsWith('..') || isAbsolute(inside)) {
    throw new PermanentError(`file path ${JSON.stringify(path)} is not inside source.path ${dir}`);
  }
  return absolute;
}

export class LocalStore implements FilesStore {
  constructor(readonly location: string) {}

  async *list(pattern: string, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedFile> {
    yield* await listFiles(this.location, pattern, onProgress);
  }

  entries(pattern: string, after: string | undefined, onProgress?: (p: ListProgress) => void): AsyncIterable<ListedEntry> {
    return listEntries(this.location, pattern, after, undefined, undefined, onProgress);
  }

  async open(file: FileRef, options: { signal?: AbortSignal }): Promise<Readable> {
    const absPath = resolveInside(this.location, file.path);
    const hash = createHash('sha256');
    // The check runs as the last bytes pass, so a consumer sees a changed file as the stream's error.
    const verify = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        done(null, chunk);
      },
      flush(done) {
        const actual = `sha256:${hash.digest('hex')}`;
        // An "unreadable:" fingerprint never matches: a file that could not be hashed at listing
        // time is listed again rather than loaded under a name that does not describe it.
        done(actual === file.fingerprint ? null : new FileChangedError(file.path, file.fingerprint, actual));
      },
    });
    // Containment (SLUICE_FILES_ROOTS) is checked on the descriptor actually read: see roots.ts.
    const contained = await openContained(file.path, absPath, await realRoots());
    const stream = createReadStream(absPath, { fd: contained, signal: options.signal });
    stream.on('error', (err) => verify.destroy(err));
    // pipe() does not pass a destroy upstream: a reader that stops early (a failed load, a
    // cancelled one) destroys `verify`, and the file must close then, not when GC finds it.
    verify.on('close', () => stream.destroy());
    return stream.pipe(verify);
  }

  async openRandomAccess(file: FileRef, options: { signal?: AbortSignal }): Promise<RandomAccessFile> {
    const absPath = resolveInside(this.location, file.path);
    // Hash first (one sequential read), then read ranges of the same inode; a stat after the
    // reads catches a rewrite in between.
    const hash = createHash('sha256');
    const roots = await realRoots();
    const hashed = await openContained(file.path, absPath, roots);
    for await (const chunk of createReadStream(absPath, { fd: hashed, signal: options.signal }) as AsyncIterable<Buffer>) hash.update(chunk);
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== file.fingerprint) throw new FileChangedError(file.path, file.fingerprint, actual);
    const handle = await openContained(file.path, absPath, roots);
    const before = await handle.stat();
    return {
      size: before.size,
      async read(start, end) {
        const buffer = Buffer.alloc(end - start);
        let at = 0;
        while (at < buffer.length) {
          const { bytesRead } = await handle.read(buffer, at, buffer.length - at, start + at);
          if (bytesRead === 0) throw new FileChangedError(file.path, file.fingerprint, `a file shorter than ${end} bytes`);
          at += bytesRead;
        }
        return buffer;
      },
      async close() {
        await handle.close();
        const after = await stat(absPath).catch(() => undefined);
        if (!after || after.mtimeMs !== before.mtimeMs || after.size !== before.size || after.ino !== before.ino) {
          throw new FileChangedError(file.path, file.fingerprint, 'a file rewritten during the load');
        }
      },
    };
  }
}
