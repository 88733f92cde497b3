/**
 * The one place identifiers are normalized and quoted. Every table, column and schema name
 * that reaches SQL goes through `quoteIdent`; names that come from data (CSV headers, JSON
 * keys) go through `normalizeIdentifier` first.
 */

/** PostgreSQL truncates identifiers at NAMEDATALEN - 1 bytes. */
export const MAX_IDENTIFIER_BYTES = 63;

export function quoteIdent(name: string): string {
  if (name.length === 0) throw new Error('an identifier cannot be empty');
  if (name.includes('\u0000')) throw new Error(`identifier ${JSON.stringify(name)} contains a NUL character`);
  if (Buffer.byteLength(name, 'utf8') > MAX_IDENTIFIER_BYTES) {
    throw new Error(`identifier ${JSON.stringify(name)} is longer than ${MAX_IDENTIFIER_BYTES} bytes; normalize it first`);
  }
  return `"${name.replace(/"/g, '""')}"`;
}

export function qualifiedName(schema: string, table: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}

/** 32-bit FNV-1a as 7 base-36 characters: a short, stable suffix for truncated names. */
export function shortHash(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(36).padStart(7, '0');
}

function truncateUtf8(text: string, maxBytes: number): string {
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    const size = Buffer.byteLength(ch, 'utf8');
    if (bytes + size > maxBytes) break;
    out += ch;
    bytes += size;
  }
  return out;
}

/**
 * snake_case, lower case, letters (any script), digits and underscores only, never starting
 * with a digit, at most 63 bytes (longer names keep a prefix plus a hash of the whole name,
 * so two long names that share a prefix stay distinct).
 */
export function normalizeIdentifier(raw: string): string {
  let name = raw
    .normalize('NFC')
    .replace(/([\p{Ll}\p{N}])(\p{Lu})/gu, '$1_$2')
    .toLowerCase()
    .replace(/[^\p{L}\p{N}_]+/gu, '_')
    .replace(/_+/g, '_')
    .replace(/(?<=.)_+$/g, '');
  // Separators that stood before the first letter go; a name that really starts with _ keeps it.
  if (!raw.startsWith('_')) name = name.replace(/^_+(?=.)/, '');
  if (name === '' || name === '_') name = '_empty';
  if (/^\p{N}/u.test(name)) name = `_${name}`;
  if (Buffer.byteLength(name, 'utf8') > MAX_IDENTIFIER_BYTES) {
    const suffix = `_${shortHash(raw)}`;
    name = truncateUtf8(name, MAX_IDENTIFIER_BYTES - suffix.length) + suffix;
  }
  return name;
}

/**
 * The name of an index or constraint sluice creates for `table`: "<prefix>_<hash>_<suffix>",
 * cut by BYTES to PostgreSQL's 63 (a table named in a multi-byte script would otherwise overrun
 * the limit and be truncated by the server), with a hash of the whole table name so that two
 * tables sharing a long prefix never derive the same name in one schema.
 */
export function derivedName(table: string, suffix: string): string {
  const tail = `_${shortHash(table)}_${suffix}`;
  return truncateUtf8(table, MAX_IDENTIFIER_BYTES - Buffer.byteLength(tail, 'utf8')) + tail;
}

/** Names sluice keeps for itself in every destination table. */
export const RESERVED_COLUMNS = new Set(['_sluice_load_id']);

/**
 * Maps raw column names to destination columns. The column is a function of the raw name
 * alone, never of the order names arrive in or of the other names present: "ID" and "id" both
 * land in column id, in every file and every load. (Handing out id and id_2 by first
 * appearance let a file that lists ID before id move the values, and a merge key, to another
 * column.) A row that carries two different values for one column is rejected by the loader.
 * Names sluice keeps for itself get a fixed suffix: a data column "_sluice_load_id" is
 * "_sluice_load_id_2".
 */
export class ColumnNamer {
  private readonly byRaw = new Map<string, string>();

  constructor(existing: Iterable<[raw: string, normalized: string]> = []) {
    for (const [raw, normalized] of existing) this.byRaw.set(raw, normalized);
  }

  name(raw: string): string {
    const known = this.byRaw.get(raw);
    if (known !== undefined) return known;
    const base = normalizeIdentifier(raw);
    const name = RESERVED_COLUMNS.has(base) ? `${truncateUtf8(base, MAX_IDENTIFIER_BYTES - 2)}_2` : base;
    this.byRaw.set(raw, name);
    return name;
  }

  entries(): [string, string][] {
    return [...this.byRaw.entries()];
  }
}

/** "public.orders" -> { schema: "public", table: "orders" }; "orders" -> schema undefined. */
export function splitQualified(name: string): { schema: string | undefined; table: string } {
  const match = /^(?:("(?:[^"]|"")+"|[^."]+)\.)?("(?:[^"]|"")+"|[^."]+)$/.exec(name.trim());
  if (!match) throw new Error(`"${name}" is not a table name like public.orders`);
  const unquote = (part: string | undefined) =>
    part === undefined ? undefined : part.startsWith('"') ? part.slice(1, -1).replace(/""/g, '"') : part.toLowerCase();
  return { schema: unquote(match[1]), table: unquote(match[2])! };
}

/** The destination table of a resource: `resource.table`, or its name, normalized. */
export function destinationTable(resource: { name: string; table?: string }): string {
  return normalizeIdentifier(resource.table ?? resource.name);
}
