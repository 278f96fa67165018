import { readFileSync } from 'node:fs';
import { Redis, type RedisOptions } from 'ioredis';
import { ConfigError, configCheck, type Config, type ConfigCheck } from './config';
import { withTimeout } from './time';

/**
 * Where Redis is and how to log in: the URL, the files that can complete it, and the sentinels that
 * say where the master is (a Config has them all; a caller building a target by hand may leave them out).
 */
export type RedisTarget = Pick<Config, 'REDIS_URL' | 'REDIS_PASSWORD_FILE' | 'REDIS_TLS_CA_FILE'> &
  Partial<Pick<Config, 'REDIS_SENTINELS' | 'REDIS_SENTINEL_MASTER' | 'REDIS_SENTINEL_PASSWORD_FILE'>>;

/** How long a connection through the sentinels waits for a TCP (and TLS) connect, to a sentinel or the master. */
const SENTINEL_MODE_CONNECT_TIMEOUT_MS = 2000;

/**
 * ioredis options for a target beyond its URL: the password from REDIS_PASSWORD_FILE (unless the URL
 * has one), the CA from REDIS_TLS_CA_FILE, and with REDIS_SENTINELS the sentinels to ask for the master
 * (the URL's host and port then go unused). Files are read each time, so a rotated password is picked
 * up by the next connection made; an unreadable one is a ConfigError naming the variable.
 */
export function redisTargetOptions(target: RedisTarget | string): { url: string; options: RedisOptions } {
  if (typeof target === 'string') return { url: target, options: {} };
  const options: RedisOptions = {};
  if (target.REDIS_PASSWORD_FILE && !new URL(target.REDIS_URL).password) {
    options.password = readPasswordFile('REDIS_PASSWORD_FILE', target.REDIS_PASSWORD_FILE);
  }
  if (target.REDIS_TLS_CA_FILE) {
    if (!target.REDIS_URL.startsWith('rediss://')) throw new ConfigError('invalid REDIS_TLS_CA_FILE: it needs a rediss:// REDIS_URL');
    options.tls = { ca: readSecretFile('REDIS_TLS_CA_FILE', target.REDIS_TLS_CA_FILE) };
  }
  if (target.REDIS_SENTINELS && target.REDIS_SENTINELS.length > 0) {
    options.sentinels = target.REDIS_SENTINELS.map(({ host, port }) => ({ host, port }));
    options.name = target.REDIS_SENTINEL_MASTER ?? 'mymaster';
    // A connection that lost its master asks a sentinel again, which names the old master until it
    // has promoted a replica: a host that went with it answers no connect, so each try must give up
    // soon. (ioredis's failoverDetector would cut that short, but a connection ended with QUIT, as
    // BullMQ ends its own, leaves the detector's sentinel connections reconnecting for ever.)
    options.connectTimeout = SENTINEL_MODE_CONNECT_TIMEOUT_MS;
    if (target.REDIS_SENTINEL_PASSWORD_FILE) {
      options.sentinelPassword = readPasswordFile('REDIS_SENTINEL_PASSWORD_FILE', target.REDIS_SENTINEL_PASSWORD_FILE);
    }
    if (target.REDIS_URL.startsWith('rediss://')) {
      // ioredis speaks plain text to the master a sentinel names, and to the sentinels, unless told:
      // rediss:// means TLS on every hop, with the same trust anchors.
      options.enableTLSForSentinelMode = true;
      options.sentinelTLS = options.tls ?? {};
    }
  } else if (target.REDIS_SENTINEL_PASSWORD_FILE) {
    throw new ConfigError('invalid REDIS_SENTINEL_PASSWORD_FILE: it needs REDIS_SENTINELS');
  }
  return { url: target.REDIS_URL, options };
}

function readPasswordFile(variable: string, file: string): string {
  const password = readSecretFile(variable, file).trim();
  if (!password) throw new ConfigError(`invalid ${variable}: the file is empty`);
  return password;
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
export const redisConfigCheck: ConfigCheck = configCheck(
  ['REDIS_URL', 'REDIS_PASSWORD_FILE', 'REDIS_TLS_CA_FILE', 'REDIS_SENTINELS', 'REDIS_SENTINEL_MASTER', 'REDIS_SENTINEL_PASSWORD_FILE'],
  (target) => {
    const problems: string[] = [];
    const attempt = (read: () => unknown): void => {
      try {
        read();
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        problems.push(err.message);
      }
    };
    // One file at a time, so a problem with one does not hide one with another.
    const none = { REDIS_PASSWORD_FILE: undefined, REDIS_TLS_CA_FILE: undefined, REDIS_SENTINEL_PASSWORD_FILE: undefined };
    attempt(() => redisTargetOptions({ ...target, ...none, REDIS_PASSWORD_FILE: target.REDIS_PASSWORD_FILE }));
    attempt(() => redisTargetOptions({ ...target, ...none, REDIS_TLS_CA_FILE: target.REDIS_TLS_CA_FILE }));
    attempt(() => redisTargetOptions({ ...target, ...none, REDIS_SENTINEL_PASSWORD_FILE: target.REDIS_SENTINEL_PASSWORD_FILE }));
    return problems;
  },
);

/**
 * Refuses, with a one-line ConfigError, a server Maestro cannot work with: a Redis Cluster node, or a
 * Sentinel given as REDIS_URL. A server that cannot be asked (unreachable, not within `waitMs`, INFO
 * denied) passes: the connection's own errors report that.
 */
export async function refuseUnsupportedRedis(redis: Redis, target: RedisTarget, opts: { waitMs?: number } = {}): Promise<void> {
  let info: string;
  try {
    const asking = redis.info('server');
    info = opts.waitMs === undefined ? await asking : await withTimeout(asking, opts.waitMs);
  } catch {
    return;
  }
  const mode = /^redis_mode:(\w+)/m.exec(info)?.[1];
  const sentinels = target.REDIS_SENTINELS !== undefined && target.REDIS_SENTINELS.length > 0;
  if (mode === 'cluster') {
    const where = sentinels
      ? `the master the sentinels (REDIS_SENTINELS) give for ${target.REDIS_SENTINEL_MASTER ?? 'mymaster'} (REDIS_SENTINEL_MASTER)`
      : 'REDIS_URL';
    // Redis Cluster runs a script or MULTI only on keys of one hash slot; Maestro's and BullMQ's keys
    // are not hash-tagged ({…}), so most of what both do would fail with CROSSSLOT.
    throw new ConfigError(
      `${where} is a Redis Cluster node, which Maestro does not support: Maestro's keys and BullMQ's are not hash-tagged, so their multi-key scripts would fail with CROSSSLOT; use a standalone Redis, with Sentinel (REDIS_SENTINELS) for failover`,
    );
  }
  if (mode === 'sentinel') {
    throw new ConfigError(
      'REDIS_URL points at a Sentinel, not at Redis: list the sentinels in REDIS_SENTINELS and name the master in REDIS_SENTINEL_MASTER',
    );
  }
}

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
  return new Redis(url, { connectTimeout: 5000, ...options, maxRetriesPerRequest: 1, enableOfflineQueue: true, enableAutoPipelining: true, ...extra });
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
