import type { EventEmitter } from 'node:events';
import type { Logger } from './logger';
import type { RedisTarget } from './redis';

/** How often, at most, an outage that goes on is logged again. */
export const STILL_DOWN_EVERY_MS = 30_000;

/** What the watcher needs of a connection: ioredis's events and status (a test may pass a stand-in). */
export interface WatchedConnection extends EventEmitter {
  status: string;
  options?: { password?: string | null; sentinelPassword?: string | null };
}

export interface RedisWatcher {
  /**
   * Follows a connection's `error`, `ready` and `end` events in place of an `error` handler of its
   * own. Returns a function that stops following it (call it before or as the connection is
   * dropped: a connection disconnected while it waits to reconnect never emits `end`); its later
   * errors are then ignored.
   */
  watch(connection: WatchedConnection, name?: string): () => void;
  /**
   * For errors that BullMQ relays from its own connections (`worker.on('error')`, `queue.on('error')`):
   * a connection error is taken here (counted into the outage, logged only at debug level) and true
   * returned; anything else returns false, for the caller to log as before.
   */
  absorb(err: Error, source: string): boolean;
  /** Whether the watcher holds Redis for unreachable right now. */
  readonly down: boolean;
}

interface Outage {
  since: number;
  errors: number;
  lastMessage: string;
  lastLoggedAt: number;
  /** A connection has become ready since the outage began: Redis answers again. */
  answered: boolean;
}

/**
 * One per process, shared by all its Redis connections: an outage is logged once when a connection
 * loses Redis (`redis.down`, naming the endpoint and REDIS_URL, never the password), then at most every
 * 30 s while it lasts (`redis.still_down`), and once when every connection that lost Redis has it
 * back (`redis.up`, with how long it was down). ioredis reports each failed reconnect of each
 * connection as an `error` event, which would otherwise be several lines a second.
 */
export function createRedisWatcher(opts: { logger: Logger; target: RedisTarget | string; stillDownEveryMs?: number }): RedisWatcher {
  const { logger } = opts;
  const endpoint = redisEndpoint(opts.target);
  const variable = usesSentinels(opts.target) ? 'REDIS_SENTINELS' : 'REDIS_URL';
  const stillDownEveryMs = opts.stillDownEveryMs ?? STILL_DOWN_EVERY_MS;
  const secrets = new Set<string>(urlSecrets(opts.target));
  const failing = new Set<WatchedConnection>();
  let outage: Outage | null = null;

  const scrub = (message: string): string => scrubRedisMessage(message, secrets);

  const onError = (err: Error, name: string, connection?: WatchedConnection): void => {
    const message = scrub(err.message);
    const now = Date.now();
    if (connection) failing.add(connection);
    if (!outage) {
      outage = { since: now, errors: 1, lastMessage: message, lastLoggedAt: now, answered: false };
      const hint = hintFor(err, endpoint, variable);
      logger.warn({ event: 'redis.down', redis: endpoint, connection: name, message, hint }, `Redis at ${endpoint} is unreachable (${message}); retrying. ${hint}`);
      return;
    }
    outage.errors += 1;
    outage.lastMessage = message;
    if (now - outage.lastLoggedAt >= stillDownEveryMs) {
      outage.lastLoggedAt = now;
      const downForMs = now - outage.since;
      logger.warn(
        { event: 'redis.still_down', redis: endpoint, downForMs, errors: outage.errors, message, hint: hintFor(err, endpoint, variable) },
        `Redis at ${endpoint} still unreachable after ${seconds(downForMs)} (${message}); check ${variable}`,
      );
    }
  };

  const maybeUp = (): void => {
    if (!outage || !outage.answered) return;
    for (const connection of failing) if (connection.status === 'end') failing.delete(connection);
    if (failing.size > 0) return;
    const downForMs = Date.now() - outage.since;
    logger.info({ event: 'redis.up', redis: endpoint, downForMs, errors: outage.errors }, `Redis at ${endpoint} is reachable again after ${seconds(downForMs)}`);
    outage = null;
  };

  return {
    get down() {
      return outage !== null;
    },
    watch(connection, name = 'redis') {
      for (const password of [connection.options?.password, connection.options?.sentinelPassword]) if (password) secrets.add(password);
      const onConnectionError = (err: Error): void => onError(err, name, connection);
      const onReady = (): void => {
        failing.delete(connection);
        if (outage) outage.answered = true;
        maybeUp();
      };
      const onEnd = (): void => {
        failing.delete(connection);
        maybeUp();
      };
      connection.on('error', onConnectionError);
      connection.on('ready', onReady);
      connection.on('end', onEnd);
      let watching = true;
      return () => {
        if (!watching) return;
        watching = false;
        connection.off('ready', onReady);
        connection.off('end', onEnd);
        // Still listened for, so a late error of a connection being dropped is not an unhandled one.
        connection.off('error', onConnectionError);
        connection.on('error', () => undefined);
        failing.delete(connection);
        maybeUp();
      };
    },
    absorb(err, source) {
      if (!isRedisConnectionError(err)) return false;
      if (outage) {
        outage.errors += 1;
        outage.lastMessage = scrub(err.message);
      } else {
        // One of BullMQ's own connections (its blocking one) hiccuped while the watched ones are fine.
        logger.debug({ event: 'redis.error', redis: endpoint, source, message: scrub(err.message) }, 'redis connection error');
      }
      return true;
    },
  };
}

