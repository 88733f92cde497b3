/**
 * Rows of one CSV or JSON Lines file, streamed: the file is never held in memory, only the
 * record being parsed. A name ending in `.gz` is gunzipped on the way. Every row carries
 * "<path>:<line>" as its ROW_SOURCE; a malformed record becomes a rejected row (ROW_REJECT)
 * whose reason names the line, and the rest of the file carries on. A file that cannot be read
 * at all (missing, no permission, corrupt gzip) throws.
 */
import { Parser, type CsvError, type Options } from 'csv-parse';
import { createReadStream } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { pipeline, Readable, Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { errorMessage, PermanentError, TransientError } from '../../errors';
import { ROW_REJECT, ROW_SOURCE, type Row, type RowBatch } from '../types';

/** The formats read as a byte stream; Parquet needs random access (see parquet.ts). */
export type FileFormat = 'csv' | 'jsonl';

export interface CsvOptions {
  delimiter?: string;
  /** The quote character (default "); the input schema refuses control characters here and in delimiter/escape. */
  quote?: string;
  /** The character that escapes a quote inside a quoted field (default: the quote itself). */
  escape?: string;
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
  /** The file already opened (see roots.ts: containment is checked on the descriptor); read instead of opening absPath. Closed when reading ends. */
  handle?: FileHandle;
}

/**
 * The longest CSV record accepted. csv-parse needs a bound to stop an unclosed quote from
 * swallowing the rest of a large file into memory; past it the file fails (see below).
 */
const MAX_RECORD_CHARS = 32 * 1024 * 1024;
/** The longest JSON Lines line accepted, in bytes; a longer one is a reject, and the next line is read. */
export const MAX_LINE_BYTES = 32 * 1024 * 1024;
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
  if (format === 'csv') yield* rowsOfBatches(readCsvBatches(input, name, options));
  else yield* readDecoded(input, name, options, (decoded) => jsonlRows(decoded, options.label));
}

/**
 * The rows of a CSV byte stream in batches (RowBatch): what readRows yields for CSV, without an
 * object per row. Errors are those of readRows.
 */
export function readCsvBatches(input: Readable, name: string, options: ReadOptions): AsyncGenerator<RowBatch> {
  return readDecoded(input, name, options, (decoded) => csvBatches(decoded, options));
}

