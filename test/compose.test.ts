/**
 * The deployment files, Dockerfile and docker-compose.yml, checked against CONTRACT.md and
 * against the code that reads them (src/config.ts, src/search-attributes.ts), without Docker.
 *
 * Each check is a function over the parsed files. The last group edits the real files the way
 * a careless change would (renames a variable, drops a port, unpins an image) and expects the
 * matching check to fail, so none of the checks can pass vacuously.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { readConfig } from '../src/config';
import { SEARCH_ATTRIBUTES } from '../src/search-attributes';

const root = join(__dirname, '..');
const COMPOSE_FILE = join(root, 'docker-compose.yml');
const DOCKERFILE = join(root, 'Dockerfile');

/** The service names in docker-compose.yml that the README refers to. */
const SERVICES = {
  temporal: 'temporal',
  temporalDb: 'temporal-postgresql',
  ui: 'temporal-ui',
  warehouse: 'warehouse',
  worker: 'worker',
} as const;

/** CONTRACT.md, "Environment": every variable the worker reads, by its exact name. */
const CONTRACT_ENV = ['TEMPORAL_ADDRESS', 'TEMPORAL_NAMESPACE', 'SLUICE_TASK_QUEUE', 'DATABASE_URL'] as const;
/** CONTRACT.md: the Temporal UI is at http://localhost:8233. */
const UI_HOST_PORT = '8233';
const TEMPORAL_FRONTEND_PORT = '7233';

// ---- docker-compose.yml, as far as these checks read it ----------------------------------------

const stringOrList = z.union([z.string(), z.array(z.string())]);
const scalar = z.union([z.string(), z.number(), z.boolean(), z.null()]);
const serviceSchema = z.object({
  image: z.string().optional(),
  build: z.union([z.string(), z.object({ context: z.string().optional(), dockerfile: z.string().optional() })]).optional(),
  container_name: z.string().optional(),
  environment: z.union([z.record(z.string(), scalar), z.array(z.string())]).optional(),
  ports: z
    .array(
      z.union([
        z.string(),
        z.number(),
        z.object({
          target: z.union([z.number(), z.string()]),
          published: z.union([z.number(), z.string()]).optional(),
          host_ip: z.string().optional(),
        }),
      ]),
    )
    .optional(),
  depends_on: z
    .union([z.array(z.string()), z.record(z.string(), z.object({ condition: z.string().optional() }))])
    .optional(),
  entrypoint: stringOrList.optional(),
  command: stringOrList.optional(),
  healthcheck: z.object({ test: stringOrList.optional(), disable: z.boolean().optional() }).optional(),
  volumes: z.array(z.union([z.string(), z.object({ source: z.string().optional(), target: z.string() })])).optional(),
});
const composeSchema = z.object({
  services: z.record(z.string(), serviceSchema),
  volumes: z.record(z.string(), z.unknown()).optional(),
});
type Compose = z.infer<typeof composeSchema>;
type Service = z.infer<typeof serviceSchema>;

/**
 * Compose substitutes `${VAR:-default}` and `$VAR` from the caller's environment before it
 * reads the file. Resolve each reference to its default, as on a machine with no .env, and
 * report the ones without a default, and bare `$VAR`s: in a command those are nearly always
 * shell variables that should have been written `$$VAR`.
 */
function interpolate(text: string): { text: string; problems: string[] } {
  const problems: string[] = [];
  const resolved = text.replace(
    /\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (match: string, braced: string | undefined, bare: string | undefined) => {
      if (match === '$$') return '$';
      if (bare !== undefined) {
        problems.push(`$${bare}: compose substitutes it from the host environment (write $$${bare} for a shell variable)`);
        return '';
      }
      const withDefault = /^[A-Za-z_][A-Za-z0-9_]*:?-(.*)$/s.exec(braced ?? '');
      if (!withDefault) {
        problems.push(`\${${braced ?? ''}} has no default (write \${NAME:-default})`);
        return '';
      }
      return withDefault[1] ?? '';
    },
  );
  return { text: resolved, problems };
}

