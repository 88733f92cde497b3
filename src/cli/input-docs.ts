/**
 * The workflow input reference (docs/inputs.md), rendered from the zod schemas' JSON Schema so
 * it cannot drift from what the workflows accept. Pure: schemas in, Markdown out.
 */
import { z } from 'zod';
import { BackfillInput, CdcInput, Destination, FilesInput, FilesSource, FullRefreshInput, IncrementalInput, PipelineInput, Resource, Source } from '../inputs';

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  items?: JsonSchema;
  prefixItems?: JsonSchema[];
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  additionalProperties?: JsonSchema | boolean;
  minimum?: number;
  maximum?: number;
}

function jsonSchema(schema: z.ZodType): JsonSchema {
  // The input side: what a user writes (before defaults and transforms apply).
  return z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
}

/** Parts every workflow shares get one section each; fields of that shape link to it. */
const SHARED: { anchor: string; field: string; title: string; intro: string; schema: z.ZodType }[] = [
  { anchor: 'source', field: 'source', title: '`source`', intro: 'Where the rows come from, by `kind`.', schema: Source },
  { anchor: 'files-source', field: 'source', title: '`source` of filesWorkflow', intro: 'A local directory or an object-storage prefix (s3://bucket/prefix/).', schema: FilesSource },
  { anchor: 'resource', field: 'resource', title: '`resource`', intro: 'What the rows are and how they are written.', schema: Resource },
  { anchor: 'destination', field: 'destination', title: '`destination`', intro: 'Where the rows go. May be omitted.', schema: Destination },
];

const WORKFLOWS: { name: string; intro: string; schema: z.ZodType }[] = [
  { name: 'backfillWorkflow', intro: 'One activity per partition of a date range, at most `parallel` at once.', schema: BackfillInput },
  { name: 'incrementalWorkflow', intro: 'Loads the rows past a cursor, page by page; `once` or `every`.', schema: IncrementalInput },
  { name: 'filesWorkflow', intro: 'One activity per file; a file already loaded is never loaded again.', schema: FilesInput },
  { name: 'fullRefreshWorkflow', intro: 'Loads into staging, then swaps the table in atomically.', schema: FullRefreshInput },
  { name: 'pipelineWorkflow', intro: 'Runs steps as child workflows in dependency order.', schema: PipelineInput },
  { name: 'cdcWorkflow', intro: 'Snapshots the tables, then applies their logical-replication changes in commit order until stopped.', schema: CdcInput },
];

interface Row {
  field: string;
  type: string;
  presence: string;
  description: string;
}

/** Equality of shape, descriptions and defaults aside, so `destination: Destination.default(...)` still links. */
function shapeKey(s: JsonSchema): string {
  const { description: _description, default: _default, $schema: _schema, ...rest } = s as JsonSchema & { $schema?: string };
  return JSON.stringify(rest);
}

function typeText(s: JsonSchema): string {
  if (s.const !== undefined) return code(JSON.stringify(s.const));
  if (s.enum) return s.enum.map((v) => code(JSON.stringify(v))).join(' or ');
  const union = s.anyOf ?? s.oneOf;
  if (union) return union.map(typeText).join(' or ');
  if (Array.isArray(s.type)) return s.type.join(' or ');
  switch (s.type) {
    case 'array':
      if (s.prefixItems) return `[${s.prefixItems.map(typeText).join(', ')}]`;
      return s.items ? `${s.items.properties ? 'object' : typeText(s.items)} list` : 'list';
    case 'object':
      if (s.properties) return 'object';
      if (s.additionalProperties && typeof s.additionalProperties === 'object') {
        const value = Object.keys(s.additionalProperties).length ? typeText(s.additionalProperties) : 'any value';
        return `map of name to ${value}`;
      }
      return 'object';
    case 'integer':
    case 'number': {
      // zod writes the safe-integer limits of .int() as bounds: those say nothing to a reader.
      const min = s.minimum !== undefined && s.minimum > Number.MIN_SAFE_INTEGER ? s.minimum : undefined;
      const max = s.maximum !== undefined && s.maximum < Number.MAX_SAFE_INTEGER ? s.maximum : undefined;
      const range = min !== undefined && max !== undefined ? ` ${min} to ${max}` : min !== undefined ? ` ≥ ${min}` : max !== undefined ? ` ≤ ${max}` : '';
      return `${s.type}${range}`;
    }
    case undefined:
      return 'any';
    default:
      return s.type;
  }
}

function code(text: string): string {
  return `\`${text}\``;
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n+/g, ' ');
}

function rows(schema: JsonSchema, prefix: string, links: Map<string, string>): Row[] {
  const out: Row[] = [];
  for (const [key, prop] of Object.entries(schema.properties ?? {})) {
    const field = prefix ? `${prefix}.${key}` : key;
    const link = links.get(shapeKey(prop));
    const shared = SHARED.find((part) => `#${part.anchor}` === link);
    const presence = (schema.required ?? []).includes(key)
      ? '**required**'
      : prop.default !== undefined
        ? `default ${code(JSON.stringify(prop.default))}`
        : 'optional';
    const internal = prop.description?.startsWith('Internal');
    out.push({ field: code(field), type: link ? `see [${key}](${link})` : typeText(prop), presence, description: prop.description ?? shared?.intro ?? '' });
    if (link || internal) continue;
    if (prop.properties) out.push(...rows(prop, field, links));
    else if (prop.type === 'array' && prop.items?.properties) out.push(...rows(prop.items, `${field}[]`, links));
  }
  return out;
}

function table(body: Row[]): string {
  return [
    '| field | type | required / default | description |',
    '|---|---|---|---|',
    ...body.map((r) => `| ${cell(r.field)} | ${cell(r.type)} | ${cell(r.presence)} | ${cell(r.description)} |`),
  ].join('\n');
}

function sharedSection(part: (typeof SHARED)[number], links: Map<string, string>): string {
  const s = jsonSchema(part.schema);
  const own = new Map([...links].filter(([, anchor]) => anchor !== `#${part.anchor}`));
  const variants = s.oneOf ?? s.anyOf;
  const body = variants
    ? variants
        .map((v) => {
          const kind = `Kind ${typeText(v.properties?.kind ?? {})}`;
          const link = own.get(shapeKey(v));
          return link ? `${kind}: see [below](${link}).` : `${kind}:\n\n${table(rows(v, part.field, own))}`;
        })
        .join('\n\n')
    : table(rows(s, part.field, own));
  return `### ${part.title}\n\n<a id="${part.anchor}"></a>${part.intro}\n\n${body}`;
}

export function renderInputDocs(): string {
  const links = new Map(SHARED.map((p) => [shapeKey(jsonSchema(p.schema)), `#${p.anchor}`]));
  const sections = [
    '# Workflow input reference',
    '<!-- Generated from the zod schemas in src/inputs.ts by `npm run docs:inputs`; test/input-docs.test.ts keeps it in step. Do not edit by hand. -->',
    'Every sluice workflow takes one JSON object (or, with `npx sluice start FILE`, the `input:` of a YAML or JSON file). ' +
      'Unknown fields are errors, and every error names its field. Connections are the NAMES of environment variables, never connection strings.',
    '## Workflow types',
    ...WORKFLOWS.map((w) => `### \`${w.name}\`\n\n${w.intro}\n\n${table(rows(jsonSchema(w.schema), '', links))}`),
    '## Common parts',
    ...SHARED.map((part) => sharedSection(part, links)),
  ];
  return `${sections.join('\n\n')}\n`;
}
