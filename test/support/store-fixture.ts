/**
 * A test file's own corner of the suite's Redis and artifact root, for tests of the job store itself:
 * a fresh prefix, a Redis connection and a directory store, made before the file's tests (or its
 * describe block's) and removed after them, keys and files alike.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { DirectoryArtifactStore } from '../../services/shared/src/artifact-store';
import { TEST_PREFIX } from './docker';
import { TEST_ARTIFACT_ROOT } from './stack';

export interface StoreFixture {
  prefix: string;
  /** Set once the file's beforeAll has run. */
  redis: Redis;
  files: DirectoryArtifactStore;
}

/** Registers the fixture's beforeAll and afterAll where it is called; `name` goes into the prefix, to tell files' leftovers apart. */
export function useStoreFixture(name: string): StoreFixture {
  const fixture = { prefix: `${TEST_PREFIX}${name}${randomBytes(3).toString('hex')}` } as StoreFixture;
  beforeAll(async () => {
    fixture.redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
    fixture.files = new DirectoryArtifactStore(TEST_ARTIFACT_ROOT, fixture.prefix);
    await fixture.files.init();
  });
  afterAll(async () => {
    const keys = await fixture.redis.keys(`${fixture.prefix}:*`);
    if (keys.length > 0) await fixture.redis.del(...keys);
    await fixture.redis.quit();
    await rm(join(TEST_ARTIFACT_ROOT, fixture.prefix), { recursive: true, force: true });
  });
  return fixture;
}
