/**
 * Which files a `files` source holds, and what each one contains, without reading any rows.
 *
 * A file's fingerprint is the SHA-256 of its bytes as stored (before gunzip): "sha256:<hex>".
 * Size and modification time alone would miss a rewrite that keeps both (an editor that saves
 * within the same second, `cp -p`, a sync tool that restores mtimes), and a file whose content
 * changed under the same name must be loaded again. Hashing costs one sequential read per file;
 * a process-local cache keyed by (device, inode, size, mtime, ctime) avoids re-reading files
 * that have not been touched since the last listing on this worker (ctime cannot be set from
 * user space, so a rewrite always invalidates the entry, as in git's index).
 */
import { createHash } from 'node:crypto';
import type { Dirent, Stats } from 'node:fs';
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import picomatch from 'picomatch';
import { filesRoots } from '../../config';
import { errorMessage, PermanentError } from '../../errors';
import { containedRealPath, openContained, realRoots } from './roots';

export interface ListedFile {
  /** Relative to the source directory, with "/" separators. */
  path: string;
  size: number;
  mtimeMs: number;
  /** "sha256:<hex>" of the stored bytes; "unreadable:<size>:<mtime>" when they could not be read (see `error`). */
  fingerprint: string;
  /** Why the file could not be hashed (permission denied, ...): loading it will fail, and only it. */
  error?: string;
  /** Local files planned in batches: the ListedEntry statKey the fingerprint was taken with, kept in _sluice_state. */
  statKey?: string;
}

export interface ListProgress {
  files: number;
  bytesHashed: number;
}

/**
 * A matched file as the listing walks past it, before any hashing: the planner (plan.ts) asks
 * for the fingerprint only when stat data cannot show that the file is the one already loaded.
 */
export interface ListedEntry {
  path: string;
  size: number;
  mtimeMs: number;
  /**
   * Local files: device, inode, size, mtime and ctime. The same key as when the file was loaded
   * means the same bytes (ctime cannot be set from user space, so any rewrite or rename into
   * place changes it, as in git's index); another key only means the file must be hashed.
   */
  statKey?: string;
  /** The file with its fingerprint: object storage knows it from the listing, a local file is hashed. */
  fingerprinted(): Promise<ListedFile>;
}

const UNLIMITED_DEPTH = Number.POSITIVE_INFINITY;

/**
 * Files under `dir` whose relative path matches `pattern` (picomatch syntax: `*.csv` matches
 * only the top level, `**\/*.csv` any depth; dotfiles never match), sorted by path in code-unit
 * order so every listing of the same directory is in the same order.
 */
export async function listFiles(
  dir: string,
  pattern: string,
  onProgress?: (p: ListProgress) => void,
  /** The directories that may be read (SLUICE_FILES_ROOTS by default; see roots.ts). */
  roots: readonly string[] = filesRoots(),
): Promise<ListedFile[]> {
  const listed: ListedFile[] = [];
  const progress: ListProgress = { files: 0, bytesHashed: 0 };
  for await (const entry of listEntries(dir, pattern, undefined, roots, progress, onProgress)) {
    listed.push(await entry.fingerprinted());
    progress.files++;
    onProgress?.(progress);
  }
  return listed;
}

/**
 * The files of `listFiles`, in the same order, streamed: only those whose path sorts after
 * `after`, and without hashing any until asked. Directories are walked in order (a directory
 * sorts as its name plus "/", which is where its paths fall among its siblings'), and one that
 * sorts wholly before `after` is not read at all, so resuming a listing from a cursor costs the
 * directories on the way to it, not everything before it.
 */
