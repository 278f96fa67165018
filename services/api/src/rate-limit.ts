import type { RequestHandler } from 'express';
import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/src/logger';
import { rateLimited } from './api-metrics';
import { sendProblem } from './problem';

const WINDOW_S = 60;
// One round trip on the hot path: count, and start the window's expiry with its first request.
const COUNT = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
`;

/**
 * A fixed one-minute window per caller, counted in Redis so the limit holds across API replicas.
 * Headers follow the IETF RateLimit draft (`RateLimit`, `RateLimit-Policy`), plus `Retry-After` on 429.
 */
export function rateLimit(opts: { redis: Redis; prefix: string; perMinute: number; logger: Logger }): RequestHandler {
  const { redis, prefix, perMinute, logger } = opts;
  return async (_req, res, next) => {
    const caller = res.locals.caller as string;
    const now = Date.now() / 1000;
    const window = Math.floor(now / WINDOW_S);
    const reset = Math.max(1, Math.ceil((window + 1) * WINDOW_S - now));
    const key = `${prefix}:ratelimit:${window}:${encodeURIComponent(caller)}`;
    let count: number;
    try {
      count = Number(await redis.eval(COUNT, 1, key, WINDOW_S + 1));
    } catch (err) {
      // Failing open: with Redis down the request fails on its own with a 503 anyway.
      logger.warn({ event: 'ratelimit.unavailable', message: (err as Error).message }, 'rate limit unavailable');
      next();
      return;
    }
    res.set('RateLimit-Policy', `${perMinute};w=${WINDOW_S}`);
    res.set('RateLimit', `limit=${perMinute}, remaining=${Math.max(0, perMinute - count)}, reset=${reset}`);
    if (count > perMinute) {
      rateLimited.inc({ limit: 'requests' });
      res.set('Retry-After', String(reset));
      sendProblem(res, 429, 'rate_limited', `Too many requests: at most ${perMinute} a minute. Retry after ${reset} s.`);
      return;
    }
    next();
  };
}
