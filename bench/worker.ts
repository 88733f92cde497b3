/**
 * The in-process Temporal worker of the benchmarks that drive workflows (bench:backfill,
 * bench:files): every sluice workflow and activity on one task queue, up to 100 activities at
 * once, with a client on the same server.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createActivities } from '../src/activities';

export async function benchWorker(address: string, taskQueue = 'bench') {
  const native = await NativeConnection.connect({ address });
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  const worker = await Worker.create({
    connection: native,
    taskQueue,
    workflowsPath: require.resolve('../src/workflows'),
    activities: createActivities({ searchAttributesRegistered: true }),
    maxConcurrentActivityTaskExecutions: 100,
  });
  const close = async () => {
    await native.close();
    await connection.close();
  };
  return { client, worker, close };
}
