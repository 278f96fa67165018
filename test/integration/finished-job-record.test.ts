/**
 * A finished job's history leaves Redis for a record in the artifact store, and reads the same from
 * there. Writing the record first and trimming Redis after, in one script that checks nothing changed
 * meanwhile, keeps the job whole in one place or the other: a step landing while the record is
 * written goes into it, a crash between the two leaves the live job in Redis, and of two racing
 * finishers only the winner's record is named.
 */
import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import express from 'express';
import pino from 'pino';
import { jobEventsHandler } from '../../services/api/src/routes/job-events';
import { DirectoryArtifactStore } from '../../services/shared/src/artifact-store';
import { newJobId } from '../../services/shared/src/ids';
import type { JobSpec, Step } from '../../services/shared/src/job-schema';
import { JobStore } from '../../services/shared/src/job-store';
import { readSse } from '../support/sse';
import { useStoreFixture } from '../support/store-fixture';
import { TEST_ARTIFACT_ROOT } from '../support/stack';

const fixture = useStoreFixture('rec');
const { prefix } = fixture;
const quota = { jobBytes: 10_000, jobFiles: 10, callerBytes: 100_000 };

const spec: JobSpec = {
  task: 'a task',
  provider: 'openai',
  model: 'm',
  tools: ['code_executor'],
  maxSteps: 5,
  timeoutSeconds: 60,
  metadata: { team: 'records' },
  inputs: [],
  caller: 'ada',
};

function modelStep(index: number, text: string): Step {
  return { index, type: 'model', startedAt: new Date().toISOString(), durationMs: 5, text, toolCalls: [], usage: { inputTokens: 10, outputTokens: 5 }, stopReason: 'end' };
}

/** A running job with one recorded step and one artifact. */
async function runningJob(store: JobStore): Promise<string> {
  const id = newJobId();
  expect((await store.create(id, spec, new Date(), { maxActive: 10 })).outcome).toBe('created');
  await store.markRunning(id, new Date());
  await store.recordSteps(id, [modelStep(0, 'thinking')], { inputTokens: 10, outputTokens: 5 });
  const bytes = await fixture.files.putArtifact(id, Buffer.from('chart'));
  const saved = await store.saveArtifact(id, 'ada', { name: 'chart.png', size: 5, contentType: 'image/png', sha256: bytes.sha256, step: 0, file: bytes.file }, quota);
  expect(saved.outcome).toBe('saved');
  return id;
}

const records = async (id: string): Promise<string[]> => readdir(join(TEST_ARTIFACT_ROOT, prefix, 'jobs', id, 'records')).catch(() => []);

test('a finished job reads the same from its record, and Redis keeps a small hash naming it', async () => {
  const store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  const id = await runningJob(store);
  const live = await store.getFor('ada', id);

  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
  const finished = await store.getFor('ada', id);
  expect(finished).toEqual({ ...live, status: 'succeeded', stopReason: 'completed', result: { output: 'done' }, finishedAt: expect.any(String) });
  expect(await store.getFor('bob', id)).toBe(null);
  expect((await store.list('ada', { limit: 10 })).jobs).toEqual([(({ steps: _s, ...rest }) => rest)(finished as NonNullable<typeof finished>)]);
  expect(await store.artifact('ada', id, 'chart.png')).toMatchObject({ name: 'chart.png', size: 5 });

  // In Redis: the hash (no spec, no result, no steps) and, for a few seconds, the event stream.
  const hash = await fixture.redis.hgetall(`${prefix}:job:${id}`);
  expect(Object.keys(hash).sort()).toEqual(
    ['caller', 'createdAt', 'finishedAt', 'inputTokens', 'outputTokens', 'record', 'startedAt', 'status', 'stopReason'].sort(),
  );
  expect((await fixture.redis.keys(`${prefix}:job:${id}*`)).sort()).toEqual([`${prefix}:job:${id}`, `${prefix}:job:${id}:events`]);
  expect(await fixture.redis.pttl(`${prefix}:job:${id}:events`)).toBeLessThanOrEqual(10_000);
  expect(await records(id)).toEqual([`${hash.record}.jsonl.gz`]);
  // Finishing again changes nothing.
  expect(await store.finish(id, { status: 'failed', stopReason: 'error', error: { code: 'late', message: 'late' } })).toBe(false);
  expect((await store.getFor('ada', id))?.status).toBe('succeeded');
});

