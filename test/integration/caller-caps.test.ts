/**
 * Per-caller caps, through the real API on real Redis: queued plus running jobs
 * (CALLER_MAX_ACTIVE_JOBS) and open event streams (CALLER_MAX_EVENT_STREAMS), both counted in Redis
 * so they hold across API replicas. Each test has callers of its own, so no test sees another's jobs.
 */
import pino from 'pino';
import { startApi, type RunningApi } from '../../services/api/src/api-service';
import { DirectoryArtifactStore } from '../../services/shared/src/artifact-store';
import { newJobId } from '../../services/shared/src/ids';
import { JobStore } from '../../services/shared/src/job-store';
import { scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { request, startStack, waitForJobEnd, type AnyJson, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const CALLERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'] as const;
type Caller = (typeof CALLERS)[number];
/** Each caller's key: 32 characters or more, as api-key mode demands. */
const keyOf = (caller: Caller) => `${caller}-key-`.padEnd(40, caller.charAt(0));
const as = (caller: Caller) => ({ authorization: `Bearer ${keyOf(caller)}` });

let model: ModelServer;
let stack: Stack;
const script: Record<string, ScriptedReply[]> = { quick: [{ text: 'done' }] };

/** A task held at the model until the test releases it (or cancels the job): a job that stays running. */
function held(task: string): string {
  script[task] = [{ hang: true, text: 'released' }];
  return task;
}

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, {
    env: {
      AUTH_MODE: 'api-key',
      API_KEYS: CALLERS.map((c) => `${c}:${keyOf(c)}`).join(','),
      CALLER_MAX_ACTIVE_JOBS: '2',
      CALLER_MAX_EVENT_STREAMS: '2',
      WORKER_CONCURRENCY: '2',
      SANDBOX_POOL_SIZE: '0',
    },
  });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

async function submit(caller: Caller, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  return request(stack, 'POST', '/v1/jobs', body, { ...as(caller), ...headers });
}

async function submitted(caller: Caller, task: string): Promise<string> {
  const res = await submit(caller, { task });
  expect(res.status).toBe(202);
  return res.body.id as string;
}

/** Cancels the caller's jobs and waits until each has ended, so the test leaves nothing running. */
async function cancelAll(caller: Caller, ids: string[]): Promise<void> {
  for (const id of ids) await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, as(caller));
  for (const id of ids) await waitForJobEnd(stack, id, 10_000, as(caller));
}

function expectActiveCapProblem(res: { status: number; headers: Headers; body: AnyJson }): void {
  expect(res.status).toBe(429);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.headers.get('retry-after')).toBe('30');
  expect(res.body).toMatchObject({ type: 'urn:maestro:problem:too_many_active_jobs', status: 429 });
  expect(res.body.detail).toMatch(/CALLER_MAX_ACTIVE_JOBS \(2\)/);
}

describe('active jobs per caller', () => {
  test('past the cap a new job is a 429, yet an Idempotency-Key replay of a job it already has is answered', async () => {
    const task = held('held by alice');
    const first = await submit('alice', { task }, { 'idempotency-key': 'report-1' });
    expect(first.status).toBe(202);
    const second = await submitted('alice', task);

    expectActiveCapProblem(await submit('alice', { task }));
    const replay = await submit('alice', { task }, { 'idempotency-key': 'report-1' });
    expect(replay.status).toBe(200);
    expect(replay.body.id).toBe(first.body.id);
    // A new key is a new job, and is refused like any other.
    expectActiveCapProblem(await submit('alice', { task }, { 'idempotency-key': 'report-2' }));
    // Another caller is not held back by alice's jobs.
    const bobs = await submitted('bob', 'quick');

    await cancelAll('alice', [first.body.id as string, second]);
    expect((await waitForJobEnd(stack, bobs, 30_000, as('bob'))).status).toBe('succeeded');
    // The refused key was not spent: it now makes its job.
    const later = await submit('alice', { task: 'quick' }, { 'idempotency-key': 'report-2' });
    expect(later.status).toBe(202);
    await waitForJobEnd(stack, later.body.id as string, 30_000, as('alice'));
  });

  test('a cancelled job frees its place', async () => {
    const task = held('held by carol');
    const ids = [await submitted('carol', task), await submitted('carol', task)];
    expectActiveCapProblem(await submit('carol', { task }));

    await cancelAll('carol', [ids[0] as string]);
    const third = await submitted('carol', task);
    await cancelAll('carol', [ids[1] as string, third]);
  });

  test('a job that ends frees its place', async () => {
    const task = held('held by dave');
    const ids = [await submitted('dave', task), await submitted('dave', task)];
    expectActiveCapProblem(await submit('dave', { task: 'quick' }));
    await waitFor(() => model.requests.filter((r) => r.task === task).length === ids.length, { timeoutMs: 30_000, what: 'both jobs at the model' });

    model.releaseHanging();
    for (const id of ids) expect((await waitForJobEnd(stack, id, 30_000, as('dave'))).status).toBe('succeeded');
    const next = await submitted('dave', 'quick');
    expect((await waitForJobEnd(stack, next, 30_000, as('dave'))).status).toBe('succeeded');
  });

  test('ids whose job ended unnoticed, expired, or was never queued are pruned at the cap, and live ones still count', async () => {
    const activeKey = `${stack.prefix}:caller:erin:active`;
    // A job that ended, put back as if its removal had been missed.
    const ended = await submitted('erin', 'quick');
    await waitForJobEnd(stack, ended, 30_000, as('erin'));
    await stack.redis.zadd(activeKey, 1, ended);
    // A job whose record is gone (past its retention).
    await stack.redis.zadd(activeKey, 1, newJobId());
    // A job stored two minutes ago whose API replica died before enqueueing it: BullMQ never had it.
    const store = new JobStore(stack.redis, stack.prefix, 3600, new DirectoryArtifactStore(stack.config.ARTIFACT_DIR, stack.prefix));
    const orphan = newJobId(Date.now() - 120_000);
    const spec = { task: 'never queued', provider: 'openai' as const, model: 'm', tools: [], maxSteps: 1, timeoutSeconds: 60, metadata: {}, inputs: [], caller: 'erin' };
    expect((await store.create(orphan, spec, new Date(), { maxActive: 10 })).outcome).toBe('created');
    expect(await stack.redis.zcard(activeKey)).toBe(3);

    const task = held('held by erin');
    const live = await submitted('erin', task);
    const another = await submitted('erin', task);
    expect((await stack.redis.zrange(activeKey, 0, -1)).sort()).toEqual([live, another].sort());
    expectActiveCapProblem(await submit('erin', { task }));
    await cancelAll('erin', [live, another]);
  });
});

