/**
 * Every sandbox container has a hard lifetime that does not depend on its worker's own cleanup: the
 * reaper of a live worker removes one whose removal failed, finds a pool container by the job that
 * took it, and never touches the containers of another deployment on the same engine.
 */
import Docker from 'dockerode';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { Reaper } from '../../services/worker/src/sandbox/reaper';
import { containersWith, TEST_PREFIX } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { getJob, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const REAPER_INTERVAL_MS = 2000;
/** A sweep lists containers and asks Redis about each: it takes a moment beyond its interval. */
const SWEEP_SLACK_MS = 1500;
const CONTAINER_ID = [
  'import re',
  "m = re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read()) or re.search(r'([0-9a-f]{64})', open('/proc/self/cgroup').read())",
  "print('container=' + (m.group(1) if m else 'unknown'))",
].join('\n');

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

/** Makes the engine refuse the first removal of one container, as a busy or restarting engine would. */
function failFirstRemovalOf(containerId: () => string | undefined): jest.SpyInstance {
  const original = Docker.Container.prototype.remove;
  const failed = new Set<string>();
  return jest.spyOn(Docker.Container.prototype, 'remove').mockImplementation(function (this: Docker.Container, ...args: unknown[]) {
    const target = containerId();
    if (target !== undefined && this.id === target && !failed.has(target)) {
      failed.add(target);
      return Promise.reject(Object.assign(new Error('injected: the engine refused the removal'), { statusCode: 500 }));
    }
    return (original as (...a: unknown[]) => Promise<unknown>).apply(this, args);
  } as typeof original);
}

describe.each([
  ['labelled with its job', '0'],
  ['taken from the pool', '1'],
])('a sandbox %s', (_kind, poolSize) => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(model, { env: { SANDBOX_POOL_SIZE: poolSize, REAPER_INTERVAL_MS: String(REAPER_INTERVAL_MS) } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('whose removal failed when its job ended is removed by the reaper within one interval, its worker alive', async () => {
    let target: string | undefined;
    const spy = failFirstRemovalOf(() => target);
    try {
      const task = `removal fails (pool ${poolSize})`;
      // The model's last turn waits, so the container is known before the job ends and removes it.
      script[task] = [codeCall(CONTAINER_ID), { text: 'done', delayMs: 1500 }];
      const submitted = await submitJob(stack, { task });
      target = await waitFor(
        async () => {
          const job = await getJob(stack, submitted.id);
          return /container=([0-9a-f]{64})/.exec(JSON.stringify(job.steps))?.[1];
        },
        { timeoutMs: 30_000, what: 'the job to report its container' },
      );
      const job = await waitForJobEnd(stack, submitted.id);
      expect(job.status).toBe('succeeded');
      const ended = Date.now();
      await waitFor(async () => (await containersWith({ [LABEL.role]: 'sandbox' })).every((c) => c.Id !== target), {
        timeoutMs: REAPER_INTERVAL_MS + SWEEP_SLACK_MS + 5000,
        what: 'the reaper to remove the container',
      });
      expect(Date.now() - ended).toBeLessThan(REAPER_INTERVAL_MS + SWEEP_SLACK_MS);
      expect(spy.mock.contexts.some((c) => (c as Docker.Container).id === target)).toBe(true);
      expect(stack.logs.join('')).toMatch(/"event":"sandbox\.reaped"[^\n]*"reason":"job_finished"/);
    } finally {
      spy.mockRestore();
    }
  });
});

test('two deployments with the same prefix on one engine, each with its own Redis, never reap each other', async () => {
  const prefix = `${TEST_PREFIX}twin${process.pid}`;
  let otherRedis: RedisContainer | undefined;
  const stacks: Stack[] = [];
  try {
    otherRedis = await startRedisContainer();
    const env = { SANDBOX_POOL_SIZE: '2', REAPER_INTERVAL_MS: '1000' };
    stacks.push(await startStack(model, { prefix, env }));
    stacks.push(await startStack(model, { prefix, env: { ...env, REDIS_URL: otherRedis.url } }));
    const pools = () => containersWith({ [LABEL.role]: 'sandbox' }).then((list) => list.filter((c) => c.Labels[LABEL.worker]?.startsWith(`${prefix}.`)));
    await waitFor(async () => (await pools()).length === 4, { timeoutMs: 30_000, what: 'both pools to fill' });
    const before = (await pools()).map((c) => c.Id).sort();
    expect(new Set((await pools()).map((c) => c.Labels[LABEL.deployment])).size).toBe(2);

    // Three reaper intervals of both deployments, counted by their finished sweeps rather than by a clock.
    const swept = { count: 0 };
    const original = Reaper.prototype.sweep;
    const spy = jest.spyOn(Reaper.prototype, 'sweep').mockImplementation(async function (this: Reaper) {
      const removed = await original.call(this);
      swept.count += 1;
      return removed;
    });
    try {
      await waitFor(async () => swept.count >= 3 * stacks.length, { timeoutMs: 15_000, what: 'three sweeps of each reaper' });
    } finally {
      spy.mockRestore();
    }
    expect((await pools()).map((c) => c.Id).sort()).toEqual(before);
    for (const stack of stacks) expect(stack.logs.join('')).not.toContain('sandbox.reaped');
  } finally {
    await Promise.all(stacks.map((s) => s.close()));
    await otherRedis?.close();
  }
});
