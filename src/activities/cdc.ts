/**
 * Activities of cdcWorkflow: set up the source (checks, publication, slot), copy one table's
 * snapshot, stream changes for a bounded time, read the saved position, drop the slot.
 *
 * The stream's position lives in the destination: _sluice_state row `cdc:<slot>` holds the LSN
 * up to which every change is applied, written by the same transaction as the batch. Each
 * streaming call starts the slot there, skips any transaction that ends at or below it, and
 * acknowledges the slot only up to an LSN the destination has committed (or, with nothing
 * pending, the server's own position from a keepalive, so an idle slot never holds WAL).
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { resolveConnection } from '../config';
import { applyBatch, type TableShape } from '../destinations/postgres/cdc-apply';
import { ChangeBatch, emptyCounts, keyValues, RowColumns, sameKeyOf, type TableCounts } from '../destinations/postgres/cdc-batch';
import type { LeaseToken } from '../destinations/postgres/lease';
import { ensureMetadata, loadResource, readState } from '../destinations/postgres/loader';
import { getPool } from '../destinations/postgres/pool';
import type { CdcSource, Destination } from '../inputs';
import { qualifiedName, splitQualified } from '../schema/identifiers';
import { CHANGE_INSERT, CHANGE_UPDATE, ChangeRef, decodeLogicalMessage, formatLsn, parseLsn, readChange, type LogicalMessage, type Tuple } from '../sources/postgres/cdc/pgoutput';
import { ReplicationStream } from '../sources/postgres/cdc/replication';
import {
  checkSource,
  currentWalLsn,
  destinationNames,
  dropSlotAndPublication,
  ensurePublication,
  ensureSlot,
  checkSlotHolder,
  ownerTag,
  planChunks,
  snapshotTable,
  type KeyRange,
  typeNames,
  withSourceClient,
  type CdcTable,
} from '../sources/postgres/cdc/setup';
import { chunkOf, seenBySnapshot, type SnapshotFilter, type XidSnapshot } from '../sources/postgres/cdc/snapshot';
import { withHeartbeat, workflowOf } from './context';

export interface CdcSetupRequest {
  source: CdcSource;
  slot: string;
  publication: string;
  /** The workflow id of the run: a slot another consumer reads is refused. */
  owner?: string;
}

export interface CdcPlanRequest {
  source: CdcSource;
  destination: Destination;
  table: CdcTable;
  slot: string;
  slotLsn: string;
  chunkRows: number;
}

/** _sluice_state `cdc:<slot>:snapshot:<table>` of a chunked snapshot: its plan; each chunk's xids are in `...:<index>`. */
interface SnapshotPlan {
  table: string;
  slotLsn: string;
  column: string;
  bounds: string[];
}

export interface CdcSetupResult {
  tables: CdcTable[];
  createdSlot: boolean;
  createdPublication: boolean;
  /** Where the slot stood when set up: part of the snapshot load ids, so a new slot means a new snapshot. */
  slotLsn: string;
}

export interface CdcSnapshotRequest {
  source: CdcSource;
  destination: Destination;
  table: CdcTable;
  slot: string;
  slotLsn: string;
  /** One key range of the table (cdcPlanSnapshot); absent: the table whole, as runs before chunks did. */
  chunk?: { index: number; of: number };
  /** The table's lease: the copy's commit checks it. */
  lease?: LeaseToken;
}

export interface CdcStreamRequest {
  source: CdcSource;
  destination: Destination;
  tables: CdcTable[];
  slot: string;
  publication: string;
  deletes: 'hard' | 'soft';
  batchChanges: number;
  batchWaitMs: number;
  /** How long one call streams before it returns (the workflow then calls again). */
  windowMs: number;
  /** The run's leases: every batch's transaction checks them. */
  leases?: LeaseToken[];
  /** The workflow id: names this run's replication session, so another run can tell the slot is taken. */
  owner?: string;
}

/** What _sluice_state `cdc:<slot>` holds, and what the workflow shows. */
export interface CdcPosition {
  /** Everything up to this LSN is applied (or was nothing sluice had to apply). */
  lsn: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  batches: number;
  changes: number;
  tables: Record<string, TableCounts>;
  lastCommitAt: string | null;
  /** Columns dropped at the source, `table.column`, each reported once. */
  dropped: string[];
  schemaChanges: string[];
  /** Changes per second over the last streaming call. */
  rate?: number;
}

