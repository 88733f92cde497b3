import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/**
 * The worker as `npm run worker` starts it, without npm in between: package.json's `worker`
 * script split into its environment assignments and node's arguments (paths made absolute), so
 * benchmarks and tests run the production worker's flags (its memory settings, its loader).
 */
export function workerLaunch(script?: string): { args: string[]; env: Record<string, string> } {
  const root = resolve(__dirname, '..', '..');
  const text = script ?? (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.worker!;
  const words = text.split(/\s+/).filter(Boolean);
  const env: Record<string, string> = {};
  while (words[0] && /^[A-Z_][A-Z0-9_]*=/.test(words[0])) {
    const [name, ...value] = words.shift()!.split('=');
    env[name!] = value.join('=');
  }
  if (words.shift() !== 'node') throw new Error(`the worker script does not start node: ${text}`);
  return { args: words.map((w) => (w.endsWith('.ts') ? join(root, w) : w)), env };
}
