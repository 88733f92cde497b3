/**
 * One owner per resource: a lease with a fencing token, kept in `_sluice_state`.
 *
 * A resource is (destination schema, destination table, kind of state). Its lease is ONE ROW of
 * the destination schema's `_sluice_state`, key `lease:<kind>:<table>` (the schema is implied:
 * every schema has its own `_sluice_state`), so no metadata table needs a migration and
 * `sluice status` finds the lease where it finds the cursor or file state. The row's `state`:
 *
 *   { "token": 7, "holder": { "workflowId", "chain", "runId" } | null,
 *     "acquiredAt", "renewedAt", "releasedAt"? , "takenOverFrom"? }
 *
 * `token` only ever grows: every new owner (a first acquire, a takeover, an acquire after a
 * release) gets the next one. A run chain (first run id: it survives continue-as-new and
 * retries) that acquires again gets its own token back. Every commit of the resource checks the
 * token IN ITS OWN TRANSACTION (`checkLease`, which also stamps `renewedAt`): the update takes
 * the row lock, so a takeover waits for commits in flight, and any commit after it by the old
 * owner (a zombie: a worker that lost its activity but still runs) finds a newer token and rolls
 * back. Nothing a zombie does can reach the destination.
 *
 * The functions here expect the metadata tables to exist (loader's `ensureMetadata`), except
 * `readLease`, which answers undefined for a schema sluice never loaded into.
 */
import type pg from 'pg';
import { PermanentError } from '../../errors';
import { qualifiedName } from '../../schema/identifiers';
import { getPool } from './pool';

/** Writer kinds of a table (a full refresh holds them all); `cdc_slot` guards a replication slot. */
export const LEASE_KINDS = ['backfill', 'incremental', 'files', 'full_refresh', 'cdc'] as const;
export type LeaseKind = (typeof LEASE_KINDS)[number] | 'cdc_slot';

export interface LeaseHolder {
  workflowId: string;
  /** The run chain: `workflowInfo().firstExecutionRunId`. */
  chain: string;
  /** The run that acquired (or re-acquired after continue-as-new) last. */
  runId?: string;
}

export interface LeaseState {
  token: number;
  /** null once released. */
  holder: LeaseHolder | null;
  acquiredAt: string;
  /** The last commit under this lease (or the acquire). */
  renewedAt: string;
  releasedAt?: string;
  /** The holder this owner took the resource from (terminated, completed, or silent for too long). */
  takenOverFrom?: LeaseHolder;
}

/** The small handle a workflow carries and every commit presents. */
export interface LeaseToken {
  key: string;
  token: number;
}

export function leaseKey(kind: LeaseKind, table: string): string {
  return `lease:${kind}:${table}`;
}

/** Whether a holder still runs: asked of Temporal by the caller (the engine knows nothing of it). */
export type HolderLiveness = (holder: LeaseHolder) => Promise<'running' | 'gone' | 'unknown'>;

export interface AcquireOptions {
  key: string;
  holder: LeaseHolder;
  isRunning: HolderLiveness;
  /** A holder with no commit for this long may be taken over even if it looks alive (undefined: never). */
  takeOverAfterMs?: number;
  /** The resource, for messages. */
  resource: string;
}

export interface Acquired extends LeaseToken {
  takenOverFrom?: LeaseHolder;
}

/** A second run of a resource: it must not start. Non-retryable: waiting would not help. */
export class LeaseHeldError extends PermanentError {
  constructor(
    readonly resource: string,
    readonly holder: LeaseHolder,
    readonly key: string,
  ) {
    super(
      `resource "${resource}" (${key}) is held by workflow ${holder.workflowId} (run chain ${holder.chain}): ` +
        'one run at a time may load a resource',
      `wait for that run to finish, or stop it with: temporal workflow terminate --workflow-id ${holder.workflowId}`,
    );
    this.name = 'LeaseHeldError';
  }
}

/** A commit under a token that is no longer the resource's: the run was replaced and must stop. */
export class LeaseLostError extends PermanentError {
  constructor(key: string, token: number, current: LeaseState | undefined) {
    const now = current?.holder ? `workflow ${current.holder.workflowId} (token ${current.token})` : 'nobody (released)';
    super(
      `lost the lease on ${key}: this run holds token ${token}, the resource now belongs to ${now}; nothing was committed`,
      'another run took the resource over (this one was terminated or silent for too long): start it again only after that run ends',
    );
    this.name = 'LeaseLostError';
  }
}

const stateTable = (schema: string) => qualifiedName(schema, '_sluice_state');

export function parseLease(value: unknown): LeaseState | undefined {
  const v = value as Partial<LeaseState> | null | undefined;
  if (typeof v?.token !== 'number') return undefined;
  return v as LeaseState;
}

/** The lease of a resource key as stored, or undefined when none was ever taken (for `sluice status` / `reset`). */
export async function readLease(url: string, schema: string, key: string): Promise<LeaseState | undefined> {
  const pool = getPool(url);
  const exists = await pool.query<{ t: string | null }>('select to_regclass($1)::text as t', [stateTable(schema)]);
  if (!exists.rows[0]?.t) return undefined;
  const r = await pool.query<{ state: unknown }>(`select state from ${stateTable(schema)} where resource = $1`, [key]);
  return parseLease(r.rows[0]?.state);
}

