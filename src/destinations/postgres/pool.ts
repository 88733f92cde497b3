import pg from 'pg';
import { stallTimeoutMs, statementTimeoutMs } from '../../config';

const pools = new Map<string, pg.Pool>();

/**
 * How every sluice connection (destination pools and source sessions) reaches the server: TCP
 * keepalive, so a peer that vanished (a half-open socket after a failover or a NAT timeout) is
 * noticed by the kernel instead of hanging a read for hours, and a bounded connect.
 */
export function clientConfig(url: string, applicationName: string): pg.ClientConfig {
  return {
    connectionString: url,
    application_name: applicationName,
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
    connectionTimeoutMillis: 30_000,
  };
}

/**
 * Session timeouts for every sluice connection, as SET statements (not startup parameters,
 * which PgBouncer refuses). A lock wait ends at the stall timeout, so a load queued behind
 * another session's lock fails its attempt (SQLSTATE 55P03, retried with backoff) instead of
 * waiting forever; a transaction left idle (its client gone quiet) ends at twice that.
 * statement_timeout is off unless SLUICE_STATEMENT_TIMEOUT sets it: one COPY of a big table is
 * one honest long statement.
 */
export function sessionSettingsSql(): string {
  const stall = stallTimeoutMs();
  return [
    `set lock_timeout = ${stall}`,
    `set idle_in_transaction_session_timeout = ${2 * stall}`,
    `set statement_timeout = ${statementTimeoutMs()}`,
  ].join('; ');
}

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