export const stateKey = (slot: string) => `cdc:${slot}`;
const snapshotKey = (slot: string, target: string) => `cdc:${slot}:snapshot:${target}`;
const chunkKey = (slot: string, target: string, index: number) => `${snapshotKey(slot, target)}:${index}`;

async function writeState(url: string, schema: string, key: string, value: unknown): Promise<void> {
  await ensureMetadata(url, schema);
  await getPool(url).query(
    `insert into ${qualifiedName(schema, '_sluice_state')} (resource, state, updated_at) values ($1, $2, now())
     on conflict (resource) do update set state = excluded.state, updated_at = now()`,
    [key, JSON.stringify(value)],
  );
}

/** The snapshot filter of each table copied (chunked or whole); a table never copied has none. */
async function readFilters(url: string, schema: string, slot: string, tables: CdcTable[]): Promise<Map<string, SnapshotFilter>> {
  const filters = new Map<string, SnapshotFilter>();
  for (const t of tables) {
    const saved = (await readState(url, schema, snapshotKey(slot, t.target))) as (Partial<SnapshotPlan> & { xids?: XidSnapshot }) | undefined;
    if (saved?.xids) filters.set(t.target, { bounds: [], xids: [saved.xids] });
    if (!saved?.bounds) continue;
    const xids: XidSnapshot[] = [];
    for (let i = 0; i <= saved.bounds.length; i++) {
      const chunk = (await readState(url, schema, chunkKey(slot, t.target, i))) as { xids?: XidSnapshot } | undefined;
      if (!chunk?.xids) throw new Error(`chunk ${i + 1} of the snapshot of ${t.source} was never copied`);
      xids.push(chunk.xids);
    }
    filters.set(t.target, { bounds: saved.bounds.map((b) => BigInt(b)), xids });
  }
  return filters;
}

function emptyPosition(): CdcPosition {
  return { lsn: null, lagBytes: null, lagSeconds: null, batches: 0, changes: 0, tables: {}, lastCommitAt: null, dropped: [], schemaChanges: [] };
}

async function readPosition(destination: Destination, slot: string): Promise<CdcPosition> {
  const saved = (await readState(resolveConnection(destination.connection), destination.schema, stateKey(slot))) as Partial<CdcPosition> | undefined;
  return { ...emptyPosition(), ...saved, schemaChanges: [] };
}

