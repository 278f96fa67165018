/**
 * A Redis near its maxmemory (noeviction) would soon fail every write, running jobs' included. Past
 * REDIS_NEARLY_FULL_PERCENT the API refuses new jobs with 503 and Retry-After instead, while reads go
 * on and running jobs finish in the room left; once Redis has room again (here: the filler deleted, as
 * expiring jobs would free it), it takes work again. The logs say so once each way.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { readSse } from '../support/sse';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

let redis: RedisContainer;
let model: ModelServer;
let stack: Stack;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  redis = await startRedisContainer({ args: ['--maxmemory', '24mb', '--maxmemory-policy', 'noeviction'] });
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, { env: { REDIS_URL: redis.url, SANDBOX_POOL_SIZE: '0' } });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
  await redis?.close();
});

/** Redis's memory in use, as a share of its maxmemory, the way Redis weighs it. */
async function usedShare(client: Redis): Promise<number> {
  const info = await client.info('memory');
  const field = (name: string): number => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return (field('used_memory') - field('mem_not_counted_for_evict')) / field('maxmemory');
}

const logEvents = (event: string): number => stack.logs.filter((line) => line.includes(`"event":"${event}"`)).length;

test('a nearly full Redis refuses new jobs with 503 and Retry-After, keeps serving reads and running jobs, and takes work again once it has room', async () => {
  script['before the fill'] = [{ text: 'done before' }];
  script['running through the fill'] = [{ hang: true, text: 'finished while Redis was nearly full' }];
  script['after the fill'] = [{ text: 'done after' }];
  const done = await submitJob(stack, { task: 'before the fill' });
  await waitForJobEnd(stack, done.id);
  const running = await submitJob(stack, { task: 'running through the fill' });
  await waitFor(() => model.requests.some((r) => r.task === 'running through the fill'), { what: 'the running job at the model' });

  // Filler up to 93% of maxmemory, past the default 90%.
  const filler: string[] = [];
  while ((await usedShare(stack.redis)) < 0.93) {
    const key = `${stack.prefix}:filler:${filler.length}`;
    await stack.redis.set(key, randomBytes(128 * 1024));
    filler.push(key);
  }

  // Sampled at most once a second: the refusal starts within about that (jobs sent before are taken).
  const refused = await waitFor(
    async () => {
      const res = await request(stack, 'POST', '/v1/jobs', { task: 'after the fill' });
      return res.status === 503 ? res : undefined;
    },
    { timeoutMs: 5000, what: 'POST /v1/jobs to answer 503' },
  );
  expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(refused.headers.get('retry-after')).toBe('30');
  expect(refused.body).toMatchObject({ type: 'urn:maestro:problem:redis_nearly_full', status: 503, detail: expect.stringMatching(/REDIS_NEARLY_FULL_PERCENT/) });
  expect((await request(stack, 'POST', '/v1/jobs', { task: 'after the fill' })).status).toBe(503);

  // Reads go on: the job, the list, the finished job's events; /readyz stays 200 and says why.
  expect((await request(stack, 'GET', `/v1/jobs/${done.id}`)).body).toMatchObject({ status: 'succeeded', result: { output: 'done before' } });
  // Jobs sent before the sample caught up were taken: look past them.
  const list = await request(stack, 'GET', '/v1/jobs?limit=100');
  expect(list.status).toBe(200);
  expect(list.body.jobs.map((j: { id: string }) => j.id)).toEqual(expect.arrayContaining([running.id, done.id]));
  const events = await readSse(`${stack.api.url}/v1/jobs/${done.id}/events`);
  expect(events.ended).toBe(true);
  expect(events.events.map((e) => e.event)).toEqual(['status', 'status', 'step', 'status']);
  const ready = await request(stack, 'GET', '/readyz');
  expect(ready.status).toBe(200);
  expect(ready.body).toMatchObject({ status: 'ready', submissions: 'refused', reason: 'redis_nearly_full' });

  // A job that was running finishes in the room left, and its finish frees room.
  model.releaseHanging();
  const finished = await waitForJobEnd(stack, running.id);
  expect(finished).toMatchObject({ status: 'succeeded', result: { output: 'finished while Redis was nearly full' } });

  // Room again, as expiring jobs would make it.
  await stack.redis.del(...filler);
  const accepted = await waitFor(
    async () => {
      const res = await request(stack, 'POST', '/v1/jobs', { task: 'after the fill' });
      return res.status === 202 ? res : undefined;
    },
    { timeoutMs: 5000, what: 'POST /v1/jobs to accept again' },
  );
  expect((await waitForJobEnd(stack, accepted.body.id as string)).status).toBe('succeeded');
  expect((await request(stack, 'GET', '/readyz')).body).toEqual({ status: 'ready' });

  // One line when it started refusing, one when it stopped, however many requests came between.
  expect(logEvents('redis.nearly_full')).toBe(1);
  expect(logEvents('redis.room_again')).toBe(1);
}, 60_000);
