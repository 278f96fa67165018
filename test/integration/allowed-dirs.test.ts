/**
 * ALLOWED_DIRS end to end: the real worker entry point refuses a bad value before it connects to
 * anything, and a mount below an allowed dir stays read-only in real sandboxes under runc and runsc.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { createLogger } from '../../services/shared/src/logger';
import { validateAllowedDirs, type ValidatedAllowedDirs } from '../../services/worker/src/allowed-dirs';
import { LABEL, OUTPUT_DIR } from '../../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../../services/worker/src/sandbox/sandbox-manager';
import type { SandboxRuntime } from '../../services/worker/src/sandbox/types';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { containersWith, docker, TEST_PREFIX, testSandboxSettings } from '../support/docker';
import { runServiceProcess } from '../support/service-process';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..', '..');
const logger = createLogger({ level: 'silent', service: 'allowed-dirs-test' });

/** The worker from source. Nothing listens on port 1: had validation not come first, it would hang on Redis. */
const startWorkerProcess = (env: Record<string, string>) =>
  runServiceProcess('worker', { ...process.env, REDIS_URL: 'redis://127.0.0.1:1', LOG_LEVEL: 'info', ...env });

describe('the worker started with a bad ALLOWED_DIRS', () => {
  test.each([
    ['/etc', /^maestro worker: invalid ALLOWED_DIRS: "\/etc" is \/etc \(.+\)$/],
    [ROOT, /^maestro worker: invalid ALLOWED_DIRS: ".+" is .+ \(the worker's own code\)$/],
    ['/var,/var/tmp/maestro-missing-dir', /^maestro worker: invalid ALLOWED_DIRS: "\/var" covers .+; "\/var\/tmp\/maestro-missing-dir" does not exist$/],
  ])('%s exits 1 with one line naming the variable and why', async (value, line) => {
    const { code, stdout, stderr } = await startWorkerProcess({ ALLOWED_DIRS: value });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.endsWith('\n')).toBe(true);
    const lines = stderr.slice(0, -1).split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(line);
  });
});

// Mounting needs root; the suite runs as root in CI (SECURITY.md, "Path sandboxing").
const asRoot = process.getuid?.() === 0 ? describe : describe.skip;

asRoot('a tmpfs mounted below an allowed dir', () => {
  let dir = '';
  let mnt = '';
  let mounted = false;
  let validated: ValidatedAllowedDirs;

  beforeAll(async () => {
    dir = await makeAllowedDir('submount');
    mnt = path.join(dir, 'mnt');
    await mkdir(mnt);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=1777', 'tmpfs', mnt]);
    mounted = true;
    await writeFile(path.join(mnt, 'inside.txt'), 'on the tmpfs\n', { mode: 0o644 });
    // World-writable, so only the mount's read-only flag can stop the sandbox user (65534) writing.
    await run('chmod', ['1777', dir]);
    validated = await validateAllowedDirs([dir], { codeDir: ROOT, outputDir: OUTPUT_DIR });
  });

  afterAll(async () => {
    if (mounted) await run('umount', [mnt]);
    if (dir) await removeAllowedDir(dir);
  });

  test('is found by start-up validation as a mount to make read-only', () => {
    expect(validated).toEqual({ dirs: [dir], readOnlyMounts: [mnt] });
  });

  describe.each(['runc', 'runsc'] as const)('under %s', (runtime: SandboxRuntime) => {
    const workerId = `${TEST_PREFIX}allowed-dirs-${runtime}-${process.pid}`;
    let manager: SandboxManager;

    beforeAll(() => {
      manager = new SandboxManager({
        docker,
        logger,
        settings: testSandboxSettings({
          runtime,
          workerId,
          memoryMb: 256,
          pids: 64,
          allowedDirs: validated.dirs,
          readOnlySubmounts: validated.readOnlyMounts,
          tmpSizeMb: 16,
        }),
      });
    });

    afterAll(async () => {
      await manager?.close();
      const left = await containersWith({ [LABEL.worker]: workerId });
      await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
    });

    test('is readable but not writable from the sandbox, and nor is the allowed dir', async () => {
      const session = manager.session('job-submount', { deadline: new Date(Date.now() + 120_000) });
      try {
        const code = [
          'import errno, json',
          'def attempt(target):',
          '    try:',
          '        with open(target, "w") as f:',
          '            f.write("x")',
          '        return "written"',
          '    except OSError as e:',
          '        return errno.errorcode.get(e.errno, str(e.errno))',
          `print(json.dumps({"read": open(${JSON.stringify(path.join(mnt, 'inside.txt'))}).read(),`,
          `                  "tmpfs": attempt(${JSON.stringify(path.join(mnt, 'new.txt'))}),`,
          `                  "dir": attempt(${JSON.stringify(path.join(dir, 'new.txt'))})}))`,
        ].join('\n');
        const result = await session.run(code, { timeoutMs: 30_000, signal: new AbortController().signal });
        expect(result.exitCode).toBe(0);
        expect(JSON.parse(result.stdout)).toEqual({ read: 'on the tmpfs\n', tmpfs: 'EROFS', dir: 'EROFS' });
        expect(await readdir(mnt)).toEqual(['inside.txt']);
      } finally {
        await session.close();
      }
    });
  });
});
