/**
 * The one check a workflow makes before it fans out: everything that would otherwise fail every
 * partition, file or step the same way (an unset connection variable, a database that refuses
 * us, a missing table or column, a missing directory) is found once, and reported in one
 * message that names every problem and the input field to fix.
 */
import { ApplicationFailure } from '@temporalio/common';
import { stat } from 'node:fs/promises';
import pg from 'pg';
import { MissingConnectionError, resolveConnection, resolveS3Connection } from '../config';
import { errorMessage, hintFor, isTransient, PermanentError } from '../errors';
import { closestName, type Destination, type Resource, type Source } from '../inputs';
import { normalizeIdentifier } from '../schema/identifiers';
import { describeSource } from '../sources/postgres';
import { checkSource, withSourceClient } from '../sources/postgres/cdc/setup';

export interface PreflightCheck {
  /** Prefix of every problem this check finds, e.g. `step "orders"`; none for a workflow's own input. */
  label?: string;
  /** Absent for cdcWorkflow, which has `cdc` instead. */
  source?: Source;
  resource?: Resource;
  destination: Destination;
  /** cdcWorkflow's source: wal_level, the REPLICATION attribute, each table and its key (the refusals of cdcSetup). */
  cdc?: { connection: string; tables: string[] };
  /**
   * Source columns that other input fields name, by field: `{ partitionColumn: "created_at" }`,
   * `{ "cursor.column": "updated_at" }`. The resource's primaryKey and mergeKey are checked too.
   */
  columns?: Record<string, string>;
}

interface Findings {
  /** Will not heal by retrying: the input or the worker's environment must change. */
  permanent: string[];
  /** May heal (a database restarting): the activity is retried a few times. */
  transient: string[];
}

const CONNECT_TIMEOUT_MS = 10_000;

export function createPreflightActivities() {
  return {
    /** Checks connections, tables, columns and directories of every check; fails once, naming every problem. */
    async preflight(checks: PreflightCheck[]): Promise<void> {
      const findings: Findings = { permanent: [], transient: [] };
      const reached = new Map<string, Promise<ConnectFailure | undefined>>();
      for (const check of checks) await runCheck(check, findings, reached);
      if (findings.permanent.length) {
        throw ApplicationFailure.nonRetryable([...findings.permanent, ...findings.transient].join('; '), 'PreflightFailed');
      }
      if (findings.transient.length) throw ApplicationFailure.retryable(findings.transient.join('; '), 'PreflightUnreachable');
    },
  };
}

async function runCheck(check: PreflightCheck, findings: Findings, reached: Map<string, Promise<ConnectFailure | undefined>>): Promise<void> {
  const prefix = check.label ? `${check.label}: ` : '';
  const permanent = (field: string, message: string) => findings.permanent.push(`${prefix}${field}: ${message}`);

  const destinationUrl = connectionValue(check.destination.connection, 'destination.connection', permanent);
  if (destinationUrl) await reachable(destinationUrl, check.destination.connection, 'destination.connection', reached, findings, prefix);

  if (check.cdc) return checkCdcSource(check.cdc, permanent, findings, prefix);
  const { source } = check;
  if (!source) return;
  switch (source.kind) {
    case 'postgres': {
      const url = connectionValue(source.connection, 'source.connection', permanent);
      if (!url) return;
      let columns: string[];
      try {
        columns = (await describeSource(url, source)).map((c) => c.name);
      } catch (err) {
        const text = `${errorMessage(err)}${hintSuffix(err, source.connection)}`;
        if (isTransient(err)) findings.transient.push(`${prefix}source.connection: ${text}`);
        else permanent(source.table ? 'source.table' : 'source.query', text);
        return;
      }
      for (const [field, column] of Object.entries(check.columns ?? {})) {
        // These columns are quoted into the source query as written, so they must match exactly.
        if (columns.includes(column)) continue;
        const near = closestName(column, columns);
        permanent(field, `column "${column}" is not in ${describe(source)}${near ? `; did you mean "${near}"?` : ''} (columns: ${columns.join(', ')})`);
      }
      // Keys are matched after name normalization, as the loader does.
      const normalized = new Set(columns.map(normalizeIdentifier));
      for (const field of ['primaryKey', 'mergeKey'] as const) {
        for (const key of check.resource?.[field] ?? []) {
          if (!normalized.has(normalizeIdentifier(key))) {
            permanent(`resource.${field}`, `column "${key}" is not in ${describe(source)} (columns: ${columns.join(', ')})`);
          }
        }
      }
      return;
    }
    case 'files': {
      if (source.url !== undefined) {
        // Object-storage credentials: named variables that must be set; the listing checks access.
        try {
          resolveS3Connection(source.connection);
        } catch (err) {
          permanent('source.connection', errorMessage(err));
        }
        return;
      }
      const path = (source as { path?: string }).path;
      if (!path) return;
      const found = await stat(path).catch(() => undefined);
      if (!found) permanent('source.path', `directory ${path} does not exist on this worker`);
      else if (!found.isDirectory()) permanent('source.path', `${path} is not a directory (select files with source.pattern)`);
      return;
    }
    case 'registered':
      // Another worker on the task queue may register it: loads say which worker to start.
      return;
  }
}

/** CDC's own refusals, before the workflow takes leases or creates a slot: the same checks and messages cdcSetup makes. */
async function checkCdcSource(cdc: { connection: string; tables: string[] }, permanent: (field: string, message: string) => void, findings: Findings, prefix: string): Promise<void> {
  const url = connectionValue(cdc.connection, 'source.connection', permanent);
  if (!url) return;
  try {
    await withSourceClient(url, (client) => checkSource(client, cdc.tables));
  } catch (err) {
    const text = `${errorMessage(err)}${hintSuffix(err, cdc.connection)}`;
    if (isTransient(err)) findings.transient.push(`${prefix}source.connection: ${text}`);
    else permanent(/^source table /.test(errorMessage(err)) ? 'source.tables' : 'source.connection', text);
  }
}

function describe(source: { table?: string }): string {
  return source.table ? `table ${source.table}` : 'the source query';
}

function hintSuffix(err: unknown, connectionVariable: string): string {
  const hint = err instanceof PermanentError ? err.hint : hintFor(err, { connectionVariable });
  return hint ? ` (hint: ${hint})` : '';
}

function connectionValue(variable: string, field: string, permanent: (field: string, message: string) => void): string | undefined {
  try {
    return resolveConnection(variable);
  } catch (err) {
    if (!(err instanceof MissingConnectionError)) throw err;
    permanent(field, err.message);
    return undefined;
  }
}

interface ConnectFailure {
  transient: boolean;
  text: string;
}

/** Connects once per connection string per preflight; the message names the variable, never its value. */
async function reachable(
  url: string,
  variable: string,
  field: string,
  reached: Map<string, Promise<ConnectFailure | undefined>>,
  findings: Findings,
  prefix: string,
): Promise<void> {
  let attempt = reached.get(url);
  if (!attempt) {
    attempt = connectOnce(url, variable);
    reached.set(url, attempt);
  }
  const failure = await attempt;
  if (!failure) return;
  (failure.transient ? findings.transient : findings.permanent).push(`${prefix}${field}: cannot connect with ${variable}: ${failure.text}`);
}

async function connectOnce(url: string, variable: string): Promise<ConnectFailure | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, application_name: 'sluice-preflight' });
  try {
    await client.connect();
    await client.query('select 1');
    return undefined;
  } catch (err) {
    return { transient: isTransient(err), text: `${errorMessage(err)}${hintSuffix(err, variable)}` };
  } finally {
    await client.end().catch(() => undefined);
  }
}
