/**
 * hostPathOf against the real engine: a container standing in for the worker's (created with a named
 * volume at ARTIFACT_DIR, as docker compose would) is inspected by its hostname, and the host path
 * found is what a sandbox then mounts at /input.
 */
import { createLogger } from '../../services/shared/src/logger';
import { hostPathOf } from '../../services/worker/src/host-path';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../../services/worker/src/sandbox/sandbox-manager';
import { containersWith, docker, sandboxImage, TEST_LABEL, TEST_PREFIX, testRun, testSandboxSettings } from '../support/docker';

const ARTIFACTS = '/var/lib/maestro/artifacts';
const logger = createLogger({ level: 'silent', service: 'host-path-test' });

describe('the host path of a dir on a volume of the worker container', () => {
  const volumeName = `${TEST_PREFIX}host-path-${process.pid}-${Date.now()}`;
  const workerId = `${TEST_PREFIX}host-path-${process.pid}-${Date.now()}`;
  const made: string[] = [];
  let volumePath: string;
  let workerHostname: string;

  /** A labelled container of the sandbox image with the volume at ARTIFACTS; started when `script` is given. */
  async function containerWithVolume(opts: { hostname?: string; script?: string } = {}): Promise<string> {
    const container = await docker.createContainer({
      Image: sandboxImage(),
      User: '0:0',
      Entrypoint: ['/bin/sh', '-c', opts.script ?? 'true'],
      Cmd: [],
      ...(opts.hostname ? { Hostname: opts.hostname } : {}),
      Labels: { [TEST_LABEL]: testRun(), 'maestro.role': 'test-host-path' },
      NetworkDisabled: true,
      HostConfig: { NetworkMode: 'none', Mounts: [{ Type: 'volume', Source: volumeName, Target: ARTIFACTS }] },
    });
    made.push(container.id);
    if (opts.script) {
      await container.start();
      const { StatusCode } = (await container.wait()) as { StatusCode: number };
      expect(StatusCode).toBe(0);
    }
    return container.id;
  }

  beforeAll(async () => {
    await docker.createVolume({ Name: volumeName, Labels: { [TEST_LABEL]: testRun() } });
    volumePath = ((await docker.getVolume(volumeName).inspect()) as { Mountpoint: string }).Mountpoint;
    // As the worker would store a job's inputs: a 0755 dir of 0644 files owned by its user.
    const id = await containerWithVolume({
      script: [
        `mkdir -p ${ARTIFACTS}/inputs/job-1`,
        `printf 'x,y\\n1,2\\n' > ${ARTIFACTS}/inputs/job-1/data.csv`,
        `chmod 0755 ${ARTIFACTS}/inputs ${ARTIFACTS}/inputs/job-1`,
        `chmod 0644 ${ARTIFACTS}/inputs/job-1/data.csv`,
      ].join(' && '),
    });
    // A container's hostname is the first 12 characters of its id unless it is given one.
    workerHostname = id.slice(0, 12);
  });

  afterAll(async () => {
    await Promise.allSettled(made.map((id) => docker.getContainer(id).remove({ force: true, v: true })));
    const left = await containersWith({ [LABEL.worker]: workerId });
    await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
    await docker.getVolume(volumeName).remove().catch(() => undefined);
  });

  test('is the dir below the volume on the host', async () => {
    expect(await hostPathOf(docker, `${ARTIFACTS}/inputs/job-1`, workerHostname)).toBe(`${volumePath}/inputs/job-1`);
    expect(await hostPathOf(docker, ARTIFACTS, workerHostname)).toBe(volumePath);
  });

  test('is what a sandbox can mount as the job inputs', async () => {
    const manager = new SandboxManager({ docker, logger, settings: testSandboxSettings({ runtime: 'runc', workerId }) });
    try {
      const inputsHostDir = await hostPathOf(docker, `${ARTIFACTS}/inputs/job-1`, workerHostname);
      const session = manager.session('job-1', { deadline: new Date(Date.now() + 120_000), inputsHostDir });
      try {
        const result = await session.run('print(open("/input/data.csv").read(), end="")', { timeoutMs: 30_000, signal: new AbortController().signal });
        expect(result).toMatchObject({ stdout: 'x,y\n1,2\n', exitCode: 0 });
      } finally {
        await session.close();
      }
    } finally {
      await manager.close();
    }
  });

  test('throws, naming ARTIFACT_DIR, when no mount of the container covers the dir', async () => {
    await expect(hostPathOf(docker, '/srv/elsewhere', workerHostname)).rejects.toThrow(
      /ARTIFACT_DIR must be on a volume or bind mount of the worker's container .* so sandboxes can mount job inputs/,
    );
  });

  test('is the dir itself when no container is found by the hostname, or the one found has another hostname', async () => {
    expect(await hostPathOf(docker, ARTIFACTS, `${TEST_PREFIX}no-such-container`)).toBe(ARTIFACTS);
    // Found by its id, but its hostname was set: not a container this process could be running in by default.
    const renamed = await containerWithVolume({ hostname: 'custom-host' });
    expect(await hostPathOf(docker, ARTIFACTS, renamed.slice(0, 12))).toBe(ARTIFACTS);
  });
});
