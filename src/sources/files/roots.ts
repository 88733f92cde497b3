/**
 * Containment of the files source: the worker reads only under SLUICE_FILES_ROOTS. Whoever can
 * start a workflow or drop a file into a watched folder must not reach anything else on the
 * machine: not with `..` in source.path, not with a symlink (to a file or a directory) inside a
 * drop folder. Every check is on the REAL path (fs.realpath), and opening a file checks that the
 * descriptor it got is the very file whose real path was checked, so swapping a symlink in
 * between gains nothing.
 */
import { constants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open, realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative, sep } from 'node:path';
import { filesRoots } from '../../config';
import { PermanentError } from '../../errors';

/** A path the roots do not contain: that file (or the whole listing, for source.path) fails with this. */
export class OutsideRootsError extends PermanentError {
  constructor(what: string, realPath: string, roots: readonly string[]) {
    super(
      `${what} is refused: its real path ${realPath} is not inside SLUICE_FILES_ROOTS (${roots.join(', ') || 'none'})`,
      'put the files under one of the SLUICE_FILES_ROOTS directories (symlinks must stay inside them too), or add the directory to SLUICE_FILES_ROOTS on the worker',
    );
    this.name = 'OutsideRootsError';
  }
}

export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** The roots' own real paths (a root may itself be a symlink, e.g. /data -> /mnt/data). Missing roots are dropped. */
export async function realRoots(roots: readonly string[] = filesRoots()): Promise<string[]> {
  const real = await Promise.all(roots.map((r) => realpath(r).catch(() => undefined)));
  return real.filter((r): r is string => r !== undefined);
}

/** The real path of `path` if it lies inside a root; otherwise an OutsideRootsError naming the roots. */
export async function containedRealPath(what: string, path: string, roots: readonly string[]): Promise<string> {
  const real = await realpath(path);
  if (!roots.some((root) => isInside(root, real))) throw new OutsideRootsError(what, real, roots.length ? roots : filesRoots());
  return real;
}

/**
 * Opens `path` for reading only if its real path lies inside a root, and only if the opened
 * descriptor is that same file (device and inode), so a symlink swapped in after the check is
 * caught rather than followed.
 */
export async function openContained(what: string, path: string, roots: readonly string[]): Promise<FileHandle> {
  const real = await containedRealPath(what, path, roots);
  const checked = await stat(real);
  // O_NOFOLLOW: the real path ends in no symlink; one swapped in since makes open fail (ELOOP).
  const handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const opened = await handle.stat();
    if (opened.dev !== checked.dev || opened.ino !== checked.ino || !opened.isFile()) {
      throw new PermanentError(`${what} changed while it was being opened (it is not the file at ${real}); nothing of it was read`);
    }
    // Linux names the opened file itself: check it too, so a directory swapped for a symlink is caught.
    const openedPath = await realpath(`/proc/self/fd/${handle.fd}`).catch(() => undefined);
    if (openedPath !== undefined && !roots.some((root) => isInside(root, openedPath))) throw new OutsideRootsError(what, openedPath, roots);
    return handle;
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}
