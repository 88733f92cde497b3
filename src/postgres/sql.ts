/** SQL text both sides build: a table's primary key columns, and string literals. */

export function primaryKeySql(): string {
  return `select a.attname as name
    from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = to_regclass($1) and i.indisprimary
    order by array_position(i.indkey::int2[], a.attnum)`;
}

/** A string literal for the few places SQL takes no parameters (COPY's query, DDL defaults). */
export function literal(value: string): string {
  if (value.includes('\u0000')) throw new Error('a SQL literal cannot contain a NUL character');
  const escaped = value.replace(/'/g, "''");
  return value.includes('\\') ? ` E'${escaped.replace(/\\/g, '\\\\')}'` : `'${escaped}'`;
}
