/**
 * A job's input files, read-only at /input in its sandbox, and the per-execution artifact quota, in
 * the real sandbox.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createLogger } from '../../services/shared/src/logger';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../../services/worker/src/sandbox/sandbox-manager';
import type { SandboxRuntime, SandboxSession } from '../../services/worker/src/sandbox/types';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { containersWith, docker, TEST_PREFIX, testSandboxSettings } from '../support/docker';

const logger = createLogger({ level: 'silent', service: 'sandbox-inputs-test' });
const MIB = 1024 * 1024;
const CSV = 'city,visitors\nOslo,120\nLyon,80\nPorto,41\n';

async function removeAllOf(workerId: string): Promise<void> {
  const left = await containersWith({ [LABEL.worker]: workerId });
  await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
}

function run(session: SandboxSession, code: string, timeoutMs = 30_000) {
  return session.run(code, { timeoutMs, signal: new AbortController().signal });
}

describe.each(['runc', 'runsc'] as const)('job inputs under %s', (runtime: SandboxRuntime) => {
  const workerId = `${TEST_PREFIX}sandbox-inputs-${runtime}-${process.pid}-${Date.now()}`;
  const blob = randomBytes(300 * 1024);
  let inputsDir: string;
  let manager: SandboxManager;
  /** Every container handed to a job, with the job, in order (the manager reports each for the reaper). */
  const assigned: { containerId: string; jobId: string }[] = [];
  const sessions: SandboxSession[] = [];
  let jobSeq = 0;

  function newSession(opts: { inputs: boolean }): { session: SandboxSession; jobId: string } {
    const jobId = `job-${++jobSeq}`;
    const session = manager.session(jobId, {
      deadline: new Date(Date.now() + 120_000),
      ...(opts.inputs ? { inputsHostDir: inputsDir } : {}),
    });
    sessions.push(session);
    return { session, jobId };
  }

  /** Ids of the warm pool containers: labelled with no job, never handed out yet. */
  async function pooled(): Promise<string[]> {
    const taken = new Set(assigned.map((a) => a.containerId));
    return (await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: '' })).map((c) => c.Id).filter((id) => !taken.has(id));
  }

  beforeAll(async () => {
    // As Maestro stores them: a 0755 dir of 0644 files owned by the worker's user (not the sandbox's).
    inputsDir = await makeAllowedDir(`sandbox-inputs-${runtime}`);
    await writeFile(path.join(inputsDir, 'data.csv'), CSV);
    await writeFile(path.join(inputsDir, 'blob.bin'), blob);
    for (const name of ['data.csv', 'blob.bin']) await chmod(path.join(inputsDir, name), 0o644);
    manager = new SandboxManager({
      docker,
      logger,
      settings: testSandboxSettings({ runtime, workerId, poolSize: 1 }),
      assign: (containerId, { jobId }) => {
        assigned.push({ containerId, jobId });
        return Promise.resolve();
      },
    });
    await manager.start();
  });

  afterEach(async () => {
    await Promise.all(sessions.splice(0).map((s) => s.close()));
  });

  afterAll(async () => {
    await manager?.close();
    await removeAllOf(workerId);
    if (inputsDir) await removeAllowedDir(inputsDir);
  });

  it('shows the files at /input: pandas reads the CSV and the binary comes through byte for byte', async () => {
    const { session } = newSession({ inputs: true });
    const result = await run(
      session,
      [
        'import hashlib, os, pandas as pd',
        'print(sorted(os.listdir("/input")))',
        'df = pd.read_csv("/input/data.csv")',
        'print(int(df["visitors"].sum()), list(df["city"]))',
        'print(hashlib.sha256(open("/input/blob.bin", "rb").read()).hexdigest())',
      ].join('\n'),
    );
    expect(result.error).toBeUndefined();
    expect(result.stdout.split('\n')).toEqual([
      "['blob.bin', 'data.csv']",
      "241 ['Oslo', 'Lyon', 'Porto']",
      createHash('sha256').update(blob).digest('hex'),
      '',
    ]);
    expect(result.exitCode).toBe(0);
  });

  it('refuses every write, creation, deletion, rename and mode change under /input', async () => {
    const { session } = newSession({ inputs: true });
    const result = await run(
      session,
      [
        'import errno, json, os',
        'def attempt(op):',
        '    try:',
        '        op()',
        '        return "done"',
        '    except OSError as e:',
        '        return errno.errorcode.get(e.errno, str(e.errno))',
        'def write(name, mode):',
        '    with open(name, mode) as f:',
        '        f.write("x")',
        'print(json.dumps({',
        '    "overwrite": attempt(lambda: write("/input/data.csv", "w")),',
        '    "append": attempt(lambda: write("/input/data.csv", "a")),',
        '    "create": attempt(lambda: write("/input/new.txt", "w")),',
        '    "delete": attempt(lambda: os.remove("/input/blob.bin")),',
        '    "rename": attempt(lambda: os.rename("/input/data.csv", "/input/moved.csv")),',
        '    "mkdir": attempt(lambda: os.mkdir("/input/sub")),',
        '    "chmod file": attempt(lambda: os.chmod("/input/data.csv", 0o666)),',
        '    "chmod dir": attempt(lambda: os.chmod("/input", 0o777)),',
        '    "symlink": attempt(lambda: os.symlink("/etc/passwd", "/input/link")),',
        '    "read-only mount": bool(os.statvfs("/input").f_flag & os.ST_RDONLY),',
        '}))',
      ].join('\n'),
    );
    expect(result).toMatchObject({ exitCode: 0 });
    const outcome = JSON.parse(result.stdout) as Record<string, string | boolean>;
    const { 'read-only mount': readOnly, ...attempts } = outcome;
    expect(Object.keys(attempts)).toHaveLength(9);
    for (const [op, errno] of Object.entries(attempts)) expect([op, errno]).toEqual([op, expect.stringMatching(/^(EROFS|EACCES|EPERM)$/)]);
    expect(readOnly).toBe(true);
    // And nothing changed on the host.
    expect((await readdir(inputsDir)).sort()).toEqual(['blob.bin', 'data.csv']);
    expect(await readFile(path.join(inputsDir, 'data.csv'), 'utf8')).toBe(CSV);
    expect((await readFile(path.join(inputsDir, 'blob.bin'))).equals(blob)).toBe(true);
    expect((await stat(path.join(inputsDir, 'data.csv'))).mode & 0o777).toBe(0o644);
    expect((await stat(inputsDir)).mode & 0o777).toBe(0o755);
  });

  it('gives a job with inputs a container of its own, leaving the warm pool container to a job without', async () => {
    await manager.fillPool();
    const warm = await pooled();
    expect(warm).toHaveLength(1);

    const withInputs = newSession({ inputs: true });
    expect((await run(withInputs.session, 'import os\nprint(os.path.isdir("/input"))')).stdout).toBe('True\n');
    const own = await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: withInputs.jobId });
    expect(own).toHaveLength(1);
    expect(warm).not.toContain(own[0]?.Id);
    expect(assigned.filter((a) => a.jobId === withInputs.jobId).map((a) => a.containerId)).toEqual([own[0]?.Id]);
    // The pool container is still there, still unassigned.
    expect(await pooled()).toEqual(warm);

    const without = newSession({ inputs: false });
    expect((await run(without.session, 'import os\nprint(os.path.exists("/input"))')).stdout).toBe('False\n');
    expect(assigned.filter((a) => a.jobId === without.jobId).map((a) => a.containerId)).toEqual(warm);
  });

  it('mounts the inputs again in the container that replaces one killed at its time limit', async () => {
    const { session, jobId } = newSession({ inputs: true });
    await run(session, 'x = 1');
    const looped = await run(session, 'while True:\n    pass', 1500);
    expect(looped).toMatchObject({ timedOut: true, exitCode: -1 });
    const next = await run(session, 'print("x" in globals(), open("/input/data.csv").read() == ' + JSON.stringify(CSV) + ')');
    expect(next).toMatchObject({ stdout: 'False True\n', exitCode: 0, reset: true });
    const containers = assigned.filter((a) => a.jobId === jobId).map((a) => a.containerId);
    expect(containers).toHaveLength(2);
    expect(new Set(containers).size).toBe(2);
  });

  it('fails the run, without retry, when the inputs dir is missing on the Docker host', async () => {
    const missing = path.join(inputsDir, 'missing');
    const session = manager.session('job-missing', { deadline: new Date(Date.now() + 120_000), inputsHostDir: missing });
    sessions.push(session);
    await expect(run(session, 'print(1)')).rejects.toMatchObject({
      message: `the job's inputs dir ${missing} does not exist on the Docker host`,
      retryable: false,
    });
    expect(await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: 'job-missing' })).toEqual([]);
  });

  it('has no /input in the sandbox of a job without inputs', async () => {
    const { session } = newSession({ inputs: false });
    const result = await run(session, 'import os\nprint(os.path.exists("/input"), any(" /input " in l for l in open("/proc/self/mountinfo")))');
    expect(result).toMatchObject({ stdout: 'False False\n', exitCode: 0 });
  });
});

