/**
 * A real Maestro in the test process: the API on a free loopback port and a worker, wired by the same
 * composition roots as production (startApi/startWorker), against real Redis, real Docker and the
 * scripted model server. Each stack has its own key prefix and removes what it made on close.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import pino from 'pino';
import { startApi, type RunningApi } from '../../services/api/src/api-service';
import { loadConfig, type Config } from '../../services/shared/src/config';
import type { JobView } from '../../services/shared/src/job-schema';
import { REDACT_PATHS } from '../../services/shared/src/logger';
import { redisTargetOptions } from '../../services/shared/src/redis';
import { startWorker, type RunningWorker } from '../../services/worker/src/worker-service';
import { removeSandboxesOf, sandboxImage, TEST_PREFIX } from './docker';
import type { ModelServer } from './model-server';
import { waitFor } from './wait-for';

/** Response bodies in tests: arbitrary JSON that assertions pick apart. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyJson = any;

export const TEST_OPENAI_KEY = 'sk-test-openai-key-0000';
/** Every test stack's artifact store is under here, in a directory of its own prefix (see DirectoryArtifactStore). */
export const TEST_ARTIFACT_ROOT = '/var/tmp/maestro-test-artifacts';
export const TEST_ANTHROPIC_KEY = 'sk-ant-test-key-0000';

export interface Stack {
  config: Config;
  prefix: string;
  api: RunningApi;
  workers: RunningWorker[];
  /** Every log line the stack wrote, as text. */
  logs: string[];
  env: Record<string, string>;
  redis: Redis;
  startWorker(): Promise<RunningWorker>;
  close(): Promise<void>;
}

export function stackEnv(model: ModelServer, prefix: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    MAESTRO_PREFIX: prefix,
    HOST: '127.0.0.1',
    PORT: '0',
    // Metrics listeners on free ports: several stacks share one test process.
    METRICS_PORT: '0',
    WORKER_METRICS_PORT: '0',
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    OPENAI_BASE_URL: model.openaiBaseUrl,
    ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY,
    ANTHROPIC_BASE_URL: model.anthropicBaseUrl,
    PROVIDER_MAX_RETRIES: '0',
    SANDBOX_IMAGE: sandboxImage(),
    SANDBOX_POOL_SIZE: '1',
    WORKER_CONCURRENCY: '2',
    LOG_LEVEL: 'info',
    // Tests poll their jobs every 50 ms, far past a caller's default limit; the limit has its own
    // tests (auth.test.ts), with a limit of their own.
    RATE_LIMIT_PER_MINUTE: '0',
    ARTIFACT_DIR: TEST_ARTIFACT_ROOT,
    ...extra,
  };
}

export async function startStack(
  model: ModelServer,
  opts: { env?: Record<string, string>; workers?: number; prefix?: string } = {},
): Promise<Stack> {
  const prefix = opts.prefix ?? `${TEST_PREFIX}${randomBytes(4).toString('hex')}`;
  const env = stackEnv(model, prefix, opts.env);
  const config = loadConfig(env);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(chunk.toString('utf8'));
      done();
    },
  });
  const logger = pino({ level: config.LOG_LEVEL, redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, sink);
  const redis = new Redis(config.REDIS_URL, redisTargetOptions(config).options);
  redis.on('error', () => undefined); // a test that stops Redis on purpose must not crash the run
  const api = await startApi(config, { logger: logger.child({ service: 'api' }) });
  const workers: RunningWorker[] = [];
  const stack: Stack = {
    config,
    prefix,
    api,
    workers,
    logs,
    env,
    redis,
    async startWorker() {
      const worker = await startWorker(config, { logger: logger.child({ service: 'worker' }) });
      workers.push(worker);
      return worker;
    },
    async close() {
      await Promise.all(workers.map((w) => w.close()));
      await api.close();
      // Every worker of this stack, in-process or a child process a test killed, has an id under its prefix.
      await removeSandboxesOf(`${prefix}.`);
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
        cursor = next;
        if (keys.length > 0) await redis.del(...keys);
      } while (cursor !== '0');
      await redis.quit();
      await rm(join(config.ARTIFACT_DIR, prefix), { recursive: true, force: true });
    },
  };
  for (let i = 0; i < (opts.workers ?? 1); i++) await stack.startWorker();
  return stack;
}

/** Where the helpers below find an API: a stack's, or one in a process of its own. */
export interface ApiAt {
  api: { url: string };
}

/** A small HTTP client for the stack, as a user would call it. */
export async function request(
  stack: ApiAt,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; body: AnyJson }> {
  const res = await fetch(stack.api.url + path, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

export async function submitJob(stack: ApiAt, job: Record<string, unknown>): Promise<JobView> {
  const res = await request(stack, 'POST', '/v1/jobs', job);
  if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}: ${JSON.stringify(res.body)}`);
  return res.body as JobView;
}

export async function getJob(stack: ApiAt, id: string, headers: Record<string, string> = {}): Promise<JobView> {
  const res = await request(stack, 'GET', `/v1/jobs/${id}`, undefined, headers);
  if (res.status !== 200) throw new Error(`GET /v1/jobs/${id} answered ${res.status}`);
  return res.body as JobView;
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export async function waitForJobEnd(
  stack: ApiAt,
  id: string,
  timeoutMs = 30_000,
  headers: Record<string, string> = {},
): Promise<JobView> {
  return waitFor(
    async () => {
      const job = await getJob(stack, id, headers);
      return TERMINAL.has(job.status) ? job : undefined;
    },
    { timeoutMs, what: `job ${id} to end` },
  );
}
