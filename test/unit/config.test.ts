/**
 * Start-up configuration: one start shows every problem, schema errors and the services' own rules
 * across variables alike, one line each, never a secret value.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadApiConfig } from '../../services/api/src/api-config';
import { ConfigError, loadConfig, parseEnv } from '../../services/shared/src/config';
import { loadWorkerConfig } from '../../services/worker/src/worker-config';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { runServiceProcess } from '../support/service-process';

function problemsOf(load: () => unknown): string[] {
  try {
    load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message.split('\n');
  }
  throw new Error('expected a ConfigError');
}

async function workerProblemsOf(env: Record<string, string>): Promise<string[]> {
  try {
    await loadWorkerConfig(parseEnv(env), { mountInfo: '' });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message.split('\n');
  }
  throw new Error('expected a ConfigError');
}

describe('the API configuration', () => {
  test('a bad value and a missing companion variable are reported together, in one ConfigError', () => {
    let error: unknown;
    try {
      loadApiConfig({ RATE_LIMIT_PER_MINUTE: 'abc', AUTH_MODE: 'api-key' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message.split('\n')).toEqual([
      'invalid RATE_LIMIT_PER_MINUTE: must be a whole number from 0 to 1000000',
      'AUTH_MODE=api-key needs API_KEYS (comma-separated keys, or name:key pairs)',
    ]);
  });

  test('every problem gets its line: schema errors, each bad key, ALLOWED_HOSTS and the Redis files; no key is echoed', () => {
    const shortKey = 'bobs-short-key-123';
    const longKey = 'k'.repeat(40);
    const lines = problemsOf(() =>
      loadApiConfig({
        PORT: 'http',
        BODY_LIMIT_KB: '0',
        AUTH_MODE: 'api-key',
        API_KEYS: `alice:${longKey},bob:${shortKey},carol:${longKey}`,
        ALLOWED_HOSTS: 'maestro.lan,https://x.example/,a b',
        REDIS_PASSWORD_FILE: '/nonexistent/maestro-redis-password',
        REDIS_TLS_CA_FILE: '/nonexistent/ca.pem',
      }),
    );
    expect(lines).toEqual([
      'invalid PORT: must be a whole number from 0 to 65535',
      'invalid BODY_LIMIT_KB: must be a whole number from 1 to 10240',
      expect.stringMatching(/^invalid API_KEYS: entry 2 \(bob\) has a key shorter than 32 characters/),
      'invalid API_KEYS: entries 1 and 3 have the same key; give each entry a key of its own',
      'invalid ALLOWED_HOSTS: entries 2 and 3 are not host names or IP addresses with an optional :port (IPv6 in brackets)',
      'invalid REDIS_PASSWORD_FILE: cannot read the file (ENOENT)',
      'invalid REDIS_TLS_CA_FILE: it needs a rediss:// REDIS_URL',
    ]);
    const message = lines.join('\n');
    expect(message).not.toContain(shortKey);
    expect(message).not.toContain(longKey);
  });

  test('proxy mode: missing or malformed TRUSTED_PROXIES; AUTH_MODE=none on a non-loopback HOST', () => {
    expect(problemsOf(() => loadApiConfig({ AUTH_MODE: 'proxy', LOG_LEVEL: 'loud' }))).toEqual([
      expect.stringMatching(/^invalid LOG_LEVEL: /),
      'AUTH_MODE=proxy needs TRUSTED_PROXIES (addresses or CIDRs of the authenticating proxy)',
    ]);
    expect(problemsOf(() => loadApiConfig({ AUTH_MODE: 'proxy', TRUSTED_PROXIES: '10.0.0.2,proxy.lan,10.0.0.0/33' }))).toEqual([
      'invalid TRUSTED_PROXIES: entries 2 and 3 are not IP addresses or CIDR ranges, nor loopback, linklocal or uniquelocal',
    ]);
    expect(problemsOf(() => loadApiConfig({ HOST: '0.0.0.0', SSE_HEARTBEAT_MS: '5' }))).toEqual([
      'invalid SSE_HEARTBEAT_MS: must be a whole number from 100 to 300000',
      expect.stringMatching(/^AUTH_MODE=none refuses to serve on non-loopback HOST 0\.0\.0\.0: /),
    ]);
  });

  test('a rule is skipped when a variable it reads did not parse: only what the operator wrote is judged', () => {
    // AUTH_MODE misspelt: its line says so, and no rule about api-key or none is guessed at.
    expect(problemsOf(() => loadApiConfig({ AUTH_MODE: 'apikey', HOST: '0.0.0.0' }))).toEqual([
      'invalid AUTH_MODE: Invalid option: expected one of "none"|"api-key"|"proxy"',
    ]);
  });

  test('a good environment loads, with the defaults; the schema alone stays available as loadConfig', () => {
    const key = 'a'.repeat(64);
    const config = loadApiConfig({ AUTH_MODE: 'api-key', API_KEYS: `alice:${key}`, RATE_LIMIT_PER_MINUTE: ' 60 ', ALLOWED_HOSTS: '' });
    expect(config).toMatchObject({ AUTH_MODE: 'api-key', API_KEYS: [`alice:${key}`], RATE_LIMIT_PER_MINUTE: 60, PORT: 3000, ALLOWED_HOSTS: [] });
    expect(loadConfig({ AUTH_MODE: 'api-key' }).AUTH_MODE).toBe('api-key');
  });
});

describe('the worker configuration', () => {
  let dir = '';

  beforeAll(async () => {
    // Not under /tmp, which the worker refuses as an allowed dir.
    dir = await makeAllowedDir('config-unit');
    await writeFile(join(dir, 'empty'), '');
  });

  afterAll(async () => {
    if (dir) await removeAllowedDir(dir);
  });

  test('schema errors, DOCKER_HOST, the Redis password file and ALLOWED_DIRS, all in one ConfigError', async () => {
    const lines = await workerProblemsOf({
      SANDBOX_CPUS: 'two',
      WORKER_CONCURRENCY: '0',
      DOCKER_HOST: 'ssh://me@engine',
      REDIS_PASSWORD_FILE: join(dir, 'empty'),
      ALLOWED_DIRS: '/etc',
    });
    expect(lines).toEqual([
      'invalid SANDBOX_CPUS: must be a number from 0.05 to 64',
      'invalid WORKER_CONCURRENCY: must be a whole number from 1 to 256',
      'invalid DOCKER_HOST: must be unix:///path/to/docker.sock or tcp://host:port',
      'invalid REDIS_PASSWORD_FILE: the file is empty',
      expect.stringMatching(/^invalid ALLOWED_DIRS: "\/etc" is \/etc /),
    ]);
  });

  test('a good environment gives the config and the validated allowed dirs', async () => {
    const { config, allowedDirs } = await loadWorkerConfig(parseEnv({ ALLOWED_DIRS: dir, DOCKER_HOST: 'unix:///var/run/docker.sock' }), { mountInfo: '' });
    expect(config.DOCKER_HOST).toBe('unix:///var/run/docker.sock');
    expect(allowedDirs.dirs).toHaveLength(1);
  });
});

describe('the entry point', () => {
  /** Runs the API's main.ts as `npm start` would (from source), with only the given variables. */
  const startApiProcess = (env: Record<string, string>) =>
    runServiceProcess('api', { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env });

  test('the API exits 1 before connecting, with every problem on stderr, one "maestro api:" line each', async () => {
    // Nothing listens on port 1: had the checks not come first, the API would wait on Redis.
    const { code, stdout, stderr } = await startApiProcess({ RATE_LIMIT_PER_MINUTE: 'abc', AUTH_MODE: 'api-key', REDIS_URL: 'redis://127.0.0.1:1' });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toBe(
      'maestro api: invalid RATE_LIMIT_PER_MINUTE: must be a whole number from 0 to 1000000\n' +
        'maestro api: AUTH_MODE=api-key needs API_KEYS (comma-separated keys, or name:key pairs)\n',
    );
  });
});