export function createCdcActivities() {
  return {
    /** Refuses a source that cannot stream (non-retryably, with the fix); creates the publication, then the slot. */
    async cdcSetup(req: CdcSetupRequest): Promise<CdcSetupResult> {
      return withHeartbeat(() =>
        withSourceClient(resolveConnection(req.source.connection), async (client) => {
          const tables = await checkSource(client, req.source.tables);
          // Before anything is created: a run refused here leaves nothing behind on the source.
          if (req.owner) await checkSlotHolder(client, req.slot, req.owner);
          const createdPublication = await ensurePublication(client, req.publication, req.source.tables);
          const slot = await ensureSlot(client, req.slot);
          return { tables, createdPublication, createdSlot: slot.created, slotLsn: slot.lsn };
        }),
      );
    },

    /**
     * Splits a table's snapshot into chunks (see planChunks) and saves the plan in the
     * destination, where each chunk's copy and the stream find it. A plan saved for this slot is
     * reused as it is: a retry or a replay never moves the bounds under chunks already copied.
     */
    async cdcPlanSnapshot(req: CdcPlanRequest): Promise<{ chunks: number }> {
      return withHeartbeat(async () => {
        const destUrl = resolveConnection(req.destination.connection);
        const key = snapshotKey(req.slot, req.table.target);
        const saved = (await readState(destUrl, req.destination.schema, key)) as Partial<SnapshotPlan> | undefined;
        if (saved?.bounds && saved.slotLsn === req.slotLsn) return { chunks: saved.bounds.length + 1 };
        const { column, bounds } = await withSourceClient(resolveConnection(req.source.connection), (client) => planChunks(client, req.table, req.chunkRows));
        const plan: SnapshotPlan = { table: req.table.source, slotLsn: req.slotLsn, column, bounds };
        await writeState(destUrl, req.destination.schema, key, plan);
        return { chunks: bounds.length + 1 };
      });
    },

    /** Copies one table (or one chunk of it) under a snapshot taken after the slot exists; the snapshot's xids go to _sluice_state with the rows. */
    async cdcSnapshotTable(req: CdcSnapshotRequest): Promise<{ rows: number }> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(async (progress) => {
        const url = resolveConnection(req.source.connection);
        const destUrl = resolveConnection(req.destination.connection);
        let range: KeyRange | undefined;
        let stateKey = snapshotKey(req.slot, req.table.target);
        let loadId = `${req.slot}@${req.slotLsn}/snapshot/${req.table.target}`;
        let partition = 'snapshot';
        if (req.chunk) {
          const plan = (await readState(destUrl, req.destination.schema, stateKey)) as SnapshotPlan | undefined;
          if (!plan?.bounds || plan.slotLsn !== req.slotLsn || plan.bounds.length + 1 !== req.chunk.of) {
            throw new Error(`the snapshot plan of ${req.table.source} is not in ${req.destination.schema}._sluice_state (or is another slot's)`);
          }
          const i = req.chunk.index;
          range = { column: plan.column, lo: i === 0 ? null : plan.bounds[i - 1]!, hi: i === plan.bounds.length ? null : plan.bounds[i]! };
          stateKey = chunkKey(req.slot, req.table.target, i);
          loadId = `${loadId}/${i + 1}of${req.chunk.of}`;
          partition = `snapshot ${i + 1}/${req.chunk.of}`;
        }
        const snap = await snapshotTable(url, req.table.source, range && req.chunk!.of > 1 ? range : undefined);
        try {
          const result = await loadResource({
            url: destUrl,
            schema: req.destination.schema,
            table: req.table.target,
            resource: { name: req.table.target, writeDisposition: 'merge', primaryKey: req.table.key },
            loadId,
            workflowId,
            runId,
            partition,
            attempt: ctx.info.attempt,
            data: snap.data,
            // The copy is the whole table (or the whole key range): rows an earlier workflow left in the destination go.
            supersede: range ? { kind: 'keyRange', column: range.column, lo: range.lo, hi: range.hi } : { kind: 'from', column: req.table.key[0]!, value: null },
            state: { key: stateKey, value: { table: req.table.source, xids: snap.xids } },
            onProgress: (rows) => progress({ table: req.table.target, rows, ...(req.chunk ? { chunk: req.chunk.index + 1, of: req.chunk.of } : {}) }),
            ...(req.lease ? { lease: req.lease } : {}),
          });
          return { rows: result.rowsLoaded };
        } finally {
          await snap.release();
        }
      });
    },

    async cdcReadPosition(req: { destination: Destination; slot: string }): Promise<CdcPosition> {
      return readPosition(req.destination, req.slot);
    },

    /** Streams and applies changes for up to `windowMs`, batch by batch; returns the position reached. */
    async cdcStream(req: CdcStreamRequest): Promise<CdcPosition> {
      const ctx = Context.current();
      const { workflowId, runId } = workflowOf(ctx);
      return withHeartbeat(async (progress) => {
        const sourceUrl = resolveConnection(req.source.connection);
        const destUrl = resolveConnection(req.destination.connection);
        const position = await readPosition(req.destination, req.slot);
        const filters = await readFilters(destUrl, req.destination.schema, req.slot, req.tables);
        return withSourceClient(sourceUrl, async (source) => {
          const startLsn = position.lsn ? parseLsn(position.lsn) : 0n;
          if (req.owner) await checkSlotHolder(source, req.slot, req.owner);
          // Read ahead up to about three batches (some 100 bytes a change): two being committed, one filling; the walsender keeps sending meanwhile.
          const stream = await ReplicationStream.start(sourceUrl, req.slot, req.publication, startLsn, req.owner ? ownerTag(req.owner) : 'sluice-cdc', (MAX_IN_FLIGHT + 1) * req.batchChanges * 100);
          try {
            // The position as of the last batch handed to the destination (it may not have committed yet).
            let handed = position;
            const consumer = new StreamConsumer(req, position, filters, source, startLsn, stream, async (batch, endLsn, commitTime, shapes, order) => {
              const next = advance(handed, batch, endLsn, commitTime);
              handed = next;
              // The source's WAL position (for the lag) is asked while the batch is written.
              const lag = currentWalLsn(source).then((wal) => lagOf(parseLsn(wal), endLsn));
              lag.catch(() => undefined);
              // Asked once the batch's tables have evolved: the columns found dropped so far, this batch's too.
              const value = async () => ({ ...next, lagBytes: await lag, dropped: [...consumer.dropped], schemaChanges: [] });
              const applied = await applyBatch({
                url: destUrl,
                schema: req.destination.schema,
                deletes: req.deletes,
                shapes,
                batch,
                load: { loadId: `${workflowId}/cdc/${formatLsn(endLsn)}`, workflowId, runId, resource: stateKey(req.slot), partition: formatLsn(endLsn) },
                state: { key: stateKey(req.slot), lsn: endLsn, after: order.after, value },
                ...(order.turn ? { turn: order.turn } : {}),
                onLocked: order.locked,
                knownDropped: consumer.dropped,
                ...(req.leases ? { leases: req.leases } : {}),
              });
              const lagBytes = await lag;
              // Batches commit in order (each one waits in the destination for the one before).
              if (!position.lsn || parseLsn(position.lsn) < endLsn) Object.assign(position, next, { lagBytes, dropped: [...consumer.dropped] });
              position.schemaChanges.push(...applied.schemaChanges);
              progress(position);
            });
            try {
              await consumer.run(ctx.cancellationSignal);
            } catch (err) {
              // "replication slot ... is active for PID ...": refused for good if another run holds it.
              if ((err as { code?: string }).code === '55006' && req.owner) await checkSlotHolder(source, req.slot, req.owner);
              throw err;
            }
            return { ...position, rate: consumer.rate() };
          } finally {
            await stream.close();
          }
        });
      });
    },

    /** Drops the slot (and the publication, when sluice created it): the source releases the WAL. */
    async cdcDropSlot(req: { source: CdcSource; slot: string; publication?: string }): Promise<void> {
      return withHeartbeat(() => withSourceClient(resolveConnection(req.source.connection), (client) => dropSlotAndPublication(client, req.slot, req.publication)));
    },
  };
}

