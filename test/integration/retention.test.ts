/**
 * The retention sweep: a finished job's files go with its record when its retention ends, and its
 * bytes go back to its caller's quota; what a crash left behind (a job directory without a job, an
 * upload without a request) goes too, but not before it is an hour old.
 */
import { mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { newJobId } from '../../services/shared/src/ids';
import type { JobSpec } from '../../services/shared/src/job-schema';
import { JobStore } from '../../services/shared/src/job-store';
import { RetentionSweeper } from '../../services/worker/src/retention';
import { useStoreFixture } from '../support/store-fixture';
import { TEST_ARTIFACT_ROOT } from '../support/stack';

const fixture = useStoreFixture('ret');
const { prefix } = fixture;
const quota = { jobBytes: 10_000, jobFiles: 10, callerBytes: 100_000 };

function spec(caller: string, inputs: JobSpec['inputs'] = []): JobSpec {
  return { task: 't', provider: 'openai', model: 'm', tools: ['code_executor'], maxSteps: 1, timeoutSeconds: 60, metadata: {}, inputs, caller };
}

/** A finished job of `caller` with one input and one artifact, stored as the API and a worker store them. */
async function finishedJobWithFiles(store: JobStore, caller: string): Promise<string> {
  const id = newJobId();
  const upload = join(fixture.files.uploadDir(), `upload-${id}`);
  await writeFile(upload, 'a,b\n1,2\n');
  await fixture.files.adoptInputs(id, [{ name: 'data.csv', path: upload }]);
  const created = await store.create(id, spec(caller, [{ name: 'data.csv', size: 8, contentType: 'text/csv', sha256: 'x' }]), new Date(), {
    maxActive: 10,
    storageQuotaBytes: quota.callerBytes,
  });
  expect(created.outcome).toBe('created');
  await store.markRunning(id, new Date());
  const bytes = await fixture.files.putArtifact(id, Buffer.alloc(1000, 1));
  const saved = await store.saveArtifact(id, caller, { name: 'out.bin', size: bytes.size, contentType: 'application/octet-stream', sha256: bytes.sha256, step: 1, file: bytes.file }, quota);
  expect(saved.outcome).toBe('saved');
  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'ok' } })).toBe(true);
  return id;
}

async function jobDirs(): Promise<string[]> {
  return (await readdir(join(TEST_ARTIFACT_ROOT, prefix, 'jobs'))).sort();
}

test("a job whose retention ended loses its record and fixture.files, and its caller gets the bytes back", async () => {
  const store = new JobStore(fixture.redis, prefix, 60, fixture.files);
  const sweeper = new RetentionSweeper({ store, files: fixture.files, logger: pino({ level: 'silent' }), orphanScanEvery: 1000 });
  const expiring = await finishedJobWithFiles(store, 'carol');
  const kept = await finishedJobWithFiles(new JobStore(fixture.redis, prefix, 3600, fixture.files), 'carol');
  expect(await store.storedBytes('carol')).toBe(2 * 1008);
  expect(await jobDirs()).toEqual([expiring, kept].sort());

  // Not yet: within its retention the job and its fixture.files stay.
  expect(await sweeper.sweep(new Date(Date.now() + 30_000))).toEqual({ expired: 0, orphans: 0 });
  expect(await store.getFor('carol', expiring)).not.toBe(null);

  expect(await sweeper.sweep(new Date(Date.now() + 61_000))).toEqual({ expired: 1, orphans: 0 });
  expect(await store.getFor('carol', expiring)).toBe(null);
  expect(await fixture.redis.keys(`${prefix}:job:${expiring}*`)).toEqual([]);
  expect(await jobDirs()).toEqual([kept]);
  expect(await store.storedBytes('carol')).toBe(1008);
  // Its keys' own expiry is only a backstop, a day later: the sweep does the removing.
  expect(await fixture.redis.ttl(`${prefix}:job:${kept}`)).toBeGreaterThan(3600 + 23 * 3600);
});

test('a job directory without a job, and an upload without a request, go once they are an hour old', async () => {
  const store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  const sweeper = new RetentionSweeper({ store, files: fixture.files, logger: pino({ level: 'silent' }), orphanScanEvery: 1 });
  const live = await finishedJobWithFiles(store, 'dave');
  const [old, fresh] = [newJobId(), newJobId()];
  for (const id of [old, fresh]) {
    await mkdir(join(TEST_ARTIFACT_ROOT, prefix, 'jobs', id, 'artifacts'), { recursive: true });
    await writeFile(join(TEST_ARTIFACT_ROOT, prefix, 'jobs', id, 'artifacts', 'leftover'), 'x');
  }
  const staleUpload = join(fixture.files.uploadDir(), 'stale-upload');
  const freshUpload = join(fixture.files.uploadDir(), 'fresh-upload');
  await writeFile(staleUpload, 'x');
  await writeFile(freshUpload, 'x');
  const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
  await utimes(join(TEST_ARTIFACT_ROOT, prefix, 'jobs', old), twoHoursAgo, twoHoursAgo);
  await utimes(join(TEST_ARTIFACT_ROOT, prefix, 'jobs', live), twoHoursAgo, twoHoursAgo);
  await utimes(staleUpload, twoHoursAgo, twoHoursAgo);

  expect(await sweeper.sweep()).toEqual({ expired: 0, orphans: 2 });
  const dirs = await jobDirs();
  expect(dirs).toEqual(expect.arrayContaining([live, fresh]));
  expect(dirs).not.toContain(old);
  expect((await readdir(fixture.files.uploadDir())).sort()).toEqual(['fresh-upload']);
});
