/**
 * Artifacts no longer live in Redis: on a stack whose Redis has `maxmemory 64mb` and `noeviction`,
 * 30 jobs each storing 3 × 10 MiB (900 MiB in all, far past what that Redis could hold) all succeed,
 * Redis grows by less than 5 MiB, every file downloads byte-exact, and the API still takes new jobs.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import type { Redis } from 'ioredis';
import type { JobView } from '../../services/shared/src/job-schema';
import { codeCall, scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

const MIB = 1024 * 1024;
const JOBS = 30;
const FILES = ['a.bin', 'b.bin', 'c.bin'];
/** Exactly the runner's per-file cap (runner.py refuses only a file larger than it). */
const FILE_BYTES = 10 * MIB;
const TASK = 'store thirty megabytes';

const CODE = [
  'import os',
  `for name in ${JSON.stringify(FILES)}:`,
  "    with open('/output/' + name, 'wb') as f:",
  `        f.write(os.urandom(${FILE_BYTES}))`,
  "print('wrote', len(os.listdir('/output')), 'files')",
].join('\n');

let model: ModelServer;
let redis: RedisContainer | undefined;
let stack: Stack | undefined;

beforeAll(async () => {
  model = await startModelServer(scriptBySteps({ [TASK]: [codeCall(CODE), { text: 'stored' }], 'after the flood': [{ text: 'fine' }] }));
});
afterAll(async () => {
  await stack?.close();
  await redis?.close();
  await model?.close();
});

async function usedMemory(client: Redis): Promise<number> {
  const info = await client.info('memory');
  const m = /^used_memory:(\d+)\r?$/m.exec(info);
  if (!m) throw new Error(`no used_memory in INFO memory: ${info.slice(0, 200)}`);
  return Number(m[1]);
}

/** Downloads an artifact as a stream, hashing it on the way: never the whole file in memory. */
async function download(s: Stack, jobId: string, name: string): Promise<{ status: number; etag: string | null; size: number; sha256: string }> {
  const res = await fetch(`${s.api.url}/v1/jobs/${jobId}/artifacts/${encodeURIComponent(name)}`);
  const hash = createHash('sha256');
  let size = 0;
  if (res.body) {
    for await (const chunk of Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>)) {
      const buf = chunk as Buffer;
      size += buf.length;
      hash.update(buf);
    }
  }
  return { status: res.status, etag: res.headers.get('etag'), size, sha256: hash.digest('hex') };
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(lanes);
}

test(`${JOBS} jobs of 3 × 10 MiB on a 64 MB noeviction Redis all succeed, Redis grows < 5 MiB and every file downloads byte-exact`, async () => {
  redis = await startRedisContainer({ args: ['--maxmemory', '64mb', '--maxmemory-policy', 'noeviction'], role: 'test-redis-artifacts' });
  stack = await startStack(model, {
    env: {
      REDIS_URL: redis.url,
      WORKER_CONCURRENCY: '2',
      SANDBOX_POOL_SIZE: '2',
      // One execution hands back all three files (30 MiB), past the default 25 MiB per execution.
      ARTIFACT_QUOTA_MB_PER_EXECUTION: '32',
      ARTIFACT_QUOTA_MB_PER_CALLER: '4096',
    },
  });
  const s = stack;
  expect(await s.redis.config('GET', 'maxmemory')).toEqual(['maxmemory', String(64 * MIB)]);
  expect(await s.redis.config('GET', 'maxmemory-policy')).toEqual(['maxmemory-policy', 'noeviction']);
  const before = await usedMemory(s.redis);

  const ids: string[] = [];
  for (let i = 0; i < JOBS; i++) ids.push((await submitJob(s, { task: TASK })).id);
  const jobs: JobView[] = [];
  for (const id of ids) jobs.push(await waitForJobEnd(s, id, 150_000));

  const after = await usedMemory(s.redis);
  const failed = jobs.filter((j) => j.status !== 'succeeded').map((j) => ({ id: j.id, status: j.status, error: j.error }));
  expect(failed).toEqual([]);
  for (const job of jobs) {
    expect(job.artifacts).toEqual(
      FILES.map((name) => ({ name, size: FILE_BYTES, contentType: expect.any(String), sha256: expect.stringMatching(/^[0-9a-f]{64}$/), step: 1 })),
    );
    const tool = job.steps.find((st) => st.type === 'tool');
    expect(tool?.output).toMatch(/files saved: /);
    expect(tool?.output).not.toMatch(/not saved/);
  }
  // os.urandom: every file differs from every other.
  expect(new Set(jobs.flatMap((j) => j.artifacts.map((a) => a.sha256))).size).toBe(JOBS * FILES.length);

  const grewBy = after - before;
  expect(grewBy).toBeLessThan(5 * MIB);

  const pairs = jobs.flatMap((j) => j.artifacts.map((a) => ({ jobId: j.id, artifact: a })));
  await eachLimited(pairs, 3, async ({ jobId, artifact }) => {
    const got = await download(s, jobId, artifact.name);
    expect({ jobId, name: artifact.name, ...got }).toEqual({
      jobId,
      name: artifact.name,
      status: 200,
      etag: `"${artifact.sha256}"`,
      size: artifact.size,
      sha256: artifact.sha256,
    });
  });

  const res = await request(s, 'POST', '/v1/jobs', { task: 'after the flood' });
  expect(res.status).toBe(202);
  expect(await waitForJobEnd(s, (res.body as JobView).id)).toMatchObject({ status: 'succeeded' });
}, 180_000);
