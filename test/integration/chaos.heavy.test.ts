/**
 * Chaos: 100 jobs (code, one to three steps, some cancelled) on three worker processes, one of them
 * SIGKILLed every few seconds and replaced, and one restart of Redis (AOF, fsync on every write, so the
 * restart loses nothing) midway. Afterwards every job has ended exactly once, no step of any job's
 * record is duplicated or missing, nothing is left queued or running, and no sandbox container is left.
 */
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { docker } from '../support/docker';
import { codeCall, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { freePort } from '../support/ports';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { readSse } from '../support/sse';
import { getJob, request, startStack, submitJob, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';
import { spawnWorkerProcess, type WorkerProcess } from '../support/worker-process';

const JOBS = 100;
const CANCELLED = 15;
/** How long workers keep being killed. */
const CHAOS_MS = 60_000;
const KILL_EVERY_MS = 3000;
/** When, from the start of the chaos, Redis is restarted. */
const REDIS_RESTART_AT_MS = 25_000;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

interface Plan {
  task: string;
  /** code_executor calls before the final answer. */
  codeSteps: number;
  /** Seconds each call sleeps. */
  sleeps: number[];
}

// A fixed seed, so that a failure can be run again as it was.
let seed = 0x5eed1234;
function random(): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x80000000;
}
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;

const plans: Plan[] = Array.from({ length: JOBS }, (_, i) => {
  const codeSteps = 1 + Math.floor(random() * 3);
  return { task: `chaos job ${i}`, codeSteps, sleeps: Array.from({ length: codeSteps }, () => 0.2 + Math.round(random() * 8) / 10) };
});
const planOf = new Map(plans.map((p) => [p.task, p]));

function reply(task: string, step: number): ScriptedReply {
  const plan = planOf.get(task.split('\n')[0] ?? '');
  if (!plan) throw new Error(`no plan for task ${JSON.stringify(task)}`);
  if (step < plan.codeSteps) {
    return codeCall(`import time\ntime.sleep(${plan.sleeps[step]})\nprint(${JSON.stringify(`${plan.task} step ${step}`)})`);
  }
  return { text: `${plan.task} done` };
}

let model: ModelServer | undefined;
let redis: RedisContainer | undefined;
let stack: Stack | undefined;
const live: WorkerProcess[] = [];
const spawned: WorkerProcess[] = [];

const isRunning = (w: WorkerProcess): boolean => w.child.exitCode === null && w.child.signalCode === null;

function spawnWorker(s: Stack): WorkerProcess {
  const w = spawnWorkerProcess(s);
  spawned.push(w);
  live.push(w);
  return w;
}

async function killOne(s: Stack): Promise<void> {
  const victim = pick(live);
  live.splice(live.indexOf(victim), 1);
  victim.child.kill('SIGKILL');
  await victim.exited;
  spawnWorker(s);
}

/** An API call that rides out the Redis restart (503s, dropped connections) by trying again. */
async function retrying<T>(what: string, call: () => Promise<T | undefined>): Promise<T> {
  return waitFor(call, { timeoutMs: 60_000, intervalMs: 250, what });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  model = await startModelServer((req) => reply(req.task, req.step));
});

afterAll(async () => {
  for (const w of spawned) if (isRunning(w)) w.child.kill('SIGKILL');
  await Promise.all(spawned.map((w) => w.exited));
  if (redis && stack) {
    // Redis may have been left stopped by a failure: the stack's close needs it to delete its keys.
    await docker.getContainer(redis.id).start().catch(() => undefined);
  }
  await stack?.close().catch(() => undefined);
  await redis?.close();
  await model?.close();
}, 60_000);