function service(compose: Compose, name: string): Service {
  const found = compose.services[name];
  assert.ok(found, `docker-compose.yml has no service "${name}" (it has: ${Object.keys(compose.services).join(', ')})`);
  return found;
}

function envOf(s: Service): Record<string, string> {
  const env = s.environment;
  if (env === undefined) return {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((entry) => {
      const eq = entry.indexOf('=');
      return eq < 0 ? [entry, ''] : [entry.slice(0, eq), entry.slice(eq + 1)];
    }));
  }
  return Object.fromEntries(Object.entries(env).map(([name, value]) => [name, value === null ? '' : String(value)]));
}

interface PortMapping {
  hostIp: string | undefined;
  published: string | undefined;
  target: string;
}

/** Short syntax `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]` or the long form. */
function portsOf(s: Service): PortMapping[] {
  return (s.ports ?? []).map((port) => {
    if (typeof port === 'object') {
      return { hostIp: port.host_ip, published: port.published === undefined ? undefined : String(port.published), target: String(port.target) };
    }
    const parts = String(port).replace(/\/(tcp|udp)$/, '').split(':');
    const target = parts.pop() ?? '';
    const published = parts.pop();
    return { hostIp: parts.length ? parts.join(':') : undefined, published, target };
  });
}

/** depends_on as service name -> condition. */
function dependsOn(s: Service): Map<string, string> {
  const deps = s.depends_on;
  if (deps === undefined) return new Map();
  if (Array.isArray(deps)) return new Map(deps.map((name) => [name, 'service_started']));
  return new Map(Object.entries(deps).map(([name, d]) => [name, d.condition ?? 'service_started']));
}

/** What the container runs: entrypoint and command as one string. */
function script(s: Service): string {
  const words = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
  return [...words(s.entrypoint), ...words(s.command)].join(' ');
}

function hostAndPort(address: string): { host: string; port: string } {
  const colon = address.lastIndexOf(':');
  return colon < 0 ? { host: address, port: '' } : { host: address.slice(0, colon), port: address.slice(colon + 1) };
}

function imageTag(image: string): string | undefined {
  if (image.includes('@sha256:')) return image.slice(image.indexOf('@') + 1);
  const lastSegment = image.slice(image.lastIndexOf('/') + 1);
  const colon = lastSegment.indexOf(':');
  return colon < 0 ? undefined : lastSegment.slice(colon + 1);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---- Dockerfile ----------------------------------------------------------------------------

interface Instruction {
  keyword: string;
  args: string;
  /** Index of the build stage (FROM) it belongs to; -1 before the first FROM. */
  stage: number;
}

interface Dockerfile {
  instructions: Instruction[];
  stageNames: string[];
  finalStage: number;
  /** Global ARG defaults (declared before the first FROM). */
  globalArgs: Map<string, string>;
}

function parseDockerfile(text: string): Dockerfile {
  const logical = text
    .split(/\r?\n/)
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  const instructions: Instruction[] = [];
  const stageNames: string[] = [];
  const globalArgs = new Map<string, string>();
  let stage = -1;
  for (const line of logical) {
    const space = line.search(/\s/);
    const keyword = (space < 0 ? line : line.slice(0, space)).toUpperCase();
    const args = space < 0 ? '' : line.slice(space + 1).trim();
    if (keyword === 'FROM') {
      stage += 1;
      stageNames.push(/\bAS\s+(\S+)\s*$/i.exec(args)?.[1] ?? String(stage));
    }
    if (keyword === 'ARG' && stage < 0) {
      const [name, value] = args.split('=', 2);
      if (name) globalArgs.set(name.trim(), (value ?? '').trim());
    }
    instructions.push({ keyword, args, stage });
  }
  return { instructions, stageNames, finalStage: stage, globalArgs };
}

function inStage(d: Dockerfile, stage: number, keyword: string): Instruction[] {
  return d.instructions.filter((i) => i.stage === stage && i.keyword === keyword);
}

/** ENV instructions of a stage as name -> value (`ENV A=1 B="two"`). */
function envOfStage(d: Dockerfile, stage: number): Map<string, string> {
  const env = new Map<string, string>();
  for (const { args } of inStage(d, stage, 'ENV')) {
    for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) {
      env.set(m[1] ?? '', (m[2] ?? '').replace(/^"(.*)"$/, '$1'));
    }
  }
  return env;
}