/** The position once `batch` (ending at `endLsn`) has committed after `position`; the lag in bytes is the caller's (see lagOf). */
function advance(position: CdcPosition, batch: ChangeBatch, endLsn: bigint, commitTime: Date | undefined): CdcPosition {
  const tables: Record<string, TableCounts> = { ...position.tables };
  for (const [target, t] of batch.tables) {
    const c = { ...(tables[target] ?? emptyCounts()) };
    c.inserts += t.counts.inserts;
    c.updates += t.counts.updates;
    c.deletes += t.counts.deletes;
    c.truncates += t.counts.truncates;
    tables[target] = c;
  }
  return {
    ...position,
    lsn: formatLsn(endLsn),
    lagSeconds: commitTime ? Math.max(0, (Date.now() - commitTime.getTime()) / 1000) : 0,
    batches: position.batches + (batch.empty ? 0 : 1),
    changes: position.changes + batch.changes,
    tables,
    lastCommitAt: commitTime?.toISOString() ?? position.lastCommitAt,
  };
}

/** How far the source's WAL is past `lsn`, in bytes. */
function lagOf(wal: bigint, lsn: bigint): number {
  return Number(wal > lsn ? wal - lsn : 0n);
}

/**
 * Where a batch stands among those in flight: it must commit on top of the batch ending at
 * `after`; it may take the stream's lock once `turn` (the batch before taking it) has resolved,
 * and calls `locked` once it has taken it (or failed).
 */
interface BatchOrder {
  after: bigint;
  turn?: Promise<void>;
  locked: () => void;
}

/** Batches handed to the destination at once: one commits while the next one is staged (see cdc-apply.ts). */
const MAX_IN_FLIGHT = 2;

interface Relation {
  target: string;
  shape: TableShape;
  /** Destination column name of each relation column, in order. */
  names: string[];
  /** Index of each key column in the relation's columns. */
  keyIndex: number[];
  /** The names again, shared by the changes' values. */
  columns: RowColumns;
}

/**
 * Per chunk of a table's snapshot, whether its copy saw transaction `xid`. Not inline in a method
 * that runs per change: a closure there capturing its variables makes every call allocate them a scope.
 */
