import { readFileSync } from 'node:fs';
import path from 'node:path';
import { artifactLimits, buildContainerSpec, INPUT_DIR, LABEL } from '../../services/worker/src/sandbox/container-spec';
import type { SandboxSettings } from '../../services/worker/src/sandbox/types';

const settings: SandboxSettings = {
  image: 'maestro-sandbox:test',
  runtime: 'runsc',
  timeoutMs: 30_000,
  memoryMb: 512,
  cpus: 1.5,
  pids: 128,
  poolSize: 2,
  allowedDirs: ['/srv/data', '/home/me/notes'],
  readOnlySubmounts: ['/srv/data/tmpfs'],
  outputLimitBytes: 65_536,
  artifactBytesPerExecution: 25 * 1024 * 1024,
  artifactFilesPerExecution: 20,
  tmpSizeMb: 64,
  workerId: 'worker-1',
  deploymentId: 'deployment-1',
};
const created = new Date('2030-01-01T00:00:00.000Z');
const deadline = new Date('2030-01-01T00:10:00.000Z');

describe('the sandbox container spec', () => {
  const spec = buildContainerSpec(settings, { jobId: 'job-1', created, deadline });
  const host = spec.HostConfig ?? {};

  it('has no network at all', () => {
    expect(host.NetworkMode).toBe('none');
    expect(spec.NetworkDisabled).toBe(true);
    expect(spec.ExposedPorts).toBeUndefined();
    expect(host.PortBindings).toBeUndefined();
  });

  it('runs as uid 65534 with every capability dropped and no new privileges', () => {
    expect(spec.User).toBe('65534:65534');
    expect(host.CapDrop).toEqual(['ALL']);
    expect(host.CapAdd ?? []).toEqual([]);
    expect(host.SecurityOpt).toEqual(['no-new-privileges']);
    expect(JSON.stringify(host.SecurityOpt)).not.toMatch(/unconfined/);
    expect(host.Privileged).toBe(false);
    expect(host.Devices ?? []).toEqual([]);
  });

  it("applies the project's seccomp profile under runc and leaves runsc with the engine's default", () => {
    const runc = buildContainerSpec({ ...settings, runtime: 'runc' }, { jobId: 'job-1', created }).HostConfig ?? {};
    expect(runc.SecurityOpt).toHaveLength(2);
    expect(runc.SecurityOpt?.[0]).toBe('no-new-privileges');
    const [key, json] = (runc.SecurityOpt?.[1] ?? '').split(/=(.*)/s);
    expect(key).toBe('seccomp');
    const file = readFileSync(path.join(__dirname, '../../services/worker/src/sandbox/seccomp-profile.json'), 'utf8');
    expect(JSON.parse(json ?? '')).toEqual(JSON.parse(file));
    expect(json).toBe(JSON.stringify(JSON.parse(file)));
    // runsc ignores an OCI seccomp profile unless started with --oci-seccomp (SECURITY.md).
    expect((host.SecurityOpt as string[]).some((o) => o.startsWith('seccomp'))).toBe(false);
  });

  it('denies by default with EPERM and allows none of the syscalls the sandbox must not make', () => {
    type Rule = { names: string[]; action: string; errnoRet?: number; args?: { index: number; value: number; op: string }[] };
    const profile = JSON.parse(
      readFileSync(path.join(__dirname, '../../services/worker/src/sandbox/seccomp-profile.json'), 'utf8'),
    ) as { defaultAction: string; defaultErrnoRet?: number; syscalls: Rule[] };
    expect(profile.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(profile.defaultErrnoRet).toBe(1);
    const allowed = (name: string) => profile.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && r.names.includes(name));
    const denied = [
      'io_uring_setup', 'io_uring_enter', 'io_uring_register', 'userfaultfd', 'perf_event_open', 'bpf',
      'keyctl', 'add_key', 'request_key', 'ptrace', 'process_vm_readv', 'process_vm_writev',
      'unshare', 'setns', 'mount', 'umount', 'umount2', 'pivot_root', 'move_mount', 'open_tree',
      'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr', 'clone3', 'kexec_load',
      'kexec_file_load', 'init_module', 'finit_module', 'delete_module', 'swapon', 'swapoff', 'reboot',
      'acct', 'quotactl', 'lookup_dcookie', 'name_to_handle_at', 'open_by_handle_at', 'syslog', 'vm86',
      'vm86old', 'uselib', 'ustat', 'sysfs', '_sysctl', 'nfsservctl', 'iopl', 'ioperm', 'settimeofday',
      'clock_settime', 'adjtimex', 'clock_adjtime', 'stime', 'fanotify_init', 'kcmp', 'pidfd_getfd',
      'get_mempolicy', 'set_mempolicy', 'mbind', 'move_pages', 'chroot',
    ];
    expect(denied.filter((name) => allowed(name).length > 0)).toEqual([]);
    expect(profile.syscalls.find((r) => r.names.includes('clone3'))).toMatchObject({ action: 'SCMP_ACT_ERRNO', errnoRet: 38 });
    // clone only without CLONE_NEWNS|CGROUP|UTS|IPC|USER|PID|NET.
    expect(allowed('clone')).toEqual([
      expect.objectContaining({ args: [{ index: 0, value: 0x7e020000, op: 'SCMP_CMP_MASKED_EQ' }] }),
    ]);
    expect(allowed('personality').map((r) => r.args)).toEqual(
      [0, 8, 0x20000, 0x20008, 0xffffffff].map((value) => [{ index: 0, value, op: 'SCMP_CMP_EQ' }]),
    );
  });

  it('shares no host namespace and mounts no docker socket', () => {
    expect(host.PidMode ?? '').toBe('');
    expect(host.IpcMode).toBe('private');
    expect(host.UTSMode ?? '').toBe('');
    expect(host.UsernsMode).toBeUndefined();
    expect(JSON.stringify(spec)).not.toMatch(/docker\.sock/);
    expect(host.Binds).toBeUndefined();
  });

  it('has a read-only root and mounts the allowed dirs, and the mounts below them, read-only at their own paths', () => {
    expect(host.ReadonlyRootfs).toBe(true);
    const binds = (host.Mounts ?? []).filter((m) => m.Type === 'bind');
    expect(binds).toEqual(
      [...settings.allowedDirs, ...settings.readOnlySubmounts].map((d) =>
        expect.objectContaining({ Type: 'bind', Source: d, Target: d, ReadOnly: true }),
      ),
    );
  });

  it('gives /tmp and /output size-capped noexec tmpfs that uid 65534 can write', () => {
    for (const target of ['/tmp', '/output']) {
      expect((host.Tmpfs?.[target] ?? '').split(',')).toEqual(
        expect.arrayContaining(['rw', 'noexec', 'nosuid', 'nodev', 'size=64m', 'mode=1777']),
      );
    }
    // No volume: the worker reads artifacts through the runner, never from the engine's side.
    expect((host.Mounts ?? []).filter((m) => m.Type !== 'bind')).toEqual([]);
  });

  it('caps memory without swap, cpu, pids, processes, files and file size', () => {
    expect(host.Memory).toBe(512 * 1024 * 1024);
    expect(host.MemorySwap).toBe(host.Memory);
    expect(host.NanoCpus).toBe(1.5e9);
    // runsc: the PIDs limit counts gVisor's host tasks; nproc bounds the guest (container-spec.ts).
    expect(host.PidsLimit).toBe(128 * 4 + 64);
    const ulimits = Object.fromEntries((host.Ulimits ?? []).map((u) => [u.Name, u]));
    expect(ulimits.nproc).toEqual({ Name: 'nproc', Soft: 128, Hard: 128 });
    expect(ulimits.nofile?.Hard).toBeGreaterThan(0);
    expect(ulimits.fsize?.Hard).toBe(64 * 1024 * 1024);
  });

  it('allows no core dumps under either runtime', () => {
    for (const runtime of ['runc', 'runsc'] as const) {
      const ulimits = buildContainerSpec({ ...settings, runtime }, { jobId: '', created }).HostConfig?.Ulimits ?? [];
      expect(ulimits).toContainEqual({ Name: 'core', Soft: 0, Hard: 0 });
    }
  });

  it('reaps children, never restarts, keeps no log and passes no environment', () => {
    expect(host.Init).toBe(true);
    expect(host.RestartPolicy).toEqual({ Name: 'no' });
    expect(host.LogConfig?.Type).toBe('none');
    expect(spec.Env).toEqual([]);
    expect(host.Runtime).toBe('runsc');
  });

  it('keeps stdin open and attaches all streams without a tty', () => {
    expect(spec).toMatchObject({ OpenStdin: true, StdinOnce: false, AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: false });
  });

  it('labels the container with its role, deployment, worker, job, creation time and deadline', () => {
    expect(spec.Labels).toEqual({
      [LABEL.role]: 'sandbox',
      [LABEL.deployment]: 'deployment-1',
      [LABEL.worker]: 'worker-1',
      [LABEL.job]: 'job-1',
      [LABEL.created]: created.toISOString(),
      [LABEL.deadline]: deadline.toISOString(),
    });
  });

  it('passes the runner its output limit and the per-execution artifact limits as argv', () => {
    expect(spec.Entrypoint).toEqual(['/usr/bin/python3', '-u', '/opt/maestro/runner.py']);
    expect(spec.Cmd).toEqual([
      '--limit', '65536',
      '--artifact-files', '20',
      '--artifact-bytes', String(25 * 1024 * 1024),
      '--artifact-file-bytes', String(10 * 1024 * 1024),
    ]);
    const small = buildContainerSpec({ ...settings, artifactBytesPerExecution: 2 * 1024 * 1024, artifactFilesPerExecution: 3 }, { jobId: 'job-1', created });
    expect(small.Cmd).toEqual(['--limit', '65536', '--artifact-files', '3', '--artifact-bytes', '2097152', '--artifact-file-bytes', '2097152']);
  });

  it('caps one artifact file at 10 MiB, and never above the per-execution total', () => {
    const MIB = 1024 * 1024;
    expect(artifactLimits({ artifactBytesPerExecution: 100 * MIB, artifactFilesPerExecution: 50 })).toEqual({ files: 50, totalBytes: 100 * MIB, fileBytes: 10 * MIB });
    expect(artifactLimits({ artifactBytesPerExecution: 2 * MIB, artifactFilesPerExecution: 20 })).toEqual({ files: 20, totalBytes: 2 * MIB, fileBytes: 2 * MIB });
    expect(artifactLimits({ artifactBytesPerExecution: 0, artifactFilesPerExecution: 0 })).toEqual({ files: 0, totalBytes: 0, fileBytes: 0 });
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => artifactLimits({ artifactBytesPerExecution: bad, artifactFilesPerExecution: 20 })).toThrow(/artifactBytesPerExecution must be a whole number/);
      expect(() => artifactLimits({ artifactBytesPerExecution: MIB, artifactFilesPerExecution: bad })).toThrow(/artifactFilesPerExecution must be a whole number/);
      expect(() => buildContainerSpec({ ...settings, artifactFilesPerExecution: bad }, { jobId: 'job-1', created })).toThrow();
    }
  });

  it('mounts nothing at /input for a job without inputs', () => {
    expect((host.Mounts ?? []).filter((m) => m.Target === INPUT_DIR || m.Target?.startsWith(`${INPUT_DIR}/`))).toEqual([]);
    const none = buildContainerSpec(settings, { jobId: 'job-1', created }, {});
    expect(none.HostConfig?.Mounts).toEqual(host.Mounts);
  });

  it("binds a job's inputs dir read-only at /input, after the allowed dirs, leaving the propagation to the engine", () => {
    const withInputs = buildContainerSpec(settings, { jobId: 'job-1', created, deadline }, { inputsHostDir: '/var/lib/maestro/artifacts/inputs/job-1' });
    const mounts = withInputs.HostConfig?.Mounts ?? [];
    expect(mounts.slice(0, -1)).toEqual(host.Mounts);
    expect(mounts.at(-1)).toEqual({
      Type: 'bind',
      Source: '/var/lib/maestro/artifacts/inputs/job-1',
      Target: '/input',
      ReadOnly: true,
    });
    // Unset, the engine picks rprivate, or rslave inside its own root (a named volume), where it refuses rprivate.
    expect(mounts.at(-1)?.BindOptions).toBeUndefined();
    // Everything else is the spec of a job without inputs.
    expect({ ...withInputs, HostConfig: { ...withInputs.HostConfig, Mounts: [] } }).toEqual({ ...spec, HostConfig: { ...host, Mounts: [] } });
    expect(withInputs.HostConfig?.Binds).toBeUndefined();
  });

  it('takes the inputs dir with one trailing slash, and refuses one that is not absolute and normalised', () => {
    const trailing = buildContainerSpec(settings, { jobId: 'job-1', created }, { inputsHostDir: '/srv/inputs/job-1/' });
    expect(trailing.HostConfig?.Mounts?.at(-1)).toMatchObject({ Source: '/srv/inputs/job-1', Target: '/input' });
    for (const bad of ['inputs/job-1', '', '/', '/srv/../etc', '/srv//inputs', '/srv/./inputs', '/srv/in\0puts']) {
      expect(() => buildContainerSpec(settings, { jobId: 'job-1', created }, { inputsHostDir: bad })).toThrow(/inputs dir must be an absolute, normalised path/);
    }
  });

  it('labels a pool container with an empty job and no deadline', () => {
    const pool = buildContainerSpec(settings, { jobId: '', created });
    expect(pool.Labels?.[LABEL.job]).toBe('');
    expect(pool.Labels?.[LABEL.deadline]).toBeUndefined();
  });
});
