/**
 * Rows of one CSV or JSON Lines file, streamed: the file is never held in memory, only the
 * record being parsed. A name ending in `.gz` is gunzipped on the way. Every row carries
 * "<path>:<line>" as its ROW_SOURCE; a malformed record becomes a rejected row (ROW_REJECT)
 * whose reason names the line, and the rest of the file carries on. A file that cannot be read
 * at all (missing, no permission, corrupt gzip) throws.
 */
import { Parser, type CsvError, type Options } from 'csv-parse';
import { createReadStream } from 'node:fs';
import { pipeline, Transform, type Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { createGunzip } from 'node:zlib';
import { errorMessage, PermanentError, TransientError } from '../../errors';
import { ROW_REJECT, ROW_SOURCE, type Row } from '../types';

/** The formats read as a byte stream; Parquet needs random access (see parquet.ts). */
export type FileFormat = 'csv' | 'jsonl';

export interface CsvOptions {
  delimiter?: string;
  /** false when the first record is data: columns are then named column_1, column_2, ... */
  header?: boolean;
}

export interface ReadOptions {
  /** How rows name the file in ROW_SOURCE and reject reasons, usually its path relative to the source directory. */
  label: string;
  csv?: CsvOptions;
  /** Sees every byte read from disk, before gunzip (loadFile hashes them to check the fingerprint). */
  onBytes?: (chunk: Buffer) => void;
  /** Aborting destroys the file stream, and the generator throws the abort error as it is. */
  signal?: AbortSignal;
}

/**
 * The longest CSV record accepted. csv-parse needs a bound to stop an unclosed quote from
 * swallowing the rest of a large file into memory; past it the file fails (see below).
 */
const MAX_RECORD_CHARS = 32 * 1024 * 1024;
/** How much of a bad record's text a reject reason quotes. */
const SNIPPET_CHARS = 200;

export function isGzipped(path: string): boolean {
  return /\.gz$/i.test(path);
}

export async function* readFileRows(absPath: string, format: FileFormat, options: ReadOptions): AsyncGenerator<Row> {
  yield* readRows(createReadStream(absPath, { signal: options.signal }), absPath, format, options);
}

/**
 * Rows of a CSV or JSON Lines byte stream (a local file, an object-storage body). `name` decides
 * gunzip (".gz"). Errors of `input` are the file's: permanent unless they are TransientError
 * (a dropped connection), which the activity retries.
 */
export async function* readRows(input: Readable, name: string, format: FileFormat, options: ReadOptions): AsyncGenerator<Row> {
  const decoded = decode(input, name, options);
  try {
    if (format === 'csv') yield* csvRows(decoded, options);
    else yield* jsonlRows(decoded, options.label);
  } catch (err) {
    // An aborted read (cancellation, worker shutdown) says nothing about the file: not permanent.
    if (err instanceof PermanentError || err instanceof TransientError || options.signal?.aborted) throw err;
    throw unreadable(options.label, err);
  } finally {
    // A consumer that stops early (or fails) must not leave the file open.
    decoded.destroy();
    input.destroy();
  }
}

function unreadable(label: string, err: unknown): PermanentError {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  const hint =
    code === 'ENOENT'
      ? 'the file disappeared after it was listed; it is listed again on the next run'
      : code === 'EACCES' || code === 'EPERM'
        ? 'the worker cannot read the file: fix its permissions and run again'
        : typeof code === 'string' && code.startsWith('Z_')
          ? 'the gzip data is corrupt or truncated: replace the file (a file still being written should be moved into place when complete)'
          : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return new PermanentError(`cannot read ${label}: ${message}${typeof code === 'string' && !message.includes(code) ? ` (${code})` : ''}`, hint);
}

/** The file's bytes, gunzipped when the name says so, as one readable whose errors are the file's. */
function decode(file: Readable, name: string, options: ReadOptions): Readable {
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      options.onBytes?.(chunk);
      done(null, chunk);
    },
  });
  // pipeline destroys every stage with the first error, so reading the last stage surfaces it.
  const noop = () => undefined;
  return isGzipped(name) ? pipeline(file, tap, createGunzip(), noop) : pipeline(file, tap, noop);
}

/** Where a rejected row came from, for its reason: "orders.csv line 7". */
function at(label: string, line: number, lastLine = line): string {
  return lastLine > line ? `${label} lines ${line}-${lastLine}` : `${label} line ${line}`;
}

/** Text for a reject reason, cut to a readable length. */
function snippet(text: string): string {
  return text.length > SNIPPET_CHARS ? `${text.slice(0, SNIPPET_CHARS)}...` : text;
}

/** A CSV record with the lines it spans in the file. */
interface NumberedRecord {
  fields: string[];
  first: number;
  last: number;
}

interface SkippedRecord {
  error: CsvError;
  first: number;
  last: number;
}

/**
 * csv-parse's Parser, tagging each record with the lines it spans. The parser pushes a record
 * the moment it ends, when its live `info.lines` is that record's last line; the first line
 * follows the previous record (or skipped error) plus the blank lines skipped in between.
 * (Its `info: true` option would give the same numbers by copying a dozen fields per record,
 * which costs more than the parsing itself.)
 */
class NumberedCsvParser extends Parser {
  readonly skipped: SkippedRecord[] = [];
  private lastLine = 0;
  private emptyLines = 0;

