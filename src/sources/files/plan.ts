/**
 * The next batch of a files pass: which files after a cursor still need loading, diffed against
 * what the destination says is loaded, in bounded pieces. filesWorkflow calls this (through the
 * planFilesBatch activity) once per batch and carries only the cursor, so neither the listing
 * nor the set of loaded files ever sits in workflow history, however large the directory.
 *
 * Knows nothing of Temporal or PostgreSQL: the listing is a stream of entries (a FilesStore's
 * `entries`), and `lookup` answers for one key batch of paths at a time what is loaded.
 */
import type { ListedEntry, ListedFile } from './list';

/** What the destination remembers of a loaded file (its _sluice_state row). */
export interface StoredFile {
  fingerprint: string;
  version: number;
  statKey?: string;
}

export interface PlannedFile {
  file: ListedFile;
  /** 1 for a path never loaded, one more than the stored version for changed content. */
  version: number;
  /**
   * Files examined by this call up to and including this one: a run that stops after starting
   * this file resumes from its path having examined exactly this many more.
   */
  examined: number;
}

export interface FilesBatch {
  /** At most `maxFiles` files to load, in listing order. */
  files: PlannedFile[];
  /** Files examined by this call (to load or unchanged). */
  examined: number;
  /** Those of them already loaded with the same content. */
  unchanged: number;
  /** The last path examined: the next call starts after it. Undefined when nothing was examined. */
  cursor?: string;
  /** The listing ended within this call: the pass is complete once these files are loaded. */
  exhausted: boolean;
}

export interface BatchLimits {
  maxFiles: number;
  /** A bound on the batch's size as JSON, so that its activity result stays far under Temporal's payload limit. */
  maxBytes: number;
  /** A bound on one call's work when almost nothing needs loading (progress moves, a retry repeats little). */
  maxExamined: number;
  /** Paths per `lookup` (one query each). */
  lookupBatch: number;
}

export interface PlanProgress {
  examined: number;
  toLoad: number;
}

/**
 * Whether a stored fingerprint names the listed version. Objects of a versioned bucket are listed
 * as `s3:<etag>:<size>@<version id>`; one loaded before version ids were listed was stored
 * without the `@<version id>`, and the same ETag and size are the same object.
 */
export function sameVersion(stored: string, listed: string): boolean {
  if (stored === listed) return true;
  const at = listed.startsWith('s3:') ? listed.indexOf('@') : -1;
  return at > 0 && !stored.includes('@') && stored === listed.slice(0, at);
}

/**
 * Examines the entries (already positioned after the cursor) in order until the batch is full
 * or the listing ends. A local file whose stat key is the one stored with its load is unchanged
 * without being read; any other file is fingerprinted (hashed locally, the ETag on object
 * storage) and compared with the stored fingerprint.
 */
export async function planBatch(
  entries: AsyncIterable<ListedEntry>,
  lookup: (paths: string[]) => Promise<Map<string, StoredFile>>,
  limits: BatchLimits,
  onProgress: (p: PlanProgress) => void = () => undefined,
): Promise<FilesBatch> {
  const batch: FilesBatch = { files: [], examined: 0, unchanged: 0, exhausted: false };
  let bytes = 0;
  const full = () => batch.files.length >= limits.maxFiles || bytes >= limits.maxBytes || batch.examined >= limits.maxExamined;
  const iterator = entries[Symbol.asyncIterator]();
  try {
    for (;;) {
      const chunk: ListedEntry[] = [];
      let ended = false;
      while (chunk.length < Math.min(limits.lookupBatch, limits.maxExamined - batch.examined)) {
        const next = await iterator.next();
        if (next.done) {
          ended = true;
          break;
        }
        chunk.push(next.value);
      }
      const stored = chunk.length ? await lookup(chunk.map((e) => e.path)) : new Map<string, StoredFile>();
      for (const entry of chunk) {
        const before = stored.get(entry.path);
        batch.examined++;
        batch.cursor = entry.path;
        if (before && entry.statKey !== undefined && before.statKey === entry.statKey) {
          batch.unchanged++;
        } else {
          const file = await entry.fingerprinted();
          if (before && sameVersion(before.fingerprint, file.fingerprint)) {
            batch.unchanged++;
          } else {
            const planned: PlannedFile = {
              file: entry.statKey !== undefined && file.error === undefined ? { ...file, statKey: entry.statKey } : file,
              version: (before?.version ?? 0) + 1,
              examined: batch.examined,
            };
            batch.files.push(planned);
            bytes += JSON.stringify(planned).length;
          }
        }
        onProgress({ examined: batch.examined, toLoad: batch.files.length });
        // Stopping mid-chunk is fine: the cursor is the last path examined, and the rest is listed again.
        if (full()) return batch;
      }
      if (ended) {
        batch.exhausted = true;
        return batch;
      }
    }
  } finally {
    await iterator.return?.();
  }
}
