import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createLogger } from '../../services/shared/src/logger';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../../services/worker/src/sandbox/sandbox-manager';
import type { SandboxRuntime, SandboxSession } from '../../services/worker/src/sandbox/types';
import { containersWith, docker, TEST_PREFIX, testSandboxSettings } from '../support/docker';

const logger = createLogger({ level: 'silent', service: 'seccomp-test' });
const PROFILE_FILE = path.join(__dirname, '../../services/worker/src/sandbox/seccomp-profile.json');

// Calls each syscall the profile must deny through libc's syscall(2), with arguments the kernel itself
// would accept or answer with an error other than EPERM/ENOSYS where it can, and prints name -> errno.
const DENIED_SYSCALLS_CODE = String.raw`
import ctypes, errno, json, os, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SIGCHLD, CLONE_NEWUSER, CLONE_NEWNS = 17, 0x10000000, 0x20000
# (x86_64, aarch64) numbers
NR = {
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "userfaultfd": (323, 282), "perf_event_open": (298, 241), "bpf": (321, 280),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "clone": (56, 220), "clone3": (435, 435),
}
ARGS = {
    "io_uring_setup": (1, 0), "io_uring_enter": (-1, 0, 0, 0, 0, 0), "io_uring_register": (-1, 0, 0, 0),
    "userfaultfd": (1,),  # UFFD_USER_MODE_ONLY: allowed to unprivileged callers by the kernel
    "perf_event_open": (0, 0, -1, -1, 0), "bpf": (0, 0, 0),
    "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (0, 0, 0, 0, 0), "request_key": (0, 0, 0, 0),
    "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME
    "process_vm_readv": (os.getpid(), 0, 0, 0, 0, 0), "process_vm_writev": (os.getpid(), 0, 0, 0, 0, 0),
    "unshare": (CLONE_NEWUSER | CLONE_NEWNS,), "setns": (-1, 0),
    "mount": (0, 0, 0, 0, 0), "clone": (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0), "clone3": (0, 0),
}
col = {"x86_64": 0, "aarch64": 1}[platform.machine()]
out = {}
for name, nrs in NR.items():
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nrs[col]), *[ctypes.c_long(a) for a in ARGS[name]])
    err = ctypes.get_errno()
    if name == "clone" and ret == 0:
        os._exit(0)  # the child of a clone that should have failed
    if name == "clone" and ret > 0:
        os.waitpid(ret, 0)
    out[name] = "ok" if ret >= 0 else errno.errorcode.get(err, str(err))
print(json.dumps(out))
`;

const ORDINARY_CODE = String.raw`
import os, subprocess, threading
import numpy as np
print("numpy", int(np.arange(10).sum()))
seen = []
threads = [threading.Thread(target=lambda i=i: seen.append(i * i)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", sum(seen))
print("subprocess", subprocess.run(["sh", "-c", "echo hi"], capture_output=True, text=True, check=True).stdout.strip())
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.savefig("/output/plot.png")
print("savefig", open("/output/plot.png", "rb").read(4) == b"\x89PNG")
`;

