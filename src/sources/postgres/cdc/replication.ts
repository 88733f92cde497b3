/**
 * One START_REPLICATION stream of a logical slot over pg's replication connection. pg sends the
 * command; from then on the socket's bytes are read here: CopyData frames are found in place in
 * the socket's own chunks (no buffer, event or object per message), with real backpressure (the
 * socket is paused while sluice is busy applying a batch, and TCP holds the server back).
 *
 * Nothing here acknowledges anything on its own: the caller says which LSN is flushed
 * (`acknowledge`), and decides when a keepalive may move the slot.
 */
import pg from 'pg';
import type { Duplex } from 'node:stream';
import { literal } from '../../../postgres/sql';
import { quoteIdent } from '../../../schema/identifiers';
import { formatLsn, standbyStatus } from './pgoutput';

/**
 * Bytes read ahead of the consumer before the socket is paused, unless the caller asks for more.
 * A walsender held back by a full socket pays a slow path per message, so a reader should hold
 * at least what arrives while a batch commits.
 */
const DEFAULT_READ_AHEAD_BYTES = 8 * 1024 * 1024;
/** However much is asked for, at most this many bytes are held before the socket is paused. */
const MAX_READ_AHEAD_BYTES = 64 * 1024 * 1024;

const COPY_DATA = 0x64; // d
const COPY_BOTH_RESPONSE = 0x57; // W
const COPY_DONE = 0x63; // c
const ERROR_RESPONSE = 0x45; // E
const NOTICE_RESPONSE = 0x4e; // N
const PARAMETER_STATUS = 0x53; // S
const EMPTY = Buffer.alloc(0);
/** PostgreSQL never sends a message longer than this (1 GiB of data and its header). */
const MAX_MESSAGE_BYTES = 0x40000000 + 64 * 1024;

interface PgConnection {
  stream: Duplex;
  query(text: string): void;
}

export class ReplicationStream implements pg.Submittable {
  private connection!: PgConnection;
  /** pg's own reader of the socket, set aside while the stream runs and given back for an error. */
  private pgData: ((chunk: Buffer) => void) | undefined;
  /** Socket chunks received and not parsed yet, the one being parsed first. */
  private readonly chunks: Buffer[] = [];
  private head = 0;
  /** Where the first queued chunk starts (a frame that ended inside it took its first bytes). */
  private headOffset = 0;
  private cur: Buffer = EMPTY;
  private pos = 0;
  /** Bytes received and not yet parsed. */
  private queuedBytes = 0;
  private paused = false;
  private started = false;
  /** The socket is pg's again (an error or the end of the copy follows from its parser). */
  private handedBack = false;
  private waiter: (() => void) | undefined;
  private interrupted = false;
  /** What went wrong, in order: the socket, pg's parser (a server error, the connection ending). */
  private readonly errors: Error[] = [];
  private ended = false;
  /** The size of the frame at the head of the queue that has not fully arrived (0: none). */
  private waitingFor = 0;
  /** The last position acknowledged, resent with the pings. */
  private flushed = 0n;

  /** The frame poll() found: its payload is frame[frameStart, frameEnd). Valid until the next poll. */
  frame: Buffer = EMPTY;
  frameStart = 0;
  frameEnd = 0;

  private constructor(
    private readonly client: pg.Client | undefined,
    private readonly text: string,
    private readonly highWater: number,
  ) {}

  /**
   * A stream over a connection that pg has already set up (its `stream` and `query`), as pg's
   * client hands it to submit(): what start() does once connected, and what a test drives with a
   * socket of its own.
   */
  static over(connection: { stream: Duplex; query(text: string): void }, text: string, readAheadBytes = DEFAULT_READ_AHEAD_BYTES): ReplicationStream {
    const self = new ReplicationStream(undefined, text, readAheadBytes);
    self.submit(connection);
    return self;
  }

