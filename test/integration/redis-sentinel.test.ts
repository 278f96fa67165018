/**
 * Maestro on Redis behind Sentinel: a master, a replica and three sentinels (test/support/redis-sentinel.ts),
 * the stack told only where the sentinels are. The master is killed while jobs run in their
 * sandboxes; the sentinels promote the replica, and the API and the worker follow it.
 */
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { startApi } from '../../services/api/src/api-service';
import { ConfigError, loadConfig } from '../../services/shared/src/config';
import { cancelChannel } from '../../services/shared/src/queue';
import { TEST_PREFIX } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { startSentinelTopology, type SentinelTopology } from '../support/redis-sentinel';
import { getJob, request, stackEnv, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

/** Long enough that the failover (about 5 s with down-after-milliseconds 1000) happens while it runs. */
const SANDBOX_SLEEP_S = 5;
const script: Record<string, ScriptedReply[]> = {};
const slowJob = [codeCall(`import time\ntime.sleep(${SANDBOX_SLEEP_S})\nprint(6 * 7)`), { text: 'done' }];

let model: ModelServer;
let topology: SentinelTopology | undefined;
let stack: Stack | undefined;
let dir: string | undefined;
let env: Record<string, string>;

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  topology = await startSentinelTopology();
  dir = await mkdtemp('/var/tmp/maestro-sentinel-');
  await chmod(dir, 0o700);
  await writeFile(join(dir, 'redis-password'), `${topology.password}\n`, { mode: 0o600 });
  await writeFile(join(dir, 'sentinel-password'), `${topology.sentinelPassword}\n`, { mode: 0o600 });
  env = {
    // Only the sentinels say where Redis is: a host in REDIS_URL would be ignored, so this one goes nowhere.
    REDIS_URL: 'redis://ignored.invalid:6379',
    REDIS_PASSWORD_FILE: join(dir, 'redis-password'),
    REDIS_SENTINELS: topology.sentinels,
    REDIS_SENTINEL_MASTER: topology.masterName,
    REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'sentinel-password'),
    SANDBOX_POOL_SIZE: '0',
    WORKER_CONCURRENCY: '2',
  };
  stack = await startStack(model, { env });
}, 90_000);

afterAll(async () => {
  await stack?.close();
  await topology?.close();
  await model?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

interface LogLine {
  event?: string;
  service?: string;
  redis?: string;
}

test('jobs submitted before and after the master is killed mid-run all succeed on the promoted replica', async () => {
  const s = stack as Stack;
  const topo = topology as SentinelTopology;
  const before = await Promise.all(
    [1, 2, 3, 4].map(async (n) => {
      script[`before the failover ${n}`] = slowJob;
      return (await submitJob(s, { task: `before the failover ${n}` })).id;
    }),
  );
  // Two run (WORKER_CONCURRENCY), their code sleeping in its sandbox; two wait in the queue.
  await waitFor(async () => (await Promise.all(before.map((id) => getJob(s, id)))).filter((j) => j.status === 'running').length === 2, {
    what: 'two jobs to be running',
  });
  await waitFor(() => model.requests.filter((r) => r.task.startsWith('before the failover') && r.step === 0).length === 2, {
    what: 'the running jobs to have their code call',
  });

  const killedAt = Date.now();
  const oldMaster = await topo.killMaster();
  const newMaster = await waitFor(async () => {
    const address = await topo.masterAddress();
    return address !== oldMaster ? address : undefined;
  }, {
    timeoutMs: 30_000,
    intervalMs: 100,
    what: 'the sentinels to promote the replica',
  });
  const promotedMs = Date.now() - killedAt;
  // The API answers 503 until its connections have found the new master; then it takes jobs again.
  const after: string[] = [];
  for (const n of [1, 2]) {
    script[`after the failover ${n}`] = slowJob;
    after.push((await waitFor(() => submitJob(s, { task: `after the failover ${n}` }), { timeoutMs: 30_000, intervalMs: 100, what: 'the API to take a job' })).id);
  }
  const acceptingMs = Date.now() - killedAt;

  for (const id of [...before, ...after]) {
    const job = await waitForJobEnd(s, id, 60_000);
    expect(job).toMatchObject({ status: 'succeeded', result: { output: 'done' } });
    expect(JSON.stringify(job.steps)).toContain('42');
  }
  console.info(`failover: replica ${newMaster} promoted ${promotedMs} ms after the master was killed; API took jobs again after ${acceptingMs} ms; all 6 jobs done after ${Date.now() - killedAt} ms`);

  // What an operator reads: the outage and its end, naming the sentinels, never a password.
  const lines = s.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine);
  for (const service of ['api', 'worker']) {
    const outage = lines.filter((l) => l.service === service && (l.event === 'redis.down' || l.event === 'redis.up'));
    expect(outage[0]?.event).toBe('redis.down');
    expect(outage.at(-1)?.event).toBe('redis.up');
    for (const l of outage) expect(l.redis).toBe(`master ${topo.masterName} via sentinels ${topo.sentinels}`);
  }
  const text = s.logs.join('');
  expect(text).not.toContain(topo.password);
  expect(text).not.toContain(topo.sentinelPassword);
}, 150_000);

test('after the failover the worker listens for cancels on the promoted master, and a cancel stops a running job', async () => {
  const s = stack as Stack;
  // The stack's own connection goes through the sentinels too: this asks the master they name now.
  expect(await s.redis.pubsub('NUMSUB', cancelChannel(s.prefix))).toEqual([cancelChannel(s.prefix), 1]);
  const task = 'cancelled after the failover';
  script[task] = [codeCall('import time\ntime.sleep(20)'), { text: 'not reached' }];
  const job = await submitJob(s, { task });
  await waitFor(() => model.requests.some((r) => r.task === task && r.step === 0), { what: 'the job to have its code call' });
  const asked = Date.now();
  expect((await request(s, 'POST', `/v1/jobs/${job.id}/cancel`)).status).toBe(202);
  const ended = await waitForJobEnd(s, job.id, 15_000);
  expect(ended.status).toBe('cancelled');
  // Well before its 20 s sleep would have ended.
  expect(Date.now() - asked).toBeLessThan(10_000);
}, 60_000);

test('REDIS_URL naming a sentinel instead of Redis stops the API at start-up with one line saying what to set', async () => {
  const topo = topology as SentinelTopology;
  const prefix = `${TEST_PREFIX}sentinel-refused`;
  const config = loadConfig(stackEnv(model, prefix, { REDIS_URL: `redis://:${topo.sentinelPassword}@${topo.sentinels.split(',')[0] as string}` }));
  try {
    const started = startApi(config, { logger: pino({ level: 'silent' }) });
    await expect(started).rejects.toThrow(ConfigError);
    await expect(started).rejects.toThrow(
      'REDIS_URL points at a Sentinel, not at Redis: list the sentinels in REDIS_SENTINELS and name the master in REDIS_SENTINEL_MASTER',
    );
  } finally {
    await rm(join(config.ARTIFACT_DIR, prefix), { recursive: true, force: true });
  }
});
