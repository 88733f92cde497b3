import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ChangeBatch, ENTRY_UPSERT, RowColumns, RowValues, spansOf } from '../src/destinations/postgres/cdc-batch';
import { CopyBinaryWriter } from '../src/destinations/postgres/binary-copy';
import { CdcInput, parseInput } from '../src/inputs';
import { decodeLogicalMessage, decodeReplicationMessage, formatLsn, parseLsn, SPAN_NULL, SPAN_UNCHANGED, standbyStatus, UNCHANGED } from '../src/sources/postgres/cdc/pgoutput';
import { PassThrough } from 'node:stream';
import { createServer, type Socket as NetSocket } from 'node:net';
import { ownReadSocket, ReplicationStream } from '../src/sources/postgres/cdc/replication';
import { chunkOf, parseXidSnapshot, seenBySnapshot, seenForKey, widenXid } from '../src/sources/postgres/cdc/snapshot';
import { cdcNames } from '../src/workflows/cdc';
import { tupleOf, Wire } from './pgoutput-wire';

/** pgoutput's wire format, written by hand the way the server writes it. */
describe('pgoutput decoding', () => {
  test('relation, insert, update with unchanged TOAST and old key, delete, truncate, begin/commit', () => {
    const rel = decodeLogicalMessage(new Wire().char('R').i32(16385).str('public').str('docs').char('d').i16(2).u8(1).str('id').i32(23).i32(-1).u8(0).str('body').i32(25).i32(-1).done());
    assert.deepEqual(rel, {
      tag: 'relation', relationId: 16385, schema: 'public', name: 'docs', replicaIdentity: 'd',
      columns: [{ key: true, name: 'id', typeOid: 23, typeMod: -1 }, { key: false, name: 'body', typeOid: 25, typeMod: -1 }],
    });
    const ins = decodeLogicalMessage(new Wire().char('I').i32(16385).char('N').i16(2).text('1').char('n').done());
    assert.ok(ins.tag === 'insert');
    assert.deepEqual({ ...ins, values: ins.values.values() }, { tag: 'insert', relationId: 16385, values: ['1', null] });
    const upd = decodeLogicalMessage(new Wire().char('U').i32(16385).char('K').i16(2).text('1').char('n').char('N').i16(2).text('2').char('u').done());
    assert.ok(upd.tag === 'update');
    assert.deepEqual({ ...upd, old: upd.old?.values(), values: upd.values.values() }, { tag: 'update', relationId: 16385, old: ['1', null], values: ['2', UNCHANGED] });
    const del = decodeLogicalMessage(new Wire().char('D').i32(16385).char('K').i16(2).text('2').char('n').done());
    assert.ok(del.tag === 'delete');
    assert.deepEqual({ ...del, old: del.old.values() }, { tag: 'delete', relationId: 16385, old: ['2', null] });
    const tr = decodeLogicalMessage(new Wire().char('T').i32(2).u8(1).i32(1).i32(2).done());
    assert.deepEqual(tr, { tag: 'truncate', relationIds: [1, 2], cascade: true, restartIdentity: false });
    const begin = decodeLogicalMessage(new Wire().char('B').u64(0x100n).u64(0n).i32(42).done());
    assert.deepEqual(begin, { tag: 'begin', finalLsn: 0x100n, commitTime: new Date('2000-01-01T00:00:00Z'), xid: 42 });
    const commit = decodeLogicalMessage(new Wire().char('C').u8(0).u64(0x100n).u64(0x130n).u64(1_000_000n).done());
    assert.deepEqual(commit, { tag: 'commit', commitLsn: 0x100n, endLsn: 0x130n, commitTime: new Date('2000-01-01T00:00:01Z') });
  });

  test('XLogData and keepalive frames; a standby status update carries exactly the LSN given', () => {
    const xlog = decodeReplicationMessage(new Wire().char('w').u64(5n).u64(9n).u64(0n).char('C').u8(0).u64(1n).u64(2n).u64(0n).done());
    assert.equal(xlog?.tag, 'xlog');
    if (xlog?.tag !== 'xlog') throw new Error('not xlog');
    assert.equal(xlog.walStart, 5n);
    assert.equal(xlog.walEnd, 9n);
    assert.deepEqual(xlog.message, { tag: 'commit', commitLsn: 1n, endLsn: 2n, commitTime: new Date('2000-01-01T00:00:00Z') });
    const keepalive = decodeReplicationMessage(new Wire().char('k').u64(0x1234n).u64(0n).u8(1).done());
    assert.deepEqual(keepalive, { tag: 'keepalive', walEnd: 0x1234n, replyRequested: true });
    const status = standbyStatus(0x1_0000_00ffn, false);
    assert.equal(status.length, 34);
    assert.equal(String.fromCharCode(status[0]!), 'r');
    for (const offset of [1, 9, 17]) assert.equal(status.readBigUInt64BE(offset), 0x1_0000_00ffn, 'never LSN + 1, never the last received');
  });

  test('LSN text form', () => {
    assert.equal(parseLsn('16/B374D848'), 0x16b374d848n);
    assert.equal(formatLsn(0x16b374d848n), '16/B374D848');
    assert.equal(formatLsn(parseLsn('0/0')), '0/0');
    assert.throws(() => parseLsn('16-B3'), /not an LSN/);
  });
});