describe.each(['runc', 'runsc'] as const)('the seccomp profile and core limit under %s', (runtime: SandboxRuntime) => {
  const workerId = `${TEST_PREFIX}seccomp-${runtime}-${process.pid}-${Date.now()}`;
  let manager: SandboxManager;
  const sessions: SandboxSession[] = [];
  let jobSeq = 0;

  function newSession(): { session: SandboxSession; jobId: string } {
    const jobId = `job-${++jobSeq}`;
    const session = manager.session(jobId, { deadline: new Date(Date.now() + 120_000) });
    sessions.push(session);
    return { session, jobId };
  }

  function run(session: SandboxSession, code: string) {
    return session.run(code, { timeoutMs: 30_000, signal: new AbortController().signal });
  }

  /** The seccomp= security options of a fresh job container, parsed; checks no-new-privileges on the way. */
  async function seccompOptionsOfNewContainer(): Promise<unknown[]> {
    const { session, jobId } = newSession();
    await run(session, 'pass');
    const [container] = await containersWith({ [LABEL.worker]: workerId, [LABEL.job]: jobId });
    const info = await docker.getContainer(container?.Id ?? 'missing').inspect();
    const securityOpt = (info.HostConfig.SecurityOpt ?? []) as string[];
    expect(securityOpt).toContain('no-new-privileges');
    return securityOpt.filter((o) => o.startsWith('seccomp=')).map((o) => JSON.parse(o.slice('seccomp='.length)) as unknown);
  }

  beforeAll(async () => {
    manager = new SandboxManager({ docker, settings: testSandboxSettings({ runtime, workerId }), logger });
    await manager.start();
  });

  afterEach(async () => {
    await Promise.all(sessions.splice(0).map((s) => s.close()));
  });

  afterAll(async () => {
    await manager?.close();
    const left = await containersWith({ [LABEL.worker]: workerId });
    await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
  });

  if (runtime === 'runc') {
    it('denies io_uring, userfaultfd, perf_event_open, bpf, the keyring, ptrace, process_vm_*, unshare, setns, mount and namespace clones with EPERM or ENOSYS', async () => {
      const { session } = newSession();
      const result = await run(session, DENIED_SYSCALLS_CODE);
      expect(result).toMatchObject({ exitCode: 0, stderr: '' });
      const errors = JSON.parse(result.stdout) as Record<string, string>;
      expect(Object.keys(errors)).toHaveLength(17);
      for (const [name, err] of Object.entries(errors)) {
        expect({ name, err }).toEqual({ name, err: expect.stringMatching(/^(EPERM|ENOSYS)$/) });
      }
      // clone3 is answered ENOSYS on purpose, so that libc falls back to clone.
      expect(errors.clone3).toBe('ENOSYS');
    });

    it("creates the container with the project's profile, as docker inspect shows", async () => {
      expect(await seccompOptionsOfNewContainer()).toEqual([JSON.parse(readFileSync(PROFILE_FILE, 'utf8'))]);
    });
  } else {
    // gVisor implements the Linux API in its own kernel (the Sentry) and does not apply an OCI profile
    // unless runsc runs with --oci-seccomp (SECURITY.md); the Sentry itself refuses what it does not
    // implement, and no call reaches the host kernel unfiltered.
    it('answers io_uring, userfaultfd, perf_event_open and bpf with an error from gVisor itself', async () => {
      const { session } = newSession();
      const result = await run(session, DENIED_SYSCALLS_CODE);
      expect(result).toMatchObject({ exitCode: 0, stderr: '' });
      const errors = JSON.parse(result.stdout) as Record<string, string>;
      for (const name of ['io_uring_setup', 'io_uring_enter', 'io_uring_register', 'userfaultfd', 'perf_event_open', 'bpf']) {
        expect({ name, err: errors[name] }).toEqual({ name, err: expect.stringMatching(/^E[A-Z]+$/) });
      }
    });

    it('passes no OCI seccomp profile, which runsc would not apply', async () => {
      expect(await seccompOptionsOfNewContainer()).toEqual([]);
    });
  }

  it('allows no core dumps: RLIMIT_CORE is (0, 0)', async () => {
    const { session } = newSession();
    const result = await run(session, 'import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))');
    expect(result).toMatchObject({ stdout: '(0, 0)\n', exitCode: 0 });
  });

  it('still runs ordinary Python: numpy, threads, a subprocess, os.fork and a matplotlib savefig', async () => {
    const { session } = newSession();
    const result = await run(session, ORDINARY_CODE);
    expect(result.error).toBeUndefined();
    expect(result).toMatchObject({ exitCode: 0 });
    expect(result.stdout.trim().split('\n')).toEqual(['numpy 45', 'threads 140', 'subprocess hi', 'fork 7', 'savefig True']);
  });
});
