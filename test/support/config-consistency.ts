/**
 * Do the config schema, docker-compose.yml and .env.example agree? Every variable of the schema must
 * reach exactly the compose services whose code reads it, passed through from the operator's
 * environment under its own name, unless compose fixes it on purpose; .env.example must document
 * every variable an operator can set, and nothing that no one reads. Used by
 * test/unit/config-consistency.test.ts, which also proves it fails on broken copies of the sources.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse } from 'yaml';

/** The compose services that run Maestro's own code, configured by the schema. */
export const SERVICES = ['api', 'worker'] as const;
export type Service = (typeof SERVICES)[number];

export interface ConsistencySources {
  /** The config schema's variables. */
  schemaKeys: readonly string[];
  /** docker-compose.yml. */
  compose: string;
  /** Other compose files shipped with it (compose.proxy.yml): the variables they interpolate are documented too. */
  otherComposeFiles: readonly string[];
  /** .env.example. */
  envExample: string;
  /** The schema variables each service's code reads. */
  reads: Record<Service, ReadonlySet<string>>;
}

export interface ConsistencyRules {
  /** Variables compose sets to a literal value for a service on purpose, each with why; .env.example must not offer them. */
  fixed: Record<Service, Readonly<Record<string, string>>>;
}

/** `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`: the value the operator gives NAME, passed through. */
function passesThrough(name: string, value: string): boolean {
  return new RegExp(`^\\$\\{${name}(:?[-?][^}]*)?\\}$`).test(value);
}

/** Every variable a compose file interpolates (`${NAME…}`, not the escaped `$${NAME}`). */
export function interpolatedNames(composeText: string): Set<string> {
  return new Set([...composeText.matchAll(/(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1] as string));
}

/** A service's `environment:` in a compose file, as name → value, whether written as a map or a list. */
export function composeEnvironment(composeText: string, service: string): Map<string, string> | undefined {
  const doc = parse(composeText, { merge: true }) as { services?: Record<string, { environment?: unknown }> } | null;
  const env = doc?.services?.[service]?.environment;
  if (env === undefined || env === null) return undefined;
  const out = new Map<string, string>();
  if (Array.isArray(env)) {
    for (const item of env as unknown[]) {
      const [name, ...rest] = String(item).split('=');
      out.set(name as string, rest.join('='));
    }
  } else {
    for (const [name, value] of Object.entries(env as Record<string, unknown>)) out.set(name, value === null ? '' : String(value));
  }
  return out;
}

/** The variables .env.example offers: `NAME=` and commented `# NAME=` lines. */
export function envExampleNames(text: string): Set<string> {
  return new Set([...text.matchAll(/^(?:# ?)?([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1] as string));
}

/** Every way the three sources disagree, one line each; empty when they agree. */
export function consistencyProblems(src: ConsistencySources, rules: ConsistencyRules): string[] {
  const problems: string[] = [];
  const schema = new Set(src.schemaKeys);
  const passedSomewhere = new Set<string>();

  for (const service of SERVICES) {
    const env = composeEnvironment(src.compose, service);
    if (env === undefined) {
      problems.push(`docker-compose.yml: the ${service} service has no environment`);
      continue;
    }
    const fixed = rules.fixed[service];
    for (const [name, value] of env) {
      if (!schema.has(name)) {
        problems.push(`docker-compose.yml passes ${name} to the ${service}, but the config schema has no such variable`);
        continue;
      }
      if (!src.reads[service].has(name)) problems.push(`docker-compose.yml passes ${name} to the ${service}, whose code never reads it`);
      if (name in fixed) {
        if (value.includes('${')) problems.push(`docker-compose.yml should fix ${name} for the ${service} (${fixed[name]}), but takes it from the environment`);
      } else if (passesThrough(name, value)) {
        passedSomewhere.add(name);
      } else {
        problems.push(
          `docker-compose.yml sets ${name} for the ${service} to "${value}" instead of passing \${${name}} through: pass it, or list it in the test as fixed on purpose`,
        );
      }
    }
    for (const name of src.reads[service]) {
      if (schema.has(name) && !env.has(name) && !(name in fixed)) {
        problems.push(`the ${service} reads ${name}, but docker-compose.yml does not pass it: add \`${name}: \${${name}:-}\` to its environment`);
      }
    }
    for (const name of Object.keys(fixed)) {
      if (!env.has(name)) problems.push(`${name} is listed as fixed for the ${service}, but docker-compose.yml does not set it`);
    }
  }

  const documented = envExampleNames(src.envExample);
  const composeNames = new Set([src.compose, ...src.otherComposeFiles].flatMap((text) => [...interpolatedNames(text)]));
  for (const name of src.schemaKeys) {
    if (!SERVICES.some((service) => src.reads[service].has(name))) problems.push(`${name} is in the config schema, but neither the api nor the worker reads it`);
    if (passedSomewhere.has(name) && !documented.has(name)) problems.push(`.env.example does not document ${name} (a "# ${name}=default" line)`);
    const fixedEverywhere = SERVICES.some((s) => name in rules.fixed[s]) && !passedSomewhere.has(name);
    if (fixedEverywhere && documented.has(name)) problems.push(`.env.example offers ${name}, which docker-compose.yml fixes: setting it would do nothing`);
  }
  for (const name of documented) {
    if (!schema.has(name) && !composeNames.has(name)) problems.push(`.env.example documents ${name}, which neither the config schema nor a compose file reads`);
  }
  return problems;
}

async function tsFilesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => path.join(e.parentPath, e.name));
}

/**
 * The schema variables a directory's code reads: property accesses (`config.NAME`, `target.NAME`),
 * the way every service reads its validated config.
 */
export async function readsIn(dirs: readonly string[], schemaKeys: readonly string[]): Promise<Set<string>> {
  const text = (await Promise.all(dirs.map(async (dir) => Promise.all((await tsFilesUnder(dir)).map((f) => readFile(f, 'utf8')))))).flat().join('\n');
  // An identifier before the dot: `'*.OPENAI_API_KEY'` (a logger's redaction path) reads nothing.
  return new Set(schemaKeys.filter((name) => new RegExp(`[\\w$)\\]]\\??\\.${name}\\b`).test(text)));
}

/** The sources as they are in the checkout at `root`; shared code counts as read by both services. */
export async function readSources(root: string, schemaKeys: readonly string[]): Promise<ConsistencySources> {
  const services = path.join(root, 'services');
  const shared = path.join(services, 'shared', 'src');
  return {
    schemaKeys,
    compose: await readFile(path.join(root, 'docker-compose.yml'), 'utf8'),
    otherComposeFiles: [await readFile(path.join(root, 'compose.proxy.yml'), 'utf8')],
    envExample: await readFile(path.join(root, '.env.example'), 'utf8'),
    reads: {
      api: await readsIn([path.join(services, 'api', 'src'), shared], schemaKeys),
      worker: await readsIn([path.join(services, 'worker', 'src'), shared], schemaKeys),
    },
  };
}
