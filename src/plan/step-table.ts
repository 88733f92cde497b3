/**
 * The pipeline's current details in the Temporal UI. The UI renders markdown tables without
 * cell padding or borders (a row reads `customersfullRefreshWorkflowsuccess`), so the steps are
 * a fixed-width table in a code block, which every markdown renderer shows aligned; why a step
 * failed or was skipped follows as a list, where long messages wrap.
 */
import type { StepStatus } from './dag';
import { formatCount } from './format';

export interface StepLine {
  name: string;
  workflow: string;
  status: StepStatus;
  dependsOn: string[];
  rows?: number;
  durationMs?: number;
  error?: string;
  note?: string;
}

const MAX_CELL = 40;
const MAX_MESSAGE = 300;

/** One line of text that cannot end the code block or break the layout (names come from input). */
function plain(text: string, max: number): string {
  const flat = text.replace(/`/g, "'").replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function seconds(ms: number): string {
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.floor(ms / 60_000)}m${String(Math.round((ms % 60_000) / 1000)).padStart(2, '0')}s`;
}

export function stepTable(name: string, steps: StepLine[], parallel: number): string {
  const count = (status: StepStatus) => steps.filter((s) => s.status === status).length;
  const header =
    `**pipeline ${plain(name, 80).replace(/[*_]/g, '\\$&')}**: ${count('success')}/${steps.length} succeeded, ${count('running')} running, ` +
    `${count('failed')} failed, ${count('skipped')} skipped, ${count('pending')} pending (parallel ${parallel})`;
  const table = [
    ['step', 'workflow', 'status', 'rows', 'took', 'after'],
    ...steps.map((s) => [
      plain(s.name, MAX_CELL),
      s.workflow,
      s.status,
      s.rows === undefined ? '' : formatCount(s.rows),
      s.durationMs === undefined ? '' : seconds(s.durationMs),
      plain(s.dependsOn.join(', '), MAX_CELL),
    ]),
  ];
  const widths = table[0]!.map((_, column) => Math.max(...table.map((row) => row[column]!.length)));
  const numeric = new Set([3, 4]);
  const lines = table.map((row) =>
    row
      .map((cell, column) => (numeric.has(column) ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!)))
      .join('  ')
      .trimEnd(),
  );
  const why = steps
    .filter((s) => s.error || (s.note && s.status !== 'success'))
    .map((s) => `- ${plain(s.name, MAX_CELL)} ${s.status}: ${plain(s.error ?? s.note!, MAX_MESSAGE)}`);
  return [header, '', '```', ...lines, '```', ...(why.length ? ['', ...why] : [])].join('\n');
}
