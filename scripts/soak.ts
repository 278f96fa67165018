/**
 * npm run soak [-- --jobs 10000 --batch 1000 --concurrency 8] — does the worker's memory settle under
 * a long run? Runs `jobs` one-execution jobs (model → code → model, the scripted model on loopback)
 * through a real API (a child process), a real worker (this process, so that its heap can be read
 * after a forced GC) and a real Redis and sandbox, `concurrency` at a time. After every batch it
 * forces a GC and prints the worker process's heap and RSS; at the end it compares the heap after
 * the last batch with the heap after the first: within 20% is the target. The heap also holds the
 * scripted model server (whose log of requests is emptied before each reading) and this client.
 * Not a CI test: about 20 minutes for 10,000 jobs on two cores.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { loadConfig } from '../services/shared/src/config';
import { createLogger } from '../services/shared/src/logger';
import { startWorker } from '../services/worker/src/worker-service';
import { removeSandboxesOf, sandboxImage } from '../test/support/docker';
import { codeCall, startModelServer } from '../test/support/model-server';
import { freePort } from '../test/support/ports';
import { startRedisContainer, type RedisContainer } from '../test/support/redis-container';
import { cleanUp, deleteKeys } from './script-support';

const { values: args } = parseArgs({
  options: {
    jobs: { type: 'string', default: '10000' },
    batch: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '8' },
  },
});
const JOBS = Number(args.jobs);
const BATCH = Number(args.batch);
const CONCURRENCY = Number(args.concurrency);
const PREFIX = `soak-${randomBytes(4).toString('hex')}`;
const ARTIFACT_ROOT = '/var/tmp/maestro-soak-artifacts';
const ROOT = resolve(__dirname, '..');
const TARGET_HEAP_GROWTH = 0.2;
const MIB = 1024 * 1024;

const gc = (globalThis as { gc?: () => void }).gc;

function memory(): { heap: number; rss: number } {
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, rss: m.rss };
}

async function main(): Promise<void> {
  if (!gc) throw new Error('run with node --expose-gc (npm run soak does)');
  let container: RedisContainer | undefined;
  let redisUrl = process.env.REDIS_URL ?? '';
  if (redisUrl === '') {
    container = await startRedisContainer({ role: 'soak-redis' });
    redisUrl = container.url;
  }
  const model = await startModelServer((req) => (req.step === 0 ? codeCall('print(sum(range(1000)))') : { text: 'done' }));
  const port = await freePort();
  const env: Record<string, string> = {
    REDIS_URL: redisUrl,
    MAESTRO_PREFIX: PREFIX,
    HOST: '127.0.0.1',
    PORT: String(port),
    OPENAI_API_KEY: 'sk-soak',
    OPENAI_BASE_URL: model.openaiBaseUrl,
    PROVIDER_MAX_RETRIES: '0',
    SANDBOX_IMAGE: sandboxImage(),
    SANDBOX_POOL_SIZE: '4',
    WORKER_CONCURRENCY: String(CONCURRENCY),
    RATE_LIMIT_PER_MINUTE: '0',
    CALLER_MAX_ACTIVE_JOBS: String(CONCURRENCY * 4),
    ARTIFACT_DIR: ARTIFACT_ROOT,
    LOG_LEVEL: 'warn',
  };
  const api = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'services', 'api', 'src', 'main.ts')], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const apiUrl = `http://127.0.0.1:${port}`;
  for (let tries = 0; !(await fetch(`${apiUrl}/healthz`).then((r) => r.ok, () => false)); tries++) {
    if (tries > 300 || api.exitCode !== null) throw new Error('the API did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  const config = loadConfig(env);
  const worker = await startWorker(config, { logger: createLogger({ level: 'warn', service: 'worker' }) });
  const redis = new Redis(redisUrl);

  const runJob = async (n: number): Promise<void> => {
    for (;;) {
      const res = await fetch(`${apiUrl}/v1/jobs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ task: `soak ${n}`, tools: ['code_executor'] }),
      });
      if (res.status === 429) {
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}`);
      const { id } = (await res.json()) as { id: string };
      for (;;) {
        const job = (await (await fetch(`${apiUrl}/v1/jobs/${id}`)).json()) as { status: string };
        if (job.status === 'succeeded') return;
        if (job.status === 'failed' || job.status === 'cancelled') throw new Error(`job ${id} ended ${job.status}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };

  // Ctrl-C (or SIGTERM) ends the run after the jobs in flight, and still cleans up.
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      stopping = true;
      console.error('soak: stopping after the jobs in flight, then cleaning up');
    });
  }
  const rows: { jobs: number; heap: number; rss: number; seconds: number }[] = [];
  const started = Date.now();
  try {
    let next = 0;
    while (next < JOBS && !stopping) {
      const end = Math.min(JOBS, next + BATCH);
      const lanes = Array.from({ length: CONCURRENCY }, async () => {
        while (next < end && !stopping) await runJob(next++);
      });
      await Promise.all(lanes);
      // The scripted model keeps every request it saw, for tests: not the worker's memory.
      model.requests.length = 0;
      const m = memory();
      rows.push({ jobs: next, ...m, seconds: (Date.now() - started) / 1000 });
      console.log(`${String(next).padStart(6)} jobs  heap ${(m.heap / MIB).toFixed(1)} MiB  rss ${(m.rss / MIB).toFixed(1)} MiB  ${((Date.now() - started) / 1000).toFixed(0)} s`);
    }
    const first = rows[0];
    const last = rows.at(-1);
    if (first && last) {
      const growth = last.heap / first.heap - 1;
      console.log(
        `\nsoak: ${JOBS} jobs in ${last.seconds.toFixed(0)} s (${(JOBS / last.seconds).toFixed(1)} jobs/s); worker heap after GC ${(first.heap / MIB).toFixed(1)} MiB after ${first.jobs} jobs, ${(last.heap / MIB).toFixed(1)} MiB at the end: ${(growth * 100).toFixed(1)}% (target ≤ ${TARGET_HEAP_GROWTH * 100}%: ${growth <= TARGET_HEAP_GROWTH ? 'met' : 'NOT met'})`,
      );
    }
  } finally {
    await cleanUp({
      worker: () => worker.close(),
      api: async () => {
        api.kill('SIGTERM');
        if (api.exitCode === null) await once(api, 'exit');
      },
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
  console.error(`soak failed: ${(err as Error).message}`);
  process.exit(1);
});
