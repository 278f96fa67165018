/**
 * The suite needs a Docker engine and nothing else running. When REDIS_URL is unset it starts a
 * throwaway Redis container (REDIS_IMAGE, default the official image) on a free loopback port; it
 * builds the sandbox image when it is missing or was built from other files than sandbox-image/ holds
 * now (the runner is part of the image). global-teardown.ts removes what this started.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { contextFiles, contextHash, IMAGE_LABEL } from '../../services/worker/src/sandbox/image-build';
import { docker, sandboxImage } from './docker';
import { startRedisContainer } from './redis-container';

export default async function globalSetup(): Promise<void> {
  process.env.MAESTRO_TEST_RUN ??= randomBytes(3).toString('hex');
  await docker.ping().catch(() => {
    throw new Error('The test suite needs a running Docker engine (see README: Testing).');
  });

  const image = sandboxImage();
  const built = await docker.getImage(image).inspect().then(
    (info) => info.Config?.Labels?.[IMAGE_LABEL.context] ?? '',
    () => undefined,
  );
  if (built !== (await currentContextHash())) {
    const why = built === undefined ? 'first run only' : 'sandbox-image/ or DEBIAN_IMAGE changed since it was built';
    console.log(`\nglobal-setup: building the sandbox image ${image} (${why})`);
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

/** The context label a build of sandbox-image/ gets now, as the build script computes it (image-build.ts). */
async function currentContextHash(): Promise<string> {
  const dir = join(__dirname, '..', '..', 'sandbox-image');
  const debianImage = process.env.DEBIAN_IMAGE?.trim();
  return contextHash(dir, await contextFiles(dir), debianImage ? { DEBIAN_IMAGE: debianImage } : {});
}
