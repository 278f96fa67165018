import { Redis, type RedisOptions } from 'ioredis';

/**
 * A connection for BullMQ workers and blocking commands: BullMQ requires `maxRetriesPerRequest: null`
 * so that its blocking calls wait through a Redis restart instead of failing.
 */
export function createWorkerRedis(url: string, extra: RedisOptions = {}): Redis {
  return new Redis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, ...extra });
}

/**
 * A connection for request handlers: commands fail fast while Redis is unreachable, so the API
 * answers 503 instead of hanging its clients. Commands issued in the same tick (concurrent requests)
 * go out in one write: auto-pipelining. A connection that blocks (XREAD BLOCK) turns it off.
 */
export function createApiRedis(url: string, extra: RedisOptions = {}): Redis {
  return new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 5000, enableAutoPipelining: true, ...extra });
}

/** Ends a connection without waiting for the server when it is gone. Idempotent. */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === 'end') return;
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