function seenByChunk(filter: SnapshotFilter, xid: number): boolean[] {
  return filter.xids.map((x) => seenBySnapshot(xid, x));
}

/** The longest the read loop works through queued messages without letting the event loop run. */
const YIELD_EVERY_MS = 5;

/** Reads one streaming call's messages: collects transactions into batches, flushes at commit boundaries, acknowledges. */
class StreamConsumer {
  private readonly relations = new Map<number, Relation>();
  readonly dropped: Set<string>;
  private batch = new ChangeBatch();
  private batchStartedAt = 0;
  private lastCommit: { endLsn: bigint; time: Date } | undefined;
  /**
   * The server has sent everything it had: a keepalive came after the last transaction, with
   * none open (the walsender sends one as it runs out of WAL to decode). A batch then goes to
   * an idle destination at once rather than at batchWait; new data clears it.
   */
  private caughtUp = false;
  /** The transaction being read; `seen`: per table, what snapshotSaw judged for it. */
  private tx: { xid: number; skip: boolean; time: Date; seen: Map<string, { byChunk: boolean[]; same?: boolean }> } | undefined;
  /** Applied (committed in the destination) up to here. */
  private committed: bigint;
  /** Acknowledged to the server up to here: `committed`, or further when nothing is pending. */
  private acked: bigint;
  private lastStatusAt = 0;
  /** When the read loop last let the event loop run. */
  private lastYield = Date.now();
  /** The batches being committed in the destination (oldest first), while the next one is read. */
  private readonly inFlight: { endLsn: bigint; done: Promise<void>; locked: Promise<void> }[] = [];
  private applyFailure: Error | undefined;
  private readonly startedAt = Date.now();
  private readonly changesAtStart: number;
  private readonly byName: Map<string, CdcTable>;
  /** The change being read, reused for every one. */
  private readonly change = new ChangeRef();

  constructor(
    private readonly req: CdcStreamRequest,
    private readonly position: CdcPosition,
    private readonly filters: Map<string, SnapshotFilter>,
    private readonly source: import('pg').Client,
    start: bigint,
    private readonly stream: ReplicationStream,
    /** Applies `batch`, which must commit after the batch ending at `order.after` (see BatchOrder). */
    private readonly flushBatch: (batch: ChangeBatch, endLsn: bigint, commitTime: Date | undefined, shapes: Map<string, TableShape>, order: BatchOrder) => Promise<void>,
  ) {
    this.committed = start;
    this.acked = start;
    this.dropped = new Set(position.dropped);
    this.changesAtStart = position.changes;
    this.byName = new Map(req.tables.map((t) => {
      const { schema, table } = splitQualified(t.source);
      return [`${schema ?? 'public'}.${table}`, t];
    }));
  }

  shapesByTarget(): Map<string, TableShape> {
    return new Map([...this.relations.values()].map((r) => [r.target, r.shape]));
  }

  rate(): number {
    const seconds = (Date.now() - this.startedAt) / 1000;
    return seconds > 0 ? Math.round((this.position.changes - this.changesAtStart) / seconds) : 0;
  }

  async run(signal: AbortSignal): Promise<void> {
    try {
      await this.readAndApply(signal);
    } finally {
      // However the stream ended, nothing handed to the destination is still running when the
      // activity returns or fails: its retry reads the saved position, which must be final.
      await Promise.all(this.inFlight.map((f) => f.done));
    }
  }

