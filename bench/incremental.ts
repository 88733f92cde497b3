/**
 * `npm run bench:incremental`: 1,000,000 rows that all share ONE cursor value, loaded by an
 * incremental sync (keyset pages of 50,000 on (cursor, id), each page one transaction that also
 * writes the position) next to a plain append of the same rows (one COPY, one transaction), on
 * an embedded PostgreSQL this script starts. It calls the engines directly: no Temporal.
 *
 * Targets (issue 5): the incremental sync takes at most 1.2x the append's time, and its
 * `_sluice_state` row stays under 1 KB however many rows share the cursor value.
 *
 *   BENCH_ROWS=200000 BENCH_ROUNDS=3 npm run bench:incremental
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { syncIncremental, type SyncRequest } from '../src/destinations/postgres/incremental-sync';
import { loadResource } from '../src/destinations/postgres/loader';
import { closePools } from '../src/destinations/postgres/pool';
import { freePort } from '../src/dev/ports';
import { startEmbeddedPostgres } from '../src/dev/postgres';
import { CursorSpec, PostgresSource, Resource } from '../src/inputs';
import { initialPosition } from '../src/plan/cursor';
import { extractPostgres } from '../src/sources/postgres';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const PAGE_SIZE = Number(process.env.BENCH_PAGE_SIZE ?? 50_000);
const CURSOR_VALUE = '2024-01-01 00:00:00+00';

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const seconds = (ms: number) => (ms / 1000).toFixed(2);

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await fn();
  return { ms: performance.now() - started, value };
}

async function main(): Promise<void> {
  const scratch = await mkdtemp(join(tmpdir(), 'sluice-bench-'));
  // Under root, PostgreSQL runs as the postgres user, which must be able to enter this directory.
  await chmod(scratch, 0o755);
  const db = await startEmbeddedPostgres({ dir: join(scratch, 'pg'), port: await freePort(), fast: true });
  process.env.BENCH_DATABASE_URL = db.url;
  const admin = new pg.Pool({ connectionString: db.url, max: 2 });
  admin.on('error', () => undefined);
  try {
    console.log(`embedded PostgreSQL at ${db.url}; ${fmt(ROWS)} rows, all with updated_at = ${CURSOR_VALUE}`);
    await admin.query(`create schema src;
      create table src.events (id bigint primary key, updated_at timestamptz not null, user_id integer, kind text, amount numeric(12,2), note text)`);
    await admin.query(
      `insert into src.events select i, $1, (i::bigint * 7919) % 1000, (array['view','click','signup','purchase'])[i % 4 + 1], (i % 10000) / 100.0, 'event number ' || i
         from generate_series(1, $2::int) i`,
      [CURSOR_VALUE, ROWS],
    );
    await admin.query('create index on src.events (updated_at, id)');
    await admin.query('vacuum analyze src.events');

    const source = PostgresSource.parse({ kind: 'postgres', connection: 'BENCH_DATABASE_URL', table: 'src.events' });
    const resource = Resource.parse({ name: 'events', writeDisposition: 'append', primaryKey: ['id'] });
    const cursor = CursorSpec.parse({ column: 'updated_at' });

    const appendMs: number[] = [];
    const incrementalMs: number[] = [];
    let stateBytes = 0;
    let pages = 0;
    let recheckMs = 0;
    for (let round = 1; round <= ROUNDS; round++) {
      const plainSchema = `bench_append_${round}`;
      const append = await timed(async () =>
        loadResource({
          url: db.url,
          schema: plainSchema,
          table: 'events',
          resource,
          loadId: `bench/append/${round}`,
          data: await extractPostgres(db.url, source),
        }),
      );
      if (append.value.rowsLoaded !== ROWS) throw new Error(`append loaded ${append.value.rowsLoaded} rows`);
      appendMs.push(append.ms);

      const incrSchema = `bench_incremental_${round}`;
      const request = (position: SyncRequest['position'], mode: SyncRequest['mode'], sync: number): SyncRequest => ({
        source,
        resource,
        destination: { connection: 'BENCH_DATABASE_URL', schema: incrSchema },
        cursor,
        pageSize: PAGE_SIZE,
        chain: 'bench',
        sync,
        mode,
        position,
        done: { rows: 0, pages: 0, rejected: 0 },
        budgetMs: Number.MAX_SAFE_INTEGER,
      });
      const hooks = { workflowId: `bench-${round}`, heartbeat: () => undefined, log: () => undefined };
      const incremental = await timed(() => syncIncremental(request(initialPosition(undefined), 'continue', 1), hooks));
      if (incremental.value.rows !== ROWS || !incremental.value.caughtUp) throw new Error(`incremental loaded ${incremental.value.rows} rows`);
      incrementalMs.push(incremental.ms);
      pages = incremental.value.pages;

      // The next sync finds nothing new: it only checks the summary of the 1,000,000 tied keys.
      const recheck = await timed(() => syncIncremental(request(incremental.value.position, 'start', 2), hooks));
      if (recheck.value.rows !== 0) throw new Error(`the re-check loaded ${recheck.value.rows} rows`);
      recheckMs = recheck.ms;

      const counted = await admin.query<{ n: string; d: string }>(`select count(*) as n, count(distinct id) as d from ${incrSchema}.events`);
      if (Number(counted.rows[0]!.n) !== ROWS || Number(counted.rows[0]!.d) !== ROWS) throw new Error('incremental result is not exact');
      const state = await admin.query<{ bytes: number; state: unknown }>(
        `select octet_length(state::text)::int as bytes, state from ${incrSchema}._sluice_state where resource = 'incremental:events'`,
      );
      stateBytes = state.rows[0]!.bytes;
      if (round === ROUNDS) console.log(`_sluice_state: ${JSON.stringify(state.rows[0]!.state)}`);
      console.log(
        `round ${round}: append ${seconds(append.ms)} s, incremental ${seconds(incremental.ms)} s (${pages} pages), ` +
          `re-check ${fmt(recheck.ms)} ms, ratio ${(incremental.ms / append.ms).toFixed(2)}x`,
      );
      await admin.query(`drop schema ${plainSchema} cascade; drop schema ${incrSchema} cascade`);
    }

    const best = (xs: number[]) => Math.min(...xs);
    const a = best(appendMs);
    const i = best(incrementalMs);
    const ratio = i / a;
    console.log('');
    console.log(`plain append:       ${seconds(a)} s  ${fmt((ROWS / a) * 1000)} rows/s`);
    console.log(`incremental sync:   ${seconds(i)} s  ${fmt((ROWS / i) * 1000)} rows/s  (${pages} pages of ${fmt(PAGE_SIZE)})`);
    console.log(`ratio:              ${ratio.toFixed(2)}x (target <= 1.2x) ${ratio <= 1.2 ? 'ok' : 'MISSED'}`);
    console.log(`_sluice_state row:  ${stateBytes} bytes (target < 1 KB) ${stateBytes < 1024 ? 'ok' : 'MISSED'}`);
    console.log(`no-change re-sync:  ${fmt(recheckMs)} ms (tie summary over ${fmt(ROWS)} keys)`);
    console.log('');
    console.log('| rows sharing one cursor value | plain append | incremental sync | ratio | `_sluice_state` | no-change re-sync |');
    console.log('|---|---|---|---|---|---|');
    console.log(
      `| ${fmt(ROWS)} | ${seconds(a)} s (${fmt((ROWS / a) * 1000)} rows/s) | ${seconds(i)} s (${fmt((ROWS / i) * 1000)} rows/s, ${pages} pages) | ` +
        `${ratio.toFixed(2)}x | ${stateBytes} B | ${fmt(recheckMs)} ms |`,
    );
  } finally {
    await closePools();
    await admin.end();
    await db.stop();
    await rm(scratch, { recursive: true, force: true }).catch(() => undefined);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
