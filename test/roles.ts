/**
 * The least-privilege roles the suite's integration tests run as (README: "Least privilege"):
 * a source role that may only SELECT (plus REPLICATION, which CDC needs), and a destination role
 * that is no superuser and owns only the schemas it creates. test/run.ts creates them once per
 * run; testStack grants the source role SELECT on each test's source schema.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const SOURCE_ROLE = 'sluice_test_source';
export const LOADER_ROLE = 'sluice_test_loader';

function withCredentials(url: string, user: string, password: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = password;
  return u.toString();
}

export async function createLeastPrivilegeRoles(adminUrl: string): Promise<{ sourceUrl: string; loaderUrl: string }> {
  const sourcePassword = randomBytes(12).toString('hex');
  const loaderPassword = randomBytes(12).toString('hex');
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const database = (await client.query<{ db: string }>('select current_database() as db')).rows[0]!.db;
    const db = `"${database.replace(/"/g, '""')}"`;
    await client.query(`
      create role ${SOURCE_ROLE} login nosuperuser nocreatedb nocreaterole replication password '${sourcePassword}';
      create role ${LOADER_ROLE} login nosuperuser nocreatedb nocreaterole password '${loaderPassword}';
      revoke create on schema public from public;
      grant create on database ${db} to ${LOADER_ROLE};`);
  } finally {
    await client.end();
  }
  return { sourceUrl: withCredentials(adminUrl, SOURCE_ROLE, sourcePassword), loaderUrl: withCredentials(adminUrl, LOADER_ROLE, loaderPassword) };
}

/** Lets the source role read (only read) the tables the admin creates in `schema`. */
export function grantSourceReadSql(schema: string): string {
  return `grant usage on schema ${schema} to ${SOURCE_ROLE};
    alter default privileges in schema ${schema} grant select on tables to ${SOURCE_ROLE};`;
}

/**
 * The destination schema, created for (and owned by) the loader role, whose tables the source
 * role may read: a pipeline's later steps read what its earlier ones loaded, as from a warehouse.
 */
export function destinationSchemaSql(schema: string): string {
  return `create schema ${schema} authorization ${LOADER_ROLE};
    grant usage on schema ${schema} to ${SOURCE_ROLE};
    alter default privileges for role ${LOADER_ROLE} in schema ${schema} grant select on tables to ${SOURCE_ROLE};`;
}
