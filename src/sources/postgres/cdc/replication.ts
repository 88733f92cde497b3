/**
 * One START_REPLICATION stream of a logical slot over pg's replication connection. pg sends the
 * command; from then on the socket's bytes are read here: into one buffer that the stream keeps
 * (the socket reads into a buffer of its own, so no buffer is allocated per read: a stream of
 * hundreds of megabytes would otherwise be as much external memory for the garbage collector to
 * account for, and a full collection every few batches), where CopyData frames are found in
 * place (no buffer, event or object per message), with real backpressure (the socket is paused
 * while sluice is busy applying a batch, and TCP holds the server back).
 *
 * Nothing here acknowledges anything on its own: the caller says which LSN is flushed
 * (`acknowledge`), and decides when a keepalive may move the slot.
 */
import { Socket } from 'node:net';
import pg from 'pg';
import type { Duplex } from 'node:stream';
import { literal } from '../../../postgres/sql';
import { quoteIdent } from '../../../schema/identifiers';
import { copyBytes } from '../../../destinations/postgres/binary-copy';
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
/** The socket's own read buffer (see ownReadSocket): the most one read takes. */
const READ_BYTES = 256 * 1024;
/** The stream's buffer to begin with; it grows to what the read-ahead and the largest frame need. */
const INITIAL_BUFFER_BYTES = 1024 * 1024;
/** Past this, the buffer grows by half what it needs rather than by twice it (see makeRoom). */
const HUGE_BYTES = 64 * 1024 * 1024;
/**
 * How long a reader that has read everything lets the socket gather bytes before it reads again.
 * A walsender sends every change by itself (one send per message), so a reader that waits on the
 * socket is woken for each few of them: a wake-up, a read and a stream event per few hundred
 * bytes for the reader, and for the walsender a wake-up of the reader and often a reschedule per
 * send. With the socket set aside for a moment the kernel queues what arrives (nobody waits on it,
 * so a send wakes nobody) and the next read takes it in one piece.
 */
