import path from 'node:path';
import type Dockerode from 'dockerode';
import { SandboxError } from '../../../shared/src/errors';
import { SECCOMP_SECURITY_OPT } from './seccomp-profile';
import type { SandboxSettings } from './types';

/** Label keys every sandbox container carries; cleanup finds containers by these, never by name. */
export const LABEL = {
  role: 'maestro.role',
  /** The deployment's own random id (kept in its Redis): what the reaper judges by. */
  deployment: 'maestro.deployment',
  worker: 'maestro.worker',
  job: 'maestro.job',
  created: 'maestro.created',
  deadline: 'maestro.deadline',
} as const;

export const SANDBOX_ROLE = 'sandbox';
export const SANDBOX_UID = 65534;
export const OUTPUT_DIR = '/output';
/** Where a job's input files appear in its sandbox, read-only. */
export const INPUT_DIR = '/input';
export const RUNNER_PATH = '/opt/maestro/runner.py';

const MIB = 1024 * 1024;
/** The most one artifact file may be, whatever the per-execution quota (runner.py has the same default). */
export const MAX_ARTIFACT_FILE_BYTES = 10 * MIB;
const NOFILE = 1024;
// Under runc RLIMIT_NPROC counts every process of the uid on the host, and all sandboxes share uid
// 65534, so a per-container value would let one busy job starve the others; the cgroup PIDs limit
// bounds each runc container. gVisor keeps its own count per sandbox, where the PIDs limit alone
// was seen not to stop threads, so there the ulimit is the per-container bound.
const RUNC_NPROC_FACTOR = 16;
// Under gVisor the PIDs limit counts the sandbox's host tasks (the sentry's threads and about two per
// guest process), not the guest's: at PidsLimit = pids the sentry could not create a thread and the
// whole sandbox exited with status 2 after 17 guest processes of 64 (measured). There the nproc
// ulimit bounds the guest; the PIDs limit stays only as a backstop on the sentry.
const RUNSC_PIDS_FACTOR = 4;
const RUNSC_PIDS_HEADROOM = 64;

export interface SandboxContainerLabels {
  /** Job id, or '' for a pool container not yet handed to a job. */
  jobId: string;
  created: Date;
  deadline?: Date;
}

/** What one sandbox container mounts beyond what every sandbox of the worker mounts. */
export interface SandboxContainerMounts {
  /**
   * Absolute path, on the Docker host, of the job's input files: bind-mounted read-only at INPUT_DIR.
   * Unset for a job without inputs, and for every pool container.
   */
  inputsHostDir?: string;
}

/** What one execution may hand back from the output dir; the runner and the worker both hold to it. */
export interface ArtifactLimits {
  /** Most files one execution hands back. */
  files: number;
  /** Most bytes of all of them together. */
  totalBytes: number;
  /** Most bytes of one file: the smaller of the total and MAX_ARTIFACT_FILE_BYTES. */
  fileBytes: number;
}

/** The per-execution artifact limits of these settings; throws when a setting is not a whole number >= 0. Pure. */
export function artifactLimits(settings: Pick<SandboxSettings, 'artifactBytesPerExecution' | 'artifactFilesPerExecution'>): ArtifactLimits {
  const { artifactBytesPerExecution: totalBytes, artifactFilesPerExecution: files } = settings;
  for (const [name, value] of [['artifactBytesPerExecution', totalBytes], ['artifactFilesPerExecution', files]] as const) {
    if (!Number.isSafeInteger(value) || value < 0) throw new SandboxError(`the sandbox setting ${name} must be a whole number >= 0, not ${String(value)}`, { retryable: false });
  }
  return { files, totalBytes, fileBytes: Math.min(totalBytes, MAX_ARTIFACT_FILE_BYTES) };
}

/** Labels of a sandbox container of this worker: whatever is created outside the process is labelled. */
export function sandboxLabels(settings: SandboxSettings, labels: SandboxContainerLabels): Record<string, string> {
  const out: Record<string, string> = {
    [LABEL.role]: SANDBOX_ROLE,
    [LABEL.deployment]: settings.deploymentId,
    [LABEL.worker]: settings.workerId,
    [LABEL.job]: labels.jobId,
    [LABEL.created]: labels.created.toISOString(),
  };
  if (labels.deadline) out[LABEL.deadline] = labels.deadline.toISOString();
  return out;
}

/** The inputs dir as the engine must get it: absolute and normalised, so what is checked is what is mounted. */
function checkedInputsHostDir(dir: string): string {
  const trimmed = dir.length > 1 ? dir.replace(/\/$/, '') : dir;
  if (dir.includes('\0') || !path.posix.isAbsolute(dir) || trimmed === '/' || path.posix.normalize(trimmed) !== trimmed) {
    throw new SandboxError(`the job's inputs dir must be an absolute, normalised path below the root, not ${JSON.stringify(dir)}`, { retryable: false });
  }
  return trimmed;
}

/**
 * The hardened create options of one sandbox container (docs/architecture.md, "The sandbox"; SECURITY.md).
 * `mounts.inputsHostDir`, when set, is bound read-only at INPUT_DIR. Pure.
 */
