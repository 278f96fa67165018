/** What a worker leaves behind when it stops: gracefully (SIGTERM) or not at all (SIGKILL). */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { docker } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, startStack, submitJob, waitForJobEnd } from '../support/stack';
import { waitFor } from '../support/wait-for';

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

/** Sandbox containers of a given worker, in any state. */
async function sandboxesOf(workerPrefix: string): Promise<string[]> {
  const all = await docker.listContainers({ all: true, filters: { label: ['maestro.role=sandbox'] } });
  return all.filter((c) => c.Labels['maestro.worker']?.startsWith(workerPrefix)).map((c) => c.Id);
}

test('a worker stopped with SIGTERM hands its running job back and removes all its containers', async () => {
  const task = 'interrupted politely';
  script[task] = [codeCall("print('before the stop')"), { hang: true }];
  const stack = await startStack(model, { env: { WORKER_SHUTDOWN_GRACE_MS: '500', SANDBOX_POOL_SIZE: '2' } });
  try {
    const [worker] = stack.workers;
    const job = await submitJob(stack, { task });
    await waitFor(() => model.requests.some((r) => r.task === task && r.step === 1), { what: 'the job mid-way' });
    expect((await sandboxesOf((worker as { workerId: string }).workerId)).length).toBeGreaterThan(0);

    await worker?.close();
    expect(await sandboxesOf((worker as { workerId: string }).workerId)).toEqual([]);
    const handedBack = await getJob(stack, job.id);
    expect(handedBack.status).toBe('queued');

    script[task] = [codeCall("print('before the stop')"), { text: 'done on the next worker' }];
    await stack.startWorker();
    const ended = await waitForJobEnd(stack, job.id, 30_000);
    expect(ended).toMatchObject({ status: 'succeeded', attempts: 2, result: { output: 'done on the next worker' } });
    expect(model.requests.filter((r) => r.task === task && r.step === 0)).toHaveLength(1);
  } finally {
    await stack.close();
  }
}, 60_000);

test("a worker killed with SIGKILL leaves containers that a new worker's reaper removes within 30 s", async () => {
  script['crash with a sandbox 1'] = [codeCall("print('one')"), { hang: true }];
  script['crash with a sandbox 2'] = [codeCall("print('two')"), { hang: true }];
  const stack = await startStack(model, {
    workers: 0,
    env: { REAPER_INTERVAL_MS: '2000', SANDBOX_POOL_SIZE: '2', WORKER_SHUTDOWN_GRACE_MS: '500' },
  });
  let child: ChildProcess | undefined;
  try {
    child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', '..', 'services', 'worker', 'src', 'main.ts')], {
      env: { ...process.env, ...stack.env },
      stdio: 'ignore',
    });
    const jobs = [await submitJob(stack, { task: 'crash with a sandbox 1' }), await submitJob(stack, { task: 'crash with a sandbox 2' })];
    await waitFor(() => jobs.every((j) => model.requests.some((r) => r.task === j.task && r.step === 1)), {
      timeoutMs: 30_000,
      what: 'both jobs mid-way',
    });
    // Two job containers plus the refilled pool.
    const orphans = await waitFor(async () => {
      const ids = await sandboxesOf(`${stack.prefix}.`);
      return ids.length >= 4 ? ids : undefined;
    }, { what: 'the pool to refill' });
    child.kill('SIGKILL');
    await new Promise((r) => child?.once('exit', r));

    const started = Date.now();
    await stack.startWorker();
    await waitFor(
      async () => {
        const left = await Promise.all(orphans.map((id) => docker.getContainer(id).inspect().then(() => id, () => null)));
        return left.every((id) => id === null);
      },
      { timeoutMs: 30_000, intervalMs: 250, what: "the dead worker's containers to be reaped" },
    );
    expect(Date.now() - started).toBeLessThan(30_000);
    for (const job of jobs) await fetch(`${stack.api.url}/v1/jobs/${job.id}/cancel`, { method: 'POST' });
  } finally {
    if (child?.exitCode === null) child.kill('SIGKILL');
    await stack.close();
  }
}, 90_000);

describe('the runtime warning at worker start', () => {
  const apiKeys = { AUTH_MODE: 'api-key', API_KEYS: 'alice:alice-key-0123456789abcdef0123456789abcdef' };

  test.each([
    ['warns when auth is on and sandboxes run under runc', { ...apiKeys, SANDBOX_RUNTIME: 'runc' }, true],
    ['stays quiet when auth is on and sandboxes run under runsc', { ...apiKeys, SANDBOX_RUNTIME: 'runsc' }, false],
    ['stays quiet when auth is off (loopback only) under runc', { SANDBOX_RUNTIME: 'runc' }, false],
  ])('%s', async (_name, env, warns) => {
    const stack = await startStack(model, { env: { ...env, SANDBOX_POOL_SIZE: '0' } });
    try {
      const lines = stack.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event?: string; level: number; msg: string });
      expect(lines.some((l) => l.event === 'worker.started')).toBe(true);
      const warning = lines.filter((l) => l.event === 'worker.runtime_warning');
      if (warns) {
        expect(warning).toEqual([expect.objectContaining({ level: 40, msg: expect.stringContaining('SANDBOX_RUNTIME=runsc') })]);
      } else {
        expect(warning).toEqual([]);
      }
    } finally {
      await stack.close();
    }
  });
});
