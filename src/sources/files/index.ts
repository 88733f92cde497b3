/**
 * The `files` source: a directory or an object-storage prefix, a glob and a format
 * (CONTRACT.md). Files are not read through `extract()` like the other kinds: filesWorkflow
 * lists them, then loads each in its own activity, so `filesStoreFor(source).list()` and
 * `extractFile` are the two entry points.
 */
import type { FilesSource } from '../../inputs';
import type { Extracted, Row, RowBatch } from '../types';
import { openParquet } from './parquet';
import { readCsvBatches, readRows, rowsOfBatches } from './read';
import { LocalStore, resolveInside, type FileRef, type FilesStore } from './store';

export { listFiles, type ListedFile, type ListProgress } from './list';
export { OutsideRootsError } from './roots';
export { isGzipped, readFileRows, readRows, type CsvOptions, type FileFormat, type ReadOptions } from './read';
export { FileChangedError, type FileRef, type FilesStore, type RandomAccessFile } from './store';

/** The store a files source reads: S3 for `url`, the local directory for `path`. */
export async function filesStoreFor(source: FilesSource): Promise<FilesStore> {
  if (source.url !== undefined) {
    // Loaded on first use: workers that never read object storage never load the AWS SDK. A
    // require, not import(): `npm run worker` registers tsx's CommonJS hook only (package.json).
    const { S3Store } = require('./s3') as typeof import('./s3');
    return new S3Store(source.url, source.connection);
  }
  return new LocalStore(source.path!);
}

/** The absolute path of a listed file, refusing any relative path that leaves the source directory. */
export function resolveListedPath(source: FilesSource, path: string): string {
  return resolveInside(source.path!, path);
}

/**
 * One file's rows for the loader, read from its store as the listed version (a file whose
 * bytes changed since the listing fails with FileChangedError). Parquet declares its column
 * types; CSV and JSON Lines are inferred. Any failure ends the rows with an error, which fails
 * the load before it commits.
 */
export async function extractFile(source: FilesSource, file: FileRef, options: { signal?: AbortSignal } = {}): Promise<Extracted> {
  // A path that leaves the directory is refused now, not when the loader starts reading.
  if (source.path !== undefined) resolveListedPath(source, file.path);
  const store = await filesStoreFor(source);
  if (source.format === 'parquet') {
    const parquet = await openParquet(await store.openRandomAccess(file, options), file.path);
    return { kind: 'rows', rows: parquet.rows, batches: parquet.batches, columnTypes: parquet.columnTypes };
  }
  const format = source.format;
  const readOptions = { label: file.path, csv: source.csv, signal: options.signal };
  if (format === 'csv') {
    async function* batches(): AsyncGenerator<RowBatch> {
      yield* readCsvBatches(await store.open(file, options), file.path, readOptions);
    }
    // CSV values are all text: "42" should become bigint, not text.
    return { kind: 'rows', rows: rowsOfBatches(batches()), batches, textValues: true };
  }
  async function* rows(): AsyncGenerator<Row> {
    yield* readRows(await store.open(file, options), file.path, format, readOptions);
  }
  // JSON keeps its own types.
  return { kind: 'rows', rows: rows() };
}
