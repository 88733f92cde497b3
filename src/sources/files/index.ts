/**
 * The `files` source: a directory, a glob and a format (CONTRACT.md). Files are not read through
 * `extract()` like the other kinds: filesWorkflow lists them, then loads each in its own
 * activity, so `listFiles` and `extractFile` are the two entry points.
 */
import { createHash } from 'node:crypto';
import { isAbsolute, relative, resolve } from 'node:path';
import { filesRoots } from '../../config';
import { PermanentError } from '../../errors';
import type { FilesSource } from '../../inputs';
import type { Extracted, Row } from '../types';
import { readFileRows } from './read';
import { openContained, realRoots } from './roots';

export { listFiles, type ListedFile, type ListProgress } from './list';
export { OutsideRootsError } from './roots';
export { isGzipped, readFileRows, type CsvOptions, type FileFormat, type ReadOptions } from './read';

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
export function resolveListedPath(source: FilesSource, path: string): string {
  const root = resolve(source.path);
  const absolute = resolve(root, path);
  const inside = relative(root, absolute);
  if (inside === '' || inside.startsWith('..') || isAbsolute(inside)) {
    throw new PermanentError(`file path ${JSON.stringify(path)} is not inside source.path ${source.path}`);
  }
  return absolute;
}

/**
 * One file's rows for the loader. The bytes are hashed as they stream past and the read fails
 * at its end if they differ from the listed fingerprint, so the rows loaded are exactly the
 * content the fingerprint (and so the load id and _sluice_state) names. Any failure ends the
 * rows with an error, which fails the load before it commits.
 */
export function extractFile(
  source: FilesSource,
  file: { path: string; fingerprint: string },
  options: { signal?: AbortSignal; roots?: readonly string[] } = {},
): Extracted {
  const absPath = resolveListedPath(source, file.path);
  const hash = createHash('sha256');
  async function* rows(): AsyncGenerator<Row> {
    // Checked again on opening, not only at listing: the file may have become a symlink since.
    const handle = await openContained(file.path, absPath, await realRoots(options.roots ?? filesRoots()));
    yield* readFileRows(absPath, source.format, {
      label: file.path,
      csv: source.csv,
      handle,
      signal: options.signal,
      onBytes: (chunk) => hash.update(chunk),
    });
    const actual = `sha256:${hash.digest('hex')}`;
    // An "unreadable:" fingerprint never matches: a file that could not be hashed at listing
    // time is listed again rather than loaded under a name that does not describe it.
    if (actual !== file.fingerprint) throw new FileChangedError(file.path, file.fingerprint, actual);
  }
  // CSV values are all text: "42" should become bigint, not text. JSON keeps its own types.
  return { kind: 'rows', rows: rows(), textValues: source.format === 'csv' };
}
