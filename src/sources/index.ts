/** One entry point for every source kind, so all workflows share the same extractors. */
import { resolveConnection } from '../config';
import { PermanentError, WrongWorkerError } from '../errors';
import type { Source } from '../inputs';
import { extractPostgres } from './postgres';
import { registeredNames, registeredResource, type ExtractContext } from './registered';
import { ROW_REJECT, type Extracted, type PartitionRange, type Row } from './types';

export interface ExtractRequest {
  source: Source;
  partition?: { column: string; range: PartitionRange };
  /** Incremental loads: handed to registered extractors as ctx.cursor. */
  cursor?: { column: string; value: unknown };
  heartbeat: (details?: unknown) => void;
  signal: AbortSignal;
  log: (message: string) => void;
}

export async function extract(req: ExtractRequest): Promise<Extracted> {
  const { source } = req;
  switch (source.kind) {
    case 'postgres': {
      const url = resolveConnection(source.connection);
      return extractPostgres(url, source, {
        range: req.partition && { column: req.partition.column, start: req.partition.range.start, end: req.partition.range.end },
      });
    }
    case 'registered': {
      const definition = registeredResource(source.name);
      if (!definition) {
        const sourceName = source.name.split('.')[0];
        throw new WrongWorkerError(
          `no registered resource "${source.name}" on this worker (pid ${process.pid}, SLUICE_SOURCES=${process.env.SLUICE_SOURCES || '(unset)'}; registered: ${registeredNames().join(', ') || 'none'})`,
          `start the worker with the module that defines source "${sourceName}" in SLUICE_SOURCES, e.g. SLUICE_SOURCES=./sources/${sourceName}.ts npm start ` +
            `(or npm run worker); every worker on the task queue may be handed this load, so each needs it`,
        );
      }
      const ctx: ExtractContext = {
        partition: req.partition?.range,
        cursor: req.cursor,
        options: source.options ?? {},
        log: req.log,
        heartbeat: req.heartbeat,
        signal: req.signal,
      };
      const schema = definition.schema;
      async function* rows(): AsyncIterable<Row> {
        for await (const row of definition!.extract(ctx)) {
          if (!schema) {
            yield row;
            continue;
          }
          const parsed = schema.safeParse(row);
          if (parsed.success) yield parsed.data as Row;
          else {
            const reason = parsed.error.issues.map((i) => `${i.path.join('.') || '(row)'}: ${i.message}`).join('; ');
            yield { ...row, [ROW_REJECT]: reason };
          }
        }
      }
      return { kind: 'rows', rows: rows(), columnTypes: definition.columns };
    }
    case 'files':
      throw new PermanentError('files sources are read by filesWorkflow, one activity per file');
  }
}
