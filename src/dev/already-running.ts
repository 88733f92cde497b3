/**
 * What a second `npm start` says when the first one (or another clone's) holds the ports: what
 * is running where, and the three things one can do about it.
 */
export interface RunningStack {
  /** The state directory of this start (`.sluice`). */
  stateDir: string;
  /** True when this state directory's own PostgreSQL is running (its postmaster.pid names a live process). */
  sameDirectory: boolean;
  /** Which of our ports something already listens on. */
  taken: { what: string; port: number }[];
  temporalAddress: string;
  uiPort: number;
  pgPort: number;
}

export function alreadyRunningMessage(stack: RunningStack): string {
  const where = stack.taken.map((t) => `${t.what} on port ${t.port}`).join(', ');
  const lines = [
    stack.sameDirectory
      ? `npm start is already running from this directory (${stack.stateDir}): ${where}.`
      : `Something else already listens where npm start would run (probably npm start in another clone): ${where}.`,
    'What to do:',
    stack.sameDirectory
      ? `  - use the one that is running: its worker runs your workflows, its UI is http://localhost:${stack.uiPort}, and the commands it printed work from any shell;`
      : `  - use the one that is running: its Temporal is ${stack.temporalAddress}, its UI http://localhost:${stack.uiPort};`,
    '  - or stop it (Ctrl-C in its terminal) and run npm start again;',
    `  - or run a second stack beside it on other ports and another state directory:`,
    `      SLUICE_HOME=${stack.stateDir}-2 TEMPORAL_ADDRESS=localhost:${portAfter(stack.temporalAddress)} SLUICE_UI_PORT=${stack.uiPort + 1} SLUICE_PG_PORT=${stack.pgPort + 1} npm start`,
  ];
  return lines.join('\n');
}

function portAfter(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1)) + 1;
}
