import { hostPathFromInspect, hostPathOf, isOwnContainer, type InspectedContainer } from '../../services/worker/src/host-path';
import type Dockerode from 'dockerode';

const ID = 'a1b2c3d4e5f6'.padEnd(64, '0');
const HOSTNAME = ID.slice(0, 12);
const ARTIFACTS = '/var/lib/maestro/artifacts';

function container(mounts: InspectedContainer['Mounts'], over: Partial<InspectedContainer> = {}): InspectedContainer {
  return { Id: ID, Config: { Hostname: HOSTNAME }, Mounts: mounts, ...over };
}

const volume = { Type: 'volume', Name: 'maestro_artifacts', Source: '/var/lib/docker/volumes/maestro_artifacts/_data', Destination: ARTIFACTS };

describe('the host path of a dir the worker sees', () => {
  test('is the dir itself when the worker runs on the host', () => {
    expect(hostPathFromInspect(undefined, 'my-laptop', `${ARTIFACTS}/inputs/job-1`)).toBe(`${ARTIFACTS}/inputs/job-1`);
  });

  test('is the dir itself when the container found is not the one this process runs in', () => {
    // A container named like the host, or with that hostname but another id.
    expect(hostPathFromInspect(container([volume], { Config: { Hostname: 'other' } }), HOSTNAME, ARTIFACTS)).toBe(ARTIFACTS);
    expect(hostPathFromInspect(container([volume], { Id: 'f'.repeat(64) }), HOSTNAME, ARTIFACTS)).toBe(ARTIFACTS);
    expect(isOwnContainer(container([]), HOSTNAME)).toBe(true);
    expect(isOwnContainer(container([]), '')).toBe(false);
  });

  test('maps a dir on a named volume to the volume on the host', () => {
    const own = container([volume]);
    expect(hostPathFromInspect(own, HOSTNAME, ARTIFACTS)).toBe(volume.Source);
    expect(hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}/`)).toBe(volume.Source);
    expect(hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}/inputs/job 1`)).toBe(`${volume.Source}/inputs/job 1`);
  });

  test('maps a dir on a bind mount through the closest mount above it', () => {
    const own = container([
      { Type: 'bind', Source: '/srv/maestro', Destination: '/var/lib/maestro' },
      { Type: 'bind', Source: '/mnt/fast/artifacts', Destination: ARTIFACTS },
      { Type: 'bind', Source: '/srv/other', Destination: `${ARTIFACTS}-old` },
    ]);
    expect(hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}/inputs/job-1`)).toBe('/mnt/fast/artifacts/inputs/job-1');
    expect(hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}-old/x`)).toBe('/srv/other/x');
    expect(hostPathFromInspect(own, HOSTNAME, '/var/lib/maestro/cache')).toBe('/srv/maestro/cache');
  });

  test('throws, naming ARTIFACT_DIR, when no mount of the worker container covers the dir', () => {
    const own = container([{ Type: 'bind', Source: '/srv/config', Destination: '/etc/maestro' }]);
    expect(() => hostPathFromInspect(own, HOSTNAME, ARTIFACTS)).toThrow(
      /ARTIFACT_DIR must be on a volume or bind mount of the worker's container .* so sandboxes can mount job inputs/,
    );
    expect(() => hostPathFromInspect(container([]), HOSTNAME, ARTIFACTS)).toThrow(/ARTIFACT_DIR must be on a volume or bind mount/);
    expect(() => hostPathFromInspect(container(null), HOSTNAME, ARTIFACTS)).toThrow(/ARTIFACT_DIR must be on a volume or bind mount/);
    // A name that only starts like the mount is not under it.
    const prefix = container([{ Type: 'volume', Source: '/var/lib/docker/volumes/x/_data', Destination: '/var/lib/maestro/art' }]);
    expect(() => hostPathFromInspect(prefix, HOSTNAME, ARTIFACTS)).toThrow(/ARTIFACT_DIR must be on a volume or bind mount/);
  });

  test('throws when the closest mount is a tmpfs, which the host cannot reach', () => {
    const own = container([volume, { Type: 'tmpfs', Source: '', Destination: `${ARTIFACTS}/inputs` }]);
    expect(() => hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}/inputs/job-1`)).toThrow(/ARTIFACT_DIR must be .*: .* lies on a tmpfs mount/);
    expect(hostPathFromInspect(own, HOSTNAME, `${ARTIFACTS}/results`)).toBe(`${volume.Source}/results`);
  });
});

describe('hostPathOf', () => {
  function engine(inspect: () => Promise<unknown>): { docker: Dockerode; asked: string[] } {
    const asked: string[] = [];
    const docker = { getContainer: (name: string) => (asked.push(name), { inspect }) } as unknown as Dockerode;
    return { docker, asked };
  }
  const status = (statusCode: number) => Object.assign(new Error(`status ${statusCode}`), { statusCode });

  test('inspects the container named by the hostname and maps the dir through its mounts', async () => {
    const { docker, asked } = engine(() => Promise.resolve(container([volume])));
    await expect(hostPathOf(docker, `${ARTIFACTS}/inputs`, HOSTNAME)).resolves.toBe(`${volume.Source}/inputs`);
    expect(asked).toEqual([HOSTNAME]);
  });

  test('is the dir itself when the engine has no such container', async () => {
    for (const code of [404, 400]) {
      const { docker } = engine(() => Promise.reject(status(code)));
      await expect(hostPathOf(docker, ARTIFACTS, 'my-laptop')).resolves.toBe(ARTIFACTS);
    }
  });

  test('passes on any other engine failure', async () => {
    const { docker } = engine(() => Promise.reject(status(500)));
    await expect(hostPathOf(docker, ARTIFACTS, HOSTNAME)).rejects.toThrow('status 500');
  });
});
