/**
 * What every sluice connection to PostgreSQL shares, source sessions and destination pools
 * alike: how it connects and the session settings it runs with.
 */
import type pg from 'pg';
import { stallTimeoutMs, statementTimeoutMs } from '../config';

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