/** A protocol message as the server frames it: its code, its length, its payload. */
function message(code: string, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(code, 0, 'latin1');
  header.writeUInt32BE(4 + payload.length, 1);
  return Buffer.concat([header, payload]);
}

describe('ReplicationStream: CopyData frames found in place in the bytes received', () => {
  /** A socket as pg leaves it: its one 'data' reader is pg's parser (here, a recorder). */
  function socket() {
    const s = new PassThrough() as PassThrough & { written: Buffer[] };
    s.written = [];
    s.write = ((chunk: Buffer) => (s.written.push(chunk), true)) as typeof s.write;
    return s;
  }
  test('every frame arrives whole whatever the socket reads look like; an error goes back to pg with the bytes after the frames', () => {
    const payloads = Array.from({ length: 40 }, (_, i) => new Wire().char('w').u64(BigInt(i)).u64(BigInt(i)).u64(0n).char('I').i32(1).char('N').i16(2).text(String(i)).text('x'.repeat(i * 7)).done());
    payloads.push(new Wire().char('k').u64(99n).u64(0n).u8(1).done());
    const error = message('E', Buffer.from('SERROR\0C55006\0Mslot is active\0\0'));
    const bytes = Buffer.concat([message('W', Buffer.from([0, 0, 0])), message('S', Buffer.from('a\0b\0')), ...payloads.map((p) => message('d', p)), error]);
    for (const size of [1, 2, 3, 5, 7, 64, 300, bytes.length]) {
      const s = socket();
      const handedBack: Buffer[] = [];
      s.on('data', (chunk: Buffer) => handedBack.push(chunk));
      const queries: string[] = [];
      const stream = ReplicationStream.over({ stream: s, query: (text) => queries.push(text) }, 'START_REPLICATION ...');
      assert.deepEqual(queries, ['START_REPLICATION ...']);
      const got: Buffer[] = [];
      for (let at = 0; at < bytes.length; at += size) {
        s.emit('data', bytes.subarray(at, at + size));
        while (stream.poll()) got.push(Buffer.from(stream.frame.subarray(stream.frameStart, stream.frameEnd)));
      }
      assert.equal(got.length, payloads.length, `reads of ${size} bytes`);
      got.forEach((g, i) => assert.ok(g.equals(payloads[i]!), `frame ${i} with reads of ${size} bytes`));
      assert.ok(Buffer.concat(handedBack).equals(error), 'pg parses the error (and reports it to the stream)');
      assert.equal(s.written.length, 1, 'one status update, sent once the copy started');
      assert.equal(String.fromCharCode(s.written[0]![5]!), 'r');
    }
  });
});

