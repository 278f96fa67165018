/**
 * The suite needs a Docker engine and nothing else running. When REDIS_URL is unset it starts a
 * throwaway Redis container (REDIS_IMAGE, default the official image) on a free loopback port; it
 * builds the sandbox image when it is missing. global-teardown.ts removes what this started.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { docker, sandboxImage, TEST_LABEL, testRun } from './docker';
import { waitFor } from './wait-for';

export default async function globalSetup(): Promise<void> {
  process.env.MAESTRO_TEST_RUN ??= randomBytes(3).toString('hex');
  await docker.ping().catch(() => {
    throw new Error('The test suite needs a running Docker engine (see README: Testing).');
  });

  const image = sandboxImage();
  const present = await docker.getImage(image).inspect().then(() => true, () => false);
  if (!present) {
    console.log(`\nglobal-setup: building the sandbox image ${image} (first run only)`);
    const build = spawnSync(process.execPath, [join(__dirname, '..', '..', 'scripts', 'sandbox-build.mjs')], {
      stdio: 'inherit',
      env: { ...process.env, SANDBOX_IMAGE: image },
    });
    if (build.status !== 0) throw new Error(`building ${image} failed`);
  }

  if (!process.env.REDIS_URL) {
    const redisImage = process.env.REDIS_IMAGE ?? 'redis:7';
    await ensureImage(redisImage);
    const container = await docker.createContainer({
      Image: redisImage,
      Cmd: ['redis-server', '--save', '', '--appendonly', 'no'],
      Labels: { [TEST_LABEL]: testRun(), 'maestro.role': 'test-redis' },
      HostConfig: { PortBindings: { '6379/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] }, AutoRemove: false },
      ExposedPorts: { '6379/tcp': {} },
    });
    await container.start();
    const info = await container.inspect();
    const port = info.NetworkSettings.Ports['6379/tcp']?.[0]?.HostPort;
    if (!port) throw new Error('the test Redis container published no port');
    const url = `redis://127.0.0.1:${port}`;
    await waitFor(
      async () => {
        const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        // docker-proxy accepts and then resets connections until Redis inside is up: expected, not news.
        probe.on('error', () => undefined);
        try {
          await probe.connect();
          return (await probe.ping()) === 'PONG';
        } finally {
          probe.disconnect();
        }
      },
      { timeoutMs: 20_000, what: 'the test Redis container' },
    );
    process.env.REDIS_URL = url;
    process.env.MAESTRO_TEST_REDIS_CONTAINER = container.id;
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
