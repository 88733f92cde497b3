/**
 * Issue 10, retries that do not give up: the destination goes away for longer than the old retry
 * budget (5 attempts), the activity keeps retrying, the run's progress says what retries and
 * why, and once the destination is back the run completes exactly.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { Progress } from '../src/inputs';
import type { RetryingItem } from '../src/workflows/shared';
import type { BackfillResult } from '../src/workflows/backfill';
import type { IncrementalResult } from '../src/workflows/incremental';
import { startProxy, type TcpProxy } from './proxy';
import { count, saveHistory, testStack, waitFor, type TestStack } from './helpers';

/** Attempts the old retry policies allowed loads before failing them for good. */
const OLD_BUDGET = 5;

describe('a destination outage longer than any retry budget', () => {
  let stack: TestStack;
  let proxy: TcpProxy;
  before(async () => {
    stack = await testStack('outage');
    const dest = new URL(process.env.DATABASE_URL!);
    proxy = await startProxy({ host: dest.hostname, port: Number(dest.port || 5432) }, 1 << 30);
    // The worker reaches the destination only through the proxy the test cuts.
    const through = new URL(dest);
    through.host = new URL(proxy.endpoint).host;
    process.env.OUTAGE_DEST_URL = through.toString();
    await stack.db.query(`
      create table ${stack.sourceSchema}.orders (id bigint primary key, created_at timestamptz not null, amount numeric(12,2));
      insert into ${stack.sourceSchema}.orders
        select i, timestamptz '2024-03-01 00:00:00+00' + (i * interval '17 minutes'), i % 100 from generate_series(1, 2000) i;`);
  });
  after(async () => {
    await proxy.close();
    await stack.close();
  });

  const destination = () => ({ connection: 'OUTAGE_DEST_URL', schema: stack.schema });

  /** Started paused: once it holds its lease and read its state, nothing else runs until `resume`. */
  async function startPaused(workflowType: string, workflowId: string, input: unknown): Promise<WorkflowHandle> {
    const handle = await stack.client.workflow.signalWithStart(workflowType, {
      taskQueue: stack.taskQueue,
      workflowId,
      args: [input],
      signal: 'pause',
      signalArgs: [],
    });
    return handle as WorkflowHandle;
  }

  /** Waits until an activity of this type has completed in the run's history. */
  async function completed(handle: WorkflowHandle, activityType: string): Promise<void> {
    await waitFor(`${activityType} to complete`, async () => {
      const events = (await handle.fetchHistory()).events ?? [];
      const scheduled = new Set(
        events
          .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType)
          .map((e) => String(e.eventId)),
      );
      return events.some(
        (e) => e.eventType === temporal.api.enums.v1.EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED && scheduled.has(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)),
      );
    });
  }

  /** With the destination cut: waits until an attempt past the old budget runs and progress names the retry, then reopens it. */
  async function outage(handle: WorkflowHandle, item: RegExp): Promise<RetryingItem> {
    try {
      await waitFor(
        `an attempt past ${OLD_BUDGET}`,
        async () => ((await handle.describe()).raw.pendingActivities ?? []).some((a) => (a.attempt ?? 0) > OLD_BUDGET),
        180_000,
      );
      return await waitFor('progress to show the retry', async () => {
        const retrying = ((await handle.query<Progress>('progress')).retrying ?? []) as RetryingItem[];
        return retrying.find((r) => item.test(r.item) && r.attempt >= OLD_BUDGET);
      });
    } finally {
      proxy.open();
    }
  }

  test('backfill: partitions wait out the outage and every row lands once', async () => {
    const handle = await startPaused('backfillWorkflow', `outage-backfill-${stack.schema}`, {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.orders` },
      resource: { name: 'orders_backfill', writeDisposition: 'append' },
      destination: destination(),
      partitionColumn: 'created_at',
      start: '2024-03-01',
      end: '2024-03-24',
      parallel: 2,
    });
    const result = await stack.withWorker(async () => {
      await completed(handle, 'acquireResourceLease');
      proxy.cut();
      await handle.signal('resume');
      const retrying = await outage(handle, /^2024-03-/);
      assert.match(retrying.error, /connect|terminated|ECONNRESET|closed/i, retrying.error);
      const done = (await handle.result()) as BackfillResult;
      assert.deepEqual((await handle.query<Progress>('progress')).retrying, [], 'nothing retries once the run is done');
      return done;
    });
    assert.equal(result.succeeded, 24);
    assert.deepEqual(result.failed, []);
    assert.equal(await count(stack.db, `${stack.schema}.orders_backfill`), await count(stack.db, `${stack.sourceSchema}.orders`, `created_at < '2024-03-25'`));
    assert.equal(await count(stack.db, `${stack.schema}.orders_backfill`, 'id in (select id from ' + `${stack.schema}.orders_backfill group by id having count(*) > 1)`), 0);
    await saveHistory(handle, 'own-retry-backfill-outage');
  });

  test('incremental: a sync waits out the outage and resumes after the last committed page', async () => {
    const handle = await startPaused('incrementalWorkflow', `outage-incremental-${stack.schema}`, {
      source: { kind: 'postgres', connection: 'SOURCE_DATABASE_URL', table: `${stack.sourceSchema}.orders` },
      resource: { name: 'orders_sync', writeDisposition: 'merge', primaryKey: ['id'] },
      destination: destination(),
      cursor: { column: 'created_at', initialValue: '2024-01-01T00:00:00Z' },
      pageSize: 300,
      once: true,
    });
    const result = await stack.withWorker(async () => {
      await completed(handle, 'readIncrementalState');
      proxy.cut();
      await handle.signal('resume');
      await outage(handle, /^sync /);
      return (await handle.result()) as IncrementalResult;
    });
    assert.equal(await count(stack.db, `${stack.schema}.orders_sync`), 2000);
    assert.equal(result.cursor !== null, true);
    await saveHistory(handle, 'own-retry-incremental-outage');
  });
});
