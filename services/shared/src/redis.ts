import { readFileSync } from 'node:fs';
import { Redis, type RedisOptions } from 'ioredis';
import { ConfigError, configCheck, type Config, type ConfigCheck } from './config';

/** Where Redis is and how to log in: the URL, and the files that can complete it. */
export type RedisTarget = Pick<Config, 'REDIS_URL' | 'REDIS_PASSWORD_FILE' | 'REDIS_TLS_CA_FILE'>;

/**
 * ioredis options for a target beyond its URL: the password from REDIS_PASSWORD_FILE (unless the URL
 * has one) and the CA from REDIS_TLS_CA_FILE. Files are read each time, so a rotated password is
 * picked up by the next connection made; an unreadable one is a ConfigError naming the variable.
 */
export function redisTargetOptions(target: RedisTarget | string): { url: string; options: RedisOptions } {
  if (typeof target === 'string') return { url: target, options: {} };
  const options: RedisOptions = {};
  if (target.REDIS_PASSWORD_FILE && !new URL(target.REDIS_URL).password) {
    const password = readSecretFile('REDIS_PASSWORD_FILE', target.REDIS_PASSWORD_FILE).trim();
    if (!password) throw new ConfigError('invalid REDIS_PASSWORD_FILE: the file is empty');
    options.password = password;
  }
  if (target.REDIS_TLS_CA_FILE) {
    if (!target.REDIS_URL.startsWith('rediss://')) throw new ConfigError('invalid REDIS_TLS_CA_FILE: it needs a rediss:// REDIS_URL');
    options.tls = { ca: readSecretFile('REDIS_TLS_CA_FILE', target.REDIS_TLS_CA_FILE) };
  }
  return { url: target.REDIS_URL, options };
}

function readSecretFile(variable: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new ConfigError(`invalid ${variable}: cannot read the file (${code})`);
  }
}

/**
 * What `redisTargetOptions` would refuse, every problem at once: the files are read as the process
 * that will connect reads them, so run this after any change of user.
 */
export const redisConfigCheck: ConfigCheck = configCheck(['REDIS_URL', 'REDIS_PASSWORD_FILE', 'REDIS_TLS_CA_FILE'], (target) => {
  const problems: string[] = [];
  const attempt = (read: () => unknown): void => {
    try {
      read();
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(err.message);
    }
  };
  // One file at a time, so a problem with the first does not hide one with the second.
  attempt(() => redisTargetOptions({ ...target, REDIS_TLS_CA_FILE: undefined }));
  attempt(() => redisTargetOptions({ ...target, REDIS_PASSWORD_FILE: undefined }));
  return problems;
});

/**
 * A connection for BullMQ workers and blocking commands: BullMQ requires `maxRetriesPerRequest: null`
 * so that its blocking calls wait through a Redis restart instead of failing.
 */
export function createWorkerRedis(target: RedisTarget | string, extra: RedisOptions = {}): Redis {
  const { url, options } = redisTargetOptions(target);
  return new Redis(url, { ...options, maxRetriesPerRequest: null, enableReadyCheck: true, ...extra });
}

/**
 * A connection for request handlers: commands fail fast while Redis is unreachable, so the API
 * answers 503 instead of hanging its clients. Commands issued in the same tick (concurrent requests)
 * go out in one write: auto-pipelining. A connection that blocks (XREAD BLOCK) turns it off.
 */
export function createApiRedis(target: RedisTarget | string, extra: RedisOptions = {}): Redis {
  const { url, options } = redisTargetOptions(target);
  return new Redis(url, { ...options, maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 5000, enableAutoPipelining: true, ...extra });
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
