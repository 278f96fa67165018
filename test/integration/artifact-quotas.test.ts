/**
 * Artifact quotas as a user meets them: a job keeps no more than ARTIFACT_QUOTA_MB_PER_JOB over all
 * its attempts (a worker SIGKILLed mid-job does not give the retry a fresh allowance), and a caller
 * past ARTIFACT_QUOTA_MB_PER_CALLER is told "not saved (quota: …)" while another caller's files are
 * still saved. What is refused leaves no bytes behind in the artifact store.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { JobView } from '../../services/shared/src/job-schema';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, request, startStack, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';
import { spawnWorkerProcess, type WorkerProcess } from '../support/worker-process';

const MIB = 1024 * 1024;

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

/** Python writing each named file in /output: 1 MiB of random bytes apiece. */
function writeFiles(...names: string[]): ScriptedReply {
  return codeCall(
    [
      'import os',
      `for name in ${JSON.stringify(names)}:`,
      "    with open('/output/' + name, 'wb') as f:",
      `        f.write(os.urandom(${MIB}))`,
      "print('wrote', name)",
    ].join('\n'),
  );
}

/** The tool steps' outputs of a job, in order: what the job view shows of each code_executor call. */
function toolOutputs(job: JobView): string[] {
  return job.steps.flatMap((s) => (s.type === 'tool' ? [s.output] : []));
}

/** What the model was told by the tools, on each request of `task` (by step): its view of the job. */
function modelSaw(task: string): Map<number, string> {
  return new Map(model.requests.filter((r) => r.task === task).map((r) => [r.step, r.toolResults.map((t) => t.content).join('\n')]));
}

const notSavedForQuota = (name: string): RegExp => new RegExp(`files not saved: .*/output/${name.replace('.', '\\.')} \\(quota: [^)]+\\)`);
const totalSize = (job: JobView): number => job.artifacts.reduce((sum, a) => sum + a.size, 0);

const sha256Of = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

/** Downloads an artifact as its owner would: the status, and the bytes' SHA-256 when there are bytes. */
async function download(stack: Stack, jobId: string, name: string, headers: Record<string, string> = {}): Promise<{ status: number; sha256?: string }> {
  const res = await fetch(`${stack.api.url}/v1/jobs/${jobId}/artifacts/${encodeURIComponent(name)}`, { headers });
  if (res.status !== 200) {
    await res.body?.cancel();
    return { status: res.status };
  }
  return { status: 200, sha256: sha256Of(Buffer.from(await res.arrayBuffer())) };
}

test('a job whose worker is SIGKILLed and that retries keeps no more than the per-job quota over both attempts', async () => {
  const task = 'write files, lose the worker, write more';
  const before = [writeFiles('a1.bin'), writeFiles('a2.bin')];
  // First attempt: two 1 MiB files in two calls, then the model hangs until the worker is killed.
  script[task] = [...before, { hang: true }];
  const stack = await startStack(model, {
    workers: 0,
    env: { ARTIFACT_QUOTA_MB_PER_JOB: '3', JOB_ATTEMPTS: '3', WORKER_LOCK_MS: '2000', SANDBOX_POOL_SIZE: '0' },
  });
  let worker: WorkerProcess | undefined;
  try {
    worker = spawnWorkerProcess(stack);
    const { child } = worker;
    const submitted = await request(stack, 'POST', '/v1/jobs', { task });
    expect(submitted.status).toBe(202);
    const id = (submitted.body as JobView).id;
    await waitFor(
      () => {
        if (child.exitCode !== null) throw new Error(`the worker process exited (${child.exitCode}): ${worker?.stderr() ?? ''}`);
        return model.requests.some((r) => r.task === task && r.step === 2);
      },
      { timeoutMs: 60_000, what: 'the first attempt to save two files' },
    );
    const mid = await getJob(stack, id);
    expect(mid.artifacts.map((a) => [a.name, a.size])).toEqual([['a1.bin', MIB], ['a2.bin', MIB]]);
    const a2Before = mid.artifacts.find((a) => a.name === 'a2.bin')?.sha256;

    child.kill('SIGKILL');
    await worker.exited;

    // The retry resumes at step 2. It rewrites a2.bin (a replacement: counts once) and adds b1.bin,
    // which reaches the 3 MiB quota exactly; b2.bin and b3.bin would pass it. A tally per attempt
    // would let b2.bin in as well (4 MiB).
    script[task] = [...before, writeFiles('a2.bin', 'b1.bin'), writeFiles('b2.bin', 'b3.bin'), { text: 'done after the crash' }];
    await stack.startWorker();
    const job = await waitForJobEnd(stack, id, 60_000);

    expect(job).toMatchObject({ status: 'succeeded', attempts: 2, result: { output: 'done after the crash' } });
    expect(job.artifacts.map((a) => [a.name, a.size])).toEqual([['a1.bin', MIB], ['a2.bin', MIB], ['b1.bin', MIB]]);
    expect(totalSize(job)).toBeLessThanOrEqual(3 * MIB);
    const a2 = job.artifacts.find((a) => a.name === 'a2.bin');
    expect(a2?.sha256).not.toBe(a2Before);

    // The model's view, and the job's: the files past the quota are named as not saved, for the quota.
    const outputs = toolOutputs(job);
    expect(outputs).toHaveLength(4);
    expect(outputs[2]).toMatch(/files saved: .*\/output\/a2\.bin.*\/output\/b1\.bin|files saved: .*\/output\/b1\.bin.*\/output\/a2\.bin/);
    expect(outputs[2]).not.toMatch(/not saved/);
    expect(outputs[3]).toMatch(notSavedForQuota('b2.bin'));
    expect(outputs[3]).toMatch(notSavedForQuota('b3.bin'));
    expect(outputs[3]).not.toMatch(/files saved:/);
    const seen = modelSaw(task);
    expect(seen.get(4)).toMatch(notSavedForQuota('b2.bin'));
    expect(seen.get(4)).toMatch(notSavedForQuota('b3.bin'));
    expect(seen.get(3)).not.toMatch(/not saved/);

    // Each listed file downloads as listed; the refused ones are not there.
    for (const a of job.artifacts) expect(await download(stack, id, a.name)).toEqual({ status: 200, sha256: a.sha256 });
    for (const name of ['b2.bin', 'b3.bin']) expect((await download(stack, id, name)).status).toBe(404);

    // On disk: exactly the listed files' bytes. Neither the replaced a2.bin nor the refused files left any behind.
    const base = join(stack.config.ARTIFACT_DIR, stack.prefix);
    const dir = join(base, 'jobs', id, 'artifacts');
    const stored = await Promise.all((await readdir(dir)).map(async (f) => readFile(join(dir, f))));
    expect(stored.reduce((sum, b) => sum + b.length, 0)).toBeLessThanOrEqual(3 * MIB);
    expect(stored.map(sha256Of).sort()).toEqual(job.artifacts.map((a) => a.sha256).sort());
    expect((await readdir(join(base, 'tmp'))).filter((f) => f.startsWith(id))).toEqual([]);
  } finally {
    if (worker && worker.child.exitCode === null && worker.child.signalCode === null) {
      worker.child.kill('SIGKILL');
      await worker.exited;
    }
    await stack.close();
  }
}, 120_000);