test('100 jobs through SIGKILLed workers and a Redis restart: each ends exactly once, no step duplicated, nothing left behind', async () => {
  const port = await freePort();
  redis = await startRedisContainer({ args: ['--appendonly', 'yes', '--appendfsync', 'always'], hostPort: port, role: 'test-redis-chaos' });
  stack = await startStack(model as ModelServer, {
    workers: 0,
    env: {
      REDIS_URL: redis.url,
      JOB_ATTEMPTS: '10',
      WORKER_LOCK_MS: '2000',
      REAPER_INTERVAL_MS: '2000',
      SANDBOX_POOL_SIZE: '1',
      WORKER_CONCURRENCY: '3',
      WORKER_SHUTDOWN_GRACE_MS: '2000',
      CALLER_MAX_ACTIVE_JOBS: '1000',
    },
  });
  const s = stack;
  const redisContainer = docker.getContainer(redis.id);
  for (let i = 0; i < 3; i++) spawnWorker(s);

  const started = Date.now();
  const ids: string[] = [];
  const cancelAsked = new Map<string, number>();
  const cancelPlans = new Set<number>();
  while (cancelPlans.size < CANCELLED) cancelPlans.add(Math.floor(random() * JOBS));
  const background: Promise<unknown>[] = [];

  // Submissions, spread over the first ~20 s; some of them cancelled 0–8 s after submission.
  const submitting = (async () => {
    for (let i = 0; i < JOBS; i++) {
      const plan = plans[i] as Plan;
      const job = await retrying(`job ${i} to be taken`, async () => submitJob(s, { task: plan.task }));
      ids[i] = job.id;
      if (cancelPlans.has(i)) {
        const delay = Math.floor(random() * 8000);
        background.push(
          sleep(delay).then(() =>
            retrying(`the cancel of job ${i} to be answered`, async () => {
              const res = await request(s, 'POST', `/v1/jobs/${job.id}/cancel`);
              if (res.status >= 500) return undefined;
              cancelAsked.set(job.id, res.status);
              return true;
            }),
          ),
        );
      }
      await sleep(200);
    }
  })();

  // The chaos: a worker SIGKILLed every few seconds (and replaced), and Redis restarted once.
  let restarted = false;
  let kills = 0;
  while (Date.now() - started < CHAOS_MS) {
    await sleep(KILL_EVERY_MS);
    await killOne(s);
    kills++;
    if (!restarted && Date.now() - started >= REDIS_RESTART_AT_MS) {
      restarted = true;
      await redisContainer.restart({ t: 2 });
      await waitFor(async () => (await s.redis.ping()) === 'PONG', { timeoutMs: 20_000, what: 'Redis to answer after its restart' });
    }
  }
  await submitting;
  await Promise.all(background);
  // No worker died on its own: each that is gone was killed here.
  expect(live.filter((w) => !isRunning(w)).map((w) => w.stderr())).toEqual([]);
  expect(restarted).toBe(true);
  expect(ids.filter(Boolean)).toHaveLength(JOBS);
  expect(cancelAsked.size).toBe(CANCELLED);

  // Calm: three healthy workers finish whatever is left.
  const views = await waitFor(
    async () => {
      const all = await Promise.all(ids.map((id) => getJob(s, id)));
      return all.every((j) => TERMINAL.has(j.status)) ? all : undefined;
    },
    { timeoutMs: 120_000, intervalMs: 1000, what: 'every job to end' },
  );
  const chaosSeconds = Math.round((Date.now() - started) / 1000);

  const failures: string[] = [];
  const byStatus: Record<string, number> = {};
  for (const [i, job] of views.entries()) {
    const plan = plans[i] as Plan;
    byStatus[job.status] = (byStatus[job.status] ?? 0) + 1;
    const indexes = job.steps.map((st) => st.index);
    if (indexes.some((x, n) => x !== n)) {
      const detail = job.steps.map((st) => `${st.index}:${st.type}@${st.startedAt}`).join(' ');
      failures.push(`${plan.task} (${job.id}, ${job.attempts} attempts, ${job.status}): step indexes ${JSON.stringify(indexes)} [${detail}]`);
    }
    const toolCalls = job.steps.filter((st) => st.type === 'tool').map((st) => (st as { callId: string }).callId);
    if (new Set(toolCalls).size !== toolCalls.length) failures.push(`${plan.task} (${job.id}): a tool call recorded twice ${JSON.stringify(toolCalls)}`);
    if (job.status === 'cancelled') {
      if (job.stopReason !== 'cancelled') failures.push(`${plan.task} (${job.id}): cancelled with stopReason ${job.stopReason}`);
      if (!cancelAsked.has(job.id)) failures.push(`${plan.task} (${job.id}): cancelled, though nobody asked`);
    } else if (job.status === 'succeeded') {
      if (job.steps.length !== 2 * plan.codeSteps + 1) failures.push(`${plan.task} (${job.id}): ${job.steps.length} steps for ${plan.codeSteps} code calls`);
      if (job.result?.output !== `${plan.task} done`) failures.push(`${plan.task} (${job.id}): result ${JSON.stringify(job.result)}`);
    } else if (job.error?.code !== 'worker_lost') {
      failures.push(`${plan.task} (${job.id}): failed ${JSON.stringify(job.error)} after ${job.attempts} attempts`);
    }
  }

  // The events stream of each finished job, replayed: one terminal status, each step once.
  for (const id of ids) {
    const read = await readSse(`${s.api.url}/v1/jobs/${id}/events`);
    const statuses = read.events.filter((e) => e.event === 'status').map((e) => (JSON.parse(e.data) as { status?: string }).status);
    const terminal = statuses.filter((st) => st !== undefined && TERMINAL.has(st));
    if (!read.ended || terminal.length !== 1) failures.push(`${id}: events stream statuses ${JSON.stringify(statuses)} (ended: ${read.ended})`);
    const stepIndexes = read.events.filter((e) => e.event === 'step').map((e) => (JSON.parse(e.data) as { index: number }).index);
    if (new Set(stepIndexes).size !== stepIndexes.length) failures.push(`${id}: step events ${JSON.stringify(stepIndexes)}`);
  }

  // The killed workers' containers: the live workers' reapers remove them once the heartbeats lapse.
  const jobIds = new Set(ids);
  const leftovers = async () =>
    (await docker.listContainers({ all: true, filters: { label: ['maestro.role=sandbox'] } })).filter(
      (c) => jobIds.has(c.Labels[LABEL.job] ?? '') || (c.Labels[LABEL.worker] ?? '').startsWith(`${s.prefix}.`),
    );
  await waitFor(async () => (await leftovers()).every((c) => !jobIds.has(c.Labels[LABEL.job] ?? '')), {
    timeoutMs: 45_000,
    intervalMs: 1000,
    what: "every job's container to go",
  });
  // Then the workers stop (SIGTERM, as in production), and their pools go with them; the last
  // dead worker's pool container goes by the reaper only, so one worker stays up until it has.
  const [keeper, ...others] = live;
  for (const w of others) w.child.kill('SIGTERM');
  await Promise.all(others.map((w) => w.exited));
  await waitFor(async () => (await leftovers()).length <= 1, { timeoutMs: 45_000, intervalMs: 1000, what: "the dead workers' pool containers to go" }).catch(
    () => undefined,
  );
  keeper?.child.kill('SIGTERM');
  await keeper?.exited;
  const left = await leftovers();

  const resumed = views.filter((j) => j.attempts > 1).length;
  console.log(
    `chaos: ${JOBS} jobs, ${kills} workers SIGKILLed, Redis restarted once, all ended after ${chaosSeconds} s: ${JSON.stringify(byStatus)}; ` +
      `${resumed} jobs ran more than one attempt (most ${Math.max(...views.map((j) => j.attempts))}); cancels answered ${JSON.stringify([...cancelAsked.values()])}`,
  );
  // The kills did hit running jobs, which then resumed elsewhere.
  expect(resumed).toBeGreaterThan(0);
  expect(failures).toEqual([]);
  for (const job of views) expect(['succeeded', 'failed', 'cancelled']).toContain(job.status);
  expect(left.map((c) => `${c.Id.slice(0, 12)} worker=${c.Labels[LABEL.worker]} job=${c.Labels[LABEL.job]} ${c.State}`)).toEqual([]);
}, 300_000);
