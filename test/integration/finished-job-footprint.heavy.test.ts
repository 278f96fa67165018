/**
 * Redis holds live work, not history: a finished job leaves a small hash (and its place in a few
 * sorted sets) in Redis, its record going to the artifact store beside its files. 2,000 finished
 * one-execution jobs, each with an artifact, grow a Redis of the test's own by at most 2 KiB each, and
 * every one of them is still served whole: GET with its steps, result and artifacts, the list, the
 * artifact's bytes.
 */
import type { Redis } from 'ioredis';
import type { JobView } from '../../services/shared/src/job-schema';
import { codeCall, startModelServer, type ModelServer } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { getJob, request, startStack, submitJob, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const JOBS = 2000;
const WARM_UP = 20;
/** What a finished job may cost Redis. */
const BYTES_PER_JOB = 2048;
/** Requests the test keeps in flight at once. */
const PARALLEL = 16;

let redis: RedisContainer;
let model: ModelServer;
let stack: Stack;

beforeAll(async () => {
  redis = await startRedisContainer();
  model = await startModelServer((req) =>
    req.step === 0 ? codeCall("open('/output/result.txt', 'w').write('42')\nprint('saved')") : { text: `answer to ${req.task}` },
  );
  stack = await startStack(model, {
    env: { REDIS_URL: redis.url, WORKER_CONCURRENCY: '8', SANDBOX_POOL_SIZE: '4', CALLER_MAX_ACTIVE_JOBS: String(JOBS), LOG_LEVEL: 'warn' },
  });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
  await redis?.close();
});

/** Runs `work` on every item, `PARALLEL` at a time. */
async function eachInParallel<T>(items: readonly T[], work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

async function usedMemory(client: Redis): Promise<number> {
  return Number(/^used_memory:(\d+)/m.exec(await client.info('memory'))?.[1]);
}

/** Submits `tasks` and waits until all of them (and all jobs before them) have finished and left Redis. */
async function runJobs(tasks: string[], finishedBefore: number): Promise<string[]> {
  const ids: string[] = [];
  await eachInParallel(tasks, async (task) => {
    ids.push((await submitJob(stack, { task, tools: ['code_executor'] })).id);
  });
  const retention = `${stack.prefix}:retention`;
  await waitFor(async () => (await stack.redis.zcard(retention)) === finishedBefore + tasks.length, {
    timeoutMs: 20 * 60_000,
    intervalMs: 1000,
    what: `${tasks.length} jobs to finish`,
  });
  // A finished job's event stream stays a few seconds for readers blocked on it.
  await waitFor(async () => (await stack.redis.scan('0', 'MATCH', `${stack.prefix}:job:*:events`, 'COUNT', 100_000))[1].length === 0, {
    timeoutMs: 60_000,
    intervalMs: 1000,
    what: 'finished jobs’ event streams to go',
  });
  return ids;
}

test(`${JOBS} finished one-execution jobs grow Redis by at most ${BYTES_PER_JOB} bytes each, and each is still served whole`, async () => {
  // Redis's own fixed costs (scripts, BullMQ's keys, the fair clock) come with the first jobs.
  await runJobs(Array.from({ length: WARM_UP }, (_, i) => `warm-up job ${i}`), 0);
  const before = await usedMemory(stack.redis);

  const started = Date.now();
  const tasks = Array.from({ length: JOBS }, (_, i) => `footprint job ${i}`);
  const ids = await runJobs(tasks, WARM_UP);
  const seconds = (Date.now() - started) / 1000;
  const grown = (await usedMemory(stack.redis)) - before;
  const sample = ids[0] as string;
  const sizes = {
    finishedJobHash: await stack.redis.memory('USAGE', `${stack.prefix}:job:${sample}`),
    callerIndex: await stack.redis.memory('USAGE', `${stack.prefix}:caller:anonymous:jobs`),
    retention: await stack.redis.memory('USAGE', `${stack.prefix}:retention`),
    storedFiles: await stack.redis.memory('USAGE', `${stack.prefix}:stored-files`),
    bullmqEvents: await stack.redis.memory('USAGE', `${stack.prefix}:jobs:events`),
  };
  console.log(
    `${JOBS} jobs in ${seconds.toFixed(0)} s (${(JOBS / seconds).toFixed(1)} jobs/s); Redis grew by ${grown} bytes, ` +
      `${Math.round(grown / JOBS)} per job; MEMORY USAGE: ${JSON.stringify(sizes)}`,
  );
  expect(grown).toBeLessThanOrEqual(JOBS * BYTES_PER_JOB);

  // Every job, whole, from its record.
  const byTask = new Map<string, JobView>();
  await eachInParallel(ids, async (id) => {
    const job = await getJob(stack, id);
    byTask.set(job.task, job);
  });
  for (const task of tasks) {
    const job = byTask.get(task) as JobView;
    expect(job).toMatchObject({ status: 'succeeded', stopReason: 'completed', result: { output: `answer to ${task}` }, attempts: 1, tools: ['code_executor'] });
    expect(job.steps.map((s) => [s.index, s.type])).toEqual([[0, 'model'], [1, 'tool'], [2, 'model']]);
    expect(job.steps[1]).toMatchObject({ name: 'code_executor', output: expect.stringContaining('saved') });
    expect(job.artifacts).toEqual([expect.objectContaining({ name: 'result.txt', size: 2, contentType: 'text/plain', step: 1 })]);
    expect(job.usage).toEqual({ inputTokens: 20, outputTokens: 10 });
  }

  // The list, page by page, with what GET shows less the steps.
  const listed: Record<string, unknown>[] = [];
  let cursor: string | null = null;
  do {
    const page = await request(stack, 'GET', `/v1/jobs?limit=100${cursor ? `&cursor=${cursor}` : ''}`);
    expect(page.status).toBe(200);
    listed.push(...(page.body.jobs as Record<string, unknown>[]));
    cursor = page.body.nextCursor as string | null;
  } while (cursor !== null);
  expect(listed).toHaveLength(WARM_UP + JOBS);
  const first = byTask.get('footprint job 0') as JobView;
  expect({ ...listed.find((j) => j.id === first.id), steps: first.steps }).toEqual(first);

  // And the artifacts' bytes, for a sample.
  for (const id of ids.filter((_, i) => i % 100 === 0)) {
    const res = await fetch(`${stack.api.url}/v1/jobs/${id}/artifacts/result.txt`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('42');
  }
}, 30 * 60_000);
