/**
 * Rows of a Parquet file, read with hyparquet through byte ranges (local file reads or S3 range
 * GETs): the footer first, then one row group at a time, so memory holds one row group's
 * columns, never the file.
 *
 * Each column declares the PostgreSQL type a user would write by hand for it (INT64 -> bigint,
 * DECIMAL(p,s) -> numeric(p,s), TIMESTAMP(isAdjustedToUTC) -> timestamptz, without it
 * timestamp, nested groups -> jsonb, ...), and its values are formatted exactly: decimals from
 * their unscaled integers, timestamps from their integer ticks at full precision, never through
 * a JavaScript float or Date. hyparquet's own conversion is turned off for those columns (their
 * logical type is removed from the schema it reads with) so it hands over the raw integers.
 */
import { parquetMetadataAsync, parquetRead, parquetSchema, type AsyncBuffer, type FileMetaData, type SchemaElement, type SchemaTree } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { errorMessage, PermanentError, TransientError } from '../../errors';
import type { Row, RowBatch } from '../types';
import { keyOrder, rowsOfBatches } from './read';
import type { RandomAccessFile } from './store';

export interface ParquetColumn {
  name: string;
  /** PostgreSQL type, as a user would declare it. */
  type: string;
  /** A value as hyparquet hands it over (raw for the columns in `raw`) to what the loader writes. */
  convert: (value: unknown) => unknown;
  /** true: hyparquet must hand over the physical value (its logical type is stripped before reading). */
  raw: boolean;
}

const identity = (v: unknown) => v;

/** The PostgreSQL type and value conversion of each top-level column of a Parquet schema. */
export function parquetColumns(root: SchemaTree): ParquetColumn[] {
  return root.children.map((node) => {
    const { element } = node;
    if (node.children.length > 0) return { name: element.name, type: 'jsonb', convert: jsonText, raw: false };
    return { name: element.name, ...leafColumn(element) };
  });
}

function leafColumn(e: SchemaElement): Omit<ParquetColumn, 'name'> {
  const logical = e.logical_type;
  const ctype = e.converted_type;
  if (logical?.type === 'DECIMAL' || ctype === 'DECIMAL') {
    const precision = logical?.type === 'DECIMAL' ? logical.precision : (e.precision ?? 38);
    const scale = logical?.type === 'DECIMAL' ? logical.scale : (e.scale ?? 0);
    return { type: `numeric(${precision},${scale})`, convert: (v) => decimalText(v, scale), raw: true };
  }
  if (logical?.type === 'TIMESTAMP' || ctype === 'TIMESTAMP_MILLIS' || ctype === 'TIMESTAMP_MICROS') {
    const unit = logical?.type === 'TIMESTAMP' ? logical.unit : ctype === 'TIMESTAMP_MILLIS' ? 'MILLIS' : 'MICROS';
    // The legacy converted types are always UTC instants.
    const utc = logical?.type === 'TIMESTAMP' ? logical.isAdjustedToUTC : true;
    return { type: utc ? 'timestamptz' : 'timestamp', convert: (v) => timestampText(v, unit, utc), raw: true };
  }
  if (logical?.type === 'TIME' || ctype === 'TIME_MILLIS' || ctype === 'TIME_MICROS') {
    const unit = logical?.type === 'TIME' ? logical.unit : ctype === 'TIME_MILLIS' ? 'MILLIS' : 'MICROS';
    return { type: 'time', convert: (v) => timeText(v, unit), raw: true };
  }
  if (logical?.type === 'DATE' || ctype === 'DATE') return { type: 'date', convert: dateText, raw: true };
  if (logical?.type === 'JSON' || ctype === 'JSON') return { type: 'jsonb', convert: jsonText, raw: false };
  if (logical?.type === 'UUID') return { type: 'uuid', convert: identity, raw: false };
  if (logical?.type === 'STRING' || logical?.type === 'ENUM' || ctype === 'UTF8' || ctype === 'ENUM') return { type: 'text', convert: identity, raw: false };
  if (logical?.type === 'INTEGER' || ctype?.startsWith('INT_') || ctype?.startsWith('UINT_')) {
    const bits = logical?.type === 'INTEGER' ? logical.bitWidth : Number(/\d+$/.exec(ctype!)![0]);
    const signed = logical?.type === 'INTEGER' ? logical.isSigned : ctype!.startsWith('INT_');
    const type = bits <= 16 && (signed || bits <= 8) ? 'smallint' : bits <= 32 && (signed || bits <= 16) ? 'integer' : bits <= 64 && signed ? 'bigint' : bits <= 32 ? 'bigint' : 'numeric(20,0)';
    return { type, convert: identity, raw: false };
  }
  if (logical?.type === 'FLOAT16') return { type: 'real', convert: identity, raw: false };
  switch (e.type) {
    case 'BOOLEAN':
      return { type: 'boolean', convert: identity, raw: false };
    case 'INT32':
      return { type: 'integer', convert: identity, raw: false };
    case 'INT64':
      return { type: 'bigint', convert: identity, raw: false };
    case 'INT96':
      // Legacy (Spark, Impala) instants; hyparquet decodes them to Dates, at millisecond precision.
      return { type: 'timestamptz', convert: identity, raw: false };
    case 'FLOAT':
      return { type: 'real', convert: identity, raw: false };
    case 'DOUBLE':
      return { type: 'double precision', convert: identity, raw: false };
    default:
      // BYTE_ARRAY / FIXED_LEN_BYTE_ARRAY without a logical type are bytes.
      return { type: 'bytea', convert: (v) => (v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v), raw: false };
  }
}

