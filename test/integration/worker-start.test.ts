/**
 * The worker's start-up checks, run against the real entry point (services/worker/src/main.ts) as
 * `npm start` runs it: a failure is one line on stderr and exit code 1, never a worker that looks
 * healthy and fails every job.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { deploymentKey } from '../../services/shared/src/queue';
import { TEST_PREFIX } from '../support/docker';
import { runServiceProcess } from '../support/service-process';

/** The worker from source, with the test's environment and the given variables. */
const startWorkerProcess = (env: Record<string, string>) => runServiceProcess('worker', { ...process.env, LOG_LEVEL: 'info', ALLOWED_DIRS: '', ...env });

describe('worker start-up', () => {
  const prefix = `${TEST_PREFIX}start-${randomBytes(3).toString('hex')}`;

  afterAll(async () => {
    // The one key the worker wrote before it checked the image.
    const redis = new Redis(process.env.REDIS_URL as string);
    await redis.del(deploymentKey(prefix));
    await redis.quit();
  });

  test('a missing sandbox image stops the worker with one line naming the image and how to build it', async () => {
    const image = 'maestro-sandbox:does-not-exist';
    const { code, stdout, stderr } = await startWorkerProcess({
      REDIS_URL: process.env.REDIS_URL as string,
      MAESTRO_PREFIX: prefix,
      SANDBOX_IMAGE: image,
    });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.endsWith('\n')).toBe(true);
    const lines = stderr.slice(0, -1).split('\n');
    expect(lines).toEqual([expect.stringMatching(/^maestro worker: /)]);
    expect(lines[0]).toContain(image);
    expect(lines[0]).toContain('npm run sandbox:build');
    expect(lines[0]).toContain('docker compose up');
  });
});