/** What `read` yields from the decoded bytes, with the file's errors classified and the file closed however reading ends. */
async function* readDecoded<T>(input: Readable, name: string, options: ReadOptions, read: (decoded: Readable) => AsyncGenerator<T>): AsyncGenerator<T> {
  const decoded = decode(input, name, options);
  try {
    yield* read(decoded);
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

/** Row objects of batches, as the loader's general path and the tests read them. */
export async function* rowsOfBatches(batches: AsyncIterable<RowBatch>): AsyncGenerator<Row> {
  for await (const { columns, values, sources, rejects } of batches) {
    for (let i = 0; i < values.length; i++) {
      const row = newRow();
      const source = sources[i];
      if (source !== undefined) row[ROW_SOURCE] = source;
      const reject = rejects?.[i];
      if (reject !== undefined) row[ROW_REJECT] = reject;
      const record = values[i]!;
      for (let c = 0; c < record.length; c++) row[columns[c]!] = record[c];
      yield row;
    }
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
  fields: Uint8Array[];
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
  private lastLine: number;
  private emptyLines = 0;

  /** `lineOffset`: lines of the file read before this parser's first byte (see csvRecords). */
  constructor(
    options: Options,
    private readonly lineOffset = 0,
  ) {
    super({ ...options, skip_records_with_error: true });
    this.lastLine = lineOffset;
    this.on('skip', (error: CsvError & { lines?: number }) => {
      this.skipped.push({ error, ...this.span(error.lines ?? this.info.lines) });
    });
  }

  private span(last: number): { first: number; last: number } {
    const first = this.lastLine + 1 + (this.info.empty_lines - this.emptyLines);
    this.lastLine = last + this.lineOffset;
    this.emptyLines = this.info.empty_lines;
    return { first: Math.min(first, this.lastLine), last: this.lastLine };
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) return super.push(null, encoding);
    const record: NumberedRecord = { fields: chunk as Uint8Array[], ...this.span(this.info.lines) };
    return super.push(record, encoding);
  }
}

/** A parsed CSV record: its fields as text, or the first field that is not UTF-8 (with the raw fields), or a record csv-parse skipped. */
export type CsvRecord =
  | { fields: string[]; first: number; last: number }
  | { invalid: number; raw: Uint8Array[]; first: number; last: number }
  | { skipped: SkippedRecord };

/** Lines longer than this leave the fast path (csv-parse enforces MAX_RECORD_CHARS on them). */
const FAST_MAX_LINE = 1 << 20;
const EMPTY_BYTES = Buffer.alloc(0);

/**
 * The fast path of CSV parsing: whole lines decoded at once, split on the delimiter in string
 * space, for the grammar that is not in doubt: one record per line, fields either unquoted
 * (without a quote character) or quoted and closed on the same line, a closing quote followed by
 * the delimiter or the end of the line, quotes escaped by doubling, lines ending in "\n" or
 * "\r\n" throughout. At the first line outside that grammar (a quoted line break, a stray quote,
 * a lone CR, bytes that are not UTF-8, a very long line) it stops and hands that line and
 * everything after it, as bytes, to csv-parse (csvRecords), which then reads the rest exactly as
 * it would have read the whole file. Records of both come out the same (test/csv-fast.test.ts).
 */
export class FastCsvLines {
  /** Lines consumed so far: the line number of the last one. */
  lines = 0;
  /** The record delimiter csv-parse would have discovered by now, once a line has ended. */
  recordDelimiter: '\n' | '\r\n' | undefined;
  private carry: Buffer = EMPTY_BYTES;
  private readonly delimiterCode: number;
  private readonly quoteCode: number;

  constructor(
    private readonly delimiter: string,
    private readonly quote: string,
  ) {
    this.delimiterCode = delimiter.charCodeAt(0);
    this.quoteCode = quote.charCodeAt(0);
  }

  /** Whether the options are ones this grammar covers (else csv-parse reads the whole file). */
  static covers(delimiter: string, quote: string, escape: string): boolean {
    const plain = (c: string) => c.length === 1 && c !== '\r' && c !== '\n';
    return plain(delimiter) && plain(quote) && escape === quote && delimiter !== quote;
  }

  /** Records of the complete lines so far; `rest` (bytes) once the fast path stops. */
  write(chunk: Buffer, out: CsvRecord[]): Buffer | undefined {
    const last = chunk.lastIndexOf(10);
    if (last === -1) {
      this.carry = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
      return this.carry.length > FAST_MAX_LINE ? this.take() : undefined;
    }
    const head = this.carry.length ? Buffer.concat([this.carry, chunk.subarray(0, last + 1)]) : chunk.subarray(0, last + 1);
    this.carry = chunk.subarray(last + 1);
    return this.lines_(head, out, true);
  }

  /** At the end of the input: the last line if it has no line break; `rest` if the fast path stops there. */
  end(out: CsvRecord[]): Buffer | undefined {
    if (!this.carry.length) return undefined;
    const tail = this.carry;
    this.carry = EMPTY_BYTES;
    return this.lines_(tail, out, false);
  }

  private take(): Buffer {
    const rest = this.carry;
    this.carry = EMPTY_BYTES;
    return rest;
  }

  /** Parses `bytes` (complete lines when `terminated`); returns the bytes from the first line it does not take on. */
  private lines_(bytes: Buffer, out: CsvRecord[], terminated: boolean): Buffer | undefined {
    let text: string;
    try {
      text = strictUtf8.decode(bytes);
    } catch {
      return this.carry.length ? Buffer.concat([bytes, this.take()]) : bytes;
    }
    const stop = (at: number) => {
      // Valid UTF-8 decoded and encoded again gives back the same bytes.
      const rest = Buffer.from(text.slice(at), 'utf8');
      return this.carry.length ? Buffer.concat([rest, this.take()]) : rest;
    };
    const { delimiter, quote } = this;
    let pos = 0;
    while (pos < text.length) {
      let nl = text.indexOf('\n', pos);
      const broken = nl !== -1;
      if (!broken) {
        if (terminated) break;
        nl = text.length;
      }
      let end = nl;
      // Discovered on the first line that ends here (csv-parse discovers it outside quotes, and
      // a line the fast path stops at may have its line break inside a quoted field).
      let recordDelimiter = this.recordDelimiter;
      if (broken) {
        if (recordDelimiter === undefined) {
          const cr = text.indexOf('\r', pos);
          if (cr !== -1 && cr < nl - 1) return stop(pos);
          recordDelimiter = cr !== -1 && cr === nl - 1 ? '\r\n' : '\n';
        }
        if (recordDelimiter === '\r\n') {
          if (text.charCodeAt(nl - 1) !== 13) return stop(pos);
          end = nl - 1;
        }
      }
      if (end - pos > FAST_MAX_LINE) return stop(pos);
      const line = text.slice(pos, end);
      if (line.indexOf('\r') !== -1) return stop(pos);
      if (line.length !== 0) {
        const fields = line.indexOf(quote) === -1 ? line.split(delimiter) : this.quoted(line);
        if (fields === undefined) return stop(pos);
        this.lines++;
        out.push({ fields, first: this.lines, last: this.lines });
      } else {
        this.lines++;
      }
      this.recordDelimiter = recordDelimiter;
      pos = nl + 1;
    }
    return undefined;
  }

  /** The fields of a line with quote characters, or undefined when it is not in the fast grammar. */
  private quoted(line: string): string[] | undefined {
    const { delimiter, delimiterCode, quote, quoteCode } = this;
    const fields: string[] = [];
    const n = line.length;
    let i = 0;
    for (;;) {
      if (line.charCodeAt(i) === quoteCode) {
        let value = '';
        let j = i + 1;
        for (;;) {
          const q = line.indexOf(quote, j);
          if (q === -1) return undefined;
          if (line.charCodeAt(q + 1) === quoteCode) {
            value += line.slice(j, q + 1);
            j = q + 2;
            continue;
          }
          value += line.slice(j, q);
          i = q + 1;
          break;
        }
        fields.push(value);
        if (i === n) return fields;
        if (line.charCodeAt(i) !== delimiterCode) return undefined;
        i++;
      } else {
        const d = line.indexOf(delimiter, i);
        const end = d === -1 ? n : d;
        const field = line.slice(i, end);
        if (field.indexOf(quote) !== -1) return undefined;
        fields.push(field);
        if (d === -1) return fields;
        i = d + 1;
      }
    }
  }
}

/** Records per batch from csv-parse (the fast path's batches are a chunk's lines). */
const PARSER_BATCH = 1_000;

/**
 * The records of a CSV byte stream (BOM already removed), in batches: the fast path while the
 * file stays in its grammar, then csv-parse for the rest (FastCsvLines).
 */
export async function* csvRecords(input: AsyncIterable<Buffer>, csv: CsvOptions | undefined, fastPath = true): AsyncGenerator<CsvRecord[]> {
  const delimiter = csv?.delimiter ?? ',';
  const quote = csv?.quote ?? '"';
  const escape = csv?.escape ?? quote;
  const it = input[Symbol.asyncIterator]();
  let rest: Buffer | undefined;
  let fast: FastCsvLines | undefined;
  try {
    if (fastPath && FastCsvLines.covers(delimiter, quote, escape)) {
      fast = new FastCsvLines(delimiter, quote);
      for (;;) {
        const next = await it.next();
        const out: CsvRecord[] = [];
        rest = next.done ? fast.end(out) : fast.write(next.value, out);
        if (out.length) yield out;
        if (rest !== undefined || next.done) break;
      }
      if (rest === undefined) return;
    }
    const parser = new NumberedCsvParser(
      {
        // Fields as bytes: each is decoded strictly below, so invalid UTF-8 rejects its row instead
        // of becoming U+FFFD. (csv-parse's own BOM handling would switch it back to strings.)
        encoding: null,
        bom: false,
        delimiter,
        quote,
        escape,
        // The record delimiter it would have discovered in the lines the fast path read.
        ...(fast?.recordDelimiter ? { record_delimiter: fast.recordDelimiter } : {}),
        // Arrays, not objects: the column count is checked by csvBatches, so a short or long
        // record is rejected with its line instead of being silently padded or cut.
        columns: false,
        relax_column_count: true,
        // A stray quote inside a field (5" screen) is kept as text rather than derailing the parser
        // for the lines after it; the column-count check still catches a record that shifted.
        relax_quotes: true,
        skip_empty_lines: true,
        max_record_size: MAX_RECORD_CHARS,
      },
      fast?.lines ?? 0,
    );
    const remaining = async function* (): AsyncGenerator<Buffer> {
      if (rest?.length) yield rest;
      for (;;) {
        const next = await it.next();
        if (next.done) return;
        yield next.value;
      }
    };
    // pipeline carries a read error into the parser, which ends the loop below with it.
    const records = pipeline(Readable.from(remaining(), { objectMode: false }), parser, () => undefined) as AsyncIterable<NumberedRecord>;
    let batch: CsvRecord[] = [];
    for await (const record of records) {
      while (parser.skipped.length) batch.push({ skipped: parser.skipped.shift()! });
      const decoded = decodeFields(record.fields);
      batch.push(typeof decoded === 'number' ? { invalid: decoded, raw: record.fields, first: record.first, last: record.last } : { fields: decoded, first: record.first, last: record.last });
      if (batch.length >= PARSER_BATCH) {
        yield batch;
        batch = [];
      }
    }
    while (parser.skipped.length) batch.push({ skipped: parser.skipped.shift()! });
    if (batch.length) yield batch;
  } finally {
    await it.return?.();
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

function skippedReason(label: string, { error, first, last }: SkippedRecord): string {
  if (error.code === 'CSV_MAX_RECORD_SIZE') {
    // csv-parse cannot find the next record after this one: loading the rest could silently lose rows.
    throw new PermanentError(
      `${at(label, first)}: a record runs past ${MAX_RECORD_CHARS} characters, most likely a quote that is never closed`,
      'fix the quoting in the file (or check source.csv.delimiter); nothing of the file was loaded',
    );
  }
  return error.code === 'CSV_QUOTE_NOT_CLOSED'
    ? `${at(label, first, last)}: a quote opened on line ${first} is never closed, so the record runs to the end of the file`
    : `${at(label, first, last)}: ${error.message}`;
}

/** An array index ("0", "17"): for...in lists such keys of an object first, in numeric order. */
const ARRAY_INDEX = /^(0|[1-9]\d*)$/;

/**
 * The order in which a row object with these keys enumerates them (array indexes first,
 * ascending, then the rest as inserted): batches keep the column order rows had.
 */
export function keyOrder(names: string[]): number[] | undefined {
  const isIndex = (n: string) => ARRAY_INDEX.test(n) && Number(n) < 4_294_967_295;
  if (!names.some(isIndex)) return undefined;
  const positions = names.map((_, i) => i);
  const indexes = positions.filter((i) => isIndex(names[i]!)).sort((a, b) => Number(names[a]) - Number(names[b]));
  return [...indexes, ...positions.filter((i) => !isIndex(names[i]!))];
}

/** The rows of a CSV file, in batches (RowBatch): the header names the columns; bad records are rejects that name their lines. */
async function* csvBatches(input: Readable, options: ReadOptions): AsyncGenerator<RowBatch> {
  const { label } = options;
  const hasHeader = options.csv?.header ?? true;
  const bytes = pipeline(input, withoutBom(), () => undefined) as unknown as AsyncIterable<Buffer>;

  let names: string[] | undefined;
  let columns: string[] = [];
  let order: number[] | undefined;
  let headerProblem: string | undefined;
  for await (const records of csvRecords(bytes, options.csv)) {
    const values: unknown[][] = [];
    const sources: string[] = [];
    let rejects: (string | undefined)[] | undefined;
    const reject = (source: string, reason: string) => {
      rejects ??= new Array<string | undefined>(values.length);
      rejects[values.length] = reason;
      sources.push(source);
      values.push([]);
    };
    for (const record of records) {
      if ('skipped' in record) {
        reject(`${label}:${record.skipped.first}`, skippedReason(label, record.skipped));
        continue;
      }
      const { first, last } = record;
      if (headerProblem !== undefined) {
        // No row of the file can be named: each one is a reject that says why (a reader never throws on bytes).
        reject(`${label}:${first}`, `${at(label, first, last)}: ${headerProblem}`);
        continue;
      }
      if ('invalid' in record) {
        const bad = record.invalid;
        if (!names && hasHeader) {
          headerProblem = `the header (line ${first}) is not valid UTF-8 (field ${bad + 1}, bytes ${hexSnippet(record.raw[bad]!)}), so no row of the file can be named; save the file as UTF-8`;
          reject(`${label}:${first}`, `${at(label, first, last)}: ${headerProblem}`);
          continue;
        }
        const column = names?.[bad] ?? `column_${bad + 1}`;
        reject(`${label}:${first}`, `${at(label, first, last)}: invalid UTF-8 in column ${JSON.stringify(column)} (bytes ${hexSnippet(record.raw[bad]!)}); save the file as UTF-8`);
        continue;
      }
      const fields = record.fields;
      // A line of spaces is blank too, not a one-column record.
      if (fields.length === 1 && fields[0]!.trim() === '') continue;
      if (!names) {
        names = hasHeader ? headerNames(fields) : fields.map((_, i) => `column_${i + 1}`);
        order = keyOrder(names);
        // Rows of this batch so far (rejects) have no values: they take the columns from here on.
        columns = order ? order.map((i) => names![i]!) : names;
        if (hasHeader) continue;
      }
      if (fields.length !== names.length) {
        // The values of a record with the wrong field count cannot be trusted to their columns
        // (and would skew type inference), so the reject keeps them only in its reason.
        reject(`${label}:${first}`, `${at(label, first, last)}: expected ${names.length} fields, found ${fields.length}: ${snippet(JSON.stringify(fields))}`);
        continue;
      }
      sources.push(`${label}:${first}`);
      values.push(order ? order.map((i) => fields[i]) : fields);
    }
    if (values.length) yield { columns, values, sources, ...(rejects ? { rejects } : {}) };
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Each field as text, or the index of the first field that is not valid UTF-8. */
function decodeFields(fields: Uint8Array[]): string[] | number {
  const out: string[] = new Array(fields.length);
  for (let i = 0; i < fields.length; i++) {
    try {
      out[i] = strictUtf8.decode(fields[i]);
    } catch {
      return i;
    }
  }
  return out;
}

function hexSnippet(bytes: Uint8Array): string {
  const shown = Buffer.from(bytes.subarray(0, 24)).toString('hex').replace(/(..)(?!$)/g, '$1 ');
  return bytes.length > 24 ? `${shown} ...` : shown;
}

/** Drops a UTF-8 byte order mark at the start of the stream. */
function withoutBom(): Transform {
  let head: Buffer | undefined = Buffer.alloc(0);
  const BOM = Buffer.from([0xef, 0xbb, 0xbf]);
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (head === undefined) return done(null, chunk);
      head = Buffer.concat([head, chunk]);
      if (head.length < BOM.length && BOM.subarray(0, head.length).equals(head)) return done();
      const out = head.subarray(0, 3).equals(BOM) ? head.subarray(3) : head;
      head = undefined;
      done(null, out);
    },
    flush(done) {
      if (head?.length) this.push(head);
      done();
    },
  });
}

/** A line of a byte stream: its bytes without the terminator, or how many bytes it had when it ran past the cap. */
type Line = { line: number; bytes: Buffer } | { line: number; oversized: number };

/**
 * The lines of a byte stream, numbered from 1, in one pass: each chunk is searched once for
 * "\n" from where the last search stopped, so a line costs time linear in its length, and a line
 * longer than `maxBytes` is dropped as it streams (only its length is kept), so memory stays
 * bounded. Lines stay bytes so that each can be checked as UTF-8 on its own. (readline and
 * split2 decode first, turning invalid bytes into U+FFFD, and neither reports an oversized line
 * with its number: readline has no cap, split2 re-splits its whole pending text on every chunk
 * and skips an overflow silently.)
 */
export async function* byteLines(input: AsyncIterable<Buffer>, maxBytes: number): AsyncGenerator<Line> {
  let parts: Buffer[] = [];
  let length = 0;
  let line = 0;
  const take = (): Line => {
    line++;
    const out: Line = length > maxBytes ? { line, oversized: length } : { line, bytes: parts.length === 1 ? parts[0]! : Buffer.concat(parts, length) };
    parts = [];
    length = 0;
    return out;
  };
  for await (const chunk of input) {
    let start = 0;
    for (let end = chunk.indexOf(10, start); end !== -1; end = chunk.indexOf(10, start)) {
      if (length + (end - start) <= maxBytes) parts.push(chunk.subarray(start, end));
      length += end - start;
      yield take();
      start = end + 1;
    }
    if (start < chunk.length) {
      if (length + (chunk.length - start) <= maxBytes) parts.push(chunk.subarray(start));
      else parts = [];
      length += chunk.length - start;
    }
  }
  if (length > 0) yield take();
}

async function* jsonlRows(input: Readable, label: string): AsyncGenerator<Row> {
  for await (const next of byteLines(input as AsyncIterable<Buffer>, MAX_LINE_BYTES)) {
    const { line } = next;
    if ('oversized' in next) {
      yield { [ROW_REJECT]: `${at(label, line)}: the line is ${next.oversized} bytes, longer than the ${MAX_LINE_BYTES} bytes a JSON Lines line may have`, [ROW_SOURCE]: `${label}:${line}` };
      continue;
    }
    let rawText: string;
    try {
      rawText = strictUtf8.decode(next.bytes);
    } catch {
      yield { [ROW_REJECT]: `${at(label, line)}: invalid UTF-8 (bytes ${hexSnippet(next.bytes)}); save the file as UTF-8`, [ROW_SOURCE]: `${label}:${line}` };
      continue;
    }
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