describe('per-caller quota', () => {
  const keys = { alice: 'alice-key-0123456789abcdef0123456789abcdef', bob: 'bob-key-9876543210fedcba9876543210fedcba' };
  const as = (caller: keyof typeof keys) => ({ authorization: `Bearer ${keys[caller]}` });
  const FILES = ['x.bin', 'y.bin', 'z.bin'];
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(model, {
      env: {
        AUTH_MODE: 'api-key',
        API_KEYS: `alice:${keys.alice},bob:${keys.bob}`,
        ARTIFACT_QUOTA_MB_PER_CALLER: '2',
        WORKER_CONCURRENCY: '2',
      },
    });
  });
  afterAll(async () => {
    await stack?.close();
  });

  /** Runs a job for `caller` whose code writes x.bin, y.bin and z.bin (1 MiB each) in one call. */
  async function threeFiles(caller: keyof typeof keys, task: string): Promise<string> {
    script[task] = [writeFiles(...FILES), { text: 'done' }];
    const res = await request(stack, 'POST', '/v1/jobs', { task }, as(caller));
    expect(res.status).toBe(202);
    return (res.body as JobView).id;
  }

  test("a caller past its quota is told 'not saved (quota)' while another caller's files are saved", async () => {
    // Alice's first job: two files fit her 2 MiB, the third does not (which one depends on /output's listing order).
    const firstTask = 'three files, alice, first';
    const first = await waitForJobEnd(stack, await threeFiles('alice', firstTask), 60_000, as('alice'));
    expect(first.status).toBe('succeeded');
    expect(first.artifacts).toHaveLength(2);
    expect(totalSize(first)).toBe(2 * MIB);
    const refused = FILES.filter((f) => !first.artifacts.some((a) => a.name === f));
    expect(refused).toHaveLength(1);
    const [firstOutput] = toolOutputs(first);
    expect(firstOutput).toMatch(notSavedForQuota(refused[0] as string));
    expect(modelSaw(firstTask).get(1)).toMatch(notSavedForQuota(refused[0] as string));
    for (const a of first.artifacts) expect(await download(stack, first.id, a.name, as('alice'))).toEqual({ status: 200, sha256: a.sha256 });
    expect((await download(stack, first.id, refused[0] as string, as('alice'))).status).toBe(404);

    // Alice's second job gets nothing stored; Bob's, at the same time, gets his own 2 MiB.
    const secondTask = 'three files, alice, second';
    const bobTask = 'three files, bob';
    const [secondId, bobId] = await Promise.all([threeFiles('alice', secondTask), threeFiles('bob', bobTask)]);
    const [second, bob] = await Promise.all([waitForJobEnd(stack, secondId, 60_000, as('alice')), waitForJobEnd(stack, bobId, 60_000, as('bob'))]);

    expect(second.status).toBe('succeeded');
    expect(second.artifacts).toEqual([]);
    const [secondOutput] = toolOutputs(second);
    for (const f of FILES) {
      expect(secondOutput).toMatch(notSavedForQuota(f));
      expect(modelSaw(secondTask).get(1)).toMatch(notSavedForQuota(f));
    }
    expect(secondOutput).not.toMatch(/files saved:/);

    expect(bob.status).toBe('succeeded');
    expect(bob.artifacts).toHaveLength(2);
    expect(totalSize(bob)).toBe(2 * MIB);
    const [bobOutput] = toolOutputs(bob);
    expect(bobOutput).toMatch(/files saved: /);
    for (const a of bob.artifacts) expect(await download(stack, bob.id, a.name, as('bob'))).toEqual({ status: 200, sha256: a.sha256 });
    // Bob's files are his: Alice cannot read them.
    expect((await download(stack, bob.id, bob.artifacts[0]?.name ?? 'x.bin', as('alice'))).status).toBe(404);

    // Alice's first job still has its files: a refusal elsewhere takes nothing away.
    expect((await request(stack, 'GET', `/v1/jobs/${first.id}`, undefined, as('alice'))).body).toMatchObject({ artifacts: first.artifacts });
  }, 120_000);
});
