/**
 * Resources written in TypeScript, in the spirit of dlt's `@dlt.resource`: an async generator
 * of rows, grouped into a source, registered by name ("demo.events") so workflow input can
 * point at it. The worker registers the built-in sources and any modules named in
 * SLUICE_SOURCES (comma-separated paths).
 */
import type { z } from 'zod';
import type { Resource } from '../../inputs';
import type { PartitionRange } from '../types';

export interface ExtractContext {
  /** Set for backfill partitions: yield rows with start <= t < end. */
  partition?: PartitionRange;
  /**
   * Set for incremental loads: yield rows whose cursor column is at or past `value` (yielding
   * more is harmless: the engine skips rows before it, and reads the rows at it again exactly once).
   */
  cursor?: { column: string; value: unknown };
  /** `source.options` from the workflow input. */
  options: Record<string, unknown>;
  log: (message: string) => void;
  /** Long extractions call this now and then so a dead worker is noticed quickly. */
  heartbeat: (details?: unknown) => void;
  signal: AbortSignal;
}

export interface ResourceDefinition<T extends Record<string, unknown> = Record<string, unknown>> {
  name: string;
  primaryKey?: string | string[];
  writeDisposition?: Resource['writeDisposition'];
  /** PostgreSQL types by column name; other columns are inferred. */
  columns?: Record<string, string>;
  /** Rows that fail this schema go to _sluice_rejects with zod's message. */
  schema?: z.ZodType<T>;
  extract: (ctx: ExtractContext) => AsyncIterable<T>;
}

export interface SourceDefinition {
  name: string;
  resources: ResourceDefinition[];
}

export function defineResource<T extends Record<string, unknown>>(definition: ResourceDefinition<T>): ResourceDefinition<T> {
  return definition;
}

export function defineSource(definition: SourceDefinition): SourceDefinition {
  return definition;
}

const registry = new Map<string, ResourceDefinition>();

export function registerSource(source: SourceDefinition): void {
  for (const resource of source.resources) registry.set(`${source.name}.${resource.name}`, resource as ResourceDefinition);
}

export function registeredResource(name: string): ResourceDefinition | undefined {
  return registry.get(name);
}

export function registeredNames(): string[] {
  return [...registry.keys()].sort();
}