/** COPY arguments without flags: sources and destination. */
function copyOperands(args: string): { from: string | undefined; sources: string[]; dest: string } {
  const words = args.startsWith('[') ? (JSON.parse(args) as string[]) : args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const operands = words.filter((w) => !w.startsWith('--'));
  const dest = operands.pop() ?? '';
  return { from, sources: operands, dest };
}

function workdirAt(d: Dockerfile, instruction: Instruction): string {
  let dir = '/';
  for (const i of d.instructions) {
    if (i === instruction) break;
    if (i.stage === instruction.stage && i.keyword === 'WORKDIR') dir = posix.resolve(dir, i.args);
  }
  return dir;
}

// ---- the checks ----------------------------------------------------------------------------

interface Deployment {
  compose: Compose;
  interpolationProblems: string[];
  dockerfile: Dockerfile;
}

function loadDeployment(composeText: string, dockerfileText: string): Deployment {
  const { text, problems } = interpolate(composeText);
  return { compose: composeSchema.parse(parseYaml(text)), interpolationProblems: problems, dockerfile: parseDockerfile(dockerfileText) };
}

function workerEnv(d: Deployment): Record<string, string> {
  return envOf(service(d.compose, SERVICES.worker));
}

/** Services whose command registers search attributes. */
function searchAttributeJobs(d: Deployment): [string, Service][] {
  return Object.entries(d.compose.services).filter(([, s]) => script(s).includes('search-attribute create'));
}