  private async readAndApply(signal: AbortSignal): Promise<void> {
    const deadline = this.startedAt + this.req.windowMs;
    for (;;) {
      if (this.applyFailure) throw this.applyFailure;
      const now = Date.now();
      if (signal.aborted || (now >= deadline && !this.tx)) break;
      const pending = !this.batch.empty;
      if (pending && !this.tx && this.inFlight.length < MAX_IN_FLIGHT && (now - this.batchStartedAt >= this.req.batchWaitMs || (this.caughtUp && this.inFlight.length === 0))) {
        await this.flush();
        continue;
      }
      if (now - this.lastStatusAt >= 1_000) {
        // Ask for a keepalive: with nothing pending its position may be acknowledged, and it
        // keeps the walsender (wal_sender_timeout) and the stream's reader awake.
        this.stream.acknowledge(this.acked, true);
        this.lastStatusAt = now;
      }
      // Every few milliseconds of reading the loop lets the event loop run: the batch being
      // applied gets its turn (its connection, its COPY), and so do heartbeats, cancellation and the socket.
      if (now - this.lastYield >= YIELD_EVERY_MS) {
        await new Promise<void>((r) => setImmediate(r));
        this.lastYield = Date.now();
      }
      // The window's end waits for the end of the transaction being read.
      const drained = this.drain(this.lastYield + YIELD_EVERY_MS, signal, now >= deadline);
      if (drained === 'later') continue;
      if (drained !== 'empty') {
        await drained;
        continue;
      }
      const wait = Math.min(deadline - now, pending ? this.batchStartedAt + this.req.batchWaitMs - now : 1_000, 1_000);
      const next = await this.stream.wait(Math.max(wait, 10));
      this.lastYield = Date.now();
      if (next === 'timeout') continue;
      if (next === 'end') throw ApplicationFailure.retryable('the replication stream ended', 'ReplicationStreamEnded');
      const waiting = this.handleFrame();
      if (waiting) await waiting;
    }
    // Whatever happens next, the batches being applied finish first (each commits, or fails as a whole).
    await this.settle();
    // Cancelled inside a transaction: what the batch holds is not complete to any commit, so none
    // of it is applied; it was never acknowledged, and the next call receives it again.
    if (this.tx) return;
    if (!this.batch.empty) {
      await this.flush();
      await this.settle();
    }
    if (this.acked > this.committed) {
      // Nothing was pending up to `acked`: record it, so the saved position and its lag are current.
      await this.flushBatch(new ChangeBatch(), this.acked, undefined, this.shapesByTarget(), { after: this.committed, locked: () => undefined });
      this.committed = this.acked;
    }
  }

  /**
   * Handles the frames already received, synchronously (no promise, and no value kept across an
   * await, per message), until none is left ('empty' when there was none), one must be waited for (its promise), a
   * transaction ended while the window is over, or `until` has passed or the activity is
   * cancelled ('later': checked every few frames, so the clock is not read per message).
   */
  private drain(until: number, signal: AbortSignal, stopAtCommit: boolean): Promise<void> | 'empty' | 'later' {
    for (let n = 1; ; n++) {
      // Out of frames after handling some: 'later', so the loop's checks run before it waits (a
      // keepalive that found the stream caught up hands the batch over at once).
      if (!this.stream.poll()) return n === 1 ? 'empty' : 'later';
      const waiting = this.handleFrame();
      if (waiting) return waiting;
      if (stopAtCommit && !this.tx) return 'later';
      if ((n & 63) === 0 && (Date.now() >= until || signal.aborted)) return 'later';
    }
  }

  /** The frame poll() or wait() found (valid until the next poll): a promise when the loop must wait before the next one. */
  private handleFrame(): Promise<void> | undefined {
    const { frame, frameStart, frameEnd } = this.stream;
    const kind = frame[frameStart];
    if (kind === 0x6b /* k: keepalive */) {
      if (frameEnd - frameStart < 18) throw new Error(`replication: a keepalive of ${frameEnd - frameStart} bytes (18 expected)`);
      const walEnd = frame.readBigUInt64BE(frameStart + 1);
      if (!this.tx) this.caughtUp = true;
      if (this.idle() && walEnd > this.acked) this.acked = walEnd;
      if (frame[frameStart + 17] === 1 || this.acked > this.committed) this.stream.acknowledge(this.acked);
      return undefined;
    }
    if (kind !== 0x77 /* w: XLogData, its logical message after a 25-byte header */) return undefined;
    this.caughtUp = false;
    if (frameEnd - frameStart < 26) throw new Error(`replication: an XLogData message of ${frameEnd - frameStart} bytes`);
    if (readChange(frame, frameStart + 25, frameEnd, this.change)) {
      this.handleChange(this.change);
      return undefined;
    }
    return this.handle(decodeLogicalMessage(frame.subarray(frameStart + 25, frameEnd)));
  }

  /** Nothing received is waiting to be applied or being applied: the server's position may be acknowledged. */
  private idle(): boolean {
    return !this.tx && this.batch.empty && this.inFlight.length === 0;
  }

