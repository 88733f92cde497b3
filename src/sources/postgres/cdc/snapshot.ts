/**
 * Where a table's snapshot and the change stream meet. Pure.
 *
 * The slot is created before any table is copied, so every transaction that commits after the
 * slot's consistent point is in the stream. Each table is then copied under its own
 * REPEATABLE READ snapshot (any time later, on any worker, retried freely), and the snapshot's
 * pg_current_snapshot() is kept with the copy. A streamed transaction whose xid that snapshot
 * already saw is in the copy: its changes to that table are skipped. Every other one is
 * applied. Visibility by xid is exact where an LSN threshold is not: a transaction's commit
 * record can precede the moment it becomes visible to new snapshots.
 */

/** pg_current_snapshot() as text pieces: 64-bit xids (xid8) as decimal strings. */
export interface XidSnapshot {
  xmin: string;
  xmax: string;
  xip: string[];
}

export function parseXidSnapshot(text: string): XidSnapshot {
  const m = /^(\d+):(\d+):([\d,]*)$/.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a pg_snapshot`);
  return { xmin: m[1]!, xmax: m[2]!, xip: m[3] ? m[3].split(',') : [] };
}

const EPOCH = 1n << 32n;

/**
 * The 64-bit xid nearest to `reference` whose low 32 bits are `xid` (pgoutput sends 32-bit xids).
 * Exact while the stream is within two billion transactions of the snapshot.
 */
export function widenXid(xid: number, reference: bigint): bigint {
  const base = (reference & ~(EPOCH - 1n)) | BigInt(xid >>> 0);
  let best = base;
  for (const candidate of [base - EPOCH, base + EPOCH]) {
    const d = (x: bigint) => (x > reference ? x - reference : reference - x);
    if (candidate >= 0n && d(candidate) < d(best)) best = candidate;
  }
  return best;
}

/** Whether a committed transaction `xid` was visible to `snapshot` (pg_visible_in_snapshot). */
export function seenBySnapshot(xid: number, snapshot: XidSnapshot): boolean {
  const xmax = BigInt(snapshot.xmax);
  const x = widenXid(xid, xmax);
  if (x >= xmax) return false;
  if (x < BigInt(snapshot.xmin)) return true;
  return !snapshot.xip.includes(x.toString());
}

/**
 * A table's snapshot as the stream sees it: the table is copied in key ranges (chunks, split at
 * `bounds` of its first key column, an integer), each under its own snapshot, so whether a
 * streamed change is already in the copy depends on the chunk its key falls in. One chunk
 * without bounds is a table copied whole.
 */
export interface SnapshotFilter {
  bounds: bigint[];
  /** One per chunk: bounds.length + 1. */
  xids: XidSnapshot[];
}

/** The chunk a key's first column falls in: chunk i holds [bounds[i-1], bounds[i]). */
export function chunkOf(filter: SnapshotFilter, firstKey: string): number {
  if (filter.bounds.length === 0) return 0;
  const k = BigInt(firstKey);
  let lo = 0;
  let hi = filter.bounds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (filter.bounds[mid]! <= k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether the copy of the chunk holding this key already has transaction `xid`'s changes to it. */
export function seenForKey(filter: SnapshotFilter, xid: number, firstKey: string): boolean {
  return seenBySnapshot(xid, filter.xids[chunkOf(filter, firstKey)]!);
}