describe('a job handed back on its last attempt', () => {
  let lastTry: Stack;
  beforeAll(async () => {
    lastTry = await startStack(model, {
      env: { CALLER_MAX_ACTIVE_JOBS: '1', JOB_ATTEMPTS: '1', WORKER_SHUTDOWN_GRACE_MS: '200', SANDBOX_POOL_SIZE: '0' },
    });
  });
  afterAll(async () => {
    await lastTry?.close();
  });

  test('keeps its place, spends no attempt, and is finished by the next worker', async () => {
    const task = held('handed back');
    const created = await request(lastTry, 'POST', '/v1/jobs', { task });
    expect(created.status).toBe(202);
    await waitFor(() => model.requests.some((r) => r.task === task), { timeoutMs: 30_000, what: 'the job at the model' });

    await lastTry.workers[0]?.close();
    const id = created.body.id as string;
    expect((await request(lastTry, 'GET', `/v1/jobs/${id}`)).body).toMatchObject({ status: 'queued', attempts: 1 });
    // Still the caller's one active job: a hand-back is no ending.
    expect((await request(lastTry, 'POST', '/v1/jobs', { task: 'quick' })).status).toBe(429);

    script[task] = [{ text: 'finished after the hand-back' }];
    await lastTry.startWorker();
    const ended = await waitForJobEnd(lastTry, id, 30_000);
    expect(ended).toMatchObject({ status: 'succeeded', attempts: 2, result: { output: 'finished after the hand-back' } });
    expect((await request(lastTry, 'POST', '/v1/jobs', { task: 'quick' })).status).toBe(202);
  });
});

describe('event streams per caller', () => {
  const opened: AbortController[] = [];
  let replica: RunningApi | undefined;
  afterEach(async () => {
    for (const controller of opened.splice(0)) controller.abort();
    await replica?.close();
    replica = undefined;
  });

  /** Opens a stream as a browser would and returns once the response headers arrive; abort closes it. */
  async function openStream(base: string, caller: Caller, id: string): Promise<Response> {
    const controller = new AbortController();
    opened.push(controller);
    return fetch(`${base}/v1/jobs/${id}/events`, { headers: { accept: 'text/event-stream', ...as(caller) }, signal: controller.signal });
  }

  test('past its cap a caller gets a 429 on any replica, while another caller still opens streams; closing one frees a slot', async () => {
    const job = await submitted('frank', held('streamed by frank'));
    const graces = await submitted('grace', held('streamed by grace'));
    replica = await startApi(stack.config, { logger: pino({ level: 'silent' }) });

    expect((await openStream(stack.api.url, 'frank', job)).status).toBe(200);
    expect((await openStream(replica.url, 'frank', job)).status).toBe(200);
    for (const base of [stack.api.url, replica.url]) {
      const refused = await openStream(base, 'frank', job);
      expect(refused.status).toBe(429);
      expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(await refused.json()).toMatchObject({ type: 'urn:maestro:problem:too_many_streams', detail: expect.stringMatching(/CALLER_MAX_EVENT_STREAMS/) });
    }
    expect((await openStream(stack.api.url, 'grace', graces)).status).toBe(200);

    (opened[0] as AbortController).abort();
    await waitFor(async () => (await openStream(stack.api.url, 'frank', job)).status === 200, { timeoutMs: 5000, what: 'a freed slot' });

    for (const controller of opened.splice(0)) controller.abort();
    await replica.close();
    await cancelAll('frank', [job]);
    await cancelAll('grace', [graces]);
  });

  test('streams of a replica that died stop counting once their leases lapse', async () => {
    const job = await submitted('heidi', held('streamed by heidi'));
    // Two leases left by a replica that died, lapsing 1.5 s from now.
    const [seconds, micros] = await stack.redis.time();
    const lapse = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) + 1500;
    await stack.redis.zadd(`${stack.prefix}:caller:heidi:streams`, lapse, 'dead-1', lapse, 'dead-2');

    const refused = await openStream(stack.api.url, 'heidi', job);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeLessThanOrEqual(2);
    await waitFor(async () => (await openStream(stack.api.url, 'heidi', job)).status === 200, { timeoutMs: 5000, intervalMs: 250, what: 'the dead leases to lapse' });

    for (const controller of opened.splice(0)) controller.abort();
    await cancelAll('heidi', [job]);
  });
});
