/**
 * Copy-paste examples for every workflow type against the demo source that `npm start` seeds.
 * `npm start` prints them; test/start.test.ts runs them exactly as printed.
 */
export interface Example {
  title: string;
  workflowType: string;
  workflowId: string;
  input: Record<string, unknown>;
  /** SQL that shows the result in the destination. */
  check: string;
}

const ordersSource = { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: 'demo.orders' };
const customersSource = { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: 'demo.customers' };
const destination = { connection: 'DATABASE_URL', schema: 'raw' };

export const EXAMPLES: Example[] = [
  {
    title: 'Backfill 91 days of orders, one activity per day, 4 at a time',
    workflowType: 'backfillWorkflow',
    workflowId: 'demo-backfill-orders',
    input: {
      source: ordersSource,
      resource: { name: 'orders', writeDisposition: 'merge', primaryKey: ['id'] },
      destination,
      partitionColumn: 'created_at',
      start: '2024-01-01',
      end: '2024-03-31',
      granularity: 'day',
      parallel: 4,
    },
    check: 'select count(*) from raw.orders',
  },
  {
    title: 'Backfill synthetic events from the code-defined demo.events resource, hourly',
    workflowType: 'backfillWorkflow',
    workflowId: 'demo-backfill-events',
    input: {
      source: { kind: 'registered', name: 'demo.events', options: { perHour: 3 } },
      resource: { name: 'events', writeDisposition: 'merge', primaryKey: ['id'] },
      destination,
      partitionColumn: 'occurred_at',
      start: '2024-01-01T00',
      end: '2024-01-01T23',
      granularity: 'hour',
      parallel: 4,
    },
    check: 'select count(*) from raw.events',
  },
  {
    title: 'Keep customers in sync by updated_at, one sync now',
    workflowType: 'incrementalWorkflow',
    workflowId: 'demo-incremental-customers',
    input: {
      source: customersSource,
      resource: { name: 'customers', writeDisposition: 'merge', primaryKey: ['id'] },
      destination,
      cursor: { column: 'updated_at', initialValue: '2024-01-01T00:00:00Z' },
      once: true,
    },
    check: 'select count(*) from raw.customers',
  },
  {
    title: 'Full refresh of customers with an atomic swap',
    workflowType: 'fullRefreshWorkflow',
    workflowId: 'demo-refresh-customers',
    input: {
      source: customersSource,
      resource: { name: 'customers_snapshot', writeDisposition: 'replace' },
      destination,
    },
    check: 'select count(*) from raw.customers_snapshot',
  },
  {
    title: 'A pipeline: refresh customers, then backfill orders',
    workflowType: 'pipelineWorkflow',
    workflowId: 'demo-pipeline',
    input: {
      name: 'demo',
      parallel: 2,
      steps: [
        {
          name: 'customers',
          workflow: 'fullRefreshWorkflow',
          input: { source: customersSource, resource: { name: 'pipeline_customers', writeDisposition: 'replace' }, destination },
        },
        {
          name: 'orders',
          workflow: 'backfillWorkflow',
          dependsOn: ['customers'],
          input: {
            source: ordersSource,
            resource: { name: 'pipeline_orders', writeDisposition: 'merge', primaryKey: ['id'] },
            destination,
            partitionColumn: 'created_at',
            start: '2024-01-01',
            end: '2024-03-31',
            granularity: 'month',
            parallel: 3,
          },
        },
      ],
    },
    check: 'select count(*) from raw.pipeline_orders',
  },
];

/** The files example reads the drop folder npm start seeds (an absolute path, so the command works from any directory). */
export function filesExample(dropsDir: string): Example {
  return {
    title: 'Load the CSV files of a drop folder, each file once',
    workflowType: 'filesWorkflow',
    workflowId: 'demo-files-orders',
    input: {
      source: { kind: 'files', path: dropsDir, pattern: '*.csv', format: 'csv' },
      resource: { name: 'drop_orders', writeDisposition: 'merge', primaryKey: ['id'], columns: { id: 'bigint', amount: 'numeric(12,2)' } },
      destination,
      parallel: 2,
      once: true,
    },
    check: 'select count(*) from raw.drop_orders',
  };
}

/**
 * Change data capture of both demo tables. Long-running (it never completes by itself), so it
 * is printed apart from EXAMPLES, with the psql line that changes demo rows and the stop signal.
 */
export const CDC_EXAMPLE: Example & { change: string; stop: Record<string, unknown> } = {
  title: 'Stream every insert, update and delete of orders and customers (CDC)',
  workflowType: 'cdcWorkflow',
  workflowId: 'demo-cdc',
  input: {
    source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', tables: ['demo.orders', 'demo.customers'] },
    destination: { connection: 'DATABASE_URL', schema: 'cdc' },
    deletes: 'soft',
  },
  check: 'select id, status, amount, _sluice_deleted_at from cdc.orders order by id desc limit 5',
  change:
    "begin; update demo.orders set status = 'refunded', updated_at = now() where id = 1; " +
    "insert into demo.orders select max(id) + 1, 1, 9.99, 'placed', now(), now() from demo.orders; " +
    'delete from demo.orders where id = 2; commit;',
  stop: { dropSlot: true },
};

export function signalCommand(workflowId: string, signal: string, input: unknown, ctx: CommandContext): string {
  return `${ctx.temporalCli} workflow signal${connectionFlags(ctx)} --workflow-id ${workflowId} --name ${signal} --input '${JSON.stringify(input)}'`;
}

export interface CommandContext {
  temporalCli: string;
  address: string;
  namespace: string;
  taskQueue: string;
}

/** One shell word: single-quoted when it needs to be (paths and URLs come from the environment, and may hold quotes). */
export function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

function connectionFlags(ctx: CommandContext): string {
  return `${ctx.address !== 'localhost:7233' ? ` --address ${ctx.address}` : ''}${ctx.namespace !== 'default' ? ` --namespace ${ctx.namespace}` : ''}`;
}

export function startCommand(example: Example, ctx: CommandContext): string {
  return (
    `${ctx.temporalCli} workflow start${connectionFlags(ctx)} --type ${example.workflowType} --task-queue ${ctx.taskQueue} ` +
    `--workflow-id ${example.workflowId} --static-summary ${shellQuote(example.title)} --input ${shellQuote(JSON.stringify(example.input))}`
  );
}

export function queryCommand(workflowId: string, ctx: CommandContext): string {
  return `${ctx.temporalCli} workflow query${connectionFlags(ctx)} --workflow-id ${workflowId} --name progress`;
}

export function resultCommand(workflowId: string, ctx: CommandContext): string {
  return `${ctx.temporalCli} workflow result${connectionFlags(ctx)} --workflow-id ${workflowId}`;
}
