import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { join } from 'node:path';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import type pg from 'pg';
import type { Progress } from '../src/inputs';
import { adminUrl, killHard, requireEnv, saveHistory, spawnWorker, testStack, waitFor, type TestStack } from './helpers';

interface CdcProgress extends Progress {
  phase: string;
  paused: boolean;
  slot: string;
  lsn: string | null;
  lagBytes: number | null;
  tables: Record<string, { inserts: number; updates: number; deletes: number; truncates: number }>;
  schemaChanges: string[];
}

/** A writer that commits multi-statement transactions of inserts, updates and deletes, and counts what it did. */
class Writer {
  counts: Record<string, { inserts: number; updates: number; deletes: number }> = {};
  deleted = new Map<string, Set<number>>();
  private nextId = 1_000_000;
  constructor(
    private readonly db: pg.Pool,
    private readonly schema: string,
  ) {}

  private tally(table: string, kind: 'inserts' | 'updates' | 'deletes', n: number) {
    this.counts[table] ??= { inserts: 0, updates: 0, deletes: 0 };
    this.counts[table][kind] += n;
  }

  /** One transaction touching both tables; returns after commit. */
  async transaction(i: number): Promise<void> {
    const client = await this.db.connect();
    try {
      await client.query('begin');
      const id = this.nextId++;
      const s = this.schema;
      await client.query(`insert into ${s}.orders (id, customer_id, amount, note, placed_at) values ($1, $2, $3, $4, now())`, [id, i % 50, (i * 7) % 1000, `new ${i}`]);
      this.tally('orders', 'inserts', 1);
      // Update the same new row again in the same transaction: collapsed, last change wins.
      await client.query(`update ${s}.orders set amount = amount + 1, note = note || ' (edited)' where id = $1`, [id]);
      this.tally('orders', 'updates', 1);
      const updated = await client.query(`update ${s}.orders set amount = amount + 0.5, placed_at = placed_at + interval '1 microsecond' where id in (select id from ${s}.orders where id % 97 = $1 order by id limit 3)`, [i % 97]);
      this.tally('orders', 'updates', updated.rowCount ?? 0);
      const gone = await client.query(`delete from ${s}.orders where id = (select min(id) from ${s}.orders where id % 13 = $1) returning id`, [i % 13]);
      this.tally('orders', 'deletes', gone.rowCount ?? 0);
      for (const r of gone.rows) (this.deleted.get('orders') ?? this.deleted.set('orders', new Set()).get('orders')!).add(Number(r.id));
      const c = await client.query(`update ${s}.customers set name = name || '.', score = score * 1.5 where id = $1`, [i % 40]);
      this.tally('customers', 'updates', c.rowCount ?? 0);
      if (i % 5 === 0) {
        await client.query(`insert into ${s}.customers (id, name, score) values ($1, $2, $3)`, [1000 + i, `customer ${i}`, i]);
        this.tally('customers', 'inserts', 1);
      }
      if (i % 7 === 3) {
        const d = await client.query(`delete from ${s}.customers where id = (select max(id) from ${s}.customers where id >= 1000)`);
        this.tally('customers', 'deletes', d.rowCount ?? 0);
      }
      await client.query('commit');
    } finally {
      client.release();
    }
  }

  total(): number {
    return Object.values(this.counts).reduce((n, c) => n + c.inserts + c.updates + c.deletes, 0);
  }
}