const checks = {
  'every service of the deployment is there, on the right image'(d: Deployment): void {
    const image = (name: string): string => service(d.compose, name).image ?? '';
    assert.match(image(SERVICES.temporal), /^temporalio\/server:/, 'the Temporal server');
    assert.match(image(SERVICES.temporalDb), /^postgres:/, "Temporal's PostgreSQL");
    assert.match(image(SERVICES.ui), /^temporalio\/ui:/, 'the Temporal UI');
    assert.match(image(SERVICES.warehouse), /^postgres:/, 'the destination PostgreSQL');
    assert.ok(service(d.compose, SERVICES.worker).build, 'the worker is built from this repository');
    const temporalEnv = envOf(service(d.compose, SERVICES.temporal));
    assert.match(temporalEnv.DB ?? '', /^postgres/, 'Temporal persists to PostgreSQL');
    assert.equal(temporalEnv.POSTGRES_SEEDS, SERVICES.temporalDb, "Temporal persists to its own PostgreSQL, not the destination");
  },

  "Temporal's schema is set up before the server starts"(d: Deployment): void {
    const temporal = service(d.compose, SERVICES.temporal);
    const dbHost = envOf(temporal).POSTGRES_SEEDS ?? '';
    const jobs = [...dependsOn(temporal)]
      .filter(([, condition]) => condition === 'service_completed_successfully')
      .map(([name]) => script(service(d.compose, name)));
    const setup = jobs.find((s) => s.includes('temporal-sql-tool'));
    assert.ok(setup, 'temporal waits for a one-shot job that runs temporal-sql-tool');
    assert.match(setup, new RegExp(`--ep ${escapeRegExp(dbHost)}\\b`), 'the schema job targets the database the server uses');
    for (const db of ['temporal', 'temporal_visibility']) {
      assert.match(setup, new RegExp(`--db ${db} update-schema`), `the schema job migrates ${db}`);
    }
  },

  'the worker is built from the Dockerfile in this repository'(d: Deployment): void {
    const { build } = service(d.compose, SERVICES.worker);
    assert.ok(build, 'worker has a build section');
    const context = resolve(root, typeof build === 'string' ? build : (build.context ?? '.'));
    const dockerfile = resolve(context, typeof build === 'string' ? 'Dockerfile' : (build.dockerfile ?? 'Dockerfile'));
    assert.ok(existsSync(dockerfile), `${dockerfile} exists`);
    assert.equal(dockerfile, DOCKERFILE, 'the worker image is the Dockerfile checked here');
  },

  "the worker's environment uses the contract's names, as src/config.ts reads them"(d: Deployment): void {
    const env = workerEnv(d);
    for (const name of CONTRACT_ENV) assert.ok(name in env, `worker environment sets ${name}`);
    const config = readConfig(env);
    assert.equal(config.temporalAddress, `${SERVICES.temporal}:${TEMPORAL_FRONTEND_PORT}`);
    assert.equal(config.namespace, 'default');
    assert.equal(config.taskQueue, 'sluice');
    assert.ok(config.databaseUrl, 'DATABASE_URL is set');
    // CONTRACT.md: any other name is a source connection string (or a SLUICE_ setting).
    for (const [name, value] of Object.entries(env)) {
      if ((CONTRACT_ENV as readonly string[]).includes(name) || name.startsWith('SLUICE_')) continue;
      assert.match(value, /^postgres(ql)?:\/\//, `${name} is a source connection string`);
    }
  },

  "TEMPORAL_ADDRESS reaches the temporal service's frontend on 7233"(d: Deployment): void {
    const address = workerEnv(d).TEMPORAL_ADDRESS ?? '';
    const { host, port } = hostAndPort(address);
    assert.equal(host, SERVICES.temporal);
    assert.equal(port, TEMPORAL_FRONTEND_PORT);
    const temporalEnv = envOf(service(d.compose, host));
    assert.equal(temporalEnv.FRONTEND_GRPC_PORT ?? TEMPORAL_FRONTEND_PORT, TEMPORAL_FRONTEND_PORT, 'the frontend listens on 7233');
    // The server binds 127.0.0.1 unless told otherwise: other containers could not reach it.
    assert.ok(temporalEnv.BIND_ON_IP && !temporalEnv.BIND_ON_IP.startsWith('127.'), 'temporal binds a reachable address (BIND_ON_IP)');
    assert.equal(envOf(service(d.compose, SERVICES.ui)).TEMPORAL_ADDRESS, address, 'the UI talks to the same frontend');
  },

  'the worker scales: no container_name, no host ports'(d: Deployment): void {
    const worker = service(d.compose, SERVICES.worker);
    assert.equal(worker.container_name, undefined, 'a container_name allows one container only');
    assert.deepEqual(portsOf(worker).filter((p) => p.published !== undefined), [], 'a fixed host port allows one container only');
  },

  'the Temporal UI is published on host port 8233'(d: Deployment): void {
    const ui = service(d.compose, SERVICES.ui);
    const uiPort = envOf(ui).TEMPORAL_UI_PORT ?? '8080';
    assert.ok(
      portsOf(ui).some((p) => p.published === UI_HOST_PORT && p.target === uiPort),
      `${SERVICES.ui} maps host ${UI_HOST_PORT} to its port ${uiPort}: ${JSON.stringify(portsOf(ui))}`,
    );
  },

  'DATABASE_URL is the destination PostgreSQL, with its credentials'(d: Deployment): void {
    const url = new URL(workerEnv(d).DATABASE_URL ?? '');
    assert.match(url.protocol, /^postgres(ql)?:$/);
    assert.equal(url.hostname, SERVICES.warehouse);
    assert.equal(url.port || '5432', '5432', 'the container port, not the host port');
    const warehouse = service(d.compose, SERVICES.warehouse);
    const env = envOf(warehouse);
    assert.equal(decodeURIComponent(url.username), env.POSTGRES_USER);
    assert.equal(decodeURIComponent(url.password), env.POSTGRES_PASSWORD);
    assert.equal(decodeURIComponent(url.pathname.slice(1)), env.POSTGRES_DB ?? env.POSTGRES_USER);
    assert.match(script(warehouse), /wal_level=logical/, 'the destination runs with wal_level=logical');
  },

  'every depends_on names an existing service, and waits for what it needs'(d: Deployment): void {
    for (const [name, s] of Object.entries(d.compose.services)) {
      for (const [dep, condition] of dependsOn(s)) {
        const target = d.compose.services[dep];
        assert.ok(target, `${name} depends on "${dep}", which is not a service`);
        assert.notEqual(dep, name);
        assert.ok(['service_started', 'service_healthy', 'service_completed_successfully'].includes(condition), `${name} -> ${dep}: ${condition}`);
        if (condition === 'service_healthy') {
          assert.ok(target.healthcheck?.test && !target.healthcheck.disable, `${name} waits for ${dep} to be healthy, so ${dep} needs a healthcheck`);
        }
      }
    }
    const worker = dependsOn(service(d.compose, SERVICES.worker));
    assert.equal(worker.get(SERVICES.warehouse), 'service_healthy', 'the worker waits for the destination');
    assert.equal(worker.get(SERVICES.temporal), 'service_healthy', 'the worker waits for Temporal');
  },

  'every image is pinned to an explicit tag'(d: Deployment): void {
    for (const [name, s] of Object.entries(d.compose.services)) {
      if (s.image === undefined) {
        assert.ok(s.build, `${name} has neither image nor build`);
        continue;
      }
      const tag = imageTag(s.image);
      assert.ok(tag, `${name}: ${s.image} has no tag`);
      assert.notEqual(tag, 'latest', `${name}: ${s.image} is not pinned`);
    }
  },

  "both PostgreSQL data directories are named volumes"(d: Deployment): void {
    for (const name of [SERVICES.temporalDb, SERVICES.warehouse]) {
      const s = service(d.compose, name);
      // postgres:18 moved PGDATA under /var/lib/postgresql/<major>/docker and wants the parent mounted.
      const major = Number.parseInt(imageTag(s.image ?? '') ?? '', 10);
      const target = major >= 18 ? '/var/lib/postgresql' : '/var/lib/postgresql/data';
      const mounts = (s.volumes ?? []).map((v) => {
        if (typeof v !== 'string') return { source: v.source, target: v.target };
        const [source, mountTarget] = v.split(':');
        return { source, target: mountTarget ?? source };
      });
      const data = mounts.find((m) => m.target === target);
      assert.ok(data, `${name} mounts a volume at ${target}`);
      assert.ok(data.source && data.source in (d.compose.volumes ?? {}), `${name}'s ${data.source ?? '(anonymous)'} is a named volume`);
    }
  },

  "sluice's search attributes are registered before the worker starts"(d: Deployment): void {
    const jobs = searchAttributeJobs(d);
    assert.ok(jobs.length > 0, 'some service runs `temporal operator search-attribute create`');
    const commands = jobs.map(([, s]) => script(s)).join('\n');
    for (const key of Object.values(SEARCH_ATTRIBUTES)) {
      const cliType = key.type.split('_').map((w) => w[0] + w.slice(1).toLowerCase()).join('');
      assert.match(commands, new RegExp(`\\b${key.name}\\b`), `${key.name} (src/search-attributes.ts) is registered`);
      assert.match(commands, new RegExp(`--type ${cliType}\\b`), `as ${cliType}`);
    }
    const env = workerEnv(d);
    for (const [, address] of commands.matchAll(/--address ([^\s;|&)]+)/g)) assert.equal(address, env.TEMPORAL_ADDRESS);
    for (const [, namespace] of commands.matchAll(/--namespace ([^\s;|&)]+)/g)) assert.equal(namespace, env.TEMPORAL_NAMESPACE);
    // The worker looks the attributes up once, when it starts (src/worker.ts).
    const worker = dependsOn(service(d.compose, SERVICES.worker));
    assert.ok(
      jobs.some(([name]) => worker.get(name) === 'service_completed_successfully'),
      'the worker waits for the search attribute job to complete',
    );
  },

  'every ${VARIABLE} has a default and shell variables are escaped as $$'(d: Deployment): void {
    assert.deepEqual(d.interpolationProblems, []);
  },

  'the Dockerfile installs production dependencies with npm ci, package.json first'(d: Deployment): void {
    const df = d.dockerfile;
    const install = df.instructions.find((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args));
    assert.ok(install, 'a RUN npm ci');
    assert.match(install.args, /--omit=dev\b/, 'production dependencies only');
    const before = df.instructions.slice(0, df.instructions.indexOf(install)).filter((i) => i.stage === install.stage && i.keyword === 'COPY');
    const copied = before.flatMap((i) => copyOperands(i.args).sources);
    // package.json carries `allowScripts`, which npm needs to run the native packages' install scripts.
    for (const file of ['package.json', 'package-lock.json']) assert.ok(copied.includes(file), `${file} is copied before npm ci`);
  },

  'the image runs `npm run worker` as the user node'(d: Deployment): void {
    const df = d.dockerfile;
    const base = inStage(df, df.finalStage, 'FROM')[0]?.args.split(/\s+/)[0] ?? '';
    const resolvedBase = base.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_m: string, name: string) => df.globalArgs.get(name) ?? '');
    assert.match(resolvedBase, /^node:\d+[\w.-]*$/, `the runtime stage is an official node image with a tag: ${resolvedBase}`);
    const cmd = inStage(df, df.finalStage, 'CMD').at(-1);
    assert.ok(cmd, 'the runtime stage has a CMD');
    assert.deepEqual(JSON.parse(cmd.args), ['npm', 'run', 'worker']);
    assert.deepEqual(inStage(df, df.finalStage, 'ENTRYPOINT'), [], 'no ENTRYPOINT wraps the CMD');
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
    assert.ok(pkg.scripts?.worker, 'package.json has a worker script');
    assert.equal(inStage(df, df.finalStage, 'USER').at(-1)?.args, 'node');
    // dash (Debian's sh) forks for `sh -c`: SIGTERM from `docker stop` would kill the shell, not
    // the worker. bash execs the script's single command, so the signal reaches the worker.
    assert.equal(envOfStage(df, df.finalStage).get('NPM_CONFIG_SCRIPT_SHELL'), '/bin/bash', 'npm scripts run under bash');
  },

  'the image defaults SLUICE_TASK_QUEUE to sluice and ships the workflow bundle it names'(d: Deployment): void {
    const df = d.dockerfile;
    const env = envOfStage(df, df.finalStage);
    assert.equal(env.get('SLUICE_TASK_QUEUE'), 'sluice');
    const bundle = env.get('SLUICE_WORKFLOW_BUNDLE');
    if (bundle === undefined) return; // the worker bundles at start instead
    const build = df.instructions.find((i) => i.keyword === 'RUN' && i.args.includes('scripts/bundle-workflows.ts'));
    assert.ok(build, 'a RUN builds the bundle with scripts/bundle-workflows.ts');
    const shipped = inStage(df, df.finalStage, 'COPY').some((i) => {
      const { from, dest } = copyOperands(i.args);
      return from === df.stageNames[build.stage] && posix.resolve(workdirAt(df, i), dest) === bundle;
    });
    assert.ok(shipped || build.stage === df.finalStage, `the runtime stage has the bundle at ${bundle}`);
  },

  'everything the Dockerfile copies from the build context exists and is not .dockerignored'(d: Deployment): void {
    const ignored = readFileSync(join(root, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim().replace(/\/$/, ''))
      .filter((l) => l && !l.startsWith('#'));
    for (const i of d.dockerfile.instructions.filter((x) => x.keyword === 'COPY' || x.keyword === 'ADD')) {
      const { from, sources } = copyOperands(i.args);
      if (from !== undefined) continue;
      for (const source of sources) {
        const path = posix.normalize(source).replace(/\/$/, '');
        assert.ok(existsSync(join(root, path)), `COPY ${source}: not in the repository`);
        assert.ok(!ignored.some((p) => path === p || path.startsWith(`${p}/`)), `COPY ${source}: excluded by .dockerignore`);
      }
    }
  },
} satisfies Record<string, (d: Deployment) => void>;

