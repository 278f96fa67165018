/** Cancel and crash recovery, on real Redis, real Docker, the real SDKs and a real worker process. */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { ToolStep } from '../../services/shared/src/job-schema';
import { Queue } from 'bullmq';
import { JOBS_QUEUE } from '../../services/shared/src/queue';
import { CONTAINER_ID_CODE, docker } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';


let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

describe('cancel', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0 });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a queued job is cancelled at once and never runs', async () => {
    script['never run me'] = [{ text: 'should not happen' }];
    const job = await submitJob(stack, { task: 'never run me' });
    const started = Date.now();
    const res = await request(stack, 'POST', `/v1/jobs/${job.id}/cancel`);
    expect(res.status).toBe(202);
    const ended = await waitForJobEnd(stack, job.id, 1000);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(ended).toMatchObject({ status: 'cancelled', stopReason: 'cancelled', attempts: 0 });

    // A worker that starts afterwards does not pick it up.
    script['after cancel'] = [{ text: 'fine' }];
    await stack.startWorker();
    const other = await waitForJobEnd(stack, (await submitJob(stack, { task: 'after cancel' })).id);
    expect(other.status).toBe('succeeded');
    expect(model.requests.filter((r) => r.task === 'never run me')).toHaveLength(0);
    expect((await getJob(stack, job.id)).status).toBe('cancelled');
  });

  test('a running job with a model request in flight is cancelled within a second, not retried, and its container is gone', async () => {
    if (stack.workers.length === 0) await stack.startWorker();
    script['slow thinker'] = [codeCall(CONTAINER_ID_CODE), { hang: true }];
    const job = await submitJob(stack, { task: 'slow thinker' });
    await waitFor(() => model.requests.some((r) => r.task === 'slow thinker' && r.step === 1), { what: 'the hanging model call' });
    expect((await getJob(stack, job.id)).status).toBe('running');

    const started = Date.now();
    await request(stack, 'POST', `/v1/jobs/${job.id}/cancel`);
    const ended = await waitForJobEnd(stack, job.id, 1000);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(ended).toMatchObject({ status: 'cancelled', stopReason: 'cancelled', attempts: 1 });
    const container = /container=(\w+)/.exec((ended.steps.find((s) => s.type === 'tool') as ToolStep).output)?.[1];
    expect(container).toMatch(/^[0-9a-f]{64}$/);
    await waitFor(() => docker.getContainer(container as string).inspect().then(() => false, (err: { statusCode?: number }) => err.statusCode === 404), {
      timeoutMs: 5000,
      what: 'the job container to be removed',
    });
    // Not retried: BullMQ holds the job as done (or already removed), not waiting or delayed for another attempt.
    const queue = new Queue(JOBS_QUEUE, { connection: { url: stack.config.REDIS_URL }, prefix: stack.prefix });
    try {
      await waitFor(async () => ['completed', 'failed', 'unknown'].includes(await queue.getJobState(job.id)), {
        what: 'the BullMQ job to be finished',
      });
      expect(await queue.getJobState(job.id)).not.toMatch(/waiting|delayed|active/);
    } finally {
      await queue.close();
    }
    expect(model.requests.filter((r) => r.task === 'slow thinker' && r.step === 1)).toHaveLength(1);
    expect((await getJob(stack, job.id)).attempts).toBe(1);
  });
});

test('a worker killed with SIGKILL mid-job is replaced and the job resumes from its checkpoint', async () => {
  const task = 'survive a crash';
  let crashed = false;
  script[task] = [codeCall("print('step one ran')"), { hang: true }];
  const stack = await startStack(model, { workers: 0, env: { WORKER_LOCK_MS: '2000' } });
  let child: ChildProcess | undefined;
  try {
    child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', '..', 'services', 'worker', 'src', 'main.ts')], {
      env: { ...process.env, ...stack.env },
      stdio: 'ignore',
    });
    const job = await submitJob(stack, { task });
    await waitFor(() => model.requests.some((r) => r.task === task && r.step === 1), { timeoutMs: 30_000, what: 'step 1 in flight' });
    child.kill('SIGKILL');
    crashed = true;
    script[task] = [codeCall("print('step one ran')"), { text: 'finished after the crash' }];
    await stack.startWorker();

    const ended = await waitForJobEnd(stack, job.id, 30_000);
    expect(ended.status).toBe('succeeded');
    expect(ended.result?.output).toBe('finished after the crash');
    expect(ended.attempts).toBe(2);
    // Step 0 had completed before the crash: the model never saw it asked again.
    expect(model.requests.filter((r) => r.task === task && r.step === 0)).toHaveLength(1);
    // Its tool ran once too: the steps are the recorded ones plus the final answer, no repeats.
    expect(ended.steps.map((s) => s.type)).toEqual(['model', 'tool', 'model']);
  } finally {
    if (child && !crashed) child.kill('SIGKILL');
    await stack.close();
  }
}, 90_000);
