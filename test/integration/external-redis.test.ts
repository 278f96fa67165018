/**
 * The stack on an external Redis that asks for a password, and on one that speaks only TLS with a
 * certificate from a private CA: each a Redis container of its own, each running a whole job.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadConfig } from '../../services/shared/src/config';
import { createApiRedis } from '../../services/shared/src/redis';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

const run = promisify(execFile);
const script: Record<string, ScriptedReply[]> = {
  'external redis': [codeCall('print(6 * 7)'), { text: 'done' }],
};

let model: ModelServer;
let dir: string;
const redises: RedisContainer[] = [];

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  // Under /var/tmp: mounted into the Redis container, which runs as its own user.
  dir = await mkdtemp('/var/tmp/maestro-redis-auth-');
  await chmod(dir, 0o755);
});

afterAll(async () => {
  await Promise.all(redises.map((r) => r.close()));
  await model?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs one job through a stack on the given Redis settings and checks it did what the script says. */
async function jobRunsOn(env: Record<string, string>): Promise<void> {
  let stack: Stack | undefined;
  try {
    stack = await startStack(model, { env: { SANDBOX_POOL_SIZE: '0', ...env } });
    expect((await request(stack, 'GET', '/readyz')).status).toBe(200);
    const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'external redis' })).id);
    expect(job).toMatchObject({ status: 'succeeded', result: { output: 'done' } });
    expect(JSON.stringify(job.steps)).toContain('42');
  } finally {
    await stack?.close();
  }
}

/** PONG, or why a connection made from these settings was refused. */
async function pingWith(env: Record<string, string>): Promise<string> {
  const redis = createApiRedis(loadConfig(env), { maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  // The reason comes as an 'error' event; the rejected call only says the connection closed.
  let reason = '';
  redis.on('error', (err: Error) => (reason ||= err.message));
  try {
    await redis.connect();
    return await redis.ping();
  } catch (err) {
    return `refused: ${reason || (err as Error).message}`;
  } finally {
    redis.disconnect();
  }
}

describe('an external Redis with a password', () => {
  const password = randomBytes(24).toString('hex');
  let redis: RedisContainer;

  beforeAll(async () => {
    redis = await startRedisContainer({ args: ['--requirepass', password], probe: { password } });
    redises.push(redis);
  });

  test('refuses a client without it', async () => {
    expect(await pingWith({ REDIS_URL: redis.url })).toMatch(/^refused: NOAUTH/);
  });

  test('runs a job with the password in REDIS_URL', async () => {
    await jobRunsOn({ REDIS_URL: `redis://:${password}@127.0.0.1:${redis.port}` });
  });

  test('runs a job with the password in REDIS_PASSWORD_FILE', async () => {
    const file = join(dir, 'redis-password');
    await writeFile(file, `${password}\n`, { mode: 0o600 });
    await jobRunsOn({ REDIS_URL: redis.url, REDIS_PASSWORD_FILE: file });
  });
});

describe('an external Redis over TLS with a private CA', () => {
  let redis: RedisContainer;
  let caFile: string;

  beforeAll(async () => {
    const openssl = (...args: string[]) => run('openssl', args, { cwd: dir });
    await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=maestro test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
    await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr');
    await writeFile(join(dir, 'san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
    await openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'san.ext', '-out', 'server.pem');
    // Read by redis-server, which runs as its own user in the container.
    for (const f of ['server.key', 'server.pem', 'ca.pem']) await chmod(join(dir, f), 0o644);
    caFile = join(dir, 'ca.pem');
    redis = await startRedisContainer({
      // TLS only: the plain port is off, and clients need no certificate of their own.
      args: ['--port', '0', '--tls-port', '6379', '--tls-cert-file', '/tls/server.pem', '--tls-key-file', '/tls/server.key', '--tls-ca-cert-file', '/tls/ca.pem', '--tls-auth-clients', 'no'],
      binds: [`${dir}:/tls:ro`],
      probe: { tls: { ca: await readFile(caFile) } },
    });
    redises.push(redis);
  });

  test('refuses a plain-text client, and a TLS client that does not trust the CA', async () => {
    expect(await pingWith({ REDIS_URL: redis.url })).toMatch(/^refused: /);
    expect(await pingWith({ REDIS_URL: `rediss://127.0.0.1:${redis.port}` })).toMatch(/^refused: .*(self[- ]signed|unable to verify|certificate)/i);
  });

  test('runs a job with a rediss:// REDIS_URL and REDIS_TLS_CA_FILE', async () => {
    await jobRunsOn({ REDIS_URL: `rediss://127.0.0.1:${redis.port}`, REDIS_TLS_CA_FILE: caFile });
  });
});