  /** `applicationName` names the reader in pg_stat_activity: how another run learns who holds the slot. */
  static async start(url: string, slot: string, publication: string, from: bigint, applicationName = 'sluice-cdc', readAheadBytes = DEFAULT_READ_AHEAD_BYTES): Promise<ReplicationStream> {
    const client = new pg.Client({
      connectionString: url,
      replication: 'database',
      application_name: applicationName,
      // pgoutput prints values with the walsender's settings: the same portable text the snapshot's COPY uses.
      // client_encoding: values are passed on as the bytes pgoutput sends, which it converts to the client's encoding.
      options: '-c timezone=UTC -c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8',
    } as pg.ClientConfig);
    client.on('error', () => undefined);
    await client.connect();
    const text = `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(from)} (proto_version '1', publication_names ${literal(quoteIdent(publication))})`;
    const self = new ReplicationStream(client, text, Math.min(MAX_READ_AHEAD_BYTES, Math.max(DEFAULT_READ_AHEAD_BYTES, readAheadBytes)));
    self.flushed = from;
    client.query(self);
    return self;
  }

  /** pg.Submittable: takes the socket over from pg's parser, then sends the command. */
  submit(connection: unknown): void {
    this.connection = connection as PgConnection;
    const socket = this.connection.stream;
    const listeners = socket.listeners('data') as ((chunk: Buffer) => void)[];
    if (listeners.length !== 1) throw new Error(`replication: expected pg's one reader of the socket, found ${listeners.length}`);
    this.pgData = listeners[0]!;
    socket.removeListener('data', this.pgData);
    socket.on('data', this.onData);
    socket.on('error', (err: Error) => {
      this.errors.push(err);
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    this.connection.query(this.text);
  }

  // pg calls these once its parser has the socket back (an ErrorResponse, then ReadyForQuery).
  handleError(err: Error): void {
    this.errors.push(err);
    this.wake();
  }

  /**
   * The error to report: the server's own (with its SQLSTATE, such as 55006 for a slot in use or
   * 57P01 for a terminated walsender) over the socket closing or pg noticing the connection end.
   */
  private get failure(): Error | undefined {
    return this.errors.find((e) => /^[0-9A-Z]{5}$/.test(String((e as { code?: unknown }).code))) ?? this.errors[0];
  }
  handleReadyForQuery(): void {
    this.ended = true;
    this.wake();
  }
  handleCommandComplete(): void {}
  handleCopyData(): void {}
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handleCopyInResponse(): void {}
  handlePortalSuspended(): void {}
  callback(): void {}

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.queuedBytes += chunk.length;
    // Paused only with the frame being waited for whole: one row bigger than the read-ahead
    // must still arrive (the socket would otherwise never be read again).
    if (!this.paused && this.queuedBytes >= this.highWater && this.queuedBytes >= this.waitingFor) {
      this.paused = true;
      this.connection.stream.pause();
    }
    this.wake();
  };

  /** Ends a wait() in progress (or the next one) early, as if it had timed out: the reader has something to do. */
  interrupt(): void {
    this.interrupted = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Makes at least `n` bytes contiguous in `cur` from `pos` (false when fewer have arrived). */
  private gather(n: number): boolean {
    if (this.cur.length - this.pos >= n) return true;
    let have = this.cur.length - this.pos;
    for (let i = this.head; i < this.chunks.length && have < n; i++) have += this.chunks[i]!.length - (i === this.head ? this.headOffset : 0);
    if (have < n) return false;
    // A frame across socket reads: only its own bytes are joined, and the next read goes on
    // from where the frame ends in it.
    const parts = [this.cur.subarray(this.pos)];
    let need = n - (this.cur.length - this.pos);
    while (need > 0) {
      const chunk = this.chunks[this.head]!;
      const take = Math.min(chunk.length - this.headOffset, need);
      parts.push(chunk.subarray(this.headOffset, this.headOffset + take));
      this.headOffset += take;
      need -= take;
      if (this.headOffset === chunk.length) {
        this.head++;
        this.headOffset = 0;
      }
    }
    this.cur = Buffer.concat(parts);
    this.pos = 0;
    this.trim();
    return true;
  }

  private trim(): void {
    if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }

  private consumed(bytes: number): void {
    this.queuedBytes -= bytes;
    if (this.paused && this.queuedBytes <= this.highWater / 4) {
      this.paused = false;
      this.connection.stream.resume();
      this.acknowledge(this.flushed, true);
    }
  }

  /**
   * The next CopyData frame already received, without waiting: true when `frame`,
   * `frameStart` and `frameEnd` now hold one. A reader drains what has arrived without paying a
   * promise per message.
   */
  poll(): boolean {
    if (this.handedBack) return false;
    for (;;) {
      if (this.pos >= this.cur.length) {
        // Chunks that came before the socket closed are still read: an error the server sent
        // before closing (FATAL, with its SQLSTATE) is among them.
        if (this.head >= this.chunks.length) return false;
        this.cur = this.chunks[this.head++]!;
        this.pos = this.headOffset;
        this.headOffset = 0;
        this.trim();
      }
      if (!this.gather(5)) return false;
      const code = this.cur[this.pos]!;
      const length = this.cur.readUInt32BE(this.pos + 1);
      if (code === ERROR_RESPONSE || (code !== COPY_DATA && code !== COPY_BOTH_RESPONSE && code !== NOTICE_RESPONSE && code !== PARAMETER_STATUS)) {
        // An error (slot in use, publication missing), or the end of the copy: pg's parser reads
        // the rest and reports it to handleError / handleReadyForQuery.
        if (code === COPY_DONE) this.ended = true;
        this.giveBack();
        return false;
      }
      if (length < 4 || length > MAX_MESSAGE_BYTES) {
        this.errors.unshift(new Error(`replication: a message of ${length} bytes (code ${code}) is not one PostgreSQL sends`));
        this.handedBack = true;
        return false;
      }
      if (!this.gather(1 + length)) {
        this.waitingFor = 1 + length;
        if (this.paused && this.queuedBytes < this.waitingFor) {
          this.paused = false;
          this.connection.stream.resume();
        }
        return false;
      }
      this.waitingFor = 0;
      const start = this.pos + 5;
      const end = this.pos + 1 + length;
      this.pos = end;
      this.consumed(1 + length);
      if (code === COPY_BOTH_RESPONSE) {
        this.started = true;
        this.acknowledge(this.flushed, true);
        continue;
      }
      if (code !== COPY_DATA) continue;
      this.frame = this.cur;
      this.frameStart = start;
      this.frameEnd = end;
      return true;
    }
  }

  /** Hands the unparsed bytes and the socket back to pg's parser. */
  private giveBack(): void {
    const rest = Buffer.concat([this.cur.subarray(this.pos), ...this.chunks.slice(this.head).map((c, i) => (i === 0 ? c.subarray(this.headOffset) : c))]);
    this.cur = EMPTY;
    this.pos = 0;
    this.chunks.length = 0;
    this.head = 0;
    this.headOffset = 0;
    const socket = this.connection.stream;
    socket.removeListener('data', this.onData);
    socket.on('data', this.pgData!);
    this.handedBack = true;
    this.pgData!(rest);
    if (this.paused) socket.resume();
    this.paused = false;
  }

  /** Waits up to `waitMs` for a frame: 'frame' (then poll), 'timeout', or 'end'. Throws what the server reported (slot in use, publication missing). */
  async wait(waitMs: number): Promise<'frame' | 'timeout' | 'end'> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (this.poll()) return 'frame';
      if (this.failure) throw this.failure;
      if (this.ended) return 'end';
      const left = deadline - Date.now();
      if (left <= 0 || this.interrupted) {
        this.interrupted = false;
        return 'timeout';
      }
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((r) => {
        this.waiter = r;
        timer = setTimeout(r, left);
      });
      clearTimeout(timer);
    }
  }

  /** Tells the server everything up to `lsn` is durable here; the slot's confirmed_flush_lsn follows. */
  acknowledge(lsn: bigint, replyRequested = false): void {
    if (lsn > this.flushed) this.flushed = lsn;
    if (!this.started || this.ended || this.errors.length) return;
    const status = standbyStatus(this.flushed, replyRequested);
    const frame = Buffer.allocUnsafe(5 + status.length);
    frame[0] = COPY_DATA;
    frame.writeUInt32BE(4 + status.length, 1);
    status.copy(frame, 5);
    this.connection.stream.write(frame);
  }

  async close(): Promise<void> {
    this.ended = true;
    // Destroying the socket ends the walsender at once (a CopyDone would first drain whatever
    // the server still sends); the slot is free for the next reader.
    this.connection?.stream.destroy();
    await this.client?.end().catch(() => undefined);
  }
}
