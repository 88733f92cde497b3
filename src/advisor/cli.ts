/**
 * `npm run advise -- --source SOURCE_DATABASE_URL --table public.orders`
 *
 * Inspects a PostgreSQL source table and prints the load pattern to use, why, and the exact
 * `temporal workflow start` command. `--source` names the environment variable that holds the
 * connection string, as workflow inputs do, so the string never lands in shell history.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { readConfig, resolveConnection } from '../config';
import { errorMessage } from '../errors';
import { inspectTable } from './inspect';
import { formatCount, recommend, SMALL_TABLE_ROWS, type Recommendation, type TableFacts } from './recommend';

const USAGE = `usage: npm run advise -- --source SOURCE_DATABASE_URL --table public.orders [options]

  --source NAME              environment variable holding the source connection string
  --table SCHEMA.TABLE       the table to inspect
  --historical               plan a one-time load of the table's history (parallel backfill)
  --critical                 readers must never see the table empty or half loaded (swap)
  --destination-schema NAME  destination schema for the printed input (default: public)
  --small-table-rows N       below this many rows a full refresh is cheap (default: ${formatCount(SMALL_TABLE_ROWS)})
  --json                     print the facts and the recommendation as JSON`;

const OPTIONS = {
  source: { type: 'string' },
  table: { type: 'string' },
  historical: { type: 'boolean', default: false },
  critical: { type: 'boolean', default: false },
  'destination-schema': { type: 'string' },
  'small-table-rows': { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: OPTIONS, strict: true }).values;
}

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let values: ReturnType<typeof parse>;
  try {
    values = parse(argv);
  } catch (err) {
    console.error(`${errorMessage(err)}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.source || !values.table) {
    console.error(`both --source and --table are required\n\n${USAGE}`);
    return 2;
  }
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(values.source)) {
    console.error(`--source takes the NAME of an environment variable (like SOURCE_DATABASE_URL), not a connection string: export SOURCE_DATABASE_URL=postgres://... first`);
    return 2;
  }
  const smallTableRows = values['small-table-rows'] === undefined ? SMALL_TABLE_ROWS : Number(values['small-table-rows']);
  if (!Number.isInteger(smallTableRows) || smallTableRows < 1) {
    console.error('--small-table-rows takes a positive whole number, like 100000');
    return 2;
  }

  if (!env[values.source]) {
    console.error(`environment variable ${values.source} is not set: export ${values.source}=postgres://user:pass@host:5432/db, then run the advisor again`);
    return 2;
  }

  let facts: TableFacts;
  try {
    const client = new pg.Client({ connectionString: resolveConnection(values.source, env), application_name: 'sluice-advise' });
    await client.connect();
    try {
      facts = await inspectTable(client, values.table, { smallTableRows });
    } finally {
      await client.end().catch(() => undefined);
    }
  } catch (err) {
    const hint = (err as { hint?: string }).hint;
    console.error(`cannot inspect ${values.table}: ${errorMessage(err)}${hint ? ` (${hint})` : ''}`);
    return 1;
  }

  const advice = recommend(facts, {
    connection: values.source,
    smallTableRows,
    historical: values.historical,
    critical: values.critical,
    destinationSchema: values['destination-schema'],
    taskQueue: readConfig(env).taskQueue,
    today: new Date().toISOString().slice(0, 10),
  });
  console.log(values.json ? JSON.stringify({ facts, recommendation: advice }, null, 2) : render(facts, advice));
  return 0;
}

export function render(facts: TableFacts, advice: Recommendation): string {
  const size = `${facts.rowsFrom === 'estimate' ? '~' : facts.rowsFrom === 'atLeast' ? '>= ' : ''}${formatCount(facts.rows)} row${facts.rows === 1 ? '' : 's'} (${
    facts.rowsFrom === 'estimate' ? 'pg_class estimate' : 'counted'
  })`;
  const timestamps = facts.timestampColumns.length
    ? facts.timestampColumns
        .map((c) => `${c.name} ${c.type} [${c.role}${c.leadingIndex ? `, leads index ${c.leadingIndex}` : ', no index'}]`)
        .join('; ')
    : 'none';
  const lines = [
    `${facts.schema}.${facts.table}`,
    `  size:        ${size}`,
    `  primary key: ${facts.primaryKey.length ? facts.primaryKey.join(', ') : 'none'}`,
    `  timestamps:  ${timestamps}`,
    `  wal_level:   ${facts.walLevel} (CDC ${advice.cdc.available ? 'possible' : 'not possible'}: ${advice.cdc.why})`,
    '',
    `Recommended: ${advice.title} -> ${advice.workflowType}`,
    ...advice.reasons.map((r) => `  - ${r}`),
  ];
  if (advice.notes.length) lines.push('', 'Notes:', ...advice.notes.map((n) => `  - ${n}`));
  lines.push('', 'Start it with:', '', `  ${advice.command}`, '');
  return lines.join('\n');
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
