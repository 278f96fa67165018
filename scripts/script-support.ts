/** What the benchmark and soak scripts share. */
import type { Redis } from 'ioredis';

/** Deletes every key matching `pattern` (SCAN + UNLINK); returns how many went. */
export async function deleteKeys(redis: Redis, pattern: string): Promise<number> {
  let deleted = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

/**
 * Runs each clean-up step in turn, whatever the others did: one that fails (a worker that cannot
 * close) must not leave the rest (containers, keys, files) behind. Failures are reported on stderr.
 */
export async function cleanUp(steps: Record<string, () => Promise<unknown> | unknown>): Promise<void> {
  for (const [what, step] of Object.entries(steps)) {
    try {
      await step();
    } catch (err) {
      console.error(`clean-up: ${what} failed: ${(err as Error).message}`);
    }
  }
}