/** The unscaled integer of a DECIMAL (INT32, INT64 or big-endian two's-complement bytes). */
function unscaled(value: unknown): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number') return BigInt(value);
  const bytes = value as Uint8Array;
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  return bytes.length && bytes[0]! & 0x80 ? n - (1n << BigInt(bytes.length * 8)) : n;
}

export function decimalText(value: unknown, scale: number): unknown {
  if (value === null || value === undefined) return value;
  const n = unscaled(value);
  const negative = n < 0n;
  const digits = (negative ? -n : n).toString().padStart(scale + 1, '0');
  const text = scale > 0 ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
  return negative ? `-${text}` : text;
}

const TICKS_PER_SECOND = { MILLIS: 1_000n, MICROS: 1_000_000n, NANOS: 1_000_000_000n } as const;
const FRACTION_DIGITS = { MILLIS: 3, MICROS: 6, NANOS: 9 } as const;

/** Seconds and sub-second ticks of a tick count, flooring so that instants before 1970 stay right. */
function splitTicks(value: unknown, unit: keyof typeof TICKS_PER_SECOND): { seconds: bigint; fraction: string } {
  const ticks = BigInt(value as bigint | number);
  const per = TICKS_PER_SECOND[unit];
  let seconds = ticks / per;
  let rest = ticks % per;
  if (rest < 0n) {
    seconds -= 1n;
    rest += per;
  }
  return { seconds, fraction: rest.toString().padStart(FRACTION_DIGITS[unit], '0') };
}

const TICKS_PER_SECOND_NUMBER = { MILLIS: 1_000, MICROS: 1_000_000, NANOS: 1_000_000_000 } as const;
let lastSecond = Number.NaN;
let lastWhole = '';

/** "2024-01-31T05:06:07.123456" (+ "Z" for a UTC instant), the full precision of the file. */
export function timestampText(value: unknown, unit: 'MILLIS' | 'MICROS' | 'NANOS', utc: boolean): unknown {
  if (value === null || value === undefined) return value;
  let second: number;
  let fraction: string;
  const ticks = typeof value === 'bigint' && value >= -9007199254740991n && value <= 9007199254740991n ? Number(value) : value;
  if (typeof ticks === 'number' && Number.isSafeInteger(ticks)) {
    // Exact in doubles below 2^53: the floor of the quotient, corrected by the remainder's sign.
    const per = TICKS_PER_SECOND_NUMBER[unit];
    second = Math.floor(ticks / per);
    let rest = ticks - second * per;
    if (rest < 0) {
      second -= 1;
      rest += per;
    } else if (rest >= per) {
      second += 1;
      rest -= per;
    }
    fraction = String(rest).padStart(FRACTION_DIGITS[unit], '0');
  } else {
    const split = splitTicks(value, unit);
    second = Number(split.seconds);
    fraction = split.fraction;
  }
  // Rows of one file often share their second: its text is made once.
  if (second !== lastSecond) {
    lastWhole = new Date(second * 1000).toISOString().slice(0, 19);
    lastSecond = second;
  }
  return `${lastWhole}.${fraction}${utc ? 'Z' : ''}`;
}

function timeText(value: unknown, unit: 'MILLIS' | 'MICROS' | 'NANOS'): unknown {
  if (value === null || value === undefined) return value;
  const { seconds, fraction } = splitTicks(value, unit);
  return `${new Date(Number(seconds) * 1000).toISOString().slice(11, 19)}.${fraction}`;
}

export function dateText(value: unknown): unknown {
  if (value === null || value === undefined) return value;
  return new Date(Number(value) * 86_400_000).toISOString().slice(0, 10);
}

/**
 * A nested value (list, struct, map, JSON) as JSON text for a jsonb column, written here rather
 * than by JSON.stringify so that 64-bit integers keep every digit (jsonb numbers are exact).
 * Bytes become base64 strings, instants ISO strings.
 */
