import pg from 'pg';
import { clientConfig, sessionSettingsSql } from '../../postgres/connection';

export { clientConfig, sessionSettingsSql };

const pools = new Map<string, pg.Pool>();

/** One pool per connection string per worker process; activities share it. */
export function getPool(url: string): pg.Pool {
  let pool = pools.get(url);
  if (!pool) {
    pool = new pg.Pool({
      ...clientConfig(url, 'sluice'),
      max: 20,
      idleTimeoutMillis: 30_000,
      // Dates and partition boundaries are UTC (CONTRACT.md) whatever the server's default zone:
      // a naive timestamp or a date compared with a UTC boundary must not shift by the server's offset.
      // A SET (not the `options` startup parameter) also works through PgBouncer. pg-pool awaits
      // onConnect before it hands the client out; a 'connect' listener is not awaited, so the
      // caller's first query ran while the SET was still executing (pg's "already executing a
      // query" DeprecationWarning) and could even run before the zone was set.
      onConnect: async (client) => {
        await client.query(`set timezone = 'UTC'; set datestyle = 'ISO, YMD'; ${sessionSettingsSql()}`);
      },
    });
    // An idle client losing its connection must not crash the worker; the next checkout reconnects.
    pool.on('error', () => undefined);
    pools.set(url, pool);
  }
  return pool;
}

export async function closePools(): Promise<void> {
  const all = [...pools.values()];
  pools.clear();
  await Promise.all(all.map((p) => p.end()));
}