  /** Waits for every batch being applied (or, with `room`, until fewer than MAX_IN_FLIGHT are); rethrows a failure. */
  private async settle(room = false): Promise<void> {
    while (this.inFlight.length >= (room ? MAX_IN_FLIGHT : 1)) await this.inFlight[0]!.done;
    if (this.applyFailure) throw this.applyFailure;
  }

  /**
   * Hands the batch to the destination and goes back to reading: the next batch is decoded
   * while this one is staged and commits. At most MAX_IN_FLIGHT are in flight, and each commits
   * only after the one before it (the destination makes it wait, and fails it if that one failed),
   * so batches still commit in order. The slot is acknowledged only up to a batch whose commit is done.
   */
  private async flush(): Promise<void> {
    await this.settle(true);
    const commit = this.lastCommit!;
    const batch = this.batch;
    // The columns as of this batch: relation messages read meanwhile belong to the next one.
    const shapes = this.shapesByTarget();
    this.batch = new ChangeBatch();
    const prior = this.inFlight.at(-1);
    let onLocked!: () => void;
    const locked = new Promise<void>((resolve) => (onLocked = resolve));
    const order: BatchOrder = { after: prior?.endLsn ?? this.committed, locked: onLocked, ...(prior ? { turn: prior.locked } : {}) };
    const result = this.flushBatch(batch, commit.endLsn, commit.time, shapes, order);
    // However it ended, the batch after this one need not wait for this one's lock any longer
    // (its failure is taken below, in order).
    result.finally(onLocked).catch(() => undefined);
    // Completions are taken in order: the first failure is the one reported.
    const done = (prior?.done ?? Promise.resolve()).then(() => result).then(
      () => {
        batch.release();
        if (this.committed < commit.endLsn) this.committed = commit.endLsn;
        if (this.acked < this.committed) this.acked = this.committed;
        if (!this.applyFailure) this.stream.acknowledge(this.acked);
        this.lastStatusAt = Date.now();
        this.inFlight.shift();
        // A caught-up batch that waited for this one goes now, not at the next message.
        if (this.caughtUp && !this.batch.empty) this.stream.interrupt();
      },
      (err: unknown) => {
        batch.release();
        this.applyFailure ??= err instanceof Error ? err : new Error(String(err));
        this.inFlight.shift();
      },
    );
    this.inFlight.push({ endLsn: commit.endLsn, done, locked });
  }

  /** Synchronous except where it must wait: a relation's types are asked, a full batch waits for the one in flight. */
  private handle(m: LogicalMessage): Promise<void> | undefined {
    switch (m.tag) {
      case 'begin':
        // A transaction that ends at or below the committed LSN was applied already.
        this.tx = { xid: m.xid, skip: m.finalLsn < this.committed, time: m.commitTime, seen: new Map() };
        return;
      case 'commit':
        this.tx = undefined;
        if (m.endLsn <= this.committed) return;
        if (this.batch.empty) {
          // Nothing of ours in it: nothing to apply, so the slot may move past it (once no batch before it is still being committed).
          if (this.inFlight.length === 0 && this.acked < m.endLsn) this.acked = m.endLsn;
          return;
        }
        this.lastCommit = { endLsn: m.endLsn, time: m.commitTime };
        // Full: wait for room among the batches in flight, then hand this one over. Due by time:
        // only once there is room; until then it keeps growing, so a slow commit means bigger batches.
        if (this.batch.changes >= this.req.batchChanges || (this.inFlight.length < MAX_IN_FLIGHT && Date.now() - this.batchStartedAt >= this.req.batchWaitMs)) return this.flush();
        return;
      case 'relation':
        return this.relation(m);
      case 'truncate':
        for (const id of m.relationIds) {
          const rel = this.relations.get(id);
          if (!rel || !this.tx || this.tx.skip) continue;
          const filter = this.filters.get(rel.target);
          const seen = this.snapshotSaw(rel.target)?.byChunk ?? [false];
          if (seen.every(Boolean)) continue;
          this.started();
          if (!filter || seen.every((s) => !s)) {
            this.batch.truncate(rel.target, this.tx.time);
          } else {
            // Only the chunks whose copies predate the truncate still hold rows it removed.
            const b = filter.bounds.map(String);
            const ranges = seen.flatMap((s, i) => (s ? [] : [{ lo: i === 0 ? null : b[i - 1]!, hi: i === b.length ? null : b[i]! }]));
            this.batch.truncate(rel.target, this.tx.time, ranges);
          }
        }
        return;
      default:
        return;
    }
  }