export async function* listEntries(
  dir: string,
  pattern: string,
  after: string | undefined,
  roots: readonly string[] = filesRoots(),
  progress: ListProgress = { files: 0, bytesHashed: 0 },
  onProgress?: (p: ListProgress) => void,
): AsyncGenerator<ListedEntry> {
  const isMatch = picomatch(pattern, { dot: false });
  // `*` never crosses a "/", so only a pattern with `**` needs to descend without limit.
  const maxDepth = pattern.includes('**') ? UNLIMITED_DEPTH : pattern.split('/').length - 1;
  let rootStats: Stats;
  try {
    rootStats = await stat(dir);
  } catch (err) {
    throw new PermanentError(
      `cannot read source directory ${dir}: ${errorMessage(err)}`,
      'check source.path: it must be a directory that every worker on the task queue can read',
    );
  }
  if (!rootStats.isDirectory()) {
    throw new PermanentError(`source.path ${dir} is not a directory`, 'point source.path at a directory and select files with source.pattern');
  }
  // Walk the real directory: `..` and symlinks in source.path resolve before the roots judge it.
  const allowed = await realRoots(roots);
  const requested = dir;
  dir = await containedRealPath(`source.path ${requested}`, requested, allowed);

  const entryOf = (path: string, stats: Stats, refused?: string): ListedEntry => ({
    path,
    size: stats.size,
    mtimeMs: stats.mtimeMs,
    ...(refused === undefined ? { statKey: statKey(stats) } : {}),
    async fingerprinted() {
      const base = { path, size: stats.size, mtimeMs: stats.mtimeMs };
      try {
        if (refused !== undefined) throw new Error(refused);
        return { ...base, fingerprint: await fingerprintOf(path, join(dir, path), stats, allowed, progress, onProgress) };
      } catch (err) {
        return { ...base, fingerprint: `unreadable:${stats.size}:${stats.mtimeMs}`, error: errorMessage(err) };
      }
    },
  });

  async function* walk(relativeDir: string, depth: number): AsyncGenerator<ListedEntry> {
    let entries: Dirent[];
    try {
      entries = await readdir(join(dir, relativeDir), { withFileTypes: true });
    } catch (err) {
      // The root was readable; a subdirectory that is not only hides its own files.
      if (relativeDir === '') throw new PermanentError(`cannot list ${dir}: ${errorMessage(err)}`, 'check the permissions of source.path');
      return;
    }
    const ordered = entries
      .filter((entry) => !entry.name.startsWith('.'))
      .map((entry) => ({ entry, key: entry.isDirectory() ? `${entry.name}/` : entry.name }))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    for (const { entry } of ordered) {
      const path = relativeDir === '' ? entry.name : `${relativeDir}/${entry.name}`;
      let isFile = entry.isFile();
      let isDir = entry.isDirectory();
      if (isDir) {
        // Every path below sorts between `path/` and `path0` ("0" follows "/"): skip the directory if `after` is past it.
        if (depth < maxDepth && (after === undefined || after < `${path}0`)) yield* walk(path, depth + 1);
        continue;
      }
      if (after !== undefined && path <= after) continue;
      if (entry.isSymbolicLink()) {
        // Follow links to files that stay inside a root; links to directories are not descended
        // (they can form cycles). A link out of the roots is listed as refused: loading it fails
        // that file, with the message naming the roots.
        const target = await stat(join(dir, path)).catch(() => undefined);
        isFile = target?.isFile() ?? false;
        isDir = false;
        if (isFile && isMatch(path)) {
          try {
            await containedRealPath(path, join(dir, path), allowed);
          } catch (err) {
            const link = await lstat(join(dir, path)).catch(() => undefined);
            if (link) yield entryOf(path, link, errorMessage(err));
            continue;
          }
        }
      }
      if (isFile && isMatch(path)) {
        const stats = await stat(join(dir, path)).catch(() => undefined);
        if (stats) yield entryOf(path, stats);
      }
    }
  }
  yield* walk('', 0);
}

interface CachedFingerprint {
  key: string;
  fingerprint: string;
}

const MAX_CACHED = 100_000;
const fingerprintCache = new Map<string, CachedFingerprint>();

export function statKey(stats: Stats): string {
  return `${stats.dev}:${stats.ino}:${stats.size}:${stats.mtimeMs}:${stats.ctimeMs}`;
}

async function fingerprintOf(
  path: string,
  absPath: string,
  stats: Stats,
  roots: readonly string[],
  progress: ListProgress,
  onProgress?: (p: ListProgress) => void,
): Promise<string> {
  const key = statKey(stats);
  const cached = fingerprintCache.get(absPath);
  if (cached?.key === key) return cached.fingerprint;
  const hash = createHash('sha256');
  let sinceReport = 0;
  const handle = await openContained(path, absPath, roots);
  for await (const chunk of handle.createReadStream() as AsyncIterable<Buffer>) {
    hash.update(chunk);
    progress.bytesHashed += chunk.length;
    sinceReport += chunk.length;
    if (sinceReport >= 64 * 1024 * 1024) {
      sinceReport = 0;
      onProgress?.(progress);
    }
  }
  const fingerprint = `sha256:${hash.digest('hex')}`;
  // The file may have been rewritten while it was hashed: only cache what a second stat confirms.
  const after = await stat(absPath).catch(() => undefined);
  if (after && statKey(after) === key) {
    fingerprintCache.delete(absPath);
    fingerprintCache.set(absPath, { key, fingerprint });
    if (fingerprintCache.size > MAX_CACHED) fingerprintCache.delete(fingerprintCache.keys().next().value!);
  }
  return fingerprint;
}