export function buildContainerSpec(
  settings: SandboxSettings,
  labels: SandboxContainerLabels,
  mounts: SandboxContainerMounts = {},
): Dockerode.ContainerCreateOptions {
  const limits = artifactLimits(settings);
  const inputsHostDir = mounts.inputsHostDir === undefined ? undefined : checkedInputsHostDir(mounts.inputsHostDir);
  const tmpfsOptions = `noexec,nosuid,nodev,size=${settings.tmpSizeMb}m,mode=1777`;
  const containerLabels = sandboxLabels(settings, labels);
  const fsizeBytes = settings.tmpSizeMb * MIB;
  const nproc = settings.runtime === 'runsc' ? settings.pids : settings.pids * RUNC_NPROC_FACTOR;
  return {
    Image: settings.image,
    // Explicit, so a rebuilt image cannot change what runs; the limits reach the runner as argv
    // because the container gets no environment from the worker.
    Entrypoint: ['/usr/bin/python3', '-u', RUNNER_PATH],
    Cmd: [
      '--limit', String(settings.outputLimitBytes),
      '--artifact-files', String(limits.files),
      '--artifact-bytes', String(limits.totalBytes),
      '--artifact-file-bytes', String(limits.fileBytes),
    ],
    User: `${SANDBOX_UID}:${SANDBOX_UID}`,
    WorkingDir: OUTPUT_DIR,
    Hostname: 'sandbox',
    Env: [],
    Labels: containerLabels,
    NetworkDisabled: true,
    OpenStdin: true,
    StdinOnce: false,
    AttachStdin: true,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    HostConfig: {
      NetworkMode: 'none',
      Runtime: settings.runtime,
      ReadonlyRootfs: true,
      Mounts: [
        ...settings.allowedDirs.map((dir) => ({
          // A `bind` Mount (unlike a `Binds` entry) fails when the source is missing instead of
          // creating it on the host as root.
          Type: 'bind' as const,
          Source: dir,
          Target: dir,
          ReadOnly: true,
          BindOptions: { Propagation: 'rprivate' as const },
        })),
        // A bind is recursive, but before Engine 25 its ReadOnly covers the top mount only: each mount
        // below an allowed dir is bound again read-only, and lands on top as the engine mounts by depth.
        ...settings.readOnlySubmounts.map((dir) => ({
          Type: 'bind' as const,
          Source: dir,
          Target: dir,
          ReadOnly: true,
          BindOptions: { Propagation: 'rprivate' as const },
        })),
        // The job's input files, read-only like the allowed dirs; no allowed dir can be at or under
        // INPUT_DIR (allowed-dirs.ts). No propagation is given: the engine then uses rprivate, or
        // rslave for a source inside its own root (a named volume of the worker's container, see
        // host-path.ts), where it refuses rprivate. Nothing mounts below a job's inputs dir.
        ...(inputsHostDir === undefined ? [] : [{ Type: 'bind' as const, Source: inputsHostDir, Target: INPUT_DIR, ReadOnly: true }]),
      ],
      // mode=1777: the tmpfs is created root-owned and the runner runs as 65534 (checked under runc
      // and runsc; runc copies the mode of the image's dir, which is 1777 too).
      // The runner reads the output dir's files itself and hands their bytes back over its stdout,
      // so nothing outside the container ever reads a path the code could have chosen.
      Tmpfs: { '/tmp': `rw,${tmpfsOptions}`, [OUTPUT_DIR]: `rw,${tmpfsOptions}` },
      ShmSize: settings.tmpSizeMb * MIB,
      CapDrop: ['ALL'],
      CapAdd: [],
      // The project's profile under runc (seccomp-profile.ts); runsc would ignore it (gVisor applies an
      // OCI profile only with --oci-seccomp), so there the engine's default stays in the spec.
      SecurityOpt: settings.runtime === 'runc' ? ['no-new-privileges', SECCOMP_SECURITY_OPT] : ['no-new-privileges'],
      Privileged: false,
      Devices: [],
      IpcMode: 'private',
      PidMode: '',
      UTSMode: '',
      Init: true,
      Memory: settings.memoryMb * MIB,
      MemorySwap: settings.memoryMb * MIB,
      NanoCpus: Math.round(settings.cpus * 1e9),
      PidsLimit: settings.runtime === 'runsc' ? settings.pids * RUNSC_PIDS_FACTOR + RUNSC_PIDS_HEADROOM : settings.pids,
      Ulimits: [
        { Name: 'nproc', Soft: nproc, Hard: nproc },
        { Name: 'nofile', Soft: NOFILE, Hard: NOFILE },
        { Name: 'fsize', Soft: fsizeBytes, Hard: fsizeBytes },
        // No core dumps: a crashing process must not write its memory anywhere.
        { Name: 'core', Soft: 0, Hard: 0 },
      ],
      RestartPolicy: { Name: 'no' },
      AutoRemove: false,
      // The runner's stdout is the protocol, read over attach; nothing needs to be kept on disk.
      LogConfig: { Type: 'none', Config: {} },
    },
  };
}
