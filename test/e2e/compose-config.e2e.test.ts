/**
 * End to end: a bad setting under `docker compose up`, as an operator meets it. The api refuses to
 * start, and the foreground `docker compose up` shows every problem of that start, each on a line
 * of its own behind the api's name, instead of a container that only ever turns out "unhealthy";
 * `docker compose logs api` shows the same lines afterwards. Runs docker-compose.yml under a project
 * name, key prefix, loopback port and --env-file of its own; afterAll takes it down with its volumes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../support/ports';
import { composeEnv, dockerCli, ROOT } from './compose-cli';

const RUN_ID = randomBytes(4).toString('hex');
const PROJECT = `maestro-e2e-config-${RUN_ID}`;
const IMAGE = 'maestro:e2e';

/** What the api prints for RATE_LIMIT_PER_MINUTE=abc with AUTH_MODE=api-key and no API_KEYS: one start, two problems. */
const PROBLEMS = [
  'maestro api: invalid RATE_LIMIT_PER_MINUTE: must be a whole number from 0 to 1000000',
  'maestro api: AUTH_MODE=api-key needs API_KEYS (comma-separated keys, or name:key pairs)',
];
const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Both lines, one after the other, each behind the api container's log prefix (`api-1  | `). */
const BOTH_LINES = new RegExp(PROBLEMS.map((line) => `^api[-_]1 *\\| ${escape(line)}\\r?$`).join('\\n'), 'm');

let dir = '';
let envFile = '';
let foreground: ChildProcess | undefined;

function composeArgs(args: string[]): string[] {
  return ['compose', '-p', PROJECT, '--env-file', envFile, '-f', 'docker-compose.yml', ...args];
}

async function compose(args: string[]): Promise<string> {
  return dockerCli(composeArgs(args));
}

const docker = (args: string[]): Promise<string> => dockerCli(args);

/** Text without ANSI escape sequences (colours, line clears). */
function stripEscapes(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}

/**
 * Resolves with everything `child` printed (stdout and stderr) once it matches `pattern`; rejects,
 * quoting the output's tail, when the child exits first or `timeoutMs` passes.
 */
function outputMatching(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    let output = '';
    const done = (err?: Error): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolvePromise(output);
    };
    const onData = (chunk: Buffer): void => {
      // Compose clears its progress lines with terminal escapes (ESC[2K) even without a terminal and
      // with --no-color; the operator's terminal shows the text without them.
      output += stripEscapes(chunk.toString('utf8'));
      if (pattern.test(output)) done();
    };
    const onExit = (code: number | null): void => {
      done(new Error(`docker compose up exited (${code}) before printing ${pattern}; it printed:\n${output.slice(-4000)}`));
    };
    const timer = setTimeout(() => done(new Error(`no ${pattern} within ${timeoutMs} ms; docker compose up printed:\n${output.slice(-4000)}`)), timeoutMs);
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Stops the foreground compose as Ctrl-C would, then for good if it lingers. */
async function stopForeground(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  child.kill('SIGINT');
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'maestro-e2e-config-'));
  envFile = join(dir, 'compose.env');
  const vars: Record<string, string> = {
    API_PORT: String(await freePort()),
    MAESTRO_PREFIX: `e2ec${RUN_ID}`,
    MAESTRO_IMAGE: IMAGE,
    // Two mistakes at once: a value the schema refuses, and a mode whose companion variable is missing.
    RATE_LIMIT_PER_MINUTE: 'abc',
    AUTH_MODE: 'api-key',
  };
  await writeFile(envFile, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(''));
  // Built every time, so the image runs this checkout's code; with BuildKit's cache (which the other
  // e2e file's build shares) an unchanged tree takes seconds. The worker is the service that builds
  // the Maestro image; the api runs it.
  const started = Date.now();
  await compose(['build', 'worker']);
  console.log(`e2e config: ${IMAGE} built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}, 900_000);

afterAll(async () => {
  if (foreground) await stopForeground(foreground);
  if (envFile) await compose(['down', '-v', '--remove-orphans', '--timeout', '5']).catch((err: unknown) => console.error(err));
  // This run's build, by the label compose put on it (the build cache stays).
  const images = (await docker(['images', '-q', '--filter', `label=com.docker.compose.project=${PROJECT}`]).catch(() => '')).split('\n').filter(Boolean);
  if (images.length > 0) await docker(['rmi', '-f', ...new Set(images)]).catch((err: unknown) => console.error(err));
  if (dir) await rm(dir, { recursive: true, force: true });
}, 120_000);

test('with two bad settings, the foreground `docker compose up` shows both, behind the api’s name, and so does `docker compose logs api`', async () => {
  // In the foreground, as an operator starting the stack for the first time would. Only the api and
  // what it depends on (the secrets service and Redis); its log is attached.
  foreground = spawn('docker', composeArgs(['up', '--no-build', '--no-color', 'api']), {
    cwd: ROOT,
    env: composeEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = await outputMatching(foreground, BOTH_LINES, 150_000);
  expect(output).toMatch(BOTH_LINES);
  // No start of the API got as far as listening.
  expect(output).not.toMatch(/listening on/);

  // What the operator of a detached stack is told to run.
  const logs = stripEscapes(await compose(['logs', '--no-color', 'api']));
  expect(logs).toMatch(BOTH_LINES);

  await stopForeground(foreground);
}, 240_000);
