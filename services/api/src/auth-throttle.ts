import { isIP } from 'node:net';
import type { Request } from 'express';
import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/src/logger';

/**
 * One round trip, atomic across API replicas: refuse an address already at the limit, otherwise
 * count this attempt when it failed. Checking and counting in one script means a burst of parallel
 * guesses cannot all pass the check before the first of them is counted: exactly `limit` failures
 * per window get an answer about their key. The window starts with the first failure.
 * KEYS[1] the address's counter; ARGV: limit, window in ms, '1' when this attempt failed.
 */
const ATTEMPT = `
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
  return {1, ttl}
end
if ARGV[3] == '1' then
  n = redis.call('INCR', KEYS[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return {0, n}
`;

export type AttemptOutcome = { blocked: true; retryAfterSeconds: number } | { blocked: false };

export interface AuthFailureThrottle {
  /** Records one authentication attempt from `address`; rejects when Redis cannot be asked. */
  attempt(address: string, failed: boolean): Promise<AttemptOutcome>;
}

/**
 * A fixed window of failed authentications per client address, counted in Redis under the
 * deployment's prefix so that every replica sees the same count.
 */
export function authFailureThrottle(opts: {
  redis: Redis;
  prefix: string;
  limit: number;
  windowSeconds: number;
  logger: Logger;
}): AuthFailureThrottle {
  const { redis, prefix, limit, windowSeconds, logger } = opts;
  return {
    async attempt(address, failed) {
      const key = `${prefix}:auth-failures:${address}`;
      const [blocked, value] = (await redis.eval(ATTEMPT, 1, key, limit, windowSeconds * 1000, failed ? '1' : '0')) as [number, number];
      if (blocked === 1) return { blocked: true, retryAfterSeconds: Math.max(1, Math.ceil(value / 1000)) };
      // The script counts each failure once, so exactly one replica sees the count reach the limit:
      // one line per address and window, whatever the number of replicas or guesses.
      if (failed && value === limit) {
        logger.warn({ event: 'auth.throttled', address, limit, windowSeconds }, 'too many failed authentications from one address');
      }
      return { blocked: false };
    },
  };
}

/**
 * The address a request is counted under: `req.ip` (the peer, or in proxy mode the client the
 * trusted proxy names), with IPv4-mapped IPv6 written as IPv4 so one client has one counter. An IPv6
 * client is counted by its /64: a single host is routinely given a whole /64, and counting single
 * addresses would hand it 2^64 fresh counters.
 */
export function clientAddress(req: Pick<Request, 'ip' | 'socket'>): string {
  const raw = (req.ip ?? req.socket.remoteAddress ?? '').replace(/%.*$/, '');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(raw);
  if (mapped) return mapped[1] as string;
  // Only a trusted proxy can name a non-address here; bounded, it still gets a counter of its own.
  if (isIP(raw) !== 6) return raw.slice(0, 100) || 'unknown';
  return `${expandIpv6(raw).slice(0, 4).join(':')}::/64`;
}

/** The eight hextets of a valid IPv6 address, without leading zeros ("2001:db8::1" → 2001,db8,0,…,1). */
function expandIpv6(address: string): string[] {
  let text = address.toLowerCase();
  // A trailing dotted quad (::1.2.3.4) is two hextets.
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const zeros = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...zeros, ...right].map((h) => parseInt(h, 16).toString(16));
}
