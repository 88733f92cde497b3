/**
 * The demo source schema `npm start` puts in the embedded database: customers with
 * `updated_at` and orders over the 91 days of 2024-01-01 .. 2024-03-31, deterministic, so the
 * printed commands give the same result on every machine.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';

export const DEMO_SCHEMA = 'demo';

export async function seedDemo(url: string): Promise<{ orders: number; customers: number }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('begin');
    await client.query(`select pg_advisory_xact_lock(hashtextextended('sluice-demo-seed', 0))`);
    await client.query(`
      create schema if not exists demo;
      create table if not exists demo.customers (
        id bigint primary key,
        name text not null,
        email text not null,
        country text not null,
        updated_at timestamptz not null
      );
      create table if not exists demo.orders (
        id bigint primary key,
        customer_id bigint not null references demo.customers (id),
        amount numeric(12,2) not null,
        status text not null,
        created_at timestamptz not null,
        updated_at timestamptz not null
      );
      create index if not exists orders_created_at_idx on demo.orders (created_at);
      create index if not exists orders_updated_at_idx on demo.orders (updated_at);
      create index if not exists customers_updated_at_idx on demo.customers (updated_at);`);
    const empty = (await client.query('select not exists (select 1 from demo.customers) as empty')).rows[0].empty as boolean;
    if (empty) {
      await client.query(`
        insert into demo.customers
        select i, 'Customer ' || i, 'customer' || i || '@example.com',
               (array['DE','FR','US','BR','JP'])[1 + i % 5],
               timestamptz '2024-01-01 00:00:00+00' + (i * interval '7 hours')
        from generate_series(1, 120) i;
        insert into demo.orders
        select i, 1 + (i * 37) % 120, round(((i * 7919) % 50000) / 100.0, 2),
               (array['placed','paid','shipped','delivered'])[1 + i % 4],
               timestamptz '2024-01-01 00:00:00+00' + (i * interval '4 hours 21 minutes'),
               timestamptz '2024-01-01 00:00:00+00' + (i * interval '4 hours 21 minutes') + ((i % 48) * interval '1 hour')
        from generate_series(1, 500) i;`);
    }
    await client.query('commit');
    const counts = await client.query<{ orders: string; customers: string }>(
      'select (select count(*) from demo.orders) as orders, (select count(*) from demo.customers) as customers',
    );
    return { orders: Number(counts.rows[0]!.orders), customers: Number(counts.rows[0]!.customers) };
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    await client.end();
  }
}

/** The demo drop folder `npm start` seeds: three small CSV files of orders, one per day. */
export const DEMO_DROP_FILES: Record<string, string> = Object.fromEntries(
  ['2024-04-01', '2024-04-02', '2024-04-03'].map((day, d) => {
    const rows = Array.from({ length: 4 }, (_, i) => {
      const id = 10_001 + d * 4 + i;
      return `${id},${1 + (id % 120)},${((id * 7919) % 50000) / 100},placed,${day}T${String(9 + i).padStart(2, '0')}:00:00Z`;
    });
    return [`orders-${day}.csv`, ['id,customer_id,amount,status,created_at', ...rows].join('\n') + '\n'];
  }),
);

/** Writes the demo CSV files into `dir` unless they are there already (edits to them are kept). */
export async function seedDropFolder(dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  for (const [name, text] of Object.entries(DEMO_DROP_FILES)) {
    await writeFile(join(dir, name), text, { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  return Object.keys(DEMO_DROP_FILES);
}