describe('the per-execution artifact quota', () => {
  const workerId = `${TEST_PREFIX}sandbox-quota-${process.pid}-${Date.now()}`;
  const managers: SandboxManager[] = [];

  function sessionWith(quota: { bytes: number; files: number }): SandboxSession {
    const manager = new SandboxManager({
      docker,
      logger,
      settings: testSandboxSettings({ runtime: 'runc', workerId, artifactBytesPerExecution: quota.bytes, artifactFilesPerExecution: quota.files }),
    });
    managers.push(manager);
    return manager.session(`job-quota-${managers.length}`, { deadline: new Date(Date.now() + 120_000) });
  }

  afterAll(async () => {
    await Promise.allSettled(managers.map((m) => m.close()));
    await removeAllOf(workerId);
  });

  it('saves what fits in 2 MiB and refuses the rest with a reason that starts with "quota"', async () => {
    const session = sessionWith({ bytes: 2 * MIB, files: 3 });
    try {
      const bytes = await run(session, 'for n in "abc":\n    open(f"/output/{n}.bin", "wb").write(bytes([ord(n)]) * (1 << 20))');
      expect(bytes.exitCode).toBe(0);
      expect(bytes.artifacts).toHaveLength(2);
      for (const a of bytes.artifacts) expect(a.data.equals(Buffer.alloc(MIB, a.name[0]))).toBe(true);
      expect(bytes.skippedArtifacts).toHaveLength(1);
      expect(bytes.skippedArtifacts[0]?.reason).toBe('quota: over the 2 MiB this execution may save');
      expect([...bytes.artifacts.map((a) => a.name), bytes.skippedArtifacts[0]?.name].sort()).toEqual(['a.bin', 'b.bin', 'c.bin']);

      // One file over the whole quota is refused for the quota too: the per-file cap is never above it.
      const big = await run(session, 'open("/output/big.bin", "wb").write(b"x" * (3 << 20))');
      expect(big.artifacts).toEqual([]);
      expect(big.skippedArtifacts).toEqual([{ name: 'big.bin', reason: 'quota: over the 2 MiB this execution may save' }]);

      const count = await run(session, 'for i in range(4):\n    open(f"/output/small-{i}.txt", "w").write("hi")');
      expect(count.artifacts).toHaveLength(3);
      expect(count.skippedArtifacts).toEqual([{ name: expect.stringMatching(/^small-\d\.txt$/), reason: 'quota: more than 3 files in one execution' }]);
    } finally {
      await session.close();
    }
  });

  it('saves more than the default 25 MiB when the quota allows it, each file still capped at 10 MiB', async () => {
    const session = sessionWith({ bytes: 40 * MIB, files: 20 });
    try {
      const result = await run(
        session,
        'for n in "abc":\n    open(f"/output/{n}.bin", "wb").write(b"y" * (10 << 20))\nopen("/output/d.bin", "wb").write(b"z" * ((10 << 20) + 1))',
      );
      expect(result.exitCode).toBe(0);
      expect(result.artifacts.map((a) => [a.name, a.size]).sort()).toEqual([['a.bin', 10 * MIB], ['b.bin', 10 * MIB], ['c.bin', 10 * MIB]]);
      expect(result.skippedArtifacts).toEqual([{ name: 'd.bin', reason: 'larger than the 10 MiB one file may be' }]);
    } finally {
      await session.close();
    }
  });
});
