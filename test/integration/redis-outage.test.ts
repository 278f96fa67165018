/**
 * Redis going away and coming back, as an operator watching the logs sees it: a stack on a Redis of
 * its own (with a password, to prove it stays out of the logs), that Redis stopped for 30 s and then
 * started again on the same port (a stopped Redis refuses connections, as a crashed or restarting one
 * does; a paused one would hold them open instead).
 */
import { randomBytes } from 'node:crypto';
import { docker } from '../support/docker';
import { scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { freePort } from '../support/ports';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

/** How long the scenario keeps Redis stopped. */
const OUTAGE_MS = 30_000;

let model: ModelServer;
beforeAll(async () => {
  model = await startModelServer(scriptBySteps({ 'before the outage': [{ text: 'before' }], 'after the outage': [{ text: 'after' }] }));
});
afterAll(async () => {
  await model?.close();
});


interface LogLine {
  event?: string;
  service?: string;
  level: number;
  msg: string;
  [field: string]: unknown;
}

function parse(chunks: string[]): LogLine[] {
  return chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine);
}

/** The lines an outage can cause: the watcher's, and what BullMQ relays from its connections. */
const isRedisNoise = (l: LogLine): boolean => l.event !== undefined && (l.event.startsWith('redis.') || l.event === 'worker.error' || l.event === 'queue.error');

test('Redis stopped for 30 s: a handful of log lines naming the endpoint and REDIS_URL, no password, and jobs run again once it is back', async () => {
  const password = randomBytes(24).toString('hex');
  const port = await freePort();
  let redis: RedisContainer | undefined;
  let stack: Stack | undefined;
  try {
    redis = await startRedisContainer({ args: ['--requirepass', password], probe: { password }, hostPort: port, role: 'test-redis-outage' });
    stack = await startStack(model, { env: { REDIS_URL: `redis://:${password}@127.0.0.1:${port}`, SANDBOX_POOL_SIZE: '0' } });
    const s = stack;
    expect(await waitForJobEnd(s, (await submitJob(s, { task: 'before the outage' })).id)).toMatchObject({ status: 'succeeded' });
    const from = s.logs.length;

    const container = docker.getContainer(redis.id);
    await container.stop({ t: 1 });
    const stoppedAt = Date.now();
    await waitFor(async () => (await request(s, 'GET', '/readyz')).status === 503, { what: '/readyz to answer 503 with Redis down' });
    // The scenario itself: Redis stays down this long.
    await waitFor(() => Date.now() - stoppedAt >= OUTAGE_MS, { timeoutMs: OUTAGE_MS + 5000, intervalMs: 250, what: 'the outage to last 30 s' });
    const duringOutage = parse(s.logs.slice(from)).filter(isRedisNoise);

    await container.start();
    await waitFor(() => parse(s.logs.slice(from)).some((l) => l.event === 'redis.up'), { timeoutMs: 30_000, what: 'a redis.up line' });
    // The API's connections may still be reconnecting: a 503 until they are is fine, a lost job is not.
    const job = await waitFor(() => submitJob(s, { task: 'after the outage' }), { timeoutMs: 20_000, intervalMs: 250, what: 'the API to take a job again' });
    expect(await waitForJobEnd(s, job.id, 30_000)).toMatchObject({ status: 'succeeded', result: { output: 'after' } });
    expect((await request(s, 'GET', '/readyz')).status).toBe(200);

    const all = parse(s.logs.slice(from)).filter(isRedisNoise);
    // One down per process (API, worker), a still_down each if a reconnect failed 30 s in, one up each.
    expect(duringOutage.length).toBeGreaterThanOrEqual(2);
    expect(all.length).toBeLessThanOrEqual(6);
    expect(all.filter((l) => l.event === 'worker.error' || l.event === 'queue.error')).toEqual([]);
    const downs = all.filter((l) => l.event === 'redis.down');
    expect(downs.map((l) => l.service).sort()).toEqual(['api', 'worker']);
    for (const down of downs) {
      expect(down).toMatchObject({ level: 40, redis: `127.0.0.1:${port}` });
      expect(down.hint).toEqual(expect.stringContaining('REDIS_URL'));
      expect(down.msg).toContain(`127.0.0.1:${port}`);
    }
    const ups = all.filter((l) => l.event === 'redis.up');
    expect(ups.length).toBeGreaterThanOrEqual(1);
    for (const up of ups) expect(up.downForMs).toBeGreaterThanOrEqual(OUTAGE_MS - 1000);
    expect(s.logs.join('')).not.toContain(password);
  } finally {
    await stack?.close();
    await redis?.close();
  }
}, 150_000);
