/**
 * A throwaway Redis in a container of REDIS_IMAGE (default the official image), published on a free
 * loopback port and labelled for this test run. The suite's own Redis is one; tests that need a
 * Redis of their own (a second deployment, a password, TLS) start more.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { docker, TEST_LABEL, testRun } from './docker';
import { waitFor } from './wait-for';

export interface RedisContainer {
  id: string;
  /** redis://127.0.0.1:PORT (no credentials). */
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startRedisContainer(
  opts: {
    args?: string[];
    role?: string;
    binds?: string[];
    probe?: RedisOptions;
    /** A fixed loopback port instead of one Docker picks, so a container stopped and started again keeps it. */
    hostPort?: number;
  } = {},
): Promise<RedisContainer> {
  const image = process.env.REDIS_IMAGE ?? 'redis:7';
  await ensureImage(image);
  const container = await docker.createContainer({
    Image: image,
    Cmd: ['redis-server', '--save', '', '--appendonly', 'no', ...(opts.args ?? [])],
    Labels: { [TEST_LABEL]: testRun(), 'maestro.role': opts.role ?? 'test-redis' },
    HostConfig: { PortBindings: { '6379/tcp': [{ HostIp: '127.0.0.1', HostPort: opts.hostPort ? String(opts.hostPort) : '' }] }, AutoRemove: false, Binds: opts.binds },
    ExposedPorts: { '6379/tcp': {} },
  });
  const close = (): Promise<void> => container.remove({ force: true, v: true }).catch(() => undefined);
  try {
    await container.start();
    const info = await container.inspect();
    const port = Number(info.NetworkSettings.Ports['6379/tcp']?.[0]?.HostPort);
    if (!port) throw new Error('the test Redis container published no port');
    await waitFor(
      async () => {
        const probe = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, ...opts.probe });
        // docker-proxy accepts and then resets connections until Redis inside is up: expected, not news.
        probe.on('error', () => undefined);
        try {
          await probe.connect();
          return (await probe.ping()) === 'PONG';
        } catch {
          return false;
        } finally {
          probe.disconnect();
        }
      },
      { timeoutMs: 20_000, what: 'a test Redis container' },
    );
    return { id: container.id, url: `redis://127.0.0.1:${port}`, port, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Pulls an image that is not here yet, as `docker run` would. */
async function ensureImage(image: string): Promise<void> {
  if (await docker.getImage(image).inspect().then(() => true, () => false)) return;
  try {
    const stream = await docker.pull(image);
    await new Promise((resolve, reject) => docker.modem.followProgress(stream, (err) => (err ? reject(err) : resolve(undefined))));
  } catch (err) {
    throw new Error(`Image ${image} is missing and could not be pulled (${(err as Error).message}); set REDIS_URL to a running Redis, or REDIS_IMAGE to a local image.`);
  }
}
