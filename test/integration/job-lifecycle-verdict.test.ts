/**
 * How a job's attempt ends, on real Redis, real Docker and real worker processes: a job whose worker
 * stops on its last attempt still ends, a cancel whose message is lost still lands, and a job's
 * verdict is recorded as soon as its last step is, its container removed before BullMQ lets it go.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { JobStore } from '../../services/shared/src/job-store';
import { cancelChannel, JOBS_QUEUE } from '../../services/shared/src/queue';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { containersWith } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';
import { spawnWorkerProcess, type WorkerProcess } from '../support/worker-process';

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

/** BullMQ's view of a job: it must let go of every job that ended, and hold none that is stuck. */
async function queueStateOf(stack: Stack, id: string): Promise<string> {
  const queue = new Queue(JOBS_QUEUE, { connection: { url: stack.config.REDIS_URL }, prefix: stack.prefix });
  try {
    return await queue.getJobState(id);
  } finally {
    await queue.close();
  }
}

const jobContainers = (id: string) => containersWith({ [LABEL.job]: id });

describe('a job on its last attempt (JOB_ATTEMPTS=1)', () => {
  let stack: Stack;
  let child: WorkerProcess | undefined;
  beforeEach(async () => {
    stack = await startStack(model, {
      workers: 0,
      env: { JOB_ATTEMPTS: '1', WORKER_LOCK_MS: '2000', WORKER_SHUTDOWN_GRACE_MS: '300', SANDBOX_POOL_SIZE: '0' },
    });
  });
  afterEach(async () => {
    if (child && child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGKILL');
    await child?.exited;
    child = undefined;
    await stack?.close();
  });

  /** Starts a worker process and a job that it runs up to a model call that never answers. */
  async function jobHeldByChild(task: string): Promise<string> {
    script[task] = [codeCall("print('first step')"), { hang: true }];
    child = spawnWorkerProcess(stack);
    const job = await submitJob(stack, { task });
    await waitFor(() => model.requests.some((r) => r.task === task && r.step === 1), { timeoutMs: 30_000, what: 'the job at its second model call' });
    expect((await getJob(stack, job.id)).status).toBe('running');
    return job.id;
  }

  test('whose worker is stopped with SIGTERM is handed back, spending no attempt, and finished by another worker', async () => {
    const task = 'stopped on the last attempt';
    const id = await jobHeldByChild(task);
    script[task] = [codeCall("print('first step')"), { text: 'finished elsewhere' }];
    await stack.startWorker();
    child?.child.kill('SIGTERM');
    await child?.exited;

    const ended = await waitForJobEnd(stack, id, 30_000);
    expect(ended).toMatchObject({ status: 'succeeded', attempts: 2, result: { output: 'finished elsewhere' } });
    // Resumed from its checkpoint: the first model call was not made again.
    expect(model.requests.filter((r) => r.task === task && r.step === 0)).toHaveLength(1);
    await waitFor(async () => !/waiting|prioritized|delayed|active/.test(await queueStateOf(stack, id)), { what: 'BullMQ to let the job go' });
    await waitFor(async () => (await jobContainers(id)).length === 0, { what: "the job's containers to go" });
  }, 60_000);

  test('whose worker is killed with SIGKILL ends failed with worker_lost once another worker takes it over, without running again', async () => {
    const task = 'killed on the last attempt';
    const id = await jobHeldByChild(task);
    child?.child.kill('SIGKILL');
    await child?.exited;
    const asked = model.requests.filter((r) => r.task === task).length;
    await stack.startWorker();

    const ended = await waitForJobEnd(stack, id, 30_000);
    expect(ended).toMatchObject({ status: 'failed', stopReason: 'error', error: { code: 'worker_lost' } });
    expect(model.requests.filter((r) => r.task === task)).toHaveLength(asked);
    await waitFor(async () => !/waiting|prioritized|delayed|active/.test(await queueStateOf(stack, id)), { what: 'BullMQ to let the job go' });
  }, 60_000);

  test('whose final verdict fails to be written once, as Redis drops a connection, still ends, never stranded', async () => {
    const task = 'verdict lost once';
    // A final verdict: the provider refuses the second call.
    script[task] = [codeCall("print('first step')"), { status: 400, errorMessage: 'this request is refused' }];
    await stack.startWorker();
    const finish = JobStore.prototype.finish;
    let calls = 0;
    let id = '';
    const spy = jest.spyOn(JobStore.prototype, 'finish').mockImplementation(function (this: JobStore, ...args: Parameters<JobStore['finish']>) {
      if (args[0] === id && ++calls === 1) return Promise.reject(new Error('injected: Connection is closed.'));
      return finish.apply(this, args);
    });
    try {
      id = (await submitJob(stack, { task })).id;
      const ended = await waitForJobEnd(stack, id, 20_000);
      expect(ended).toMatchObject({ status: 'failed', stopReason: 'error', error: { code: expect.stringMatching(/^(provider_rejected|internal)$/) } });
      // The write that failed, and the one that recorded the verdict after all.
      expect(calls).toBeGreaterThanOrEqual(2);
      await waitFor(async () => !/waiting|prioritized|delayed|active/.test(await queueStateOf(stack, id)), { what: 'BullMQ to let the job go' });
    } finally {
      spy.mockRestore();
    }
  }, 60_000);
});

/**
 * Loses every cancel message on the stack's channel on its way to the worker, as when the worker's
 * subscriber connection drops and the message is published before it is back. Returns the ids lost.
 */
function dropCancelMessages(stack: Stack): { dropped: string[]; restore(): void } {
  const channel = cancelChannel(stack.prefix);
  const dropped: string[] = [];
  const emit = Redis.prototype.emit;
  const spy = jest.spyOn(Redis.prototype, 'emit').mockImplementation(function (this: Redis, event: string | symbol, ...args: unknown[]) {
    if (event === 'message' && args[0] === channel) {
      dropped.push(String(args[1]));
      return true;
    }
    return emit.call(this, event, ...args);
  });
  return { dropped, restore: () => spy.mockRestore() };
}

describe('a cancel whose message never reaches the worker', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { env: { SANDBOX_POOL_SIZE: '0' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  /** Submits a job that runs a cell, then waits on a model call that never answers. */
  async function busyJob(task: string): Promise<string> {
    script[task] = [codeCall("print('busy')"), { hang: true }];
    const job = await submitJob(stack, { task });
    await waitFor(() => model.requests.some((r) => r.task === task && r.step === 1), { timeoutMs: 30_000, what: 'the hanging model call' });
    return job.id;
  }

  test('still ends the running job cancelled within a second of the request', async () => {
    const id = await busyJob('cancel me quietly');
    const lost = dropCancelMessages(stack);
    try {
      const res = await request(stack, 'POST', `/v1/jobs/${id}/cancel`);
      const answeredAt = Date.now();
      expect(res.status).toBe(202);
      const ended = await waitForJobEnd(stack, id, 5000);
      expect(ended).toMatchObject({ status: 'cancelled', stopReason: 'cancelled', error: { code: 'cancelled' } });
      expect(Date.parse(ended.finishedAt as string) - answeredAt).toBeLessThan(1000);
      expect(lost.dropped).toContain(id);
    } finally {
      lost.restore();
    }
  });

  test('of a job deleted while it runs still stops its work: its container goes', async () => {
    const id = await busyJob('delete me quietly');
    expect(await jobContainers(id)).toHaveLength(1);
    const lost = dropCancelMessages(stack);
    try {
      expect((await request(stack, 'DELETE', `/v1/jobs/${id}`)).status).toBe(204);
      await waitFor(async () => (await jobContainers(id)).length === 0, { timeoutMs: 3000, what: "the deleted job's container to go" });
      expect(lost.dropped).toContain(id);
    } finally {
      lost.restore();
    }
  });
});

describe('the end of a job', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { env: { SANDBOX_POOL_SIZE: '0', WORKER_CONCURRENCY: '1' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('is recorded within milliseconds of its last step, and BullMQ lets the job go only once its container is gone', async () => {
    const gaps: number[] = [];
    for (let i = 0; i < 7; i++) {
      const task = `quick finish ${i}`;
      script[task] = [codeCall(`print(${i})`), { text: `done ${i}` }];
      const { id } = await submitJob(stack, { task });
      const ended = await waitForJobEnd(stack, id);
      expect(ended.status).toBe('succeeded');
      const last = ended.steps[ended.steps.length - 1];
      if (!last) throw new Error('a job with no steps');
      gaps.push(Date.parse(ended.finishedAt as string) - (Date.parse(last.startedAt) + last.durationMs));
      // The job's processing (BullMQ's active state) outlives its container, never the reverse.
      await waitFor(async () => (await queueStateOf(stack, id)) !== 'active', { intervalMs: 5, what: 'BullMQ to let the job go' });
      expect(await jobContainers(id)).toEqual([]);
    }
    gaps.sort((a, b) => a - b);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeLessThan(50);
  }, 90_000);
});

/**
 * A Docker Engine API proxy on loopback TCP that never forwards a container removal: the worker
 * behind it records its verdicts but cannot remove a container, as if it died right after.
 */
async function startRemovalBlockingProxy(): Promise<{ url: string; held: string[]; close(): Promise<void> }> {
  const held: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const engine = createConnection('/var/run/docker.sock');
    sockets.add(client).add(engine);
    client.on('data', (chunk: Buffer) => {
      const removal = /(?:^|\r\n)DELETE \/(?:v[\d.]+\/)?containers\/([0-9a-f]+)/.exec(chunk.toString('latin1'));
      if (removal) {
        held.push(removal[1] as string);
        return;
      }
      engine.write(chunk);
    });
    engine.pipe(client);
    const end = (): void => {
      client.destroy();
      engine.destroy();
    };
    client.on('error', end).on('close', end);
    engine.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `tcp://127.0.0.1:${(server.address() as AddressInfo).port}`,
    held,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

test('a worker killed right after a verdict leaves its container to the reaper of another worker', async () => {
  const proxy = await startRemovalBlockingProxy();
  const stack = await startStack(model, { workers: 0, env: { SANDBOX_POOL_SIZE: '0', REAPER_INTERVAL_MS: '1000' } });
  let child: WorkerProcess | undefined;
  try {
    child = spawnWorkerProcess({ env: { ...stack.env, DOCKER_HOST: proxy.url } });
    const task = 'killed after its verdict';
    script[task] = [codeCall("print('work')"), { text: 'all done' }];
    const { id } = await submitJob(stack, { task });
    const [container] = await waitFor(async () => {
      const listed = await jobContainers(id);
      return listed.length > 0 ? listed : undefined;
    }, { timeoutMs: 30_000, what: 'the job container' });
    const containerId = (container as { Id: string }).Id;
    // The worker asks for the removal only after it has recorded the verdict.
    await waitFor(() => proxy.held.some((held) => containerId.startsWith(held)), { timeoutMs: 30_000, what: 'the removal request' });
    expect((await getJob(stack, id)).status).toBe('succeeded');
    child.child.kill('SIGKILL');
    await child.exited;
    expect((await jobContainers(id)).map((c) => c.Id)).toEqual([containerId]);

    await stack.startWorker();
    await waitFor(async () => (await jobContainers(id)).length === 0, { timeoutMs: 10_000, what: 'the reaper to remove the container' });
    expect(stack.logs.join('')).toMatch(new RegExp(`"event":"sandbox.reaped"[^\\n]*"containerId":"${containerId}"[^\\n]*"reason":"job_finished"`));
  } finally {
    if (child && child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGKILL');
    await child?.exited;
    await stack.close();
    await proxy.close();
  }
}, 90_000);