  /** An insert, update or delete (read in place: its tuples are the frame's, copied by the batch). */
  private handleChange(m: ChangeRef): void {
    const rel = this.relations.get(m.relationId);
    if (!rel || !this.tx || this.tx.skip) return;
    if (m.tag === CHANGE_INSERT) {
      if (this.seen(rel, m.values)) return;
      this.started();
      this.batch.insertTuple(rel.target, rel.columns, m.values);
    } else if (m.tag === CHANGE_UPDATE) {
      const moved = m.hasOld && !sameKeyOf(rel.columns, m.old, m.values);
      // A key change is a delete of the old key and an upsert of the new one; with a chunked
      // snapshot the two keys may sit in chunks whose copies saw this transaction differently.
      const newSeen = this.seen(rel, m.values);
      const oldSeen = moved ? this.seen(rel, m.old) : newSeen;
      if (newSeen && oldSeen) return;
      this.started();
      if (newSeen) this.batch.delete(rel.target, this.key(rel, m.old), this.tx.time);
      else this.batch.updateTuple(rel.target, rel.columns, m.values, moved && !oldSeen ? m.old : undefined, this.tx.time);
    } else {
      if (!m.hasOld) throw new Error(`a delete on ${rel.target} arrived without its key`);
      if (this.seen(rel, m.old)) return;
      this.started();
      this.batch.deleteTuple(rel.target, rel.columns, m.old, this.tx.time);
    }
  }

  private started(): void {
    if (this.batch.empty) this.batchStartedAt = Date.now();
  }

  /** The table's snapshot (the chunk of it that holds this tuple's key) already has this transaction's change to the key. */
  private seen(rel: Relation, tuple: Tuple): boolean {
    const saw = this.snapshotSaw(rel.target);
    if (!saw) return false;
    // Most transactions are judged the same by every chunk: then the key is never decoded.
    return saw.same ?? saw.byChunk[chunkOf(this.filters.get(rel.target)!, this.key(rel, tuple)[0]!)]!;
  }

  /**
   * Per chunk of the table's snapshot copy, whether it already has the current transaction;
   * `same` when every chunk agrees (as for everything after the snapshot), so a change needs no
   * key lookup. Judged once per transaction and table; undefined for a table without a snapshot filter.
   */
  private snapshotSaw(target: string): { byChunk: boolean[]; same?: boolean } | undefined {
    const filter = this.filters.get(target);
    if (filter === undefined) return undefined;
    const tx = this.tx!;
    let saw = tx.seen.get(target);
    if (!saw) {
      const byChunk = seenByChunk(filter, tx.xid);
      saw = { byChunk, ...(byChunk.every(Boolean) ? { same: true } : byChunk.some(Boolean) ? {} : { same: false }) };
      tx.seen.set(target, saw);
    }
    return saw;
  }

  private key(rel: Relation, values: Tuple): string[] {
    return keyValues(rel.columns, values, rel.target);
  }

  private async relation(m: Extract<LogicalMessage, { tag: 'relation' }>): Promise<void> {
    const table = this.byName.get(`${m.schema}.${m.name}`);
    if (!table) return;
    const sourceNames = m.columns.map((c) => c.name);
    const names = destinationNames(sourceNames);
    const types = await typeNames(this.source, m.columns);
    const keyIndex = table.key.map((k) => {
      const i = sourceNames.indexOf(k);
      if (i < 0) throw ApplicationFailure.nonRetryable(`key column ${k} of ${table.source} is gone from the source table`, 'CdcKeyDropped');
      return i;
    });
    const destination = sourceNames.map((n) => names.get(n)!);
    this.relations.set(m.relationId, {
      target: table.target,
      names: destination,
      keyIndex,
      columns: new RowColumns(destination, keyIndex),
      shape: {
        source: table.source,
        target: table.target,
        key: table.key.map((k) => names.get(k)!),
        columns: sourceNames.map((n, i) => ({ name: names.get(n)!, type: types[i]! })),
      },
    });
  }
}
