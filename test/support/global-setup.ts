/**
 * The suite needs a Docker engine and nothing else running. When REDIS_URL is unset it starts a
 * throwaway Redis container (REDIS_IMAGE, default the official image) on a free loopback port; it
 * builds the sandbox image when it is missing. global-teardown.ts removes what this started.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { docker, sandboxImage } from './docker';
import { startRedisContainer } from './redis-container';

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
    const redis = await startRedisContainer();
    process.env.REDIS_URL = redis.url;
    process.env.MAESTRO_TEST_REDIS_CONTAINER = redis.id;
  }
}
