/**
 * The config schema, docker-compose.yml and .env.example agree: every variable reaches exactly the
 * services whose code reads it (or compose fixes it on purpose, listed below), and .env.example
 * documents each one an operator can set. test/support/config-consistency.ts does the checking.
 */
import path from 'node:path';
import { configSchema } from '../../services/shared/src/config';
import {
  composeEnvironment,
  consistencyProblems,
  readSources,
  type ConsistencyRules,
  type ConsistencySources,
} from '../support/config-consistency';

const ROOT = path.resolve(__dirname, '..', '..');
const SCHEMA_KEYS = Object.keys(configSchema.shape);

/** What compose sets itself, and why; .env.example does not offer these, since setting them would do nothing. */
const RULES: ConsistencyRules = {
  fixed: {
    api: {
      HOST: 'the api listens on every interface of its container; the port is published on the host loopback only',
      PORT: 'the container port that API_PORT is published from',
      ARTIFACT_DIR: 'where the `artifacts` volume is mounted, in the api and the worker alike',
    },
    worker: {
      DOCKER_HOST: 'the socket DOCKER_SOCKET names is mounted at /var/run/docker.sock; the shell’s DOCKER_HOST is for the compose CLI',
      HOST: 'the worker’s metrics listener is on every interface of its container, for Prometheus on the stack’s network; no port is published',
      ARTIFACT_DIR: 'where the `artifacts` volume is mounted, in the api and the worker alike',
    },
  },
};

let sources: ConsistencySources;

beforeAll(async () => {
  sources = await readSources(ROOT, SCHEMA_KEYS);
});

/** `text` without its first line matching `line` after the first line matching `after` (the start by default). */
function without(text: string, line: RegExp, after = /^/): string {
  const lines = text.split('\n');
  const from = lines.findIndex((l) => after.test(l));
  const i = lines.findIndex((l, n) => n > from - (after.source === '^' ? 1 : 0) && line.test(l));
  if (from < 0 || i < 0) throw new Error(`no line matches ${line}`);
  return [...lines.slice(0, i), ...lines.slice(i + 1)].join('\n');
}

test('every schema variable is passed by compose to the services that read it, or fixed on purpose, and documented in .env.example', () => {
  expect(consistencyProblems(sources, RULES)).toEqual([]);
});

test('the reading of the sources is real: both services found, with what each reads', () => {
  expect(composeEnvironment(sources.compose, 'api')?.get('HOST')).toBe('0.0.0.0');
  expect(composeEnvironment(sources.compose, 'worker')?.get('ALLOWED_DIRS')).toBe('${ALLOWED_DIRS:-/srv/maestro/files}');
  // Provider keys reach the worker only; API keys the api only.
  expect([...sources.reads.worker]).toEqual(expect.arrayContaining(['OPENAI_API_KEY', 'ALLOWED_DIRS', 'REDIS_URL']));
  expect([...sources.reads.api]).toEqual(expect.arrayContaining(['API_KEYS', 'SSE_HEARTBEAT_MS', 'REDIS_URL']));
  expect(sources.reads.api.has('OPENAI_API_KEY')).toBe(false);
  expect(sources.reads.worker.has('API_KEYS')).toBe(false);
});

describe('the check fails when a variable goes missing from any of the three', () => {
  test('from the api’s environment in docker-compose.yml', () => {
    const compose = without(sources.compose, /^ {6}SSE_HEARTBEAT_MS: /);
    expect(consistencyProblems({ ...sources, compose }, RULES)).toEqual([
      'the api reads SSE_HEARTBEAT_MS, but docker-compose.yml does not pass it: add `SSE_HEARTBEAT_MS: ${SSE_HEARTBEAT_MS:-}` to its environment',
    ]);
  });

  test('from the worker’s environment, while the api still gets it', () => {
    const compose = without(sources.compose, /^ {6}JOB_MAX_TIMEOUT_SECONDS: /, /^ {2}worker:$/);
    expect(composeEnvironment(compose, 'api')?.has('JOB_MAX_TIMEOUT_SECONDS')).toBe(true);
    expect(consistencyProblems({ ...sources, compose }, RULES)).toEqual([
      'the worker reads JOB_MAX_TIMEOUT_SECONDS, but docker-compose.yml does not pass it: add `JOB_MAX_TIMEOUT_SECONDS: ${JOB_MAX_TIMEOUT_SECONDS:-}` to its environment',
    ]);
  });

  test('from .env.example', () => {
    const envExample = without(sources.envExample, /^# SSE_HEARTBEAT_MS=/);
    expect(consistencyProblems({ ...sources, envExample }, RULES)).toEqual(['.env.example does not document SSE_HEARTBEAT_MS (a "# SSE_HEARTBEAT_MS=default" line)']);
  });

  test('from the config schema, while compose and .env.example still name it', () => {
    const schemaKeys = SCHEMA_KEYS.filter((k) => k !== 'CALLER_MAX_EVENT_STREAMS');
    expect(consistencyProblems({ ...sources, schemaKeys }, RULES)).toEqual([
      'docker-compose.yml passes CALLER_MAX_EVENT_STREAMS to the api, but the config schema has no such variable',
    ]);
  });

  test('a variable passed under another name, to a service that does not read it, or a fixed one made settable', () => {
    const renamed = sources.compose.replace('ALLOWED_DIRS: ${ALLOWED_DIRS:-/srv/maestro/files}', 'ALLOWED_DIRS: ${ALLOWED_DIR:-/srv/maestro/files}');
    expect(consistencyProblems({ ...sources, compose: renamed }, RULES)).toEqual([
      expect.stringMatching(/^docker-compose.yml sets ALLOWED_DIRS for the worker to "\$\{ALLOWED_DIR:-\/srv\/maestro\/files\}" instead of passing/),
    ]);

    const leaky = sources.compose.replace('      API_KEYS: ${API_KEYS:-}\n', '      API_KEYS: ${API_KEYS:-}\n      OPENAI_API_KEY: ${OPENAI_API_KEY:-}\n');
    expect(consistencyProblems({ ...sources, compose: leaky }, RULES)).toEqual(['docker-compose.yml passes OPENAI_API_KEY to the api, whose code never reads it']);

    const envExample = `${sources.envExample}\n# DOCKER_HOST=unix:///run/user/1000/docker.sock\n`;
    expect(consistencyProblems({ ...sources, envExample }, RULES)).toEqual([
      '.env.example offers DOCKER_HOST, which docker-compose.yml fixes: setting it would do nothing',
    ]);

    const stale = `${sources.envExample}\nALLOWED_DIR=\n`;
    expect(consistencyProblems({ ...sources, envExample: stale }, RULES)).toEqual([
      '.env.example documents ALLOWED_DIR, which neither the config schema nor a compose file reads',
    ]);
  });

  test('a variable a service starts to read, which compose does not pass yet', () => {
    const reads = { ...sources.reads, worker: new Set([...sources.reads.worker, 'RATE_LIMIT_PER_MINUTE']) };
    expect(consistencyProblems({ ...sources, reads }, RULES)).toEqual([
      'the worker reads RATE_LIMIT_PER_MINUTE, but docker-compose.yml does not pass it: add `RATE_LIMIT_PER_MINUTE: ${RATE_LIMIT_PER_MINUTE:-}` to its environment',
    ]);
  });
});
