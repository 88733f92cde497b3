/**
 * One START_REPLICATION stream of a logical slot over pg's replication connection, through
 * pg-copy-streams' copy-both duplex (one chunk per CopyData message, real backpressure: the
 * socket is not read while sluice is busy applying a batch).
 *
 * Nothing here acknowledges anything on its own: the caller says which LSN is flushed
 * (`acknowledge`), and decides when a keepalive may move the slot.
 */
import pg from 'pg';
import * as copyStreams from 'pg-copy-streams';
import type { Duplex } from 'node:stream';
import { literal } from '../../../postgres/sql';
import { quoteIdent } from '../../../schema/identifiers';
import { decodeReplicationMessage, formatLsn, standbyStatus, type ReplicationMessage } from './pgoutput';

// @types/pg-copy-streams lacks the copy-both stream the package has shipped since 5.x.
const copyBoth = (copyStreams as unknown as { both(text: string, options: { alignOnCopyDataFrame: boolean }): Duplex & pg.Submittable }).both;

/**
 * Messages read ahead of the consumer before the socket is paused (TCP then holds the server
 * back), unless the caller asks for more. A walsender held back by a full socket pays a slow path
 * per message, so a reader should hold at least what arrives while a batch commits.
 */
const DEFAULT_READ_AHEAD = 20_000;
/** However many messages that is, at most this many bytes are held before the socket is paused. */
const READ_AHEAD_BYTES = 64 * 1024 * 1024;

export class ReplicationStream {
  private stream!: Duplex;
  private readonly queue: Buffer[] = [];
  private head = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  private ended = false;
  private paused = false;
  /** The last position acknowledged, resent with the pings. */
  private flushed = 0n;

  private readonly lowWater: number;
  /** Bytes of the messages queued and not taken yet. */
  private queuedBytes = 0;

  private constructor(
    private readonly client: pg.Client,
    private readonly highWater: number,
  ) {
    this.lowWater = Math.max(1, Math.floor(highWater / 10));
  }

  /** `applicationName` names the reader in pg_stat_activity: how another run learns who holds the slot. */
  static async start(url: string, slot: string, publication: string, from: bigint, applicationName = 'sluice-cdc', readAhead = DEFAULT_READ_AHEAD): Promise<ReplicationStream> {
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
    const self = new ReplicationStream(client, Math.max(DEFAULT_READ_AHEAD, readAhead));
    self.flushed = from;
    const text = `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(from)} (proto_version '1', publication_names ${literal(quoteIdent(publication))})`;
    self.stream = client.query(copyBoth(text, { alignOnCopyDataFrame: true }));
    // Flowing mode with our own queue: pg-copy-streams' copy-both only parses what it has
    // buffered when new bytes arrive from the socket, so a paused reader can stall on messages
    // it already holds. Pings (status updates that ask for a reply) make the server send bytes.
    self.stream.on('data', (chunk: Buffer) => {
      self.queue.push(chunk);
      self.queuedBytes += chunk.length;
      if (!self.paused && (self.queue.length - self.head >= self.highWater || self.queuedBytes >= READ_AHEAD_BYTES)) {
        self.paused = true;
        self.stream.pause();
      }
      self.wake();
    });
    self.stream.on('error', (err: Error) => {
      self.failure ??= err;
      self.wake();
    });
    self.stream.on('end', () => {
      self.ended = true;
      self.wake();
    });
    return self;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private take(): Buffer | undefined {
    if (this.head >= this.queue.length) return undefined;
    const chunk = this.queue[this.head++]!;
    this.queuedBytes -= chunk.length;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    if (this.paused && this.queue.length - this.head <= this.lowWater && this.queuedBytes <= READ_AHEAD_BYTES / 10) {
      this.paused = false;
      this.stream.resume();
      this.acknowledge(this.flushed, true);
    }
    return chunk;
  }

  /**
   * The next message already received, without waiting (undefined when none is queued): a
   * reader drains what has arrived without paying a promise per message.
   */
  poll(): ReplicationMessage | undefined {
    for (;;) {
      const chunk = this.take();
      if (!chunk) return undefined;
      const message = decodeReplicationMessage(chunk);
      if (message) return message;
    }
  }

  /** The next message, or undefined when `waitMs` passes first. Throws what the server reported (slot in use, publication missing). */
  async next(waitMs: number): Promise<ReplicationMessage | undefined | 'end'> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const message = this.poll();
      if (message) return message;
      if (this.failure) throw this.failure;
      if (this.ended) return 'end';
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
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
    if (this.ended || this.failure) return;
    if (lsn > this.flushed) this.flushed = lsn;
    this.stream.write(standbyStatus(this.flushed, replyRequested));
  }

  async close(): Promise<void> {
    this.ended = true;
    // Destroying the socket ends the walsender at once (a CopyDone would first drain whatever
    // the server still sends); the slot is free for the next reader.
    (this.client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await this.client.end().catch(() => undefined);
  }
}