type CheckName = keyof typeof checks;

let loaded: Deployment | undefined;
function deployment(): Deployment {
  loaded ??= loadDeployment(readFileSync(COMPOSE_FILE, 'utf8'), readFileSync(DOCKERFILE, 'utf8'));
  return loaded;
}

describe('deployment: docker-compose.yml and Dockerfile', () => {
  for (const [name, check] of Object.entries(checks)) {
    test(name, () => check(deployment()));
  }

  test('scripts/bundle-workflows.ts (the Dockerfile runs it) writes a loadable workflow bundle', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sluice-bundle-'));
    try {
      const out = join(dir, 'nested', 'workflow-bundle.js');
      await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'scripts', 'bundle-workflows.ts'), out], { cwd: root });
      const code = await readFile(out, 'utf8');
      assert.ok(code.length > 10_000, `bundle is ${code.length} bytes`);
      assert.match(code, /backfillWorkflow/, 'the bundle contains the workflows');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** A careless edit of one file, and the check that must catch it. */
interface Mutation {
  file: 'compose' | 'dockerfile';
  edit: (text: string) => string;
  caughtBy: CheckName;
}

/** Replaces the first match of `pattern` after the line `  <service>:`, so edits hit the intended service. */
function inService(name: string, pattern: RegExp, replacement: string): (text: string) => string {
  return (text) => {
    const start = text.search(new RegExp(`^  ${escapeRegExp(name)}:\\s*$`, 'm'));
    assert.ok(start >= 0, `no service ${name}`);
    return text.slice(0, start) + text.slice(start).replace(pattern, replacement);
  };
}

const mutations: Record<string, Mutation> = {
  'a renamed worker variable': {
    file: 'compose',
    edit: inService(SERVICES.worker, /\bTEMPORAL_NAMESPACE:/, 'TEMPORAL_NAMESPACE_NAME:'),
    caughtBy: "the worker's environment uses the contract's names, as src/config.ts reads them",
  },
  'DATABASE_URL renamed to DB_URL': {
    file: 'compose',
    edit: inService(SERVICES.worker, /\bDATABASE_URL:/, 'DB_URL:'),
    caughtBy: "the worker's environment uses the contract's names, as src/config.ts reads them",
  },
  'the worker pointed at the wrong frontend port': {
    file: 'compose',
    edit: inService(SERVICES.worker, /TEMPORAL_ADDRESS: \S+/, `TEMPORAL_ADDRESS: ${SERVICES.temporal}:7234`),
    caughtBy: "TEMPORAL_ADDRESS reaches the temporal service's frontend on 7233",
  },
  'Temporal bound to loopback only': {
    file: 'compose',
    edit: inService(SERVICES.temporal, /BIND_ON_IP: \S+/, 'BIND_ON_IP: 127.0.0.1'),
    caughtBy: "TEMPORAL_ADDRESS reaches the temporal service's frontend on 7233",
  },
  'a container_name on the worker': {
    file: 'compose',
    edit: inService(SERVICES.worker, /\n(\s+)build:/, '\n$1container_name: sluice-worker\n$1build:'),
    caughtBy: 'the worker scales: no container_name, no host ports',
  },
  'a host port on the worker': {
    file: 'compose',
    edit: inService(SERVICES.worker, /\n(\s+)build:/, '\n$1ports: ["9000:9000"]\n$1build:'),
    caughtBy: 'the worker scales: no container_name, no host ports',
  },
  'the UI on another host port': {
    file: 'compose',
    edit: inService(SERVICES.ui, /8233:8080/, '8080:8080'),
    caughtBy: 'the Temporal UI is published on host port 8233',
  },
  "DATABASE_URL at Temporal's database": {
    file: 'compose',
    edit: inService(SERVICES.worker, /@warehouse:/, `@${SERVICES.temporalDb}:`),
    caughtBy: 'DATABASE_URL is the destination PostgreSQL, with its credentials',
  },
  'DATABASE_URL with the host port': {
    file: 'compose',
    edit: inService(SERVICES.worker, /@warehouse:5432/, '@warehouse:5433'),
    caughtBy: 'DATABASE_URL is the destination PostgreSQL, with its credentials',
  },
  'a dependency on a service that does not exist': {
    file: 'compose',
    edit: inService(SERVICES.worker, /\btemporal-setup:/, 'temporal-init:'),
    caughtBy: 'every depends_on names an existing service, and waits for what it needs',
  },
  'an unpinned image': {
    file: 'compose',
    edit: (text) => text.replace(/temporalio\/ui:\S+/, 'temporalio/ui:latest'),
    caughtBy: 'every image is pinned to an explicit tag',
  },
  'an image without a tag': {
    file: 'compose',
    edit: (text) => text.replace(/image: postgres:17\b/, 'image: postgres'),
    caughtBy: 'every image is pinned to an explicit tag',
  },
  'a search attribute left out': {
    file: 'compose',
    edit: (text) => text.replace(/\bregister SluiceStatus\b/, ''),
    caughtBy: "sluice's search attributes are registered before the worker starts",
  },
  'the worker no longer waiting for the search attribute job': {
    file: 'compose',
    edit: inService(SERVICES.worker, /condition: service_completed_successfully/, 'condition: service_started'),
    caughtBy: "sluice's search attributes are registered before the worker starts",
  },
  "Temporal persisting into the destination database": {
    file: 'compose',
    edit: inService(SERVICES.temporal, /POSTGRES_SEEDS: \S+/, `POSTGRES_SEEDS: ${SERVICES.warehouse}`),
    caughtBy: 'every service of the deployment is there, on the right image',
  },
  'a PostgreSQL data directory on an anonymous volume': {
    file: 'compose',
    edit: (text) => text.replace(/- warehouse-data:\/var\/lib\/postgresql\/data/, '- /var/lib/postgresql/data'),
    caughtBy: 'both PostgreSQL data directories are named volumes',
  },
  'a shell variable compose would substitute': {
    file: 'compose',
    edit: (text) => text.replace('$$tries', '$tries'),
    caughtBy: 'every ${VARIABLE} has a default and shell variables are escaped as $$',
  },
  'npm install instead of npm ci': {
    file: 'dockerfile',
    edit: (text) => text.replace(/\bnpm ci --omit/, 'npm install --omit'),
    caughtBy: 'the Dockerfile installs production dependencies with npm ci, package.json first',
  },
  'another CMD': {
    file: 'dockerfile',
    edit: (text) => text.replace(/CMD \[.*\]/, 'CMD ["npm", "start"]'),
    caughtBy: 'the image runs `npm run worker` as the user node',
  },
  'npm scripts under dash again': {
    file: 'dockerfile',
    edit: (text) => text.replace(/^\s*NPM_CONFIG_SCRIPT_SHELL=\S+ \\\n/m, ''),
    caughtBy: 'the image runs `npm run worker` as the user node',
  },
  'running as root': {
    file: 'dockerfile',
    edit: (text) => text.replace(/^USER node$/m, ''),
    caughtBy: 'the image runs `npm run worker` as the user node',
  },
  'another default task queue': {
    file: 'dockerfile',
    edit: (text) => text.replace(/SLUICE_TASK_QUEUE=sluice\b/, 'SLUICE_TASK_QUEUE=etl'),
    caughtBy: 'the image defaults SLUICE_TASK_QUEUE to sluice and ships the workflow bundle it names',
  },
};

describe('deployment checks catch careless edits', () => {
  for (const [what, { file, edit, caughtBy }] of Object.entries(mutations)) {
    test(`${what} -> "${caughtBy}" fails`, () => {
      const composeText = readFileSync(COMPOSE_FILE, 'utf8');
      const dockerfileText = readFileSync(DOCKERFILE, 'utf8');
      const original = file === 'compose' ? composeText : dockerfileText;
      const edited = edit(original);
      assert.notEqual(edited, original, 'the edit applies to the current file (update this mutation if the file changed)');
      const mutated = file === 'compose' ? loadDeployment(edited, dockerfileText) : loadDeployment(composeText, edited);
      assert.throws(() => checks[caughtBy](mutated), assert.AssertionError);
    });
  }
});