const LINGER_MS = 2;
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
  /** Bytes received: [pos, end) not parsed yet; before pos, frames already returned. */
  private buf: Buffer = EMPTY;
  private pos = 0;
  private end = 0;
  private paused = false;
  private started = false;
  /** Set when the socket reads into a buffer of its own (ownReadSocket): it hands its reads to pg until the stream takes them. */
  private reader: OwnReadSocket | undefined;
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
  /** Bytes that arrived could not be kept (no memory for them): the stream has failed. */
  private dropped = false;
  /** The socket is set aside while bytes gather (see LINGER_MS). */
  private lingering = false;

  /**
   * The frame poll() found: its payload is frame[frameStart, frameEnd). Valid until the next poll
   * and until the event loop next runs (bytes arriving then may move it): use it, or copy it, at once.
   */
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
  static over(connection: { stream: Duplex; query(text: string): void }, text: string, readAheadBytes = DEFAULT_READ_AHEAD_BYTES, reader?: OwnReadSocket): ReplicationStream {
    const self = new ReplicationStream(undefined, text, readAheadBytes);
    self.reader = reader;
    self.submit(connection);
    return self;
  }

  /** `applicationName` names the reader in pg_stat_activity: how another run learns who holds the slot. */
  static async start(url: string, slot: string, publication: string, from: bigint, applicationName = 'sluice-cdc', readAheadBytes = DEFAULT_READ_AHEAD_BYTES): Promise<ReplicationStream> {
    let reader: OwnReadSocket | undefined;
    const client = new pg.Client({
      // A plain connection reads into a buffer of its own; a TLS one is read as TLS delivers it.
      stream: (config: { ssl?: unknown }) => (config.ssl ? new Socket() : (reader = ownReadSocket()).socket),
      connectionString: url,
      replication: 'database',
      application_name: applicationName,
      // pgoutput prints values with the walsender's settings: the same portable text the snapshot's COPY uses.
      // client_encoding: values are passed on as the bytes pgoutput sends, which it converts to the client's encoding.
      options: '-c timezone=UTC -c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8',
      // pg calls it with its connection's settings (its types say no arguments).
    } as unknown as pg.ClientConfig);
    client.on('error', () => undefined);
    await client.connect();
    const text = `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(from)} (proto_version '1', publication_names ${literal(quoteIdent(publication))})`;
    const self = new ReplicationStream(client, text, Math.min(MAX_READ_AHEAD_BYTES, Math.max(DEFAULT_READ_AHEAD_BYTES, readAheadBytes)));
    self.reader = reader;
    self.flushed = from;
    client.query(self);
    return self;
  }

  /** pg.Submittable: takes the socket over from pg's parser, then sends the command. */
  submit(connection: unknown): void {
    this.connection = connection as PgConnection;
    const socket = this.connection.stream;
    if (this.reader && this.reader.socket === socket) {
      // pg's parser keeps its 'data' listener, which hears nothing more until giveBack.
      this.reader.take(this.onRead);
    } else {
      this.reader = undefined;
      const listeners = socket.listeners('data') as ((chunk: Buffer) => void)[];
      if (listeners.length !== 1) throw new Error(`replication: expected pg's one reader of the socket, found ${listeners.length}`);
      this.pgData = listeners[0]!;
      socket.removeListener('data', this.pgData);
      socket.on('data', this.onData);
    }
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

  private readonly onData = (chunk: Buffer): void => this.append(chunk, chunk.length);
  private readonly onRead = (bytes: Buffer, n: number): void => this.append(bytes, n);

  /** Bytes received and not parsed yet. */
  private get queuedBytes(): number {
    return this.end - this.pos;
  }

  /** Adds bytes received (copied: a socket's own read buffer is read into again). */
  private append(bytes: Buffer, n: number): void {
    // Once bytes were dropped nothing after them may be parsed (a TLS socket still delivers what it buffered).
    if (this.dropped) return;
    if (this.buf.length - this.end < n) {
      try {
        this.makeRoom(n);
      } catch (err) {
        // In a socket callback a throw would end the process: the stream fails instead (retried).
        this.dropped = true;
        this.errors.push(err instanceof Error ? err : new Error(String(err)));
        this.connection.stream.destroy();
        this.wake();
        return;
      }
    }
    copyBytes(bytes, 0, n, this.buf, this.end);
    this.end += n;
    // Paused only with the frame being waited for whole: one row bigger than the read-ahead
    // must still arrive (the socket would otherwise never be read again).
    if (!this.paused && this.queuedBytes >= this.highWater && this.queuedBytes >= this.waitingFor) {
      this.paused = true;
      this.connection.stream.pause();
    }
    this.wake(true);
  }

  /**
   * Room for `n` more bytes after what is queued: the queued bytes move to the buffer's start,
   * or to a bigger buffer when twice what is needed (at once what a frame known to be coming
   * needs) is more than it holds. Either way a frame poll() returned before
   * is no longer where it was: a reader uses each frame before the event loop next runs (bytes
   * arrive only then).
   */
  private makeRoom(n: number): void {
    const queued = this.queuedBytes;
    const need = Math.max(queued + n, this.waitingFor);
    // A row of hundreds of megabytes gets half as much again, not twice itself.
    const size = Math.max(INITIAL_BUFFER_BYTES, need > HUGE_BYTES ? need + (need >> 1) : 2 * need);
    if (size <= this.buf.length) {
      this.buf.copy(this.buf, 0, this.pos, this.end);
    } else {
      const next = Buffer.allocUnsafe(size);
      this.buf.copy(next, 0, this.pos, this.end);
      this.buf = next;
    }
    this.pos = 0;
    this.end = queued;
  }

  /**
   * Called by poll(): with nothing queued, reads start again at the buffer's start (no bytes
   * move), and a buffer grown past what the read-ahead needs (for one huge row) is let go.
   */
  private compact(): void {
    if (this.pos === 0 || this.pos !== this.end) return;
    this.pos = this.end = 0;
    // The most the read-ahead needs: it is paused at highWater, with at most one more read queued.
    if (this.buf.length > 2 * (this.highWater + 2 * READ_BYTES)) this.buf = EMPTY;
  }

  /** Ends a wait() in progress (or the next one) early, as if it had timed out: the reader has something to do. */
  interrupt(): void {
    this.interrupted = true;
    this.wake();
  }

  /** `arrived`: bytes came in, which a reader letting bytes gather does not wake up for. */
  private wake(arrived = false): void {
    if (arrived && this.lingering) return;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private consumed(): void {
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
    this.compact();
    const buf = this.buf;
    for (;;) {
      if (this.end - this.pos < 5) return false;
      const code = buf[this.pos]!;
      const length = buf.readUInt32BE(this.pos + 1);
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
      if (this.end - this.pos < 1 + length) {
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
      this.consumed();
      if (code === COPY_BOTH_RESPONSE) {
        this.started = true;
        this.acknowledge(this.flushed, true);
        continue;
      }
      if (code !== COPY_DATA) continue;
      this.frame = buf;
      this.frameStart = start;
      this.frameEnd = end;
      return true;
    }
  }

  /** Hands the unparsed bytes and the socket back to pg's parser. */
  private giveBack(): void {
    const rest = Buffer.from(this.buf.subarray(this.pos, this.end));
    this.buf = EMPTY;
    this.pos = this.end = 0;
    const socket = this.connection.stream;
    this.handedBack = true;
    if (this.reader) {
      this.reader.release();
      socket.emit('data', rest);
    } else {
      socket.removeListener('data', this.onData);
      socket.on('data', this.pgData!);
      this.pgData!(rest);
    }
    if (this.paused) socket.resume();
    this.paused = false;
  }

  /** Waits up to `waitMs` for a frame: 'frame' (then poll), 'timeout', or 'end'. Throws what the server reported (slot in use, publication missing). */
  async wait(waitMs: number): Promise<'frame' | 'timeout' | 'end'> {
    const deadline = Date.now() + waitMs;
    let lingered = false;
    for (;;) {
      if (this.poll()) return 'frame';
      if (this.failure) throw this.failure;
      if (this.ended) return 'end';
      const left = deadline - Date.now();
      if (left <= 0 || this.interrupted) {
        this.interrupted = false;
        return 'timeout';
      }
      if (this.started && !this.paused && !lingered) {
        // Everything received is read: let the next bytes gather, then read them in one go (once
        // per wait: a stream with nothing to send is then waited on as usual, and the first bytes
        // after a quiet spell are read as they come).
        lingered = true;
        // Bytes arriving do not end this sleep (they are what it waits for); interrupt(), an error
        // or the end of the connection do.
        this.lingering = true;
        this.connection.stream.pause();
        await this.sleep(Math.min(LINGER_MS, left));
        this.lingering = false;
        if (!this.paused) this.connection.stream.resume();
        continue;
      }
      await this.sleep(left);
    }
  }

  /** Until `ms` have passed or wake() is called. */
  private async sleep(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((r) => {
      this.waiter = r;
      timer = setTimeout(r, ms);
    });
    clearTimeout(timer);
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

/**
 * A socket that reads into one buffer of its own (net.Socket's `onread`) instead of allocating
 * a buffer per read. Until take(), what it reads goes to pg's parser as 'data' events (copies:
 * the parser may keep a chunk); after it, to the sink, until release().
 */
export interface OwnReadSocket {
  readonly socket: Socket;
  take(sink: (bytes: Buffer, n: number) => void): void;
  release(): void;
}

export function ownReadSocket(): OwnReadSocket {
  let sink: ((bytes: Buffer, n: number) => void) | undefined;
  // `onread` is in Node's net.Socket options since 12.11 (its types only list it for connect()).
  const socket = new Socket({
    onread: {
      buffer: Buffer.allocUnsafe(READ_BYTES),
      callback: (n: number, bytes: Uint8Array) => {
        if (sink) sink(bytes as Buffer, n);
        else socket.emit('data', Buffer.from(bytes.subarray(0, n)));
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
  return {
    socket,
    take: (s) => (sink = s),
    release: () => (sink = undefined),
  };
}