/**
 * Takes the resource for `holder`, or throws LeaseHeldError naming the run that has it. The
 * decision to take over is made outside any transaction (it asks Temporal), and the write only
 * succeeds if the row still holds the token the decision saw (compare-and-set), so two runs that
 * race for a free resource cannot both win.
 */
export async function acquireLease(url: string, schema: string, opts: AcquireOptions): Promise<Acquired> {
  const pool = getPool(url);
  for (;;) {
    const current = await readLease(url, schema, opts.key);
    const now = new Date().toISOString();
    if (!current) {
      const fresh: LeaseState = { token: 1, holder: opts.holder, acquiredAt: now, renewedAt: now };
      const r = await pool.query(
        `insert into ${stateTable(schema)} (resource, state, updated_at) values ($1, $2, now()) on conflict (resource) do nothing`,
        [opts.key, JSON.stringify(fresh)],
      );
      if (r.rowCount) return { key: opts.key, token: 1 };
      continue;
    }
    let next: LeaseState;
    let takenOverFrom: LeaseHolder | undefined;
    const holder = current.holder;
    if (holder && holder.workflowId === opts.holder.workflowId && holder.chain === opts.holder.chain) {
      // The same run chain (continue-as-new, a retried activity, a replayed workflow): same token.
      next = { ...current, holder: opts.holder, renewedAt: now };
    } else {
      if (holder && !(await holderIsGone(holder, current, opts))) throw new LeaseHeldError(opts.resource, holder, opts.key);
      takenOverFrom = holder ?? undefined;
      next = { token: current.token + 1, holder: opts.holder, acquiredAt: now, renewedAt: now, ...(takenOverFrom ? { takenOverFrom } : {}) };
    }
    const r = await pool.query(
      `update ${stateTable(schema)} set state = $2, updated_at = now() where resource = $1 and (state->>'token')::bigint = $3`,
      [opts.key, JSON.stringify(next), current.token],
    );
    if (r.rowCount) return { key: opts.key, token: next.token, ...(takenOverFrom ? { takenOverFrom } : {}) };
  }
}

async function holderIsGone(holder: LeaseHolder, current: LeaseState, opts: AcquireOptions): Promise<boolean> {
  // One workflow id runs one chain at a time: if we run under the holder's id, the holder has ended.
  if (holder.workflowId === opts.holder.workflowId) return true;
  const liveness = await opts.isRunning(holder);
  if (liveness === 'gone') return true;
  if (opts.takeOverAfterMs === undefined) return false;
  return Date.now() - Date.parse(current.renewedAt) > opts.takeOverAfterMs;
}

/**
 * Inside a commit's transaction: fails with LeaseLostError unless `lease` is still the
 * resource's token, and stamps renewedAt. The row lock it takes is held to commit, so a takeover
 * cannot slip in between this check and the commit.
 */
export async function checkLease(client: pg.PoolClient, schema: string, lease: LeaseToken): Promise<void> {
  const r = await client.query<{ state: unknown }>(
    `update ${stateTable(schema)}
        set state = jsonb_set(state, '{renewedAt}', to_jsonb(to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))), updated_at = now()
      where resource = $1 and (state->>'token')::bigint = $2 and state->'holder' <> 'null'::jsonb
      returning state`,
    [lease.key, lease.token],
  );
  if (r.rowCount) return;
  const current = await client.query<{ state: unknown }>(`select state from ${stateTable(schema)} where resource = $1`, [lease.key]);
  throw new LeaseLostError(lease.key, lease.token, parseLease(current.rows[0]?.state));
}

/** checkLease for several leases in one round trip (a CDC batch holds one per table and one for its slot). */
export async function checkLeases(client: pg.PoolClient, schema: string, leases: LeaseToken[]): Promise<void> {
  const r = await client.query(
    `update ${stateTable(schema)} s
        set state = jsonb_set(s.state, '{renewedAt}', to_jsonb(to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))), updated_at = now()
       from unnest($1::text[], $2::bigint[]) as l(key, token)
      where s.resource = l.key and (s.state->>'token')::bigint = l.token and s.state->'holder' <> 'null'::jsonb`,
    [leases.map((l) => l.key), leases.map((l) => l.token)],
  );
  if (r.rowCount === leases.length) return;
  // One of them is lost: the single check names it (and throws).
  for (const lease of leases) await checkLease(client, schema, lease);
}

/** Renews (and checks) a lease in a transaction of its own: for runs that go long without a commit. */
export async function renewLease(url: string, schema: string, lease: LeaseToken): Promise<void> {
  const client = await getPool(url).connect();
  try {
    await client.query('begin');
    await checkLease(client, schema, lease);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Gives the resource up (the token stays, so the next owner's is higher). Releasing a lease one no longer holds does nothing. */
export async function releaseLease(url: string, schema: string, lease: LeaseToken): Promise<boolean> {
  const r = await getPool(url).query(
    `update ${stateTable(schema)}
        set state = state || jsonb_build_object('holder', null, 'releasedAt', to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')), updated_at = now()
      where resource = $1 and (state->>'token')::bigint = $2`,
    [lease.key, lease.token],
  );
  return (r.rowCount ?? 0) > 0;
}
