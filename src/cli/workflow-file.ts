/**
 * Reads the file `sluice start` takes: `workflow:` (the workflow type), an optional `id:`, and
 * `input:` (exactly the workflow's JSON input), written as YAML or JSON. The input is judged by
 * the same zod schemas the workflows use; every problem names the file, the line and the field.
 * Pure: text in, value or problems out.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import { WorkflowType } from '../inputs';
import { pipelineProblems, STEP_INPUT_SCHEMAS } from '../plan/dag';

export interface WorkflowFile {
  workflow: WorkflowType;
  id: string | undefined;
  /** The input as written (defaults not applied): the workflow applies them itself. */
  input: Record<string, unknown>;
}

export type ReadResult = { ok: true; value: WorkflowFile } | { ok: false; problems: string[] };

const FileShape = z.strictObject({
  workflow: WorkflowType,
  id: z.string().min(1).optional(),
  input: z.record(z.string(), z.unknown()),
});

type Path = readonly PropertyKey[];

export function readWorkflowFile(fileName: string, text: string): ReadResult {
  const lineCounter = new LineCounter();
  // JSON is YAML too, so one parser gives line numbers for both.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => `${fileName}:${lineCounter.linePos(offset).line}`;
  if (doc.errors.length > 0) {
    return { ok: false, problems: doc.errors.map((e) => `${at(e.pos[0])}: ${e.message.split('\n')[0]}`) };
  }
  const raw: unknown = doc.toJS();
  const problems = (issues: z.core.$ZodIssue[], prefix: Path) =>
    issues.flatMap((issue) => describeIssue(issue, [...prefix, ...issue.path], raw).map((p) => `${at(locate(doc, p.path))}: ${p.text}`));

  const shape = FileShape.safeParse(raw);
  if (!shape.success) {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      return { ok: false, problems: [`${fileName}:1: expected a mapping with workflow:, id: (optional) and input:`] };
    }
    return { ok: false, problems: problems(shape.error.issues, []) };
  }
  const file = shape.data;
  const schema = STEP_INPUT_SCHEMAS[file.workflow];
  const parsed = schema.safeParse(file.input);
  if (!parsed.success) return { ok: false, problems: problems(parsed.error.issues, ['input']) };

  if (file.workflow === 'pipelineWorkflow') {
    // Each step's input is judged by its own workflow's schema, at its own line.
    const steps = (parsed.data as { steps: { workflow: WorkflowType; input: unknown }[] }).steps;
    const stepProblems = steps.flatMap((step, i) => {
      const result = STEP_INPUT_SCHEMAS[step.workflow].safeParse(step.input);
      return result.success ? [] : problems(result.error.issues, ['input', 'steps', i, 'input']);
    });
    if (stepProblems.length > 0) return { ok: false, problems: stepProblems };
    const graph = pipelineProblems(parsed.data as Parameters<typeof pipelineProblems>[0]);
    if (graph.length > 0) return { ok: false, problems: graph.map((p) => `${at(locate(doc, ['input', 'steps']))}: input.${p}`) };
  }
  return { ok: true, value: { workflow: file.workflow, id: file.id, input: file.input } };
}

/** One line per problem, each at the path where it should be pointed out. */
function describeIssue(issue: z.core.$ZodIssue, path: Path, raw: unknown): { path: Path; text: string }[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ path: [...path, key], text: `${fieldName([...path, key])}: unknown field` }));
  }
  const missing = issue.code === 'invalid_type' && valueAt(raw, path) === undefined;
  return [{ path, text: `${fieldName(path)}: ${missing ? 'required' : issue.message}` }];
}

export function fieldName(path: Path): string {
  let name = '';
  for (const seg of path) name += typeof seg === 'number' ? `[${seg}]` : `${name ? '.' : ''}${String(seg)}`;
  return name || '(file)';
}

function valueAt(raw: unknown, path: Path): unknown {
  let value = raw;
  for (const seg of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[seg];
  }
  return value;
}

/**
 * The offset of the deepest node on `path` that exists: the key of a mapping entry (so a nested
 * mapping is pointed out where its key is written), or the item of a sequence.
 */
function locate(doc: Document, path: Path): number {
  let node: unknown = doc.contents;
  let offset = isScalar(node) || isMap(node) || isSeq(node) ? (node.range?.[0] ?? 0) : 0;
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      offset = (isScalar(pair.key) ? pair.key.range?.[0] : undefined) ?? offset;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item: unknown = node.items[seg];
      if (!isScalar(item) && !isMap(item) && !isSeq(item)) break;
      offset = item.range?.[0] ?? offset;
      node = item;
    } else {
      break;
    }
  }
  return offset;
}