test('a step recorded while the record is being written goes into the record', async () => {
  // Another worker that took the job over records a step just as this one writes the record.
  const other = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  let interfered = false;
  const racing = Object.assign(Object.create(fixture.files) as DirectoryArtifactStore, {
    putRecord: async (jobId: string, data: Buffer): Promise<string> => {
      if (!interfered) {
        interfered = true;
        await other.recordSteps(jobId, [modelStep(1, 'from the other worker')], { inputTokens: 1, outputTokens: 1 });
      }
      return fixture.files.putRecord(jobId, data);
    },
  });
  const store = new JobStore(fixture.redis, prefix, 3600, racing);
  const id = await runningJob(store);

  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
  const job = await store.getFor('ada', id);
  expect(job?.steps.map((s) => s.index)).toEqual([0, 1]);
  expect(job?.usage).toEqual({ inputTokens: 11, outputTokens: 6 });
  // The first record, written before the step, was removed; the second is the job's.
  expect(await records(id)).toHaveLength(1);
});

test('a crash between writing the record and trimming Redis leaves the job live and whole in Redis, and the next finish ends it', async () => {
  const crashing = Object.assign(Object.create(fixture.files) as DirectoryArtifactStore, {
    putRecord: async (jobId: string, data: Buffer): Promise<string> => {
      await fixture.files.putRecord(jobId, data);
      throw new Error('the worker died here');
    },
  });
  const id = await runningJob(new JobStore(fixture.redis, prefix, 3600, fixture.files));
  const before = await new JobStore(fixture.redis, prefix, 3600, fixture.files).getFor('ada', id);

  await expect(new JobStore(fixture.redis, prefix, 3600, crashing).finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'lost' } })).rejects.toThrow(
    'the worker died here',
  );
  const store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  expect(await store.getFor('ada', id)).toEqual(before);
  expect(await fixture.redis.hget(`${prefix}:job:${id}`, 'record')).toBe(null);

  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
  expect(await store.getFor('ada', id)).toMatchObject({ status: 'succeeded', result: { output: 'done' }, steps: before?.steps });
  // The unnamed record stays in the job's directory until the job goes.
  expect(await records(id)).toHaveLength(2);
  await store.remove(id);
  await fixture.files.removeJob(id);
  expect(await records(id)).toEqual([]);
});

test('of two finishers racing, one ends the job and only its record remains', async () => {
  const store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  const id = await runningJob(store);
  const results = await Promise.all([
    store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'the worker' } }),
    store.finish(id, { status: 'cancelled', stopReason: 'cancelled', error: { code: 'cancelled', message: 'Cancelled by the caller.' } }),
  ]);
  expect(results.filter(Boolean)).toHaveLength(1);
  const job = await store.getFor('ada', id);
  expect(job?.status).toBe(results[0] ? 'succeeded' : 'cancelled');
  expect(await records(id)).toEqual([`${await fixture.redis.hget(`${prefix}:job:${id}`, 'record')}.jsonl.gz`]);
});

test('a job deleted while it is being finished leaves nothing behind', async () => {
  // Its owner deletes it (the API) just as a worker writes its record.
  const api = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  const deleting = Object.assign(Object.create(fixture.files) as DirectoryArtifactStore, {
    putRecord: async (jobId: string, data: Buffer): Promise<string> => {
      await api.remove(jobId);
      await fixture.files.removeJob(jobId);
      return fixture.files.putRecord(jobId, data);
    },
  });
  const store = new JobStore(fixture.redis, prefix, 3600, deleting);
  const id = await runningJob(store);
  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(false);
  expect(await fixture.redis.keys(`${prefix}:job:${id}*`)).toEqual([]);
  expect((await readdir(join(TEST_ARTIFACT_ROOT, prefix, 'jobs'))).includes(id)).toBe(false);
});

test('an event stream whose job finished, and whose Redis stream went, while it was between reads goes on from the record', async () => {
  const store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  const id = await runningJob(store);
  const seen = (await fixture.redis.xrange(`${prefix}:job:${id}:events`, '-', '+')).map(([eventId]) => eventId);
  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
  await fixture.redis.del(`${prefix}:job:${id}:events`); // its grace has passed
  // The stream was told the job was live, then read everything up to the step before the job finished.
  let asked = false;
  const stale = Object.assign(Object.create(store) as JobStore, {
    eventLog: async (caller: string, jobId: string): ReturnType<JobStore['eventLog']> => {
      if (asked) return store.eventLog(caller, jobId);
      asked = true;
      return { live: true };
    },
  });
  const app = express();
  app.use((_req, res, next) => {
    res.locals.caller = 'ada';
    next();
  });
  app.get(
    '/events/:id',
    jobEventsHandler({ store: stale, redis: fixture.redis, logger: pino({ level: 'silent' }), heartbeatMs: 200, jobIdParam: (req) => String(req.params.id), prefix, maxStreamsPerCaller: 10 }),
  );
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const { port } = server.address() as AddressInfo;
    const read = await readSse(`http://127.0.0.1:${port}/events/${id}`, { headers: { 'Last-Event-ID': seen.at(-1) as string }, timeoutMs: 5000 });
    expect(read.ended).toBe(true);
    expect(read.events).toEqual([{ id: expect.any(String), event: 'status', data: expect.stringContaining('"status":"succeeded"') }]);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