export function jsonText(value: unknown): string | null {
  return value === null || value === undefined ? null : toJson(value);
}

function toJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'bigint':
      return value.toString();
    case 'number':
      return Number.isFinite(value) ? JSON.stringify(value) : 'null';
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    case 'object':
      if (value instanceof Date) return JSON.stringify(value.toISOString());
      if (value instanceof Uint8Array) return JSON.stringify(Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64'));
      if (Array.isArray(value) || ArrayBuffer.isView(value)) return `[${Array.from(value as ArrayLike<unknown>, toJson).join(',')}]`;
      return `{${Object.entries(value)
        .map(([k, v]) => `${JSON.stringify(k)}:${toJson(v)}`)
        .join(',')}}`;
    default:
      return 'null';
  }
}

export interface OpenedParquet {
  columns: ParquetColumn[];
  /** Declared types for the loader, by column name. */
  columnTypes: Record<string, string>;
  rows: AsyncGenerator<Row>;
  /** The same rows in batches (one per row group); read either this or `rows`. */
  batches: () => AsyncGenerator<RowBatch>;
}

function corrupt(label: string, err: unknown): Error {
  if (err instanceof PermanentError || err instanceof TransientError) return err;
  return new PermanentError(
    `cannot read ${label}: not a readable Parquet file (${errorMessage(err)})`,
    'replace the file with a complete Parquet file (a file still being written should be moved into place when complete); the other files are not affected',
  );
}

/**
 * Opens a Parquet file: reads its footer (failing at once, naming the file, when it is not
 * Parquet) and returns its column types and a generator of its rows, one row group at a time.
 * Every row carries "<label>:<row number>" as its ROW_SOURCE.
 */
export async function openParquet(file: RandomAccessFile, label: string): Promise<OpenedParquet> {
  const buffer: AsyncBuffer = {
    byteLength: file.size,
    slice: async (start, end) => {
      const bytes = await file.read(start, end ?? file.size);
      return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    },
  };
  let metadata: FileMetaData;
  let columns: ParquetColumn[];
  try {
    metadata = await parquetMetadataAsync(buffer);
    columns = parquetColumns(parquetSchema(metadata));
  } catch (err) {
    await file.close().catch(() => undefined);
    throw corrupt(label, err);
  }
  // The schema hyparquet reads with: raw columns lose their logical type, so it leaves their values alone.
  const rawNames = new Set(columns.filter((c) => c.raw).map((c) => c.name));
  const readMetadata: FileMetaData = {
    ...metadata,
    schema: metadata.schema.map((element, i) => {
      // schema[0] is the root; a top-level leaf has no children and its name is a raw column's.
      if (i === 0 || element.num_children || !rawNames.has(element.name)) return element;
      const { converted_type: _c, logical_type: _l, ...physical } = element;
      return physical;
    }),
  };

  const names = columns.map((c) => c.name);
  const order = keyOrder(names);
  const batchColumns = order ? order.map((i) => names[i]!) : names;
  const convert = (order ?? columns.map((_, i) => i)).map((i) => ({ at: i, convert: columns[i]!.convert }));
  const asIs = !order && columns.every((c) => c.convert === identity);

  async function* batches(): AsyncGenerator<RowBatch> {
    let closed = false;
    try {
      let rowStart = 0;
      for (const group of metadata.row_groups) {
        const rowEnd = rowStart + Number(group.num_rows);
        let values: unknown[][] = [];
        try {
          await parquetRead({
            file: buffer,
            metadata: readMetadata,
            rowStart,
            rowEnd,
            compressors,
            utf8: false,
            onComplete: (r: unknown[][]) => {
              values = r;
            },
          });
        } catch (err) {
          throw corrupt(label, err);
        }
        const sources: string[] = new Array(values.length);
        for (let i = 0; i < values.length; i++) sources[i] = `${label}:${rowStart + i + 1}`;
        if (!asIs) {
          for (let i = 0; i < values.length; i++) {
            const record = values[i]!;
            const row: unknown[] = new Array(convert.length);
            for (let c = 0; c < convert.length; c++) row[c] = convert[c]!.convert(record[convert[c]!.at]);
            values[i] = row;
          }
        }
        if (values.length) yield { columns: batchColumns, values, sources };
        rowStart = rowEnd;
      }
      closed = true;
      // A local file rewritten while it was read fails here, before anything commits.
      await file.close();
    } finally {
      if (!closed) await file.close().catch(() => undefined);
    }
  }
  return { columns, columnTypes: Object.fromEntries(columns.map((c) => [c.name, c.type])), rows: rowsOfBatches(batches()), batches };
}
