import { buildContainerSpec, LABEL } from '../../services/worker/src/sandbox/container-spec';
import { SandboxError } from '../../services/shared/src/errors';
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
  outputLimitBytes: 65_536,
  tmpSizeMb: 64,
  workerId: 'worker-1',
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

  it('shares no host namespace and mounts no docker socket', () => {
    expect(host.PidMode ?? '').toBe('');
    expect(host.IpcMode).toBe('private');
    expect(host.UTSMode ?? '').toBe('');
    expect(host.UsernsMode).toBeUndefined();
    expect(JSON.stringify(spec)).not.toMatch(/docker\.sock/);
    expect(host.Binds).toBeUndefined();
  });

  it('has a read-only root and mounts the allowed dirs read-only at their own paths', () => {
    expect(host.ReadonlyRootfs).toBe(true);
    const binds = (host.Mounts ?? []).filter((m) => m.Type === 'bind');
    expect(binds).toEqual(
      settings.allowedDirs.map((d) => expect.objectContaining({ Type: 'bind', Source: d, Target: d, ReadOnly: true })),
    );
  });

  it('gives /tmp and /output size-capped noexec tmpfs that uid 65534 can write', () => {
    expect(host.Tmpfs?.['/tmp']).toMatch(/(^|,)size=64m(,|$)/);
    const output = (host.Mounts ?? []).find((m) => m.Target === '/output');
    expect(output?.Type).toBe('volume');
    const opts = output?.VolumeOptions?.DriverConfig.Options ?? {};
    expect(opts.type).toBe('tmpfs');
    for (const o of [host.Tmpfs?.['/tmp'] ?? '', opts.o ?? '']) {
      expect(o.split(',')).toEqual(expect.arrayContaining(['noexec', 'nosuid', 'nodev', 'size=64m', 'mode=1777']));
    }
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

  it('labels the container with its role, worker, job, creation time and deadline', () => {
    expect(spec.Labels).toEqual({
      [LABEL.role]: 'sandbox',
      [LABEL.worker]: 'worker-1',
      [LABEL.job]: 'job-1',
      [LABEL.created]: created.toISOString(),
      [LABEL.deadline]: deadline.toISOString(),
    });
  });

  it('labels a pool container with an empty job and no deadline', () => {
    const pool = buildContainerSpec(settings, { jobId: '', created });
    expect(pool.Labels?.[LABEL.job]).toBe('');
    expect(pool.Labels?.[LABEL.deadline]).toBeUndefined();
  });

  it('refuses an allowed dir that is relative or would cover a path the sandbox needs', () => {
    for (const bad of ['relative/dir', '/', '/tmp', '/output', '/opt', '/a/../b']) {
      expect(() => buildContainerSpec({ ...settings, allowedDirs: [bad] }, { jobId: '', created })).toThrow(SandboxError);
    }
  });
});
