/**
 * Fair share between callers, on the real stack: a caller with a backlog does not make another
 * caller's job wait behind all of it, and its backlog stops at CALLER_MAX_ACTIVE_JOBS.
 */
import { Queue } from 'bullmq';
import { MAX_QUEUE_PRIORITY, createJobsQueue } from '../../services/shared/src/queue';
import { codeCall, scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { request, waitForJobEnd, startStack, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const CALLERS = ['alice', 'bob', 'carol'] as const;
type Caller = (typeof CALLERS)[number];
/** Each caller's key: 32 characters or more, as api-key mode demands. */
const keyOf = (caller: Caller) => `${caller}-key-`.padEnd(40, caller.charAt(0));
const as = (caller: Caller) => ({ authorization: `Bearer ${keyOf(caller)}` });
const authEnv = { AUTH_MODE: 'api-key', API_KEYS: CALLERS.map((c) => `${c}:${keyOf(c)}`).join(',') };

const SLOW = 'sleep for twenty seconds';
const QUICK = 'add one and one';

let model: ModelServer;

beforeAll(async () => {
  model = await startModelServer(
    scriptBySteps({
      [SLOW]: [codeCall('import time; time.sleep(20)'), { text: 'slept' }],
      [QUICK]: [codeCall('print(1 + 1)'), { text: '2' }],
    }),
  );
});
afterAll(async () => {
  await model?.close();
});

async function submit(stack: Stack, caller: Caller, task: string): Promise<string> {
  const res = await request(stack, 'POST', '/v1/jobs', { task }, as(caller));
  expect(res.status).toBe(202);
  return res.body.id as string;
}

describe('with four worker slots', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, {
      env: {
        ...authEnv,
        WORKER_CONCURRENCY: '4',
        CALLER_MAX_ACTIVE_JOBS: '40',
        // Warm containers for the first slots; later jobs start their own.
        SANDBOX_POOL_SIZE: '2',
      },
    });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test("a caller's one job runs within about one job's time while another caller has 40 queued, and the 41st is refused", async () => {
    const backlog: string[] = [];
    try {
      for (let i = 0; i < 40; i++) backlog.push(await submit(stack, 'alice', SLOW));
      const refused = await request(stack, 'POST', '/v1/jobs', { task: SLOW }, as('alice'));
      expect(refused.status).toBe(429);
      expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
      expect(refused.body).toMatchObject({ type: 'urn:maestro:problem:too_many_active_jobs', status: 429 });
      expect(refused.body.detail).toMatch(/CALLER_MAX_ACTIVE_JOBS \(40\)/);

      // Every worker slot busy with alice's jobs, as alice sees them.
      await waitFor(
        async () => (await request(stack, 'GET', '/v1/jobs?status=running&limit=100', undefined, as('alice'))).body.jobs.length === 4,
        { timeoutMs: 30_000, what: "four of alice's jobs running" },
      );

      const submittedAt = Date.now();
      const id = await submit(stack, 'bob', QUICK);
      const job = await waitForJobEnd(stack, id, 40_000 - (Date.now() - submittedAt), as('bob'));
      expect(job).toMatchObject({ status: 'succeeded', result: { output: '2' } });
      expect(Date.now() - submittedAt).toBeLessThan(40_000);
      // In submission order bob would wait behind all 36 of alice's waiting jobs: over two minutes.
      const queued = await request(stack, 'GET', '/v1/jobs?status=queued&limit=100', undefined, as('alice'));
      expect(queued.body.jobs.length).toBeGreaterThanOrEqual(30);
    } finally {
      for (const id of backlog) await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, as('alice'));
      for (const id of backlog) await waitForJobEnd(stack, id, 15_000, as('alice'));
    }
  }, 120_000);
});

describe('the queue order, with no worker taking jobs', () => {
  let stack: Stack;
  let queue: Queue;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: authEnv });
    queue = createJobsQueue({ url: stack.config.REDIS_URL }, stack.prefix);
  });
  afterAll(async () => {
    await queue?.close();
    await stack?.close();
  });

  /** What the workers would take next, first to last. */
  async function waiting(): Promise<string[]> {
    return (await queue.getPrioritized(0, -1)).map((job) => job.id as string);
  }

  test("callers' jobs interleave one for one, whoever submitted first or most", async () => {
    const a = [];
    for (let i = 0; i < 4; i++) a.push(await submit(stack, 'alice', QUICK));
    const b = [await submit(stack, 'bob', QUICK), await submit(stack, 'bob', QUICK)];
    const c = [await submit(stack, 'carol', QUICK)];
    expect(await waiting()).toEqual([a[0], b[0], c[0], a[1], b[1], a[2], a[3]]);

    // A cancelled backlog leaves no debt: alice's next job goes one after her remaining one.
    for (const id of a.slice(1)) expect((await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, as('alice'))).status).toBe(202);
    const next = await submit(stack, 'alice', QUICK);
    expect(await waiting()).toEqual([a[0], b[0], c[0], b[1], next]);

    for (const [caller, ids] of [['alice', [a[0], next]], ['bob', b], ['carol', c]] as const) {
      for (const id of ids) await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, as(caller));
    }
    expect(await waiting()).toEqual([]);
  });

  test("a clock near BullMQ's limit restarts once the queue is idle, and saturates (FIFO) rather than fail while it is not", async () => {
    const clockKey = `${stack.prefix}:fair-clock`;
    await stack.redis.set(clockKey, MAX_QUEUE_PRIORITY);
    const first = await submit(stack, 'alice', QUICK);
    expect((await queue.getJob(first))?.opts.priority).toBe(1);

    // Not idle now (alice's job waits): a high clock is kept, and a job past the limit still queues.
    await stack.redis.set(clockKey, MAX_QUEUE_PRIORITY);
    const second = await submit(stack, 'bob', QUICK);
    const third = await submit(stack, 'bob', QUICK);
    expect((await queue.getJob(second))?.opts.priority).toBe(MAX_QUEUE_PRIORITY);
    expect((await queue.getJob(third))?.opts.priority).toBe(MAX_QUEUE_PRIORITY);
    expect(await waiting()).toEqual([first, second, third]);

    await request(stack, 'POST', `/v1/jobs/${first}/cancel`, undefined, as('alice'));
    for (const id of [second, third]) await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, as('bob'));
  });
});
