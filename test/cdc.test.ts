import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type WorkflowHandle } from '@temporalio/client';
import type pg from 'pg';
import type { Progress } from '../src/inputs';
import { saveHistory, testStack, waitFor, type TestStack } from './helpers';

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
});
