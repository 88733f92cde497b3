/**
 * The CDC apply engine on a real PostgreSQL, without Temporal or replication: two batches in
 * flight at once (the stream hands the next one over while the one before still commits)
 * commit in order, and one whose predecessor never committed applies nothing.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { applyBatch, BatchOrderError, type ApplyRequest, type TableShape } from '../src/destinations/postgres/cdc-apply';
import { ChangeBatch, RowColumns } from '../src/destinations/postgres/cdc-batch';
import { adminUrl, uniqueName, waitFor } from './helpers';
import { UNCHANGED } from '../src/sources/postgres/cdc/pgoutput';
import { tupleOf } from './pgoutput-wire';

const shape: TableShape = {
  source: 'public.items',
  target: 'items',
  key: ['id'],
  columns: [
    { name: 'id', type: 'bigint' },
    { name: 'name', type: 'text' },
  ],
};

function batchOf(rows: [number, string][], deletes: number[] = []): ChangeBatch {
  const b = new ChangeBatch();
  for (const [id, name] of rows) b.insert('items', [String(id)], new Map([['id', String(id)], ['name', name]]));
  for (const id of deletes) b.delete('items', [String(id)], new Date('2026-01-01T00:00:00Z'));
  return b;
}

describe('cdc apply engine: batches in flight', () => {
  let db: pg.Pool;
  let schema: string;
  const key = 'cdc:test-stream';
  const url = adminUrl();

  const request = (batch: ChangeBatch, lsn: bigint, afterLsn: bigint): ApplyRequest => ({
    url,
    schema,
    deletes: 'hard',
    shapes: new Map([['items', shape]]),
    batch,
    load: { loadId: `test/${lsn}`, workflowId: 'test', runId: 'run', resource: key, partition: String(lsn) },
    state: { key, lsn, after: afterLsn, value: { lsn: `0/${lsn.toString(16).toUpperCase()}` } },
    knownDropped: new Set(),
  });
  const rows = async () => (await db.query<{ id: string; name: string }>(`select id, name from ${schema}.items order by id`)).rows.map((r) => [Number(r.id), r.name]);
  const savedLsnValue = async () => {
    const text = await savedLsn();
    return text ? BigInt(`0x${text.split('/')[0]}`) * 2n ** 32n + BigInt(`0x${text.split('/')[1]}`) : undefined;
  };
  const savedLsn = async () => (await db.query<{ lsn: string | null }>(`select state->>'lsn' as lsn from ${schema}._sluice_state where resource = $1`, [key])).rows[0]?.lsn;
  /** Whether some backend waits for the stream's lock (what a batch staged ahead of its predecessor does). */
  const waitingForLock = async () =>
    (
      await db.query(
        `select 1 from pg_locks l where l.locktype = 'advisory' and not l.granted and l.objsubid = 1 and ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)`,
        [`sluice-cdc-stream:${schema}.${key}`],
      )
    ).rowCount! > 0;

  before(async () => {
    db = new pg.Pool({ connectionString: url, max: 4 });
    schema = uniqueName('t_cdcapply');
    await db.query(`create schema ${schema}`);
  });
  after(async () => {
    await db.query(`drop schema ${schema} cascade`);
    await db.end();
  });

  test('the batch after waits for the one before to commit, then applies on top of it', async () => {
    assert.equal((await applyBatch(request(batchOf([[1, 'a'], [2, 'b'], [3, 'c']]), 0x100n, 0n))).applied, true);
    // The batch ending at 0x200 still commits elsewhere: it holds the stream's lock. Its
    // successor, handed over meanwhile, stages its rows and waits.
    const holder = await db.connect();
    try {
      await holder.query('begin');
      await holder.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-cdc-stream:${schema}.${key}`]);
      let settled = false;
      const next = applyBatch(request(batchOf([[2, 'b2'], [4, 'd']], [1]), 0x300n, 0x200n)).finally(() => (settled = true));
      next.catch(() => undefined);
      await waitFor('the next batch to wait for the stream lock', waitingForLock);
      assert.equal(settled, false);
      assert.deepEqual(await rows(), [[1, 'a'], [2, 'b'], [3, 'c']], 'nothing of the waiting batch is visible');
      // The one before commits its position: the waiting batch goes on and applies.
      await holder.query(`update ${schema}._sluice_state set state = jsonb_build_object('lsn', '0/200') where resource = $1`, [key]);
      await holder.query('commit');
      assert.equal((await next).applied, true);
    } finally {
      holder.release();
    }
    assert.deepEqual(await rows(), [[2, 'b2'], [3, 'c'], [4, 'd']]);
    assert.equal(await savedLsn(), '0/300');
  });

  test('a batch whose predecessor rolled back applies nothing: it fails with BatchOrderError', async () => {
    const before = await rows();
    const holder = await db.connect();
    try {
      await holder.query('begin');
      await holder.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [`sluice-cdc-stream:${schema}.${key}`]);
      const next = applyBatch(request(batchOf([[5, 'e']], [2]), 0x500n, 0x400n));
      next.catch(() => undefined);
      await waitFor('the next batch to wait for the stream lock', waitingForLock);
      await holder.query('rollback');
      await assert.rejects(next, (err: Error) => err instanceof BatchOrderError && /0\/300/.test(err.message) && /0\/400 expected/.test(err.message));
    } finally {
      holder.release();
    }
    assert.deepEqual(await rows(), before);
    assert.equal(await savedLsn(), '0/300');
    // Alone, with nothing in flight before it, the same batch fails the same way: it never skips a batch.
    await assert.rejects(applyBatch(request(batchOf([[5, 'e']]), 0x500n, 0x400n)), BatchOrderError);
    assert.deepEqual(await rows(), before);
  });

  test('a batch at or below the saved position is skipped, whatever it says comes before it', async () => {
    const before = await rows();
    assert.equal((await applyBatch(request(batchOf([[9, 'z']]), 0x300n, 0x200n))).applied, false);
    assert.deepEqual(await rows(), before);
  });

  test('two tables whose staged column lists are the same are staged side by side in one transaction', async () => {
    const other: TableShape = { ...shape, source: 'public.others', target: 'others' };
    const b = batchOf([[7, 'g']]);
    b.insert('others', ['8'], new Map([['id', '8'], ['name', 'h']]));
    const req = request(b, 0x600n, 0x300n);
    req.shapes.set('others', other);
    assert.equal((await applyBatch(req)).applied, true);
    assert.deepEqual((await db.query(`select id::int, name from ${schema}.others`)).rows, [{ id: 8, name: 'h' }]);
    assert.deepEqual((await rows()).at(-1), [7, 'g']);
  });
  test('a small batch handed over right after a big one queues behind it for the lock (turn), and both commit in order', async () => {
    const big: [number, string][] = [];
    for (let i = 0; i < 30_000; i++) big.push([100_000 + i, `big ${i}`]);
    const rounds: [ChangeBatch, ChangeBatch][] = [
      [batchOf(big), batchOf([[100_000, 'small']])],
      // A batch that only truncates stages nothing at all: it is ready for the lock at once.
      [batchOf(big.map(([id]) => [id, 'again'])), (() => {
        const b = new ChangeBatch();
        b.truncate('items', new Date('2026-01-02T00:00:00Z'));
        return b;
      })()],
    ];
    let lsn = 0x600n;
    for (const [first, second] of rounds) {
      const a = lsn + 0x10n;
      const b = a + 0x10n;
      lsn = b;
      let locked!: () => void;
      const turn = new Promise<void>((resolve) => (locked = resolve));
      const firstDone = applyBatch({ ...request(first, a, (await savedLsnValue()) ?? 0n), onLocked: locked });
      const secondDone = applyBatch({ ...request(second, b, a), turn });
      assert.deepEqual(await Promise.all([firstDone, secondDone]).then((r) => r.map((x) => x.applied)), [true, true]);
      assert.equal(await savedLsn(), `0/${b.toString(16).toUpperCase()}`);
    }
    assert.deepEqual(await rows(), []);
  });
  test('updates of rows already there are applied in place, and one of a row the destination lacks still lands', async () => {
    const at = new Date('2026-01-03T00:00:00Z');
    const columns = new RowColumns(['id', 'name'], [0]);
    const seeded = await savedLsnValue();
    assert.equal((await applyBatch(request(batchOf([[1, 'a'], [2, 'b'], [3, 'c'], [4, 'd']]), 0x1000n, seeded ?? 0n))).applied, true);
    const b = new ChangeBatch();
    b.updateTuple('items', columns, tupleOf(['1', 'a2']), undefined, at);
    b.updateTuple('items', columns, tupleOf(['3', 'c1']), undefined, at);
    b.updateTuple('items', columns, tupleOf(['3', 'c2']), undefined, at);
    b.deleteTuple('items', columns, tupleOf(['2', null]), at);
    b.insertTuple('items', columns, tupleOf(['2', 'b2']));
    b.insertTuple('items', columns, tupleOf(['5', 'e']));
    b.updateTuple('items', columns, tupleOf(['5', 'e2']), undefined, at);
    // Updated at the source, absent here (a stream resumed without its snapshot, a row deleted by hand).
    b.updateTuple('items', columns, tupleOf(['9', 'i']), undefined, at);
    assert.equal((await applyBatch(request(b, 0x1100n, 0x1000n))).applied, true);
    assert.deepEqual(await rows(), [[1, 'a2'], [2, 'b2'], [3, 'c2'], [4, 'd'], [5, 'e2'], [9, 'i']]);
    const loads = (await db.query<{ id: string; load: string }>(`select id, _sluice_load_id as load from ${schema}.items order by id`)).rows;
    assert.deepEqual(loads.map((r) => r.load), ['test/4352', 'test/4352', 'test/4352', 'test/4096', 'test/4352', 'test/4352'], 'each changed row names the batch that changed it');
    // Every update of rows there, none absent: nothing else comes in.
    const c = new ChangeBatch();
    for (const id of [1, 4]) c.updateTuple('items', columns, tupleOf([String(id), `x${id}`]), undefined, at);
    assert.equal((await applyBatch(request(c, 0x1200n, 0x1100n))).applied, true);
    assert.deepEqual(await rows(), [[1, 'x1'], [2, 'b2'], [3, 'c2'], [4, 'x4'], [5, 'e2'], [9, 'i']]);
  });
  test('after one table\'s rows are updated in place, a later table\'s joins still probe its key index (the transaction\'s join settings hold)', async () => {
    const big: TableShape = { ...shape, source: 'public.big', target: 'big' };
    const columns = new RowColumns(['id', 'name'], [0]);
    const at = new Date('2026-01-04T00:00:00Z');
    const seed = new ChangeBatch();
    for (let i = 0; i < 60_000; i++) seed.insert('big', [String(i)], new Map([['id', String(i)], ['name', `n${i}`]]));
    const seedReq = request(seed, 0x2000n, (await savedLsnValue()) ?? 0n);
    seedReq.shapes.set('big', big);
    assert.equal((await applyBatch(seedReq)).applied, true);
    await db.query(`analyze ${schema}.big`);
    // Statistics reach the view when a backend flushes them (at most every second, at the latest
    // when it has idled 10 s): each wait is for the counts of the batch before to be in.
    const stats = async () => (await db.query<{ seq: string; ins: string; upd: string }>(`select seq_scan as seq, n_tup_ins as ins, n_tup_upd as upd from pg_stat_user_tables where schemaname = $1 and relname = 'big'`, [schema])).rows[0];
    const before = await waitFor('the seed batch in the statistics', async () => {
      const now = await stats();
      return now !== undefined && Number(now.ins) === 60_000 && now;
    });
    const b = new ChangeBatch();
    b.updateTuple('items', columns, tupleOf(['1', 'z1']), undefined, at); // 'items' first: applied before 'big'
    // Updates of which some leave a TOASTed value out take the path that analyzes its staged
    // rows: told there are 50,000 of them, a planner allowed to would hash the whole of big.
    for (let i = 0; i < 50_000; i++) b.updateTuple('big', columns, tupleOf([String(i), i % 2 === 0 ? UNCHANGED : `m${i}`]), undefined, at);
    const req = request(b, 0x2100n, 0x2000n);
    req.shapes.set('big', big);
    assert.equal((await applyBatch(req)).applied, true);
    const after = await waitFor('the updates in the statistics', async () => {
      const now = await stats();
      return now !== undefined && Number(now.upd) === 50_000 && now;
    });
    assert.equal(Number(after.seq), Number(before.seq), 'big was read through its key index, not scanned for a hash join');
    const updated = await db.query(`select count(*)::int as n from ${schema}.big where name = (case when id % 2 = 0 then 'n' else 'm' end) || id and _sluice_load_id = $1`, ['test/8448']);
    assert.equal(updated.rows[0].n, 50_000, 'each updated row has its new value or kept the one left out, and carries the batch\'s load id');
    assert.deepEqual((await rows())[0], [1, 'z1']);
  });
  test('rows new to the source go in by a plain insert; one the destination holds after all (a soft-deleted key that came back) is upserted instead, nothing lost', async () => {
    const fresh: TableShape = { ...shape, source: 'public.fresh', target: 'fresh' };
    const columns = new RowColumns(['id', 'name'], [0]);
    const at = new Date('2026-01-05T00:00:00Z');
    let lsn = 0x3000n;
    const apply = async (fill: (b: ChangeBatch) => void) => {
      const b = new ChangeBatch();
      fill(b);
      const after = (await savedLsnValue()) ?? 0n;
      const req: ApplyRequest = { ...request(b, lsn, after), deletes: 'soft', shapes: new Map([['fresh', fresh]]) };
      lsn += 0x100n;
      assert.equal((await applyBatch(req)).applied, true);
    };
    const table = async () =>
      (
        await db.query<{ id: string; name: string; deleted: boolean; top: boolean }>(
          `select id, name, _sluice_deleted_at is not null as deleted,
                  xmin = (select xmin from ${schema}._sluice_state where resource = $1) as top
             from ${schema}.fresh order by id`,
          [key],
        )
      ).rows.map((r) => [Number(r.id), r.name, r.deleted, r.top]);
    await apply((b) => {
      for (const id of [1, 2, 3]) b.insertTuple('fresh', columns, tupleOf([String(id), `n${id}`]));
    });
    // Written by the plain insert, in its savepoint: their xmin is a subtransaction's, not the
    // transaction id that wrote the state row (\`top\`).
    assert.deepEqual(await table(), [[1, 'n1', false, false], [2, 'n2', false, false], [3, 'n3', false, false]]);
    await apply((b) => b.deleteTuple('fresh', columns, tupleOf(['2', null]), at));
    assert.deepEqual((await table()).map((r) => r.slice(0, 3)), [[1, 'n1', false], [2, 'n2', true], [3, 'n3', false]]);
    // Key 2 is new to the source again, but its soft-deleted row is still here: the plain insert
    // conflicts, rolls back to its savepoint, and the upsert writes both rows.
    await apply((b) => {
      b.insertTuple('fresh', columns, tupleOf(['2', 'again']));
      b.insertTuple('fresh', columns, tupleOf(['4', 'n4']));
    });
    assert.deepEqual(await table(), [[1, 'n1', false, false], [2, 'again', false, true], [3, 'n3', false, false], [4, 'n4', false, true]]);
    // The table's keys come back: its next batches upsert their new rows straight away.
    await apply((b) => b.insertTuple('fresh', columns, tupleOf(['5', 'n5'])));
    assert.deepEqual((await table()).at(-1), [5, 'n5', false, true]);
    // A new row beside an update that left its value out: the path for absent values inserts it too.
    await apply((b) => {
      b.insertTuple('fresh', columns, tupleOf(['6', 'n6']));
      b.updateTuple('fresh', columns, tupleOf(['1', UNCHANGED]), undefined, at);
    });
    assert.deepEqual((await table()).map((r) => r.slice(0, 3)), [[1, 'n1', false], [2, 'again', false], [3, 'n3', false], [4, 'n4', false], [5, 'n5', false], [6, 'n6', false]]);
    const loads = await db.query(`select count(*)::int as n from ${schema}._sluice_loads where resource = $1 and partition in ('12288', '12544', '12800', '13056', '13312')`, [key]);
    assert.equal(loads.rows[0].n, 5, 'each batch has its load row');
  });
});
