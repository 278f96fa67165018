import Docker from 'dockerode';
import type { SandboxSettings } from '../../services/worker/src/sandbox/types';

export const docker = new Docker();

/** Label every container and image a test run creates carries, so teardown can find them all. */
export const TEST_LABEL = 'maestro.test';

/**
 * This jest run's id, set by global setup and inherited by the test workers, so that a run cleans up
 * only what it made, even with another run going on the same Docker engine.
 */
export function testRun(): string {
  return process.env.MAESTRO_TEST_RUN ?? 'adhoc';
}

/** What every MAESTRO_PREFIX (and so every worker id and sandbox label) of this run starts with. */
export function testPrefix(): string {
  return `mt-${testRun()}-`;
}

/** testPrefix() as the test files see it (their workers start after global setup set the run id). */
export const TEST_PREFIX = testPrefix();

export function sandboxImage(): string {
  return process.env.SANDBOX_IMAGE ?? 'maestro-sandbox:latest';
}

/** Containers (any state) carrying all the given labels. */
export async function containersWith(labels: Record<string, string>): Promise<Docker.ContainerInfo[]> {
  const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
  return docker.listContainers({ all: true, filters });
}

/** Removes, with their volumes, the sandbox containers of every worker whose id starts with `workerIdPrefix`. */
export async function removeSandboxesOf(workerIdPrefix: string): Promise<void> {
  for (const info of await containersWith({ 'maestro.role': 'sandbox' })) {
    if (!info.Labels['maestro.worker']?.startsWith(workerIdPrefix)) continue;
    await docker.getContainer(info.Id).remove({ force: true, v: true }).catch(() => undefined);
  }
}

/** Python that prints `container=<id>` of the container it runs in (runc: from its mount table). */
export const CONTAINER_ID_CODE = [
  'import re',
  "m = re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read())",
  "print('container=' + (m.group(1) if m else 'unknown'))",
].join('\n');

/**
 * Sandbox settings for tests that drive a SandboxManager directly: the production defaults scaled
 * down, no pool, no allowed dirs, and the worker id doubling as the deployment id.
 */
export function testSandboxSettings(
  overrides: Partial<SandboxSettings> & Pick<SandboxSettings, 'workerId' | 'runtime'>,
): SandboxSettings {
  return {
    image: sandboxImage(),
    timeoutMs: 30_000,
    memoryMb: 512,
    cpus: 1,
    pids: 128,
    poolSize: 0,
    allowedDirs: [],
    readOnlySubmounts: [],
    outputLimitBytes: 64 * 1024,
    artifactBytesPerExecution: 25 * 1024 * 1024,
    artifactFilesPerExecution: 20,
    tmpSizeMb: 64,
    deploymentId: overrides.workerId,
    ...overrides,
  };
}