  constructor(options: Options) {
    super({ ...options, skip_records_with_error: true });
    this.on('skip', (error: CsvError & { lines?: number }) => {
      this.skipped.push({ error, ...this.span(error.lines ?? this.info.lines) });
    });
  }

  private span(last: number): { first: number; last: number } {
    const first = this.lastLine + 1 + (this.info.empty_lines - this.emptyLines);
    this.lastLine = last;
    this.emptyLines = this.info.empty_lines;
    return { first: Math.min(first, last), last };
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) return super.push(null, encoding);
    const record: NumberedRecord = { fields: chunk as string[], ...this.span(this.info.lines) };
    return super.push(record, encoding);
  }
}

/** Header names as row keys: blanks get their position's name, repeats a numeric suffix. */
function headerNames(fields: string[]): string[] {
  const seen = new Set<string>();
  return fields.map((field, i) => {
    let name = field.trim() === '' ? `column_${i + 1}` : field;
    for (let n = 2; seen.has(name); n++) name = `${field}_${n}`;
    seen.add(name);
    return name;
  });
}

function newRow(): Row {
  // No prototype: a header named "__proto__" or "constructor" is just a column.
  return Object.create(null) as Row;
}

function skippedRow(label: string, { error, first, last }: SkippedRecord): Row {
  if (error.code === 'CSV_MAX_RECORD_SIZE') {
    // csv-parse cannot find the next record after this one: loading the rest could silently lose rows.
    throw new PermanentError(
      `${at(label, first)}: a record runs past ${MAX_RECORD_CHARS} characters, most likely a quote that is never closed`,
      'fix the quoting in the file (or check source.csv.delimiter); nothing of the file was loaded',
    );
  }
  const row = newRow();
  row[ROW_SOURCE] = `${label}:${first}`;
  row[ROW_REJECT] =
    error.code === 'CSV_QUOTE_NOT_CLOSED'
      ? `${at(label, first, last)}: a quote opened on line ${first} is never closed, so the record runs to the end of the file`
      : `${at(label, first, last)}: ${error.message}`;
  return row;
}

async function* csvRows(input: Readable, options: ReadOptions): AsyncGenerator<Row> {
  const { label } = options;
  const hasHeader = options.csv?.header ?? true;
  const parser = new NumberedCsvParser({
    bom: true,
    delimiter: options.csv?.delimiter ?? ',',
    // Arrays, not objects: the column count is checked here, so a short or long record is
    // rejected with its line instead of being silently padded or cut.
    columns: false,
    relax_column_count: true,
    // A stray quote inside a field (5" screen) is kept as text rather than derailing the parser
    // for the lines after it; the column-count check still catches a record that shifted.
    relax_quotes: true,
    skip_empty_lines: true,
    max_record_size: MAX_RECORD_CHARS,
  });
  // pipeline carries a read error into the parser, which ends the loop below with it.
  const records = pipeline(input, parser, () => undefined) as AsyncIterable<NumberedRecord>;

  let columns: string[] | undefined;
  for await (const { fields, first, last } of records) {
    while (parser.skipped.length) yield skippedRow(label, parser.skipped.shift()!);
    // A line of spaces is blank too, not a one-column record.
    if (fields.length === 1 && fields[0]!.trim() === '') continue;
    if (!columns) {
      if (hasHeader) {
        columns = headerNames(fields);
        continue;
      }
      columns = fields.map((_, i) => `column_${i + 1}`);
    }
    const row = newRow();
    row[ROW_SOURCE] = `${label}:${first}`;
    if (fields.length !== columns.length) {
      // The values of a record with the wrong field count cannot be trusted to their columns
      // (and would skew type inference), so the reject keeps them only in its reason.
      row[ROW_REJECT] = `${at(label, first, last)}: expected ${columns.length} fields, found ${fields.length}: ${snippet(JSON.stringify(fields))}`;
      yield row;
      continue;
    }
    for (let i = 0; i < columns.length; i++) row[columns[i]!] = fields[i];
    yield row;
  }
  while (parser.skipped.length) yield skippedRow(label, parser.skipped.shift()!);
}

/** The lines of a text stream, without their terminators, numbered from 1. */
async function* lines(input: Readable): AsyncGenerator<[line: number, text: string]> {
  const decoder = new StringDecoder('utf8');
  let pending = '';
  let n = 0;
  for await (const chunk of input as AsyncIterable<Buffer>) {
    pending += decoder.write(chunk);
    let start = 0;
    for (let end = pending.indexOf('\n'); end !== -1; end = pending.indexOf('\n', start)) {
      yield [++n, pending.slice(start, end)];
      start = end + 1;
    }
    pending = pending.slice(start);
  }
  pending += decoder.end();
  if (pending.length) yield [++n, pending];
}

async function* jsonlRows(input: Readable, label: string): AsyncGenerator<Row> {
  for await (const [line, rawText] of lines(input)) {
    const text = line === 1 ? rawText.replace(/^\uFEFF/, '') : rawText;
    if (text.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      yield { [ROW_REJECT]: `${at(label, line)}: invalid JSON (${errorMessage(err)}): ${snippet(text)}`, [ROW_SOURCE]: `${label}:${line}` };
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
      yield { [ROW_REJECT]: `${at(label, line)}: expected a JSON object, found ${kind}: ${snippet(text)}`, [ROW_SOURCE]: `${label}:${line}` };
      continue;
    }
    const row = value as Row;
    row[ROW_SOURCE] = `${label}:${line}`;
    yield row;
  }
}
