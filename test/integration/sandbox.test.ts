import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createLogger } from '../../services/shared/src/logger';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../../services/worker/src/sandbox/sandbox-manager';
import type { SandboxRuntime, SandboxSession, SandboxSettings } from '../../services/worker/src/sandbox/types';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { containersWith, docker, TEST_PREFIX, testSandboxSettings } from '../support/docker';
import { waitFor } from '../support/wait-for';

const logger = createLogger({ level: 'silent', service: 'sandbox-test' });
const ENV_MARKER = 'MAESTRO_SANDBOX_TEST_MARKER';

async function removeAllOf(workerId: string): Promise<void> {
  const left = await containersWith({ [LABEL.worker]: workerId });
  await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
}

describe.each(['runc', 'runsc'] as const)('the sandbox under %s', (runtime: SandboxRuntime) => {
  const workerId = `${TEST_PREFIX}sandbox-${runtime}-${process.pid}-${Date.now()}`;
  let allowedDir: string;
  let settings: SandboxSettings;
  let manager: SandboxManager;
  const sessions: SandboxSession[] = [];
  let jobSeq = 0;

  function newSession(target: SandboxManager = manager): { session: SandboxSession; jobId: string } {
    const jobId = `job-${++jobSeq}`;
    const session = target.session(jobId, { deadline: new Date(Date.now() + 120_000) });
    sessions.push(session);
    return { session, jobId };
  }

  function run(session: SandboxSession, code: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}) {
    return session.run(code, { timeoutMs: opts.timeoutMs ?? 30_000, signal: opts.signal ?? new AbortController().signal });
  }

  beforeAll(async () => {
    process.env.MAESTRO_SANDBOX_TEST_MARKER = 'worker-secret-value';
    allowedDir = await makeAllowedDir(`sandbox-${runtime}`);
    await writeFile(path.join(allowedDir, 'data.txt'), 'allowed content');
    settings = testSandboxSettings({ runtime, workerId, poolSize: 1, allowedDirs: [allowedDir] });
    manager = new SandboxManager({ docker, settings, logger });
    await manager.start();
  });

  afterEach(async () => {
    await Promise.all(sessions.splice(0).map((s) => s.close()));
  });

  afterAll(async () => {
    await manager?.close();
    await removeAllOf(workerId);
    if (allowedDir) await removeAllowedDir(allowedDir);
    delete process.env.MAESTRO_SANDBOX_TEST_MARKER;
  });

  it('runs code and returns what it prints', async () => {
    const { session } = newSession();
    const result = await run(session, 'print(sum(range(101)))');
    expect(result).toMatchObject({ stdout: '5050\n', exitCode: 0, timedOut: false, reset: false });
  });

  it('keeps variables from one run of a job to the next', async () => {
    const { session } = newSession();
    await run(session, 'x = 41');
    expect((await run(session, 'print(x + 1)')).stdout).toBe('42\n');
  });

  it('reports an exception as exit code 1 with its traceback', async () => {
    const { session } = newSession();
    const result = await run(session, 'def f():\n    raise ValueError("boom")\nf()');
    expect(result.exitCode).toBe(1);
    expect(result.error).toMatch(/Traceback[\s\S]*ValueError: boom/);
  });

  it('captures what subprocesses print', async () => {
    const { session } = newSession();
    const result = await run(session, 'import os, subprocess\nos.system("echo hi")\nsubprocess.run(["sh", "-c", "echo err >&2"])');
    expect(result.stdout).toBe('hi\n');
    expect(result.stderr).toBe('err\n');
  });

  it('kills an endless loop at the time limit and runs the next code in a fresh interpreter', async () => {
    const { session } = newSession();
    await run(session, 'x = 1');
    const started = performance.now();
    const looped = await run(session, 'while True:\n    pass', { timeoutMs: 1500 });
    expect(looped).toMatchObject({ timedOut: true, exitCode: -1 });
    expect(performance.now() - started).toBeLessThan(10_000);
    const next = await run(session, 'print("x" in globals())');
    expect(next).toMatchObject({ stdout: 'False\n', exitCode: 0, reset: true });
  });

  it('rejects at once when the job is cancelled mid-run, and its container goes away', async () => {
    await manager.fillPool();
    const pooled = (await containersWith({ [LABEL.worker]: workerId })).map((c) => c.Id);
    expect(pooled).toHaveLength(1);
    const { session } = newSession();
    await run(session, 'x = 1');
    const controller = new AbortController();
    const running = run(session, 'while True:\n    pass', { signal: controller.signal });
    let abortedAt = Infinity;
    const timer = setTimeout(() => {
      abortedAt = performance.now();
      controller.abort(new Error('job cancelled'));
    }, 300);
    await expect(running).rejects.toThrow('job cancelled');
    clearTimeout(timer);
    // Measured from the abort itself, so a late timer on a busy machine does not count against it.
    expect(performance.now() - abortedAt).toBeLessThan(500);
    await waitFor(async () => (await containersWith({ [LABEL.worker]: workerId })).every((c) => !pooled.includes(c.Id)), {
      timeoutMs: 10_000,
      what: 'the cancelled job container to be removed',
    });
  });

  it('has no network: only loopback, no route, and no way to a server on the host loopback', async () => {
    const server = net.createServer((socket) => socket.end('hello'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const { session } = newSession();
      const result = await run(
        session,
        [
          'import os, socket',
          'print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))',
          'routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:]]',
          'print([r for r in routes if len(r) > 1 and r[1] == "00000000"])',
          'try:',
          `    socket.create_connection(("127.0.0.1", ${port}), timeout=3).recv(5)`,
          '    print("connected")',
          'except OSError as e:',
          '    print("refused", type(e).__name__)',
        ].join('\n'),
      );
      expect(result).toMatchObject({ exitCode: 0 });
      const [ifaces, defaultRoutes, connect] = result.stdout.trim().split('\n');
      expect(ifaces).toBe("['lo']");
      expect(defaultRoutes).toBe('[]');
      expect(connect).toMatch(/^refused/);
    } finally {
      server.close();
    }
  });

  it('can read an allowed dir but not write into it', async () => {
    const { session } = newSession();
    const result = await run(
      session,
      [
        `print(open(${JSON.stringify(path.join(allowedDir, 'data.txt'))}).read())`,
        `open(${JSON.stringify(path.join(allowedDir, 'new.txt'))}, "w").write("x")`,
      ].join('\n'),
    );
    expect(result).toMatchObject({ stdout: 'allowed content\n' });
    expect(result.exitCode).toBe(1);
    expect(result.error).toMatch(/Read-only file system|Permission denied/);
    await expect(readFile(path.join(allowedDir, 'new.txt'))).rejects.toThrow();
  });

  it('runs as an unprivileged user with no capabilities and no new privileges', async () => {
    const { session } = newSession();
    const result = await run(
      session,
      [
        'import ctypes, os',
        'status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)',
        // prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/self/status has no NoNewPrivs line.
        'print(os.getuid(), os.geteuid(), status["CapEff"].strip(), ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))',
      ].join('\n'),
    );
    expect(result.stdout).toBe('65534 65534 0000000000000000 1\n');
  });

  it('sees none of the worker environment and no docker socket', async () => {
    const { session } = newSession();
    const result = await run(
      session,
      [
        'import json, os',
        'print(json.dumps(dict(os.environ)))',
        'print(any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")))',
      ].join('\n'),
    );
    const [envLine, sock] = result.stdout.trim().split('\n');
    const env = JSON.parse(envLine ?? '{}') as Record<string, string>;
    expect(Object.keys(env)).not.toContain(ENV_MARKER);
    expect(Object.values(env)).not.toContain('worker-secret-value');
    expect(Object.keys(env).filter((k) => /API_KEY|REDIS|TOKEN|SECRET/i.test(k))).toEqual([]);
    expect(sock).toBe('False');
  });

  it('truncates 100 MB of output and keeps working', async () => {
    const { session } = newSession();
    const result = await run(session, 'import sys\nchunk = "y" * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)');
    expect(result.exitCode).toBe(0);
    expect(result.truncated.stdout).toBe(true);
    expect(result.stdout.length).toBeLessThanOrEqual(settings.outputLimitBytes);
    expect((await run(session, 'print("still here")')).stdout).toBe('still here\n');
  });

  it('returns a matplotlib plot saved to /output as a PNG artifact', async () => {
    const { session } = newSession();
    const result = await run(
      session,
      'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig("/output/plot.png")',
    );
    expect(result.exitCode).toBe(0);
    expect(result.artifacts).toHaveLength(1);
    const [plot] = result.artifacts;
    expect(plot).toMatchObject({ name: 'plot.png', contentType: 'image/png' });
    expect(plot?.data.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    expect(plot?.size).toBe(plot?.data.length);
    // Unchanged files are not pulled again.
    expect((await run(session, 'pass')).artifacts).toEqual([]);
  });

  it('does not collect a symlink to /etc/passwd or a burst of 10,000 tiny files, and carries on', async () => {
    const { session } = newSession();
    const result = await run(
      session,
      [
        'import os',
        'os.symlink("/etc/passwd", "/output/passwd")',
        'os.makedirs("/output/burst")',
        'for i in range(10000):',
        '    open(f"/output/burst/{i}.txt", "w").write("x")',
      ].join('\n'),
    );
    expect(result.exitCode).toBe(0);
    expect(result.artifacts.map((a) => a.name)).not.toContain('passwd');
    expect(result.artifacts.every((a) => a.data.toString() === 'x')).toBe(true);
    expect(result.artifacts.length).toBeLessThanOrEqual(20);
    expect(result.skippedArtifacts).toContainEqual({ name: 'passwd', reason: 'symbolic link' });
    expect(result.skippedArtifacts.length).toBeGreaterThan(0);
    expect(await run(session, 'print(1 + 1)')).toMatchObject({ stdout: '2\n', exitCode: 0, reset: false });
  });

  it('leaves no container behind when a session is closed', async () => {
    const unpooled = new SandboxManager({ docker, settings: { ...settings, poolSize: 0 }, logger });
    try {
      const { session, jobId } = newSession(unpooled);
      await run(session, 'print(1)');
      expect(await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: jobId })).toHaveLength(1);
      await session.close();
      await session.close();
      expect(await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: jobId })).toEqual([]);
    } finally {
      await unpooled.close();
    }
  });
});