/** A watcher following the given connections: `watchRedis([redis, subscriber], { logger, target })`. */
export function watchRedis(
  connections: WatchedConnection | WatchedConnection[],
  opts: { logger: Logger; target: RedisTarget | string; name?: string; stillDownEveryMs?: number },
): RedisWatcher {
  const watcher = createRedisWatcher(opts);
  for (const connection of Array.isArray(connections) ? connections : [connections]) watcher.watch(connection, opts.name);
  return watcher;
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOENT', // a unix socket path with nothing behind it
]);
const CONNECTION_MESSAGE =
  /ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|EPIPE|Connection is closed|Stream isn't writeable|max retries per request|NOAUTH|WRONGPASS|All sentinels are unreachable/i;

/** Whether an error says Redis could not be reached (or refused us), as opposed to a failing command. */
export function isRedisConnectionError(err: unknown): boolean {
  // Not `instanceof Error`: errors made by Node's own modules fail it inside another realm (jest's).
  if (typeof err !== 'object' || err === null) return false;
  const { code, name, message } = err as { code?: unknown; name?: unknown; message?: unknown };
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
  if (name === 'MaxRetriesPerRequestError' || name === 'ConnectionClosedError') return true;
  return typeof message === 'string' && CONNECTION_MESSAGE.test(message);
}

function usesSentinels(target: RedisTarget | string): target is RedisTarget & Required<Pick<RedisTarget, 'REDIS_SENTINELS'>> {
  return typeof target !== 'string' && target.REDIS_SENTINELS !== undefined && target.REDIS_SENTINELS.length > 0;
}

/**
 * Where a target points, for a log line: `host:port` from the URL (never its user or password), the
 * path of a unix socket, or the master's name and the sentinels asked for it.
 */
export function redisEndpoint(target: RedisTarget | string): string {
  if (usesSentinels(target)) {
    const sentinels = target.REDIS_SENTINELS.map(({ host, port }) => `${host.includes(':') ? `[${host}]` : host}:${port}`).join(',');
    return `master ${target.REDIS_SENTINEL_MASTER ?? 'mymaster'} via sentinels ${sentinels}`;
  }
  const raw = typeof target === 'string' ? target : target.REDIS_URL;
  if (raw.startsWith('/')) return raw;
  try {
    const url = new URL(raw);
    if (!url.hostname && url.pathname) return url.pathname;
    return `${url.hostname || '127.0.0.1'}:${url.port || '6379'}`;
  } catch {
    return '(an unparseable REDIS_URL)';
  }
}

/** The password and user of a target's URL, to be kept out of log lines. */
function urlSecrets(target: RedisTarget | string): string[] {
  const raw = typeof target === 'string' ? target : target.REDIS_URL;
  try {
    const url = new URL(raw);
    return [url.password, decodeURIComponent(url.password), url.username, decodeURIComponent(url.username)].filter((s) => s.length >= 3);
  } catch {
    return [];
  }
}

/** A Redis error message with known secrets, credentials in URLs and `password=…` pairs blanked. */
export function scrubRedisMessage(message: string, secrets: Iterable<string> = []): string {
  let out = message.replace(/\b(rediss?|https?):\/\/[^\s/@]*@/gi, '$1://[redacted]@').replace(/\b(password|passwd|pwd|pass)(\s*[=:]\s*)[^\s,;)'"]+/gi, '$1$2[redacted]');
  for (const secret of secrets) if (secret) out = out.split(secret).join('[redacted]');
  return out;
}

function hintFor(err: Error, endpoint: string, variable: 'REDIS_URL' | 'REDIS_SENTINELS'): string {
  const code = (err as NodeJS.ErrnoException).code;
  // ioredis words a round of sentinels that all failed this way, whatever failed (see SentinelConnector).
  const fromSentinels = err.message.startsWith('All sentinels are unreachable');
  if (/NOAUTH|WRONGPASS|invalid password|AUTH failed/i.test(err.message)) {
    if (fromSentinels) return 'The sentinels refused the credentials: check REDIS_SENTINEL_PASSWORD_FILE.';
    return 'Redis refused the credentials: check the password in REDIS_URL or REDIS_PASSWORD_FILE.';
  }
  if (fromSentinels) {
    return `No sentinel named the master (${endpoint}): check that the sentinels in REDIS_SENTINELS are reachable and monitor REDIS_SENTINEL_MASTER.`;
  }
  if (/certificate|self[- ]signed|SSL|TLS/i.test(err.message)) return 'The TLS handshake failed: check the rediss:// REDIS_URL and REDIS_TLS_CA_FILE.';
  if (variable === 'REDIS_SENTINELS') {
    // The address is the one the sentinels announce, which this host must be able to reach.
    return `Check that the master the sentinels name is running and reachable from here (${endpoint}); during a failover this lasts until the sentinels promote a replica.`;
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `The host in REDIS_URL does not resolve: check REDIS_URL (${endpoint}).`;
  return `Check that Redis is running and reachable at REDIS_URL (${endpoint}).`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
