/**
 * The `demo` source: deterministic synthetic rows, so a backfill or an incremental load can be
 * tried with nothing but a worker. Every row is a pure function of its timestamp, so re-running
 * a partition produces the same rows.
 */
import { z } from 'zod';
import { defineResource, defineSource } from './index';

const HOUR = 3_600_000;
const KINDS = ['view', 'click', 'signup', 'purchase'];

/** `options.perHour` events every hour (default 2); ids encode the instant, so they are stable. */
const events = defineResource({
  name: 'events',
  primaryKey: 'id',
  writeDisposition: 'merge',
  columns: { id: 'bigint', occurred_at: 'timestamptz', user_id: 'integer', kind: 'text', amount: 'numeric(12,2)' },
  schema: z.object({ id: z.number().int(), occurred_at: z.string(), user_id: z.number().int(), kind: z.string(), amount: z.string() }),
  async *extract(ctx) {
    if (!ctx.partition) throw new Error('demo.events is partitioned by time: run it with backfillWorkflow');
    const perHour = Number(ctx.options.perHour ?? 2);
    const start = Date.parse(ctx.partition.start);
    const end = Date.parse(ctx.partition.end);
    for (let hour = Math.ceil(start / HOUR) * HOUR; hour < end; hour += HOUR) {
      for (let i = 0; i < perHour; i++) {
        const at = hour + Math.floor((i * HOUR) / perHour);
        const id = (at / 1000) * 100 + i;
        yield {
          id,
          occurred_at: new Date(at).toISOString(),
          user_id: (id * 7919) % 1000,
          kind: KINDS[id % KINDS.length]!,
          amount: ((id % 10_000) / 100).toFixed(2),
        };
      }
    }
  },
});

export const demoSource = defineSource({ name: 'demo', resources: [events] });
