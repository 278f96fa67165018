/**
 * npm run bench:lifecycle [-- --jobs 50 --long 200 --short 10] — what a job's lifecycle costs around
 * the work itself, with a real API, worker, Redis and sandbox and the scripted model on loopback, all
 * in one run:
 *   1. Sequential one-execution jobs (model → code → model): submit → terminal, p50 and p95, timed by
 *      the client from the POST to the terminal `status` event on the job's event stream.
 *   2. Finish overhead: `finishedAt − startedAt` minus the steps' own `durationMs`, p50 and p95: what
 *      the worker spends besides calling the model and running the code (marking, recording, the
 *      verdict). Target: p50 ≤ 10 ms.
 *   3. Redis bytes written per step (INFO stats total_net_input_bytes on a Redis only this run uses,
 *      over the job's run, divided by its steps) for a long job against a short one: a store whose
 *      per-step work grows with the job's length shows it here. Target: long within 1.5× of short.
 * With REDIS_URL unset it starts a throwaway Redis container (REDIS_IMAGE) on a free loopback port and
 * removes it at the end; every key lives under one random prefix, removed at the end too.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { startApi } from '../services/api/src/api-service';
import { loadConfig } from '../services/shared/src/config';
import type { JobView } from '../services/shared/src/job-schema';
import { createLogger } from '../services/shared/src/logger';
import { startWorker } from '../services/worker/src/worker-service';
import { removeSandboxesOf, sandboxImage } from '../test/support/docker';
import { codeCall, startModelServer, type ScriptedReply } from '../test/support/model-server';
import { startRedisContainer, type RedisContainer } from '../test/support/redis-container';
import { readSse } from '../test/support/sse';
import { cleanUp, deleteKeys } from './script-support';

const { values: args } = parseArgs({
  options: {
    jobs: { type: 'string', default: '50' },
    long: { type: 'string', default: '200' },
    short: { type: 'string', default: '10' },
  },
});
const JOBS = Number(args.jobs);
const LONG = Number(args.long);
const SHORT = Number(args.short);
const WARMUP = 5;
const PREFIX = `bench-${randomBytes(4).toString('hex')}`;
const ARTIFACT_ROOT = '/var/tmp/maestro-bench-artifacts';
const TARGET_FINISH_MS = 10;
const TARGET_STEP_BYTES_RATIO = 1.5;

function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((x, y) => x - y);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}
const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');

/** A task's replies: `calls` code_executor turns, then an answer. */
function replies(task: string): ScriptedReply[] {
  const m = /^steps (\d+)/.exec(task);
  const calls = m ? Number(m[1]) : 1;
  return [...Array.from({ length: calls }, (_, i) => codeCall(`x = ${i}`)), { text: 'done' }];
}

async function netInputBytes(redis: Redis): Promise<number> {
  return Number(/^total_net_input_bytes:(\d+)/m.exec(await redis.info('stats'))?.[1] ?? NaN);
}

async function main(): Promise<void> {
  let container: RedisContainer | undefined;
  let redisUrl = process.env.REDIS_URL ?? '';
  if (redisUrl === '') {
    container = await startRedisContainer({ role: 'bench-redis' });
    redisUrl = container.url;
  }
  const model = await startModelServer((req) => {
    const list = replies(req.task);
    return list[Math.min(req.step, list.length - 1)] as ScriptedReply;
  });
  const config = loadConfig({
    REDIS_URL: redisUrl,
    MAESTRO_PREFIX: PREFIX,
    PORT: '0',
    OPENAI_API_KEY: 'sk-bench',
    OPENAI_BASE_URL: model.openaiBaseUrl,
    PROVIDER_MAX_RETRIES: '0',
    SANDBOX_IMAGE: sandboxImage(),
    SANDBOX_POOL_SIZE: '2',
    WORKER_CONCURRENCY: '1',
    RATE_LIMIT_PER_MINUTE: '0',
    JOB_MAX_STEPS_LIMIT: String(Math.max(LONG, SHORT) + 1),
    ARTIFACT_DIR: ARTIFACT_ROOT,
    LOG_LEVEL: 'warn',
  });
  const logger = createLogger({ level: 'warn', service: 'bench' });
  const api = await startApi(config, { logger });
  const worker = await startWorker(config, { logger });
  const redis = new Redis(redisUrl);
  try {
    /** Runs one job to its end; the client's time from the POST to the terminal event, and the job. */
    const run = async (task: string, maxSteps: number): Promise<{ ms: number; job: JobView }> => {
      const started = performance.now();
      const res = await fetch(`${api.url}/v1/jobs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ task, maxSteps, tools: ['code_executor'] }),
      });
      if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}`);
      const { id } = (await res.json()) as { id: string };
      // The stream ends right after the job's terminal status event.
      await readSse(`${api.url}/v1/jobs/${id}/events`, { timeoutMs: 600_000 });
      const ms = performance.now() - started;
      const job = (await (await fetch(`${api.url}/v1/jobs/${id}`)).json()) as JobView;
      if (job.status !== 'succeeded') throw new Error(`job ${id} ended ${job.status}: ${JSON.stringify(job.error)}`);
      return { ms, job };
    };

    for (let i = 0; i < WARMUP; i++) await run(`warm-up ${i}`, 5);
    const total: number[] = [];
    const overhead: number[] = [];
    for (let i = 0; i < JOBS; i++) {
      const { ms, job } = await run(`one execution ${i}`, 5);
      total.push(ms);
      const span = Date.parse(job.finishedAt as string) - Date.parse(job.startedAt as string);
      overhead.push(span - job.steps.reduce((sum, s) => sum + s.durationMs, 0));
    }

    const perStep = async (calls: number): Promise<number> => {
      const before = await netInputBytes(redis);
      const { job } = await run(`steps ${calls}`, calls + 1);
      return ((await netInputBytes(redis)) - before) / job.steps.length;
    };
    const short = await perStep(SHORT);
    const long = await perStep(LONG);

    const finishP50 = pct(overhead, 50);
    console.log(`\nbench:lifecycle — ${JOBS} sequential one-execution jobs (after ${WARMUP} warm-up), then one ${SHORT}- and one ${LONG}-call job\n`);
    console.log(`submit → terminal       p50 ${fmt(pct(total, 50))} ms   p95 ${fmt(pct(total, 95))} ms`);
    console.log(
      `finish overhead         p50 ${fmt(finishP50)} ms   p95 ${fmt(pct(overhead, 95))} ms   (target p50 ≤ ${TARGET_FINISH_MS} ms: ${finishP50 <= TARGET_FINISH_MS ? 'met' : 'NOT met'})`,
    );
    const ratio = long / short;
    console.log(
      `Redis bytes per step    ${SHORT} calls: ${fmt(short, 0)} B   ${LONG} calls: ${fmt(long, 0)} B   ratio ${fmt(ratio, 2)} (target ≤ ${TARGET_STEP_BYTES_RATIO}: ${ratio <= TARGET_STEP_BYTES_RATIO ? 'met' : 'NOT met'})`,
    );
  } finally {
    await cleanUp({
      worker: () => worker.close(),
      api: () => api.close(),
      sandboxes: () => removeSandboxesOf(`${PREFIX}.`),
      keys: () => deleteKeys(redis, `${PREFIX}:*`),
      redis: () => redis.quit(),
      model: () => model.close(),
      container: () => container?.close(),
      files: () => rm(join(ARTIFACT_ROOT, PREFIX), { recursive: true, force: true }),
    });
  }
}

main().catch((err: unknown) => {
  console.error(`bench:lifecycle failed: ${(err as Error).message}`);
  process.exit(1);
});