describe('ReplicationStream: backpressure and the end of a stream', () => {
  /** An XLogData frame of `n` bytes of logical message (an 'M' message: nothing to apply). */
  const xlog = (n: number) => {
    const p = Buffer.alloc(25 + n, 0x41);
    p[0] = 0x77;
    p[25] = 0x4d;
    return message('d', p);
  };
  test('a row bigger than the whole read-ahead still arrives: the socket is paused only with whole frames queued', async () => {
    const s = new PassThrough();
    s.write = (() => true) as typeof s.write;
    s.on('data', () => undefined); // pg's parser
    const stream = ReplicationStream.over({ stream: s, query: () => undefined }, 'START_REPLICATION ...', 16 * 1024);
    const wire = Buffer.concat([message('W', Buffer.from([0, 0, 0])), ...Array.from({ length: 30 }, () => xlog(1000)), xlog(200_000), xlog(10)]);
    // The kernel: 4 KiB reads while the socket is not paused, as TCP delivers them.
    let at = 0;
    const pump = () => {
      while (!s.isPaused() && at < wire.length) {
        s.emit('data', wire.subarray(at, at + 4096));
        at += 4096;
      }
    };
    const resume = s.resume.bind(s);
    s.resume = (() => {
      const r = resume();
      setImmediate(pump);
      return r;
    }) as typeof s.resume;
    pump();
    assert.ok(at < wire.length, 'the socket was paused before everything arrived');
    const sizes: number[] = [];
    while (sizes.length < 32) {
      const r = await stream.wait(2_000);
      assert.equal(r, 'frame', `frame ${sizes.length + 1} arrives (${at} of ${wire.length} bytes delivered)`);
      sizes.push(stream.frameEnd - stream.frameStart);
    }
    assert.deepEqual(sizes.slice(29), [1025, 200_025, 35]);
  });
  test('an error the server sent before closing is still handed to pg, so its SQLSTATE is what fails the stream', async () => {
    const s = new PassThrough();
    s.write = (() => true) as typeof s.write;
    const toPg: Buffer[] = [];
    s.on('data', (c: Buffer) => toPg.push(c));
    const stream = ReplicationStream.over({ stream: s, query: () => undefined }, 'START_REPLICATION ...');
    s.emit('data', Buffer.concat([message('W', Buffer.from([0, 0, 0])), xlog(10)]));
    assert.equal(stream.poll(), true);
    const fatal = message('E', Buffer.from('SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0'));
    s.emit('data', fatal);
    s.emit('close');
    // pg's parser, handed the bytes, reports the server's error; the socket closing was first.
    stream.handleError(new Error('Connection terminated unexpectedly'));
    assert.equal(stream.poll(), false);
    assert.ok(Buffer.concat(toPg).equals(fatal), 'the FATAL message went to pg');
    stream.handleError(Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }));
    await assert.rejects(stream.wait(100), (err: Error & { code?: string }) => err.code === '57P01');
  });
  test('a frame length PostgreSQL never sends fails the stream instead of losing its place', async () => {
    const s = new PassThrough();
    s.write = (() => true) as typeof s.write;
    s.on('data', () => undefined);
    const stream = ReplicationStream.over({ stream: s, query: () => undefined }, 'START_REPLICATION ...');
    s.emit('data', Buffer.concat([message('W', Buffer.from([0, 0, 0])), Buffer.from([0x64, 0, 0, 0, 1, 0x6b])]));
    assert.equal(stream.poll(), false);
    await assert.rejects(stream.wait(100), /a message of 1 bytes/);
  });
});

