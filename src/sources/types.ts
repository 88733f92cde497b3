import type { Writable } from 'node:stream';

/** Where a row came from ("orders.csv:17"), kept with it if it is rejected. */
export const ROW_SOURCE = Symbol('sluice.rowSource');
/** Set by an extractor that already knows the row is bad (a zod schema said no); the loader rejects it. */
export const ROW_REJECT = Symbol('sluice.rowReject');

export type Row = Record<string, unknown> & { [ROW_SOURCE]?: string; [ROW_REJECT]?: string };

export interface SourceColumn {
  name: string;
  /** PostgreSQL type as format_type() prints it. */
  type: string;
  /** A type PostgreSQL itself defines (not an extension's, a domain or an enum): the same on every server. */
  builtin?: boolean;
}

/**
 * Rows as arrays: `values[i][c]` is row i's value of `columns[c]`. A row may be shorter than
 * `columns` (a rejected row can have no values at all): the missing values are null. `columns`
 * may differ from one batch to the next (a file whose header follows rejected records).
 */
export interface RowBatch {
  /** Raw column names, in the order a row object's keys would enumerate (for...in). */
  columns: string[];
  values: unknown[][];
  /** Each row's ROW_SOURCE. */
  sources: (string | undefined)[];
  /** Each row's ROW_REJECT; absent when no row of the batch has one. */
  rejects?: (string | undefined)[];
}

/**
 * What an extractor hands the loader. `rows` is the general path: JavaScript objects whose types
 * are inferred. `copy` is the PostgreSQL fast path: the source's own COPY text, with exact types,
 * streamed straight into staging without becoming objects.
 */
export type Extracted =
  | {
      kind: 'rows';
      rows: AsyncIterable<Row>;
      /** Every value arrives as a string (CSV): infer "42" as bigint rather than text. */
      textValues?: boolean;
      /** Types the source knows (by raw column name), used before inference. */
      columnTypes?: Record<string, string>;
      /**
       * The same rows as `rows`, in batches of value arrays (files of a fixed set of columns read
       * faster this way: no object per row). A consumer reads either `rows` or `batches()`, never both.
       */
      batches?: () => AsyncIterable<RowBatch>;
    }
  | {
      kind: 'copy';
      columns: SourceColumn[];
      /**
       * Set when every column is a built-in type whose binary form means the same on any server:
       * `copyTo(sink, 'binary')` may then be piped into a binary COPY of columns of those types.
       */
      binary?: boolean;
      /**
       * The source table's unique keys whose columns are all NOT NULL (a primary key, say), by
       * source column name: one read of the source holds no two rows with the same such key.
       */
      uniqueKeys?: () => Promise<string[][]>;
      /** Writes the source's COPY rows (columns in `columns` order, text unless asked for binary) into `sink`, then ends it. */
      copyTo(sink: Writable, format?: 'text' | 'binary'): Promise<void>;
    };

/** Sources read backfill partitions; the range itself is partition arithmetic (plan/partitions.ts). */
export type { PartitionRange } from '../plan/partitions';