describe('cdcWorkflow', () => {
  let stack: TestStack;
  before(async () => {
    stack = await testStack('cdc');
    // CDC creates its publication, which PostgreSQL allows only to the owner of the published
    // tables (README: Least privilege); these tests create their tables as the admin, so the
    // worker connects as the admin too instead of test/roles.ts's SELECT-only source role.
    process.env.SOURCE_DATABASE_URL = adminUrl();
    process.env.DATABASE_URL = adminUrl();
  });
  after(async () => {
    // Nothing may be left holding WAL on the shared server.
    await stack.db.query(`select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name like 'sluice_cdc_%' and not active`).catch(() => undefined);
    await stack.close();
  });

  async function createTables(schema: string, rows = 500) {
    await stack.db.query(`
      create schema if not exists ${schema};
      create table ${schema}.orders (id bigint primary key, customer_id int, amount numeric(12,2), note text, placed_at timestamptz);
      create table ${schema}.customers (id int primary key, name text not null, score double precision, tags text[]);
      insert into ${schema}.orders select i, i % 50, i / 10.0, 'order ' || i, timestamptz '2024-01-01 00:00:00.123456+00' + i * interval '1 minute' from generate_series(1, ${rows}) i;
      insert into ${schema}.customers select i, 'customer ' || i, i * 1.25, array['a', 'b ' || i] from generate_series(0, 99) i;`);
  }

  function cdcInput(sourceSchema: string, destSchema: string, extra: Record<string, unknown> = {}) {
    return {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${sourceSchema}.orders`, `${sourceSchema}.customers`] },
      destination: { connection: 'DATABASE_URL', schema: destSchema },
      batchWait: '200ms',
      streamWindow: '5s',
      ...extra,
    };
  }

  /** Rows of the source table that the destination lacks, plus destination rows the source lacks, over every source column. */
  async function differences(sourceTable: string, destTable: string, where = 'true'): Promise<number> {
    try {
      return await differencesOrFail(sourceTable, destTable, where);
    } catch {
      return -1; // the destination table (or its column) is not there yet
    }
  }
  async function differencesOrFail(sourceTable: string, destTable: string, where: string): Promise<number> {
    const cols = (await stack.db.query(`select string_agg(quote_ident(attname), ', ' order by attnum) as c from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped`, [sourceTable])).rows[0].c;
    const diff = await stack.db.query(`
      (select ${cols} from ${sourceTable} except all select ${cols} from ${destTable} where ${where})
      union all
      (select ${cols} from ${destTable} where ${where} except all select ${cols} from ${sourceTable})`);
    return diff.rowCount ?? 0;
  }

  async function stopAndDrop(handle: WorkflowHandle) {
    await handle.signal('stop', { dropSlot: true });
    return handle.result();
  }

  async function slotGone(slot: string) {
    const r = await stack.db.query(`select 1 from pg_replication_slots where slot_name = $1 union all select 1 from pg_publication where pubname = $1`, [slot]);
    return r.rowCount === 0;
  }

  for (const deletes of ['hard', 'soft'] as const) {
    test(`snapshot + stream of two tables with a concurrent writer, ${deletes} deletes: destination equals the source`, async () => {
      const src = `${stack.sourceSchema}_${deletes}`;
      const dest = `${stack.schema}_${deletes}`;
      await createTables(src);
      const writer = new Writer(stack.db, src);
      const handle = await stack.client.workflow.start('cdcWorkflow', {
        taskQueue: stack.taskQueue,
        workflowId: `cdc-${deletes}-${stack.schema}`,
        args: [cdcInput(src, dest, { deletes })],
      });
      await stack.withWorker(async () => {
        // The writer runs before, during and after the snapshot.
        for (let i = 0; i < 120; i++) {
          await writer.transaction(i);
          if (i === 20) await waitFor('the snapshot to start', async () => (await handle.query<CdcProgress>('progress')).phase !== 'setup');
        }
        await waitFor('streaming', async () => (await handle.query<CdcProgress>('progress')).phase === 'streaming');
        const liveWhere = deletes === 'soft' ? '_sluice_deleted_at is null' : 'true';
        await waitFor('the destination to equal the source', async () =>
          (await differences(`${src}.orders`, `${dest}.orders`, liveWhere)) === 0 && (await differences(`${src}.customers`, `${dest}.customers`, liveWhere)) === 0,
        120_000).catch(async (err) => {
          const h = await stack.client.workflow.getHandle(handle.workflowId).describe();
          console.log(JSON.stringify(await handle.query('progress')), h.status.name, await differences(`${src}.orders`, `${dest}.orders`, liveWhere), await differences(`${src}.customers`, `${dest}.customers`, liveWhere));
          const hist = await handle.fetchHistory();
          for (const e of hist.events!) if (e.activityTaskFailedEventAttributes || e.workflowExecutionFailedEventAttributes) console.log(JSON.stringify(e).slice(0, 2000));
          const pend = (await handle.describe()).raw.pendingActivities;
          console.log(JSON.stringify(pend).slice(0, 3000));
          throw err;
        });
        if (deletes === 'soft') {
          const deleted = [...writer.deleted.get('orders')!];
          const marked = await stack.db.query(
            `select count(*) filter (where _sluice_deleted_at is not null)::int as marked, count(*) filter (where _sluice_deleted_at is null)::int as live from ${dest}.orders where id = any($1::bigint[])`,
            [deleted],
          );
          // Orders deleted before their table's snapshot never reach the destination; every later one stays, marked.
          assert.equal(marked.rows[0].live, 0, 'no deleted order is live in the destination');
          assert.ok(marked.rows[0].marked > 0, 'deleted orders are kept with _sluice_deleted_at');
          // A later insert of a deleted key clears the mark.
          await stack.db.query(`insert into ${src}.orders (id, note) values ($1, 'back again')`, [deleted[0]]);
          await waitFor('the re-inserted key to be live again', async () =>
            (await stack.db.query(`select 1 from ${dest}.orders where id = $1 and _sluice_deleted_at is null and note = 'back again'`, [deleted[0]])).rowCount === 1);
        } else {
          const left = await stack.db.query(`select count(*)::int as n from ${dest}.orders where id = any($1::bigint[])`, [[...writer.deleted.get('orders')!]]);
          assert.equal(left.rows[0].n, 0, 'hard deletes remove the rows');
        }
        const p = await waitFor('progress to show the batches', async () => {
          const q = await handle.query<CdcProgress>('progress');
          return q.lsn !== null && q.done > 0 && q;
        });
        assert.ok(p.rows > 0, `progress shows the stream: ${JSON.stringify(p)}`);
        assert.ok(p.tables.orders && p.tables.customers, 'per-table counts');
        const loads = await stack.db.query(`select partition, rows_loaded from ${dest}._sluice_loads where write_disposition = 'cdc' order by started_at`);
        assert.ok(loads.rowCount! > 0, 'batches are recorded in _sluice_loads');
        const lsns = new Set(loads.rows.map((r) => r.partition));
        assert.equal(lsns.size, loads.rowCount, 'no batch applied twice');
        const state = await stack.db.query(`select state from ${dest}._sluice_state where resource = $1`, [`cdc:${p.slot}`]);
        assert.ok(state.rows[0].state.lsn, 'the LSN is committed in _sluice_state');
        const details = (await handle.query<{ currentDetails: string }>('__temporal_workflow_metadata')).currentDetails;
        assert.match(details, /\*\*streaming\*\* cdc/);
        assert.match(details, /lag .* last commit seen/);
        const result = await stopAndDrop(handle);
        assert.equal((result as { droppedSlot: boolean }).droppedSlot, true);
        assert.ok(await slotGone(p.slot), 'stop with dropSlot drops the slot and the publication');
      });
      if (deletes === 'hard') await saveHistory(handle, 'cdc-snapshot');
    });
  }

  async function startCdc(id: string, input: Record<string, unknown>, taskQueue = stack.taskQueue) {
    return stack.client.workflow.start('cdcWorkflow', { taskQueue, workflowId: `cdc-${id}-${stack.schema}`, args: [input] });
  }

  /** One table, hard deletes, short batches and windows. */
  function oneTable(table: string, destSchema: string) {
    return { source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [table] }, destination: { connection: 'DATABASE_URL', schema: destSchema }, deletes: 'hard', batchWait: '200ms', streamWindow: '3s' };
  }

  async function streaming(handle: WorkflowHandle) {
    return waitFor('streaming with a first position', async () => {
      const p = await handle.query<CdcProgress>('progress');
      return p.phase === 'streaming' && p;
    }, 120_000);
  }

  test('updates that leave a TOASTed column untouched keep its value, with and without REPLICA IDENTITY FULL, also when they change the key', async () => {
    const src = `${stack.sourceSchema}_toast`;
    const dest = `${stack.schema}_toast`;
    // md5 text compresses poorly: 400 of them (12.8 kB) are stored out of line in TOAST.
    const big = `(select string_agg(md5(random()::text || g), '') from generate_series(1, 400) g)`;
    await stack.db.query(`
      create schema ${src};
      create table ${src}.docs (id int primary key, body text, counter int not null default 0);
      create table ${src}.docs_full (id int primary key, body text, counter int not null default 0);
      alter table ${src}.docs_full replica identity full;
      insert into ${src}.docs select i, ${big}, 0 from generate_series(1, 5) i;
      insert into ${src}.docs_full select i, ${big}, 0 from generate_series(1, 5) i;`);
    const handle = await startCdc('toast', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.docs`, `${src}.docs_full`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      deletes: 'hard',
      batchWait: '200ms',
      streamWindow: '3s',
    });
    await stack.withWorker(async () => {
      await streaming(handle);
      for (const table of ['docs', 'docs_full']) {
        for (let i = 0; i < 5; i++) await stack.db.query(`update ${src}.${table} set counter = counter + 1 where id <= 3`);
        // A new row and its toast-preserving update in one transaction, and in the next one.
        await stack.db.query(`begin; insert into ${src}.${table} values (100, ${big}, 0); update ${src}.${table} set counter = 7 where id = 100; commit;`);
        await stack.db.query(`update ${src}.${table} set counter = 8 where id = 100`);
      }
      for (const table of ['docs', 'docs_full']) {
        // Key changes that leave the body untouched, in batches of their own (no change in them
        // carries a body): alone, and after an update of the old key in the same transaction.
        await waitFor(`${table}: the updates before the key changes`, async () =>
          (await stack.db.query(`select 1 from ${dest}.${table} where id = 100 and counter = 8`).catch(() => ({ rowCount: 0 }))).rowCount === 1, 60_000);
        await stack.db.query(`update ${src}.${table} set id = 1004 where id = 4`);
        await stack.db.query(`begin; update ${src}.${table} set counter = 9 where id = 5; update ${src}.${table} set id = 2005 where id = 5; commit;`);
      }
      for (const table of ['docs', 'docs_full']) {
        await waitFor(`${table} counters to arrive`, async () =>
          (await stack.db.query(`select 1 from ${dest}.${table} where id = 100 and counter = 8`).catch(() => ({ rowCount: 0 }))).rowCount === 1 &&
          (await stack.db.query(`select count(*)::int as n from ${dest}.${table} where counter = 5`)).rows[0].n === 3 &&
          (await stack.db.query(`select 1 from ${dest}.${table} where id in (1004, 2005)`)).rowCount === 2,
        60_000);
        const diff = await differences(`${src}.${table}`, `${dest}.${table}`);
        const rows = async (t: string) => JSON.stringify((await stack.db.query(`select id, counter, length(body) as body from ${t} order by id`)).rows);
        assert.equal(diff, 0, `${table}: every body survived the updates that did not touch it: source ${await rows(`${src}.${table}`)}, destination ${await rows(`${dest}.${table}`)}`);
        const bodies = await stack.db.query(`select count(*)::int as n from ${dest}.${table} where length(body) = 12800`);
        assert.equal(bodies.rows[0].n, 6);
      }
      await stopAndDrop(handle);
    });
    await saveHistory(handle, 'cdc-streaming');
  });

  test('a row bigger than the whole read-ahead streams (the socket is never left paused on a frame that has not arrived)', async () => {
    const src = `${stack.sourceSchema}_huge`;
    const dest = `${stack.schema}_huge`;
    await stack.db.query(`create schema ${src}; create table ${src}.blobs (id int primary key, body text, n int not null default 0)`);
    const handle = await startCdc('huge', { ...oneTable(`${src}.blobs`, dest), deletes: 'hard', batchWait: '200ms' });
    await stack.withWorker(async () => {
      await streaming(handle);
      // 12 MB of md5 text (pgoutput sends it whole, decompressed) between small rows, and updates
      // that leave it untouched: more than the reader's 8 MiB read-ahead in one message.
      await stack.db.query(`insert into ${src}.blobs select i, 'small ' || i, 0 from generate_series(1, 200) i`);
      await stack.db.query(`insert into ${src}.blobs select 1000, string_agg(md5(g::text), ''), 0 from generate_series(1, 375000) g`);
      await stack.db.query(`insert into ${src}.blobs select i, 'small ' || i, 0 from generate_series(201, 400) i; update ${src}.blobs set n = 1 where id = 1000`);
      await waitFor('the huge row and the rows after it', async () =>
        (await stack.db.query(`select 1 from ${dest}.blobs where id = 1000 and n = 1`).catch(() => ({ rowCount: 0 }))).rowCount === 1 &&
        (await stack.db.query(`select count(*)::int as c from ${dest}.blobs`)).rows[0].c === 401, 120_000);
      assert.equal(await differences(`${src}.blobs`, `${dest}.blobs`), 0);
      const length = await stack.db.query(`select length(body) as l from ${dest}.blobs where id = 1000`);
      assert.equal(length.rows[0].l, 12_000_000);
      await stopAndDrop(handle);
    });
  });

  test('a caught-up stream hands its batch to an idle destination at once, not at batchWait, also while unpublished tables are written all the time', async () => {
    const src = `${stack.sourceSchema}_caught_up`;
    const dest = `${stack.schema}_caught_up`;
    await stack.db.query(`create schema ${src}; create table ${src}.items (id int primary key, name text); create table ${src}.noise (id bigserial primary key, at timestamptz default now())`);
    // A batch that closed only at batchWait or at the window's end would not arrive within the waits below.
    const handle = await startCdc('caught-up', { ...oneTable(`${src}.items`, dest), batchWait: '10m', streamWindow: '10m', batchChanges: 1_000_000 });
    let noisy = false;
    let writes = 0;
    const arrives = (id: number) =>
      waitFor(`item ${id} in the destination`, async () => (await stack.db.query(`select 1 from ${dest}.items where id = $1`, [id]).catch(() => ({ rowCount: 0 }))).rowCount === 1, 30_000);
    await stack.withWorker(async () => {
      await streaming(handle);
      for (const i of [1, 2, 3]) {
        await stack.db.query(`insert into ${src}.items values ($1, $2)`, [i, `item ${i}`]);
        await arrives(i);
      }
      // Then commits to a table the publication leaves out, all the time: the server keeps writing
      // WAL (and its walsender keeps waking up and sending keepalives) while the published table is quiet.
      noisy = true;
      const writer = (async () => {
        while (noisy) {
          await stack.db.query(`insert into ${src}.noise default values`);
          writes++;
        }
      })();
      try {
        await waitFor('the noise writer to commit', async () => writes >= 20, 30_000);
        for (const i of [4, 5, 6]) {
          await stack.db.query(`insert into ${src}.items values ($1, $2)`, [i, `item ${i}`]);
          await arrives(i);
        }
      } finally {
        noisy = false;
        await writer;
      }
      assert.equal(await differences(`${src}.items`, `${dest}.items`), 0);
      await stopAndDrop(handle);
    });
  });

  test('hostile values stream exactly: delimiters, backslashes, quotes, empty strings and NULLs, unicode, in values and in a composite key that moves', async () => {
    const src = `${stack.sourceSchema}_hostile`;
    const dest = `${stack.schema}_hostile`;
    // Every byte COPY text would have to escape, and values that differ only by it.
    const nasty = [`tab\there`, `new\nline`, `cr\rlf\r\n`, `back\\slash \\N \\t`, `"quoted", {braces}`, '', ' ', `emoji 🚀 ünïcödé 中文`, `\\`, `end\\`];
    await stack.db.query(`
      create schema ${src};
      create table ${src}.weird (a text, b text, note text, tags text[], doc jsonb, raw bytea, n int not null default 0, primary key (a, b));
      create table ${src}.plain (id int primary key, note text, n int not null default 0);`);
    const handle = await startCdc('hostile', {
      ...oneTable(`${src}.weird`, dest),
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.weird`, `${src}.plain`] },
    });
    await stack.withWorker(async () => {
      await streaming(handle);
      for (const [i, v] of nasty.entries()) {
        await stack.db.query(`insert into ${src}.weird (a, b, note, tags, doc, raw) values ($1, $2, $3, $4, $5, $6)`, [v, `k${i}`, v, [v, null, 'x'], JSON.stringify({ v }), Buffer.from(v, 'utf8')]);
        await stack.db.query(`insert into ${src}.plain values ($1, $2)`, [i, v]);
      }
      await stack.db.query(`insert into ${src}.plain values (100, null), (101, 'NULL'), (102, '\\N')`);
      // Updates that merge in one transaction (the object path), one that moves a key with a
      // hostile part, deletes by hostile keys.
      await stack.db.query(`begin; update ${src}.weird set n = n + 1 where b = 'k0'; update ${src}.weird set note = note || E'\\t+' where b = 'k0'; commit`);
      await stack.db.query(`update ${src}.weird set a = a || E'\\n moved', b = 'moved' where b = 'k1'`);
      await stack.db.query(`delete from ${src}.weird where b = 'k2'`);
      await stack.db.query(`update ${src}.plain set note = note || E'\\\\' where id < 5; delete from ${src}.plain where id = 5`);
      await waitFor('every hostile change to arrive', async () =>
        (await differences(`${src}.weird`, `${dest}.weird`)) === 0 && (await differences(`${src}.plain`, `${dest}.plain`)) === 0, 60_000);
      const moved = await stack.db.query(`select a from ${dest}.weird where b = 'moved'`);
      assert.equal(moved.rows[0].a, `new\nline\n moved`);
      const nulls = await stack.db.query(`select id, note is null as is_null, note from ${dest}.plain where id >= 100 order by id`);
      assert.deepEqual(nulls.rows.map((r) => [r.id, r.is_null, r.note]), [[100, true, null], [101, false, 'NULL'], [102, false, '\\N']]);
      await stopAndDrop(handle);
    });
  });

  test('schema changes mid-stream: an added column appears, a widened type widens, a dropped column stays nullable and is reported', async () => {
    const src = `${stack.sourceSchema}_ddl`;
    const dest = `${stack.schema}_ddl`;
    await stack.db.query(`
      create schema ${src};
      create table ${src}.items (id int primary key, qty int not null, obsolete text not null, code varchar(10), price numeric(6,2));
      insert into ${src}.items select i, i, 'old ' || i, 'c' || i, i from generate_series(1, 20) i;`);
    const handle = await startCdc('ddl', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.items`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      deletes: 'hard',
      batchWait: '200ms',
      streamWindow: '3s',
    });
    await stack.withWorker(async () => {
      await streaming(handle);
      await stack.db.query(`update ${src}.items set qty = qty + 1 where id = 1`);
      await stack.db.query(`alter table ${src}.items add column color text`);
      await stack.db.query(`insert into ${src}.items values (21, 21, 'old 21', 'red'); update ${src}.items set color = 'blue' where id = 2`);
      await stack.db.query(`alter table ${src}.items alter column qty type bigint`);
      await stack.db.query(`insert into ${src}.items values (22, 5000000000, 'old 22', 'green')`);
      // Wider modifiers of the same type: the destination takes exactly the new type.
      await stack.db.query(`alter table ${src}.items alter column code type varchar(40), alter column price type numeric(12,2)`);
      await stack.db.query(`update ${src}.items set code = repeat('x', 35), price = 123456789.25 where id = 4`);
      await stack.db.query(`alter table ${src}.items drop column obsolete`);
      await stack.db.query(`insert into ${src}.items values (23, 23, 'white'); update ${src}.items set qty = 0 where id = 3`);
      await waitFor('every change to arrive', async () => (await stack.db.query(`select 1 from ${dest}.items where id = 23`)).rowCount === 1 && (await differences(`${src}.items`, `${dest}.items`)) === 0, 60_000);
      const columns = await stack.db.query(
        `select column_name, data_type, is_nullable from information_schema.columns where table_schema = $1 and table_name = 'items' order by ordinal_position`,
        [dest],
      );
      const byName = Object.fromEntries(columns.rows.map((c) => [c.column_name, c]));
      assert.equal(byName.color?.data_type, 'text', 'the added column is in the destination');
      assert.equal(byName.qty?.data_type, 'bigint', 'the widened column is widened');
      // The snapshot lands varchar as text (the load engine's choice), which the longer codes fit;
      // numeric(6,2) must become numeric(12,2), or 123456789.25 would not fit.
      const widened = await stack.db.query(`select format_type(atttypid, atttypmod) as t from pg_attribute where attrelid = $1::regclass and attname in ('code', 'price') order by attname`, [`${dest}.items`]);
      assert.deepEqual(widened.rows.map((r) => r.t), ['text', 'numeric(12,2)']);
      assert.equal(byName.obsolete?.is_nullable, 'YES', 'the dropped column stays, nullable');
      const kept = await stack.db.query(`select obsolete from ${dest}.items where id in (1, 23) order by id`);
      assert.deepEqual(kept.rows.map((r) => r.obsolete), ['old 1', null]);
      const p = await waitFor('the changes in progress', async () => {
        const q = await handle.query<CdcProgress>('progress');
        return q.schemaChanges.some((c) => /dropped/.test(c)) && q;
      });
      assert.ok(p.schemaChanges.some((c) => /added column color/.test(c)), p.schemaChanges.join('; '));
      assert.ok(p.schemaChanges.some((c) => /widened column qty/.test(c)), p.schemaChanges.join('; '));
      await stopAndDrop(handle);
    });
  });

  test('TRUNCATE on the source is applied in order; pause and resume', async () => {
    const src = `${stack.sourceSchema}_trunc`;
    const dest = `${stack.schema}_trunc`;
    await stack.db.query(`create schema ${src}; create table ${src}.events (id int primary key, v text); insert into ${src}.events select i, 'v' from generate_series(1, 10) i;`);
    const handle = await startCdc('trunc', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.events`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      deletes: 'hard',
      batchWait: '200ms',
      streamWindow: '3s',
    });
    await stack.withWorker(async () => {
      await streaming(handle);
      await handle.signal('pause');
      await waitFor('paused with nothing in flight', async () => {
        const p = await handle.query<CdcProgress>('progress');
        return p.paused && p.inFlight === 0;
      });
      // Changes made while paused wait in the slot: before, the truncate, after.
      await stack.db.query(`insert into ${src}.events values (11, 'before'); truncate ${src}.events; insert into ${src}.events values (12, 'after')`);
      await handle.signal('resume');
      await waitFor('the truncate and what followed', async () => (await differences(`${src}.events`, `${dest}.events`)) === 0, 60_000);
      const rows = await stack.db.query(`select id from ${dest}.events`);
      assert.deepEqual(rows.rows.map((r) => r.id), [12]);
      await stopAndDrop(handle);
    });
    await saveHistory(handle, 'cdc-pause');
  });

  test('after catching up the slot stays close to the server WAL, also when only unpublished tables are written', async () => {
    const src = `${stack.sourceSchema}_idle`;
    const dest = `${stack.schema}_idle`;
    await stack.db.query(`create schema ${src}; create table ${src}.quiet (id int primary key); create table ${src}.noise (id int, pad text);`);
    const handle = await startCdc('idle', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.quiet`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      streamWindow: '3s',
    });
    await stack.withWorker(async () => {
      const { slot } = await streaming(handle);
      const distance = async () =>
        Number((await stack.db.query(`select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint as d from pg_replication_slots where slot_name = $1`, [slot])).rows[0].d);
      const lsn = async () => (await stack.db.query(`select pg_current_wal_lsn()::text as l`)).rows[0].l as string;
      const before = await lsn();
      // About 20 MB of WAL, none of it published.
      await stack.db.query(`insert into ${src}.noise select i, repeat('x', 150) from generate_series(1, 100000) i`);
      const afterNoise = await lsn();
      const written = Number((await stack.db.query(`select pg_wal_lsn_diff($1, $2)::bigint as d`, [afterNoise, before])).rows[0].d);
      assert.ok(written > 5_000_000, `the noise wrote ${written} bytes of WAL`);
      await waitFor('the slot to follow the server past the noise', async () => {
        const r = await stack.db.query(`select pg_wal_lsn_diff(confirmed_flush_lsn, $2)::bigint as past from pg_replication_slots where slot_name = $1`, [slot, afterNoise]);
        return Number(r.rows[0].past) >= 0 && (await distance()) < 256 * 1024;
      }, 60_000);
      await stopAndDrop(handle);
    });
  });

  test('SIGKILL of the worker process twice mid-stream, a new worker each time: every change applied exactly once', async () => {
    const src = `${stack.sourceSchema}_kill`;
    const dest = `${stack.schema}_kill`;
    const taskQueue = `${stack.taskQueue}-kill`;
    await createTables(src, 100);
    const writer = new Writer(stack.db, src);
    const handle = await startCdc('kill', { ...cdcInput(src, dest, { deletes: 'hard', snapshot: false, streamWindow: '1s', batchChanges: 20 }) }, taskQueue);
    const state = async () =>
      (await stack.db.query(`select state from ${dest}._sluice_state where resource like 'cdc:%' and resource not like '%:snapshot:%'`).catch(() => ({ rows: [] }))).rows[0]?.state as
        | { changes: number; batches: number; tables: CdcProgress['tables'] }
        | undefined;
    let worker = await spawnWorker(taskQueue);
    try {
      await streaming(handle);
      let writing = true;
      const written = (async () => {
        for (let i = 0; i < 150; i++) await writer.transaction(i);
        writing = false;
      })();
      for (let kill = 0; kill < 2; kill++) {
        const before = (await state())?.batches ?? 0;
        await waitFor('batches applied by this worker', async () => ((await state())?.batches ?? 0) >= before + 2, 120_000);
        await killHard(worker);
        worker = await spawnWorker(taskQueue);
      }
      await written;
      assert.equal(writing, false);
      const done = await waitFor('every change applied', async () => {
        const s = await state();
        return s && s.changes >= writer.total() && s;
      }, 120_000);
      assert.equal(done.changes, writer.total(), 'no change applied twice');
      for (const [table, c] of Object.entries(writer.counts)) {
        const got = done.tables[table]!;
        assert.deepEqual({ inserts: got.inserts, updates: got.updates, deletes: got.deletes }, c, `${table}: every insert, update and delete exactly once`);
      }
      const live = await stack.db.query(`select count(*)::int as n from ${dest}.orders o where not exists (select 1 from ${src}.orders s where s.id = o.id)`);
      assert.equal(live.rows[0].n, 0, 'no deleted order is left');
      await stopAndDrop(handle);
      await saveHistory(handle, 'cdc-worker-killed');
    } finally {
      await killHard(worker);
    }
  });

  test('a long stream continues as new, keeping its slot and position', async () => {
    const src = `${stack.sourceSchema}_can`;
    const dest = `${stack.schema}_can`;
    await stack.db.query(`create schema ${src}; create table ${src}.ticks (id int primary key, n int)`);
    const handle = await startCdc('can', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.ticks`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      batchWait: '50ms',
      streamWindow: '100ms',
    });
    await stack.withWorker(async () => {
      const { slot } = await streaming(handle);
      let i = 0;
      await waitFor('a continue-as-new', async () => {
        await stack.db.query(`insert into ${src}.ticks values ($1, $1)`, [++i]);
        return (await handle.describe()).runId !== handle.firstExecutionRunId;
      }, 180_000);
      await stack.db.query(`insert into ${src}.ticks values (-1, -1)`);
      await waitFor('changes after the continue-as-new', async () => (await stack.db.query(`select 1 from ${dest}.ticks where id = -1`).catch(() => ({ rowCount: 0 }))).rowCount === 1, 60_000);
      const p = await handle.query<CdcProgress>('progress');
      assert.equal(p.slot, slot, 'the same slot');
      assert.equal(await differences(`${src}.ticks`, `${dest}.ticks`), 0);
      await stopAndDrop(handle);
    });
    await saveHistory(handle, 'cdc-continue-as-new');
  });

  test('one owner: a second run on the same tables or the same slot fails at once naming the first; a replaced run commits nothing', async () => {
    const src = `${stack.sourceSchema}_owner`;
    const dest = `${stack.schema}_owner`;
    await stack.db.query(`create schema ${src}; create table ${src}.accounts (id int primary key, balance int); insert into ${src}.accounts select i, 0 from generate_series(1, 10) i;`);
    const input = (extra: Record<string, unknown> = {}) => ({
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.accounts`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      deletes: 'hard',
      batchWait: '100ms',
      // One long streaming call: the first run reads the slot the whole time.
      streamWindow: '10m',
      ...extra,
    });
    const first = await startCdc('owner-a', input());
    await stack.withWorker(async () => {
      const { slot } = await streaming(first);
      await stack.db.query(`update ${src}.accounts set balance = 1 where id = 1`);
      await waitFor('the first change', async () => (await stack.db.query(`select 1 from ${dest}.accounts where id = 1 and balance = 1`)).rowCount === 1);
      const refusals: [string, Record<string, unknown>, RegExp][] = [
        ['owner-b', input(), new RegExp(`held by workflow ${first.workflowId}.*temporal workflow terminate --workflow-id ${first.workflowId}`)],
        // Another destination has its own leases: the slot's reader on the source names the first run.
        // (The test database's password is "sluice", so redaction stars the word in messages.)
        ['owner-c', input({ slot, destination: { connection: 'DATABASE_URL', schema: `${dest}_other` } }), new RegExp(`slot \\S*${slot.slice('sluice'.length)} is read by another cdcWorkflow, workflow ${first.workflowId.slice(0, 30)}`)],
      ];
      for (const [id, second, message] of refusals) {
        const handle = await startCdc(id, second);
        const err = await handle.result().catch((e: unknown) => e);
        assert.ok(err instanceof WorkflowFailedError, `${id}: expected the second run to fail, got ${String(err)}`);
        assert.equal((err.cause as { nonRetryable?: boolean }).nonRetryable, true, id);
        assert.match((err.cause as Error).message, message);
      }
      const publications = await stack.db.query(`select pubname from pg_publication where pubname like 'sluice_cdc_owner_c%'`);
      assert.equal(publications.rowCount, 0, 'the refused run created nothing on the source');
      // A takeover moves the token on (as another run's acquire would): the first run's next batch must not commit.
      await stack.db.query(`update ${dest}._sluice_state set state = jsonb_set(state, '{token}', to_jsonb((state->>'token')::int + 1)) where resource = 'lease:cdc:accounts'`);
      await stack.db.query(`update ${src}.accounts set balance = 2 where id = 2`);
      const err = await first.result().catch((e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, `the replaced run fails, got ${String(err)}`);
      assert.match((err.cause as Error).message, /lost the lease on lease:cdc:accounts/);
      const row = await stack.db.query(`select balance from ${dest}.accounts where id = 2`);
      assert.equal(row.rows[0].balance, 0, 'nothing of the replaced run was committed');
      await stack.db.query(`select pg_drop_replication_slot($1)`, [slot]).catch(() => undefined);
      await stack.db.query(`drop publication if exists ${slot}`);
    });
    await saveHistory(first, 'cdc-lease-lost');
  });

  test('a large table is copied in chunks; SIGKILL of the worker mid-snapshot redoes one chunk, and the result is exact', async () => {
    const src = `${stack.sourceSchema}_chunks`;
    const dest = `${stack.schema}_chunks`;
    const taskQueue = `${stack.taskQueue}-chunks`;
    await stack.db.query(`
      create schema ${src};
      create table ${src}.big (id bigint primary key, v int not null, pad text);
      insert into ${src}.big select i, 0, repeat(md5(i::text), 6) from generate_series(1, 120000) i;`);
    const handle = await startCdc('chunks', {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: [`${src}.big`] },
      destination: { connection: 'DATABASE_URL', schema: dest },
      deletes: 'hard',
      snapshotChunkRows: 6000,
      parallel: 1,
      batchWait: '200ms',
      streamWindow: '5s',
    }, taskQueue);
    const chunkLoads = async () =>
      (await stack.db.query(`select load_id, finished_at::text as at from ${dest}._sluice_loads where partition like 'snapshot %' and status = 'completed' order by load_id`).catch(() => ({ rows: [] }))).rows as { load_id: string; at: string }[];
    let worker = await spawnWorker(taskQueue);
    let beforeKill: { load_id: string; at: string }[];
    let writing = false;
    let writer: Promise<void> = Promise.resolve();
    try {
      const total = await waitFor('the snapshot plan', async () => (await handle.query<{ snapshot: { chunks?: number } }>('progress')).snapshot.chunks, 120_000);
      assert.equal(total, 20, 'the table is planned in chunks of about snapshotChunkRows');
      // Writes all over the key range while the chunks are copied: updates, deletes, inserts past
      // the end, and key changes that move a row into another chunk.
      let i = 0;
      writing = true;
      writer = (async () => {
        while (writing) {
          i++;
          await stack.db.query(`begin;
            update ${src}.big set v = v + 1 where id in (${(i * 7919) % 120000 + 1}, ${(i * 104729) % 120000 + 1});
            delete from ${src}.big where id = ${(i * 15485863) % 120000 + 1};
            insert into ${src}.big values (${200000 + i}, ${i}, 'new') on conflict do nothing;
            update ${src}.big set id = id + 1000000 where id = ${(i * 32452843) % 120000 + 1};
            commit;`);
        }
      })();
      beforeKill = await waitFor('a few chunks copied', async () => {
        const done = await chunkLoads();
        return done.length >= 3 && done;
      }, 180_000);
      await killHard(worker);
      beforeKill = await chunkLoads();
      assert.ok(beforeKill.length < total, `the kill came mid-snapshot (${beforeKill.length} of ${total} chunks done)`);
      worker = await spawnWorker(taskQueue);
      await streaming(handle);
      writing = false;
      await writer;
      await waitFor('the destination to equal the source', async () => (await differences(`${src}.big`, `${dest}.big`)) === 0, 180_000);
      const after = await chunkLoads();
      assert.equal(after.length, total, 'every chunk copied once');
      const redone = beforeKill.filter((b) => after.find((a) => a.load_id === b.load_id)?.at !== b.at);
      assert.deepEqual(redone, [], 'chunks committed before the kill are not copied again');
      const p = await handle.query<CdcProgress & { snapshot: { chunks: number; chunksCopied: number } }>('progress');
      assert.equal(p.snapshot.chunks, 20);
      await stopAndDrop(handle);
      await saveHistory(handle, 'cdc-chunked-snapshot');
    } finally {
      writing = false;
      await writer.catch(() => undefined);
      await killHard(worker);
    }
  });

  test('REPLICA IDENTITY FULL without a primary key streams when a unique index on NOT NULL columns identifies rows', async () => {
    const src = `${stack.sourceSchema}_full`;
    const dest = `${stack.schema}_full`;
    await stack.db.query(`create schema ${src}; create table ${src}.tags (code text not null, label text, hits int);
      create unique index on ${src}.tags (code); alter table ${src}.tags replica identity full;
      insert into ${src}.tags select 't' || i, 'label ' || i, 0 from generate_series(1, 20) i;`);
    const handle = await startCdc('full', oneTable(`${src}.tags`, dest));
    await stack.withWorker(async () => {
      await streaming(handle);
      await stack.db.query(`update ${src}.tags set hits = hits + 1 where code in ('t1', 't2'); delete from ${src}.tags where code = 't3';
        update ${src}.tags set code = 't40' where code = 't4'; insert into ${src}.tags values ('t50', 'new', 5)`);
      await waitFor('the changes', async () => (await stack.db.query(`select 1 from ${dest}.tags where code = 't50'`)).rowCount === 1 && (await differences(`${src}.tags`, `${dest}.tags`)) === 0, 60_000);
      await stopAndDrop(handle);
    });
  });

  test('refusals fail at once, non-retryably, naming the table or setting and the fix', async () => {
    const src = `${stack.sourceSchema}_refuse`;
    await stack.db.query(`create schema ${src}; create table ${src}.nopk (a int); create table ${src}.ok (id int primary key);
      create table ${src}.fullnokey (a int, b text); alter table ${src}.fullnokey replica identity full; create unique index on ${src}.fullnokey (a);`);
    // A role without REPLICATION, and a server with wal_level = replica. A random password: redaction
    // stars every occurrence of a connection password, and a word like the role's name would be one.
    const noreplPassword = randomBytes(12).toString('hex');
    await stack.db.query(`create role cdc_norepl login password '${noreplPassword}'; grant usage on schema ${src} to cdc_norepl; grant select on all tables in schema ${src} to cdc_norepl`);
    const url = new URL(requireEnv('DATABASE_URL'));
    url.username = 'cdc_norepl';
    url.password = noreplPassword;
    process.env.NOREPL_SOURCE_URL = url.toString();
    const replica = await startEmbeddedPostgres({ dir: join(requireEnv('SLUICE_TEST_SCRATCH'), 'pg-replica'), port: await freePort(), fast: true, walLevel: 'replica' });
    process.env.REPLICA_SOURCE_URL = replica.url;
    try {
      const cases: [string, string, string[], RegExp][] = [
        ['missing', 'SOURCE_DATABASE_URL', [`${src}.nope`], /source table .*nope does not exist.*hint: check source\.tables/],
        ['nopk', 'SOURCE_DATABASE_URL', [`${src}.nopk`], /nopk has no primary key.*hint: add a primary key/],
        // Its only unique index allows nulls: two rows could still be equal.
        ['fullnokey', 'SOURCE_DATABASE_URL', [`${src}.fullnokey`], /fullnokey has REPLICA IDENTITY FULL but no primary key and no unique index on NOT NULL columns.*two equal rows/],
        ['norepl', 'NOREPL_SOURCE_URL', [`${src}.ok`], /role "cdc_norepl" lacks the REPLICATION attribute.*ALTER ROLE "cdc_norepl" REPLICATION/],
        ['walreplica', 'REPLICA_SOURCE_URL', ['public.whatever'], /wal_level is "replica".*wal_level = logical/],
      ];
      await stack.withWorker(async () => {
        for (const [name, connection, tables, message] of cases) {
          const handle = await startCdc(`refuse-${name}`, { source: { kind: 'postgres', connection, tables }, destination: { connection: 'DATABASE_URL', schema: `${stack.schema}_refuse` } });
          const err = await handle.result().catch((e: unknown) => e);
          assert.ok(err instanceof WorkflowFailedError, `${name}: expected the workflow to fail, got ${String(err)}`);
          const cause = err.cause as Error & { nonRetryable?: boolean };
          assert.equal(cause.nonRetryable, true, name);
          assert.match(cause.message, message);
          const history = await handle.fetchHistory();
          const attempts = history.events!.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
          assert.deepEqual(attempts, [1], `${name}: the refusal is not retried`);
        }
        // Two tables landing on one name are an input error.
        const clash = await startCdc('clash', { source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['a.orders', 'b.orders'] } });
        const err = (await clash.result().catch((e: unknown) => e)) as WorkflowFailedError;
        assert.match((err.cause as Error).message, /source\.tables\.1: b\.orders and a\.orders would both land as public\.orders/);
        const unknown = await startCdc('unknown-key', { source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['a.orders'] }, delete: 'hard' });
        const err2 = (await unknown.result().catch((e: unknown) => e)) as WorkflowFailedError;
        assert.match((err2.cause as Error).message, /delete/);
      });
    } finally {
      await replica.stop();
    }
  });
});