describe('ReplicationStream over a socket that reads into a buffer of its own', () => {
  test('pg reads the startup, the stream every frame after it (in order, whole, through backpressure), and pg the error at the end', async () => {
    // A server: a startup reply, then (once START_REPLICATION is sent) CopyBoth, frames of every
    // size in writes of every size, and an ErrorResponse.
    const startup = Buffer.concat([message('R', Buffer.from([0, 0, 0, 0])), message('Z', Buffer.from('I'))]);
    const payloads = Array.from({ length: 3000 }, (_, i) => {
      const p = Buffer.alloc(26 + ((i * 97) % 5000) + (i === 1500 ? 300_000 : 0), i % 251);
      p[0] = 0x77;
      p.writeUInt32BE(i, 1);
      return p;
    });
    const error = message('E', Buffer.from('SERROR\0C55006\0Mslot is active\0\0'));
    const wire = Buffer.concat([message('W', Buffer.from([0, 0, 0])), ...payloads.map((p) => message('d', p)), error]);
    let serverSide: NetSocket | undefined;
    const server = createServer((socket) => {
      serverSide = socket;
      socket.write(startup);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const reader = ownReadSocket();
    const toPg: Buffer[] = [];
    reader.socket.on('data', (c: Buffer) => toPg.push(c));
    reader.socket.on('error', () => undefined);
    reader.socket.connect((server.address() as { port: number }).port, '127.0.0.1');
    try {
      while (Buffer.concat(toPg).length < startup.length) await new Promise((r) => setTimeout(r, 5));
      assert.ok(Buffer.concat(toPg).equals(startup), 'the startup went to pg, as it arrived');
      toPg.length = 0;
      const stream = ReplicationStream.over(
        {
          stream: reader.socket,
          query: () => {
            // Writes of 1 byte to 64 KiB: frames split anywhere, the socket read whenever it is.
            let at = 0;
            const pump = () => {
              for (let k = 0; k < 20 && at < wire.length; k++) {
                const n = [1, 7, 300, 4096, 65536][(at + k) % 5]!;
                serverSide!.write(wire.subarray(at, at + n));
                at += n;
              }
              if (at < wire.length) setImmediate(pump);
            };
            pump();
          },
        },
        'START_REPLICATION ...',
        256 * 1024,
        reader,
      );
      const got: number[] = [];
      while (got.length < payloads.length) {
        assert.equal(await stream.wait(10_000), 'frame', `frame ${got.length} arrives`);
        const p = payloads[got.length]!;
        assert.ok(stream.frame.subarray(stream.frameStart, stream.frameEnd).equals(p), `frame ${got.length} arrives whole`);
        got.push(stream.frame.readUInt32BE(stream.frameStart + 1));
        // A slow consumer now and then: the socket is paused and resumed under it.
        if (got.length % 500 === 0) await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(got, payloads.map((_, i) => i), 'every frame, in order');
      assert.equal(stream.poll(), false);
      while (Buffer.concat(toPg).length < error.length) await new Promise((r) => setTimeout(r, 5));
      assert.ok(Buffer.concat(toPg).equals(error), 'pg parses the error after the frames, and nothing else of the stream');
    } finally {
      reader.socket.destroy();
      server.close();
    }
  });
});

describe('snapshot visibility by xid', () => {
  const snap = parseXidSnapshot('100:110:103,107');
  test('committed before xmin: seen; in xip or at/after xmax: not seen; between and not in xip: seen', () => {
    assert.equal(seenBySnapshot(99, snap), true);
    assert.equal(seenBySnapshot(101, snap), true);
    assert.equal(seenBySnapshot(103, snap), false);
    assert.equal(seenBySnapshot(107, snap), false);
    assert.equal(seenBySnapshot(110, snap), false);
    assert.equal(seenBySnapshot(5000, snap), false);
  });
  test('32-bit xids are placed in the epoch nearest the snapshot', () => {
    const epoch1 = (1n << 32n) + 10n;
    assert.equal(widenXid(5, epoch1), (1n << 32n) + 5n);
    assert.equal(widenXid(0xfffffff0, epoch1), 0xfffffff0n, 'just before the wraparound');
    const near = { xmin: String((1n << 32n) - 5n), xmax: String((1n << 32n) + 2n), xip: [] };
    assert.equal(seenBySnapshot(1, near), true, 'xid 1 of the new epoch is below xmax');
    assert.equal(seenBySnapshot(3, near), false, 'xid 3 of the new epoch is at or past xmax');
  });
});

describe('chunked snapshot filter', () => {
  const filter = { bounds: [100n, 200n], xids: [parseXidSnapshot('10:10:'), parseXidSnapshot('20:20:'), parseXidSnapshot('30:30:')] };
  test('a key falls in the chunk [bound before, next bound): below the first, between, at and past the last', () => {
    assert.deepEqual(['-5', '99', '100', '199', '200', '9000000000000'].map((k) => chunkOf(filter, k)), [0, 0, 1, 1, 2, 2]);
    assert.equal(chunkOf({ bounds: [], xids: [filter.xids[0]!] }, 'not-a-number'), 0, 'a table copied whole needs no integer key');
  });
  test('whether a transaction is in the copy depends on the chunk of the key it changed', () => {
    // xid 15 committed after chunk 0's snapshot (xmax 10) and before chunks 1 and 2 were taken.
    assert.deepEqual(['5', '150', '250'].map((k) => seenForKey(filter, 15, k)), [false, true, true]);
    assert.deepEqual(['5', '150', '250'].map((k) => seenForKey(filter, 25, k)), [false, false, true]);
  });
});

describe('ChangeBatch', () => {
  const at = new Date('2024-01-01T00:00:00Z');
  const v = (o: Record<string, string | null>) => new Map(Object.entries(o));
  test('last change per key wins; updates merge into the earlier change of their key, keeping what they did not carry', () => {
    const b = new ChangeBatch();
    b.insert('t', ['1'], v({ id: '1', body: 'big', n: '0' }));
    b.update('t', ['1'], v({ id: '1', n: '1' }), undefined, at);
    b.update('t', ['2'], v({ id: '2', n: '5' }), undefined, at);
    b.insert('t', ['3'], v({ id: '3', body: 'x', n: '0' }));
    b.delete('t', ['3'], at);
    const rows = b.tables.get('t')!.rows;
    assert.deepEqual(rows.get('1'), { op: 'upsert', key: ['1'], values: v({ id: '1', body: 'big', n: '1' }) });
    assert.deepEqual(rows.get('2'), { op: 'upsert', key: ['2'], values: v({ id: '2', n: '5' }) }, 'body absent: the destination keeps its own');
    assert.equal(rows.get('3')!.op, 'delete');
    assert.deepEqual(b.tables.get('t')!.counts, { inserts: 2, updates: 2, deletes: 1, truncates: 0 });
    assert.equal(b.changes, 5);
  });
  test('a key change deletes the old key; a truncate voids what came before it in the batch', () => {
    const b = new ChangeBatch();
    b.insert('t', ['1'], v({ id: '1', n: '0' }));
    b.update('t', ['9'], v({ id: '9', n: '1' }), ['1'], at);
    const rows = b.tables.get('t')!.rows;
    assert.equal(rows.get('1')!.op, 'delete');
    assert.deepEqual(rows.get('9'), { op: 'upsert', key: ['9'], values: v({ id: '9', n: '1' }), from: ['1'] });
    b.truncate('t', at);
    b.insert('t', ['4'], v({ id: '4', n: '4' }));
    assert.deepEqual([...b.tables.get('t')!.rows.keys()], ['4']);
    assert.equal(b.tables.get('t')!.truncatedAt, at);
  });
});

describe('Tuple: values decoded only when asked', () => {
  test('spans point at each value\'s bytes; null and unchanged have their own marks, the same as the apply engine reads', () => {
    const t = tupleOf(['1', null, UNCHANGED, 'tab\there', '']);
    const spans = spansOf(t);
    assert.equal(t.buf.toString('utf8', spans[0]!, spans[0]! + spans[1]!), '1');
    assert.deepEqual([spans[2], spans[4]], [SPAN_NULL, SPAN_UNCHANGED]);
    assert.equal(t.buf.toString('utf8', spans[6]!, spans[6]! + spans[7]!), 'tab\there');
    assert.equal(spans[9], 0, 'an empty string is a value of length 0, not a null');
    assert.deepEqual(t.values(), ['1', null, UNCHANGED, 'tab\there', '']);
    assert.throws(() => t.value(5), RangeError);
  });
  test('a detached tuple holds its own bytes only, with the same values', () => {
    const t = tupleOf(['42', null, UNCHANGED, 'ünï']);
    const own = t.detach();
    assert.deepEqual(own.values(), t.values());
    assert.equal(own.buf.length, t.end - t.start, 'not the whole frame');
    t.buf.fill(0);
    assert.deepEqual(own.values(), ['42', null, UNCHANGED, 'ünï'], 'the frame can be reused');
  });
  test('a value whose length runs past its message is refused', () => {
    assert.throws(() => decodeLogicalMessage(new Wire().char('I').i32(1).char('N').i16(1).char('t').i32(50).bytes(Buffer.from('short')).done()), RangeError);
  });
});

describe('CopyBinaryWriter', () => {
  /** The fields of each tuple of a binary COPY stream (null for a null field). */
  function readCopy(data: Buffer): (string | null)[][] {
    assert.equal(data.subarray(0, 11).toString('latin1'), 'PGCOPY\n\xff\r\n\0', 'signature');
    assert.equal(data.readInt32BE(11), 0, 'flags');
    let p = 15 + 4 + data.readInt32BE(15);
    const rows: (string | null)[][] = [];
    for (;;) {
      const n = data.readInt16BE(p);
      p += 2;
      if (n === -1) break;
      const row: (string | null)[] = [];
      for (let i = 0; i < n; i++) {
        const len = data.readInt32BE(p);
        p += 4;
        row.push(len < 0 ? null : data.toString('utf8', p, p + len));
        if (len > 0) p += len;
      }
      rows.push(row);
    }
    assert.equal(p, data.length, 'nothing after the trailer');
    return rows;
  }
  test('writes tuples of fields as lengths and bytes, unescaped, from strings and from bytes, across chunks of any size', () => {
    const w = new CopyBinaryWriter(8);
    const hostile = 'a\\b\tc\nd\re ünïcödé 🚀 \\N';
    const chunks: Buffer[] = [];
    for (let r = 0; r < 3; r++) {
      w.row(6);
      w.ascii('u');
      w.text(hostile);
      w.bytes(Buffer.from(`xx${hostile}yy`), 2, Buffer.byteLength(hostile));
      w.text('');
      w.nullField();
      w.bytes(Buffer.alloc(200, 0x41), 0, 200);
      if (r === 1) chunks.push(w.take());
    }
    w.row(3);
    w.nulls(2);
    w.text(null);
    w.trailer();
    chunks.push(w.take());
    assert.equal(w.length, 0, 'take starts a new buffer');
    const row = ['u', hostile, hostile, '', null, 'A'.repeat(200)];
    assert.deepEqual(readCopy(Buffer.concat(chunks)), [row, row, row, [null, null, null]]);
  });
});

describe('RowValues: a change as its tuple arrived', () => {
  const columns = new RowColumns(['id', 'body', 'n']);
  test('reads like a map of the values it carries; an unchanged TOAST value and a SQL NULL are different things', () => {
    const row = new RowValues(columns, tupleOf(['1', UNCHANGED, null]));
    assert.deepEqual([row.has('id'), row.has('body'), row.has('n'), row.has('nope')], [true, false, true, false]);
    assert.deepEqual([row.get('id'), row.get('body'), row.get('n'), row.get('nope')], ['1', undefined, null, undefined]);
    assert.deepEqual([...row], [['id', '1'], ['n', null]]);
    assert.deepEqual([...row.keys()], ['id', 'n']);
    assert.equal(row.size, 2);
    assert.equal(row.complete, false);
    assert.equal(new RowValues(columns, tupleOf(['1', 'x', null])).complete, true);
    assert.equal(new RowValues(columns, tupleOf(['1', 'x'])).complete, false, 'a tuple shorter than its relation lacks the rest');
  });
  test('an update that left the TOASTed value out merges into the earlier change of its key, keeping that value', () => {
    const b = new ChangeBatch();
    b.insert('t', ['1'], new RowValues(columns, tupleOf(['1', 'big', '0'])));
    b.update('t', ['1'], new RowValues(columns, tupleOf(['1', UNCHANGED, '1'])), undefined, new Date(0));
    const row = b.tables.get('t')!.rows.get('1');
    assert.equal(row?.op, 'upsert');
    if (row?.op === 'upsert') assert.deepEqual(new Map(row.values), new Map([['id', '1'], ['body', 'big'], ['n', '1']]));
  });
});

describe('ChangeBatch of tuples as they arrived (the stream\'s path)', () => {
  const at = new Date('2024-01-01T00:00:00Z');
  test('last change per key wins across ten thousand keys; the entries are found by their key\'s bytes', () => {
    const columns = new RowColumns(['id', 'body', 'n'], [0]);
    const b = new ChangeBatch();
    for (let i = 0; i < 10_000; i++) b.insertTuple('t', columns, tupleOf([String(i), `b${i}`, '0']));
    for (let i = 0; i < 10_000; i += 2) b.updateTuple('t', columns, tupleOf([String(i), `u${i}`, '1']), undefined, at);
    for (let i = 0; i < 10_000; i += 3) b.deleteTuple('t', columns, tupleOf([String(i), null, null]), at);
    const rows = b.tables.get('t')!.rows;
    assert.equal(rows.size, 10_000);
    assert.equal(b.changes, 10_000 + 5_000 + 3_334);
    const row = (k: string) => {
      const p = rows.get(k)!;
      return p.op === 'delete' ? ['delete', p.key, p.at.toISOString()] : ['upsert', p.key, [...p.values]];
    };
    assert.deepEqual(row('3'), ['delete', ['3'], at.toISOString()]);
    assert.deepEqual(row('4'), ['upsert', ['4'], [['id', '4'], ['body', 'u4'], ['n', '1']]]);
    assert.deepEqual(row('5'), ['upsert', ['5'], [['id', '5'], ['body', 'b5'], ['n', '0']]]);
    assert.equal(rows.get('10000'), undefined);
    assert.equal(new Set(rows.keys()).size, 10_000, 'one entry per key');
  });
  test('an update that left a value out merges into the earlier tuple of its key; the object path finds tuple entries by the same key', () => {
    const columns = new RowColumns(['id', 'body', 'n'], [0]);
    const b = new ChangeBatch();
    b.insertTuple('t', columns, tupleOf(['7', 'big', '0']));
    b.updateTuple('t', columns, tupleOf(['7', UNCHANGED, '1']), undefined, at);
    const rows = b.tables.get('t')!.rows;
    assert.equal(rows.size, 1);
    const p = rows.get('7');
    assert.ok(p?.op === 'upsert');
    assert.deepEqual(new Map(p.values), new Map([['id', '7'], ['body', 'big'], ['n', '1']]));
    b.delete('t', ['7'], at);
    assert.equal(rows.size, 1);
    assert.equal(rows.get('7')?.op, 'delete');
  });
  test('an upsert is marked as of a row already there only when its key\'s first change in the batch was an update, as new only when it was an insert', () => {
    const columns = new RowColumns(['id', 'body', 'n'], [0]);
    const b = new ChangeBatch();
    b.updateTuple('t', columns, tupleOf(['1', 'a', '1']), undefined, at); // updated: there before the batch
    b.updateTuple('t', columns, tupleOf(['1', 'b', '2']), undefined, at); // and still, updated again
    b.insertTuple('t', columns, tupleOf(['2', 'c', '0']));
    b.updateTuple('t', columns, tupleOf(['2', 'd', '1']), undefined, at); // inserted in this batch first
    b.deleteTuple('t', columns, tupleOf(['3', null, null]), at);
    b.insertTuple('t', columns, tupleOf(['3', 'e', '0']));
    b.updateTuple('t', columns, tupleOf(['3', 'f', '1']), undefined, at); // deleted, then inserted again
    b.updateTuple('t', columns, tupleOf(['4', UNCHANGED, '1']), undefined, at); // a value left out, but the first change: there
    b.insertTuple('t', columns, tupleOf(['5', 'g', '0']));
    b.updateTuple('t', columns, tupleOf(['5', UNCHANGED, '1']), undefined, at); // merged into the insert of this batch
    b.insertTuple('t', columns, tupleOf(['6', 'h', '0'])); // inserted, nothing else
    const rows = b.tables.get('t')!.rows;
    const marked = (mark: 'existing' | 'fresh') => (k: string) => {
      const e = rows.entryOf(k)!;
      return rows.kind(e) === ENTRY_UPSERT && rows[mark](e);
    };
    assert.deepEqual(['1', '2', '3', '4', '5', '6'].map(marked('existing')), [true, false, false, true, false, false]);
    assert.deepEqual(['1', '2', '3', '4', '5', '6'].map(marked('fresh')), [false, true, false, false, false, true], 'new: inserted first in the batch (and maybe updated since), not after a delete');
    const last = rows.get('1');
    assert.ok(last?.op === 'upsert');
    assert.deepEqual(new Map(last.values), new Map([['id', '1'], ['body', 'b'], ['n', '2']]), 'the last update of the key wins');
  });
  test('a key change deletes the old key and leaves the rest to the old row; composite keys are batchKey JSON', () => {
    const columns = new RowColumns(['a', 'b', 'v'], [0, 1]);
    const b = new ChangeBatch();
    b.insertTuple('t', columns, tupleOf(['1', 'x', 'v1']));
    b.updateTuple('t', columns, tupleOf(['2', 'x', UNCHANGED]), tupleOf(['1', 'x', null]), at);
    b.deleteTuple('t', columns, tupleOf(['9', 'y', null]), at);
    const rows = b.tables.get('t')!.rows;
    assert.deepEqual([...rows.keys()].sort(), ['["1","x"]', '["2","x"]', '["9","y"]']);
    assert.equal(rows.get('["1","x"]')?.op, 'delete');
    const moved = rows.get('["2","x"]');
    assert.ok(moved?.op === 'upsert');
    assert.deepEqual(new Map(moved.values), new Map([['a', '2'], ['b', 'x'], ['v', 'v1']]), 'what the change lacked came from the earlier change of the old key');
    b.truncate('t', at, [{ lo: '5', hi: null }]);
    assert.deepEqual([...rows.keys()].sort(), ['["1","x"]', '["2","x"]']);
  });
});

describe('ChangeBatch key change without a TOASTed value', () => {
  test('the moved row names the old key its missing columns come from, also after an earlier update of the old key in the batch', () => {
    const b = new ChangeBatch();
    const at = new Date(0);
    b.update('t', ['5'], new Map([['id', '5'], ['n', '1']]), undefined, at);
    b.update('t', ['300'], new Map([['id', '300']]), ['5'], at);
    b.update('t', ['301'], new Map([['id', '301'], ['n', '2']]), ['300'], at);
    const rows = b.tables.get('t')!.rows;
    assert.deepEqual(rows.get('301'), { op: 'upsert', key: ['301'], values: new Map([['id', '301'], ['n', '2']]), from: ['5'] });
    assert.deepEqual(['5', '300'].map((k) => rows.get(k)!.op), ['delete', 'delete']);
  });
});

describe('ChangeBatch truncate of some chunks', () => {
  test('a truncate limited to key ranges voids only the pending rows in them, and stays whole after a whole one', () => {
    const b = new ChangeBatch();
    for (const k of ['5', '150', '250']) b.insert('t', [k], new Map([['v', 'x']]));
    b.truncate('t', new Date(0), [{ lo: null, hi: '100' }, { lo: '200', hi: null }]);
    assert.deepEqual([...b.tables.get('t')!.rows.values()].map((p) => p.key[0]), ['150']);
    assert.deepEqual(b.tables.get('t')!.truncateRanges, [{ lo: null, hi: '100' }, { lo: '200', hi: null }]);
    b.truncate('t', new Date(1));
    assert.equal(b.tables.get('t')!.truncateRanges, undefined);
    b.insert('t', ['7'], new Map());
    b.truncate('t', new Date(2), [{ lo: '100', hi: '200' }]);
    assert.equal(b.tables.get('t')!.truncateRanges, undefined, 'the earlier whole truncate still empties the table first');
    assert.deepEqual([...b.tables.get('t')!.rows.keys()].length, 1, 'the row after the whole truncate, outside the range, stays');
  });
});

describe('cdcWorkflow input and names', () => {
  test('the issue\'s example parses; unknown keys and clashing tables are refused', () => {
    const ok = parseInput(CdcInput, { source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['public.orders', 'public.customers'] }, destination: { connection: 'DATABASE_URL', schema: 'cdc' }, deletes: 'hard' });
    assert.ok(ok.ok);
    const defaults = CdcInput.parse({ source: { kind: 'postgres', connection: 'X_URL', tables: ['public.orders'] } });
    assert.equal(defaults.deletes, 'soft', 'soft deletes by default, as in the seed');
    assert.deepEqual(defaults.destination, { connection: 'DATABASE_URL', schema: 'public' });
    const unknown = parseInput(CdcInput, { source: { kind: 'postgres', connection: 'X_URL', tables: ['public.orders'], table: 'x' } });
    assert.ok(!unknown.ok && /source/.test(unknown.message));
    const unqualified = parseInput(CdcInput, { source: { kind: 'postgres', connection: 'X_URL', tables: ['orders'] } });
    assert.ok(!unqualified.ok && /source\.tables\.0: must be a schema-qualified/.test(unqualified.message));
  });
  test('slot names are valid, stable and distinct', () => {
    const a = cdcNames('demo-cdc');
    assert.match(a.slot, /^[a-z0-9_]{1,63}$/);
    assert.deepEqual(cdcNames('demo-cdc'), a);
    assert.notEqual(cdcNames('Demo-CDC').slot, a.slot);
    assert.match(cdcNames('x'.repeat(300)).slot, /^[a-z0-9_]{1,63}$/);
  });
});
