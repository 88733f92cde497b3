/**
 * Keyset paging of a PostgreSQL source for incremental loads.
 *
 * A page is `copy (select ... where (c, k) > ($c, $k) order by c, k limit n) to stdout`: with an
 * index on (c, k) an index range scan, so a sync costs the same per row however many rows share
 * one cursor value. The page's last (c, k) is read from the last line of the COPY stream as it
 * passes, so no row is read twice. Every page of one activity call reads one REPEATABLE READ
 * snapshot, and the summary of the keys at the last cursor value is taken at the end of the call
 * in that same snapshot: it describes exactly the rows that were loaded.
 */
import { Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { clientConfig, sessionSettingsSql } from '../../postgres/connection';
import { literal, primaryKeySql } from '../../postgres/sql';
import { PermanentError } from '../../errors';
import type { CursorPosition, PostgresSource } from '../../inputs';
import type { Tie } from '../../plan/cursor';
import { quoteIdent } from '../../schema/identifiers';
import type { SourceColumn } from '../types';
import { checkOneStatement, describeSource, oneStatement, PORTABLE_SESSION, relation } from './index';

/** The columns that order the source: the cursor, then the primary key. */
export interface Keyset {
  cursor: SourceColumn;
  key: SourceColumn[];
}

/** Renders one value of a keyset predicate: a bind parameter, or a literal where SQL takes none (COPY). */
type ValueRenderer = (text: string, type: string) => string;

export function bindParameters(values: unknown[]): ValueRenderer {
  return (text, type) => {
    values.push(text);
    return `$${values.length}::${type}`;
  };
}

export const literalValues: ValueRenderer = (text, type) => `${literal(text)}::${type}`;

/** Rows past `p`: at or after its cursor when it has no tiebreak, strictly after (cursor, key) otherwise. Never rows whose cursor is null. */
export function afterPredicate(keyset: Keyset, p: CursorPosition, value: ValueRenderer): string {
  const c = quoteIdent(keyset.cursor.name);
  if (p.cursor === null) return `${c} is not null`;
  if (p.tiebreak === null) return `${c} >= ${value(String(p.cursor), keyset.cursor.type)}`;
  if (p.tiebreak.length !== keyset.key.length) {
    throw new PermanentError(
      `the saved cursor position has ${p.tiebreak.length} key values but the primary key has ${keyset.key.length} columns`,
      'the primary key changed since the last sync: start over with "cursor": { "reset": true }',
    );
  }
  const columns = [c, ...keyset.key.map((k) => quoteIdent(k.name))];
  const values = [value(String(p.cursor), keyset.cursor.type), ...keyset.key.map((k, i) => value(p.tiebreak![i]!, k.type))];
  return `(${columns.join(', ')}) > (${values.join(', ')})`;
}

/** Rows at or before (cursor, key): the upper end of what a call read. */
function throughPredicate(keyset: Keyset, last: { cursor: string; tiebreak: string[] }, value: ValueRenderer): string {
  const columns = [keyset.cursor, ...keyset.key].map((k) => quoteIdent(k.name));
  const values = [value(last.cursor, keyset.cursor.type), ...keyset.key.map((k, i) => value(last.tiebreak[i]!, k.type))];
  return `(${columns.join(', ')}) <= (${values.join(', ')})`;
}

/** The hash of one key, the same expression wherever keys are summarized: the key's canonical text, hashed to 64 bits. */
function keyHash(keyset: Keyset): string {
  const columns = keyset.key.map((k) => quoteIdent(k.name));
  return `hashtextextended(${columns.length === 1 ? `${columns[0]}::text` : `row(${columns.join(', ')})::text`}, 0)`;
}

/** The next `limit` rows past `from`, in keyset order, for COPY (which takes no parameters). */
export function pageSql(source: PostgresSource, columns: SourceColumn[], keyset: Keyset, from: CursorPosition, limit: number): string {
  const cols = columns.map((c) => quoteIdent(c.name)).join(', ');
  const order = [keyset.cursor, ...keyset.key].map((k) => quoteIdent(k.name)).join(', ');
  return `select ${cols} from ${relation(source)} where ${afterPredicate(keyset, from, literalValues)} order by ${order} limit ${Math.trunc(limit)}`;
}

/** Whether any row is past `from`: one index probe. */
export function probeSql(source: PostgresSource, keyset: Keyset, from: CursorPosition): { text: string; values: unknown[] } {
  const values: unknown[] = [];
  return { text: `select 1 from ${relation(source)} where ${afterPredicate(keyset, from, bindParameters(values))} limit 1`, values };
}

/** The summary of the keys at `last`'s cursor value that lie past `from` and up to `last`: what one call loaded there. */
export function tieRangeSql(
  source: PostgresSource,
  keyset: Keyset,
  from: CursorPosition,
  last: { cursor: string; tiebreak: string[] },
): { text: string; values: unknown[] } {
  const values: unknown[] = [];
  const bind = bindParameters(values);
  const at = `${quoteIdent(keyset.cursor.name)} = ${bind(last.cursor, keyset.cursor.type)}`;
  const text = `select count(*)::bigint as count, coalesce(sum(${keyHash(keyset)}), 0)::text as hash
    from ${relation(source)} where ${at} and ${afterPredicate(keyset, from, bind)} and ${throughPredicate(keyset, last, bind)}`;
  return { text, values };
}

/** `$1` moved back by `$2` milliseconds, in the cursor's own type: the start of a lag window. */
export function lagStartSql(keyset: Keyset): string {
  return `select ($1::${keyset.cursor.type} - $2::bigint * interval '1 millisecond')::${keyset.cursor.type}::text as start`;
}

export function isTimeType(type: string): boolean {
  return /^(timestamp|date)\b/.test(type);
}

/**
 * Resolves the cursor and key columns against the source: the key is `primaryKey` from the input,
 * or else the source table's own primary key.
 */
export async function resolveKeyset(
  url: string,
  source: PostgresSource,
  cursorColumn: string,
  primaryKey: string[] | undefined,
): Promise<{ columns: SourceColumn[]; keyset: Keyset }> {
  const columns = await describeSource(url, source);
  const byName = new Map(columns.map((c) => [c.name, c]));
  const what = source.table ?? 'the source query';
  const cursor = byName.get(cursorColumn);
  if (!cursor) {
    throw new PermanentError(
      `cursor column "${cursorColumn}" is not a column of ${what} (columns: ${columns.map((c) => c.name).join(', ')})`,
      'set cursor.column to a column that grows with every insert or update, like updated_at',
    );
  }
  let keyNames = primaryKey;
  if (!keyNames?.length && source.table) {
    const client = new pg.Client(clientConfig(url, 'sluice-extract'));
    await client.connect();
    try {
      const found = await client.query<{ name: string }>(primaryKeySql(), [relation(source)]);
      keyNames = found.rows.map((r) => r.name);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  if (!keyNames?.length) {
    throw new PermanentError(
      `incremental loads page through ${what} by (${cursorColumn}, primary key), and it has no primary key`,
      'set resource.primaryKey to the column(s) that identify a row',
    );
  }
  const key = keyNames.map((name) => {
    const column = byName.get(name);
    if (!column) {
      throw new PermanentError(
        `primary key column "${name}" is not a column of ${what} (columns: ${columns.map((c) => c.name).join(', ')})`,
        'check resource.primaryKey against the source column names',
      );
    }
    return column;
  });
  if (key.some((k) => k.name === cursor.name)) {
    throw new PermanentError(`cursor column "${cursor.name}" is also part of the primary key`, 'use a cursor column that is not part of resource.primaryKey');
  }
  return { columns, keyset: { cursor, key } };
}

/** One read-only REPEATABLE READ transaction on the source: every read in it sees the same rows. */
export interface SourceSnapshot {
  query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]>;
  /** Streams `select` as COPY text through `tap` into `sink`, then ends it. */
  copyOut(select: string, sink: Writable, tap?: Transform): Promise<void>;
  close(): Promise<void>;
}

export async function openSnapshot(url: string): Promise<SourceSnapshot> {
  const client = new pg.Client(clientConfig(url, 'sluice-extract'));
  // A backend that dies mid-read surfaces on the failing query; the event must not crash the worker.
  client.on('error', () => undefined);
  await client.connect();
  try {
    await client.query(`${PORTABLE_SESSION}; ${sessionSettingsSql()}`);
    await client.query('begin isolation level repeatable read read only');
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return {
    async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []) {
      return (await client.query<R>(oneStatement(text, values))).rows;
    },
    async copyOut(select, sink, tap) {
      await checkOneStatement(client, select);
      const out = client.query(copyTo(`copy (${select}) to stdout`));
      await (tap ? pipeline(out, tap, sink) : pipeline(out, sink));
    },
    async close() {
      await client.query('commit').catch(() => undefined);
      await client.end().catch(() => undefined);
    },
  };
}

export async function hasRowsPast(snapshot: SourceSnapshot, source: PostgresSource, keyset: Keyset, from: CursorPosition): Promise<boolean> {
  const { text, values } = probeSql(source, keyset, from);
  return (await snapshot.query(text, values)).length > 0;
}

export async function readTieRange(
  snapshot: SourceSnapshot,
  source: PostgresSource,
  keyset: Keyset,
  from: CursorPosition,
  last: { cursor: string; tiebreak: string[] },
): Promise<Tie> {
  const { text, values } = tieRangeSql(source, keyset, from, last);
  const [row] = await snapshot.query<{ count: string; hash: string }>(text, values);
  return { count: Number(row!.count), hash: row!.hash };
}

const COPY_ESCAPES: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' };

/** The fields of one line of COPY text output, unescaped (COPY TO emits only these escapes; `\N` is null). */
export function parseCopyLine(line: string): (string | null)[] {
  return line.split('\t').map((field) => (field === '\\N' ? null : field.replace(/\\([bfnrtv\\])/g, (_, c: string) => COPY_ESCAPES[c]!)));
}

/**
 * Passes a page's COPY text through unchanged, counting its rows and keeping its last line (the
 * page's last row in keyset order), so the next position costs no second read of the page.
 */
export class PageTap extends Transform {
  rows = 0;
  private tail: Buffer = Buffer.alloc(0);
  private last: Buffer | undefined;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) this.rows++;
    const end = chunk.lastIndexOf(10);
    if (end === -1) {
      this.tail = Buffer.concat([this.tail, chunk]);
    } else {
      const start = end === 0 ? -1 : chunk.lastIndexOf(10, end - 1);
      this.last = start === -1 ? Buffer.concat([this.tail, chunk.subarray(0, end)]) : Buffer.from(chunk.subarray(start + 1, end));
      this.tail = Buffer.from(chunk.subarray(end + 1));
    }
    done(null, chunk);
  }

  /** The last row's cursor and key values, as text. */
  lastRow(columns: SourceColumn[], keyset: Keyset): { cursor: string; tiebreak: string[] } | undefined {
    if (!this.last) return undefined;
    const fields = parseCopyLine(this.last.toString('utf8'));
    const field = (name: string) => {
      const value = fields[columns.findIndex((c) => c.name === name)];
      if (value === null || value === undefined) throw new Error(`the page's last row has no value in key column "${name}"`);
      return value;
    };
    return { cursor: field(keyset.cursor.name), tiebreak: keyset.key.map((k) => field(k.name)) };
  }
}
