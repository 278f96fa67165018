import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import type { Request, RequestHandler } from 'express';
import type { Redis } from 'ioredis';
import proxyaddr from 'proxy-addr';
import { badEntries, type Config } from '../../shared/src/config';
import type { Logger } from '../../shared/src/logger';
import { authFailureThrottle, clientAddress } from './auth-throttle';
import { authRejections } from './api-metrics';
import { sendProblem } from './problem';

/** Who is calling; every job belongs to one caller. Stored on `res.locals.caller`. */
export type Caller = string;

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '::1', '[::1]']);

/** True when the API would be reachable only from this machine. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host) || (isIP(host) === 4 && host.startsWith('127.'));
}

/** Shortest API key accepted: 32 characters of hex or base64 are 128 bits or more, beyond guessing. */
export const MIN_API_KEY_LENGTH = 32;

/** The variables `authConfigProblems` judges. */
export type AuthSettings = Pick<Config, 'AUTH_MODE' | 'HOST' | 'ALLOW_UNAUTHENTICATED_NON_LOOPBACK' | 'API_KEYS' | 'TRUSTED_PROXIES'>;

/**
 * Refuses configurations that would expose an unauthenticated API beyond this machine, proxy mode
 * with nobody (or nothing valid) to trust, and API keys short enough to guess or given twice. One
 * line per problem, every one of them; empty when the configuration is safe. A line never contains a key.
 */
export function authConfigProblems(config: AuthSettings): string[] {
  if (config.AUTH_MODE === 'none' && !isLoopbackHost(config.HOST) && !config.ALLOW_UNAUTHENTICATED_NON_LOOPBACK) {
    return [
      `AUTH_MODE=none refuses to serve on non-loopback HOST ${config.HOST}: set AUTH_MODE=api-key or proxy, or ALLOW_UNAUTHENTICATED_NON_LOOPBACK=true if something in front already authenticates`,
    ];
  }
  if (config.AUTH_MODE === 'api-key' && config.API_KEYS.length === 0) {
    return ['AUTH_MODE=api-key needs API_KEYS (comma-separated keys, or name:key pairs)'];
  }
  if (config.AUTH_MODE === 'api-key') return unsafeApiKeys(config.API_KEYS);
  if (config.AUTH_MODE === 'proxy' && config.TRUSTED_PROXIES.length === 0) {
    return ['AUTH_MODE=proxy needs TRUSTED_PROXIES (addresses or CIDRs of the authenticating proxy)'];
  }
  if (config.AUTH_MODE === 'proxy') return unusableProxies(config.TRUSTED_PROXIES);
  return [];
}

function unsafeApiKeys(entries: string[]): string[] {
  const problems: string[] = [];
  const seen = new Map<string, number>();
  for (const [i, entry] of entries.entries()) {
    const { name, key } = splitEntry(entry);
    const which = `entry ${i + 1}${name === null ? '' : ` (${name})`}`;
    if (key.length < MIN_API_KEY_LENGTH) {
      problems.push(
        `invalid API_KEYS: ${which} has a key shorter than ${MIN_API_KEY_LENGTH} characters; use a random one, e.g. the output of "openssl rand -hex 32"`,
      );
      continue;
    }
    // The same key under two entries would make its caller depend on the order of the list. Two keys
    // under one name stay allowed: that is how a caller's key is rotated without losing its jobs.
    const id = digest(key).toString('hex');
    const first = seen.get(id);
    if (first !== undefined) {
      problems.push(`invalid API_KEYS: entries ${first + 1} and ${i + 1} have the same key; give each entry a key of its own`);
      continue;
    }
    seen.set(id, i);
  }
  return problems;
}

/** TRUSTED_PROXIES entries that proxy-addr would refuse when the app is built, by position. */
function unusableProxies(entries: string[]): string[] {
  const bad: number[] = [];
  for (const [i, entry] of entries.entries()) {
    try {
      proxyaddr.compile(entry);
    } catch {
      bad.push(i + 1);
    }
  }
  if (bad.length === 0) return [];
  return [
    `invalid TRUSTED_PROXIES: ${badEntries(bad, 'is not an IP address or CIDR range', 'are not IP addresses or CIDR ranges')}, nor loopback, linklocal or uniquelocal`,
  ];
}

function splitEntry(entry: string): { name: string | null; key: string } {
  const colon = entry.indexOf(':');
  return colon > 0 ? { name: entry.slice(0, colon), key: entry.slice(colon + 1) } : { name: null, key: entry };
}

/**
 * Comparison digests of the configured keys. Plain SHA-256 is enough here: these digests live only
 * in this process's memory and are never logged or stored, so nobody can run guesses against them.
 */
const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Redis key of the deployment's secret that turns bare API keys into caller ids. */
export function authSecretKey(prefix: string): string {
  return `${prefix}:auth-secret`;
}

/**
 * The deployment's caller-id secret, made by whichever API replica starts first: every replica and
 * every restart reads the same one, so a bare key keeps its caller id, and with it its jobs.
 */
export async function loadAuthSecret(redis: Redis, prefix: string): Promise<Buffer> {
  await redis.set(authSecretKey(prefix), randomBytes(32).toString('hex'), 'NX');
  const hex = await redis.get(authSecretKey(prefix));
  if (!hex || !/^[0-9a-f]{64}$/.test(hex)) throw new Error(`could not read a valid ${authSecretKey(prefix)} from Redis`);
  return Buffer.from(hex, 'hex');
}

interface KeyEntry {
  caller: Caller;
  hash: Buffer;
}

/**
 * `API_KEYS` entries are `name:key` (the caller is `name`) or a bare key (the caller is `key-` and
 * an HMAC of the key under the deployment's secret). Caller ids appear in logs and job records; a
 * bare hash of the key there could be brute-forced offline, the HMAC cannot without the secret.
 */
export function parseApiKeys(entries: string[], secret?: Buffer): KeyEntry[] {
  return entries.map((entry) => {
    const { name, key } = splitEntry(entry);
    return { caller: name ?? bareKeyCaller(key, secret), hash: digest(key) };
  });
}

function bareKeyCaller(key: string, secret: Buffer | undefined): Caller {
  if (!secret) throw new Error('a bare API key needs the deployment secret (loadAuthSecret) for its caller id');
  // The label keeps this use of the secret apart from any other it may be put to.
  return `key-${createHmac('sha256', secret).update('maestro caller id\0').update(key).digest('hex').slice(0, 12)}`;
}

/** What checking the credentials concluded; a failure becomes a 401 only if the address is not throttled. */
type Verdict = { caller: Caller } | { caller: null; reason: AuthRejection; detail: string; challenge?: string };

/** Why a request was refused, as maestro_auth_rejections_total counts it. */
type AuthRejection = 'missing_credentials' | 'invalid_key' | 'untrusted_proxy' | 'missing_user_header' | 'throttled';

export interface AuthDeps {
  redis: Redis;
  logger: Logger;
  /** The deployment's secret (`loadAuthSecret`); needed in api-key mode when a key is bare. */
  authSecret?: Buffer;
}

export function authenticate(config: Config, deps: AuthDeps): RequestHandler {
  if (config.AUTH_MODE === 'none') {
    return (_req, res, next) => {
      res.locals.caller = 'anonymous';
      next();
    };
  }
  const check = config.AUTH_MODE === 'api-key' ? apiKeyCheck(parseApiKeys(config.API_KEYS, deps.authSecret)) : proxyCheck(config);
  const throttle = authFailureThrottle({
    redis: deps.redis,
    prefix: config.MAESTRO_PREFIX,
    limit: config.AUTH_FAILURE_LIMIT,
    windowSeconds: config.AUTH_FAILURE_WINDOW_SECONDS,
    logger: deps.logger,
  });
  return async (req, res, next) => {
    // The credentials are checked in-process first (cheap and constant-time), but the verdict is only
    // acted on once the throttle has let the address try: a blocked address gets 429 whatever it sent,
    // a right key included, so a guesser learns nothing more until the window ends.
    const verdict = check(req);
    const address = clientAddress(req);
    let outcome;
    try {
      outcome = await throttle.attempt(address, verdict.caller === null);
    } catch (err) {
      // Unlike the rate limit, this fails closed: every /v1 route needs Redis, so a right key would
      // get a 503 anyway, and failing open would answer unlimited guesses while Redis is away.
      deps.logger.warn({ event: 'auth.throttle_unavailable', message: (err as Error).message }, 'auth throttle unavailable');
      sendProblem(res, 503, 'unavailable', 'Authentication is unavailable; try again later.');
      return;
    }
    if (outcome.blocked) {
      authRejections.inc({ reason: 'throttled' });
      res.set('Retry-After', String(outcome.retryAfterSeconds));
      sendProblem(
        res,
        429,
        'too_many_auth_failures',
        `Too many failed authentications from this address: at most ${config.AUTH_FAILURE_LIMIT} per ${config.AUTH_FAILURE_WINDOW_SECONDS} s. Retry after ${outcome.retryAfterSeconds} s.`,
      );
      return;
    }
    // A success does not reset the count: otherwise anyone holding one valid key could slip a good
    // request between guesses and search for other callers' keys without limit.
    if (verdict.caller === null) {
      authRejections.inc({ reason: verdict.reason });
      if (verdict.challenge) res.set('WWW-Authenticate', verdict.challenge);
      sendProblem(res, 401, 'unauthenticated', verdict.detail);
      return;
    }
    res.locals.caller = verdict.caller;
    next();
  };
}

function apiKeyCheck(keys: KeyEntry[]): (req: Request) => Verdict {
  return (req) => {
    const match = /^Bearer ([^\s]+)$/.exec(req.get('authorization') ?? '');
    if (!match) return { caller: null, reason: 'missing_credentials', challenge: 'Bearer', detail: 'Send an API key as "Authorization: Bearer <key>".' };
    // Hashing first gives equal-length buffers, and every key is compared so timing says nothing.
    const presented = digest(match[1] as string);
    let caller: Caller | null = null;
    for (const k of keys) if (timingSafeEqual(k.hash, presented) && caller === null) caller = k.caller;
    if (caller === null) return { caller: null, reason: 'invalid_key', challenge: 'Bearer error="invalid_token"', detail: 'The API key is not valid.' };
    return { caller };
  };
}

function proxyCheck(config: Config): (req: Request) => Verdict {
  const trusted = proxyaddr.compile(config.TRUSTED_PROXIES);
  const header = config.AUTH_PROXY_HEADER;
  return (req) => {
    // The header is believed only from the proxy's own address; anyone else could forge it.
    const peer = req.socket.remoteAddress ?? '';
    if (!trusted(peer, 0)) return { caller: null, reason: 'untrusted_proxy', detail: 'Requests must come through the authenticating proxy.' };
    const user = req.get(header)?.trim();
    if (!user || user.length > 256 || hasControlChars(user)) {
      return { caller: null, reason: 'missing_user_header', detail: `The authenticating proxy sent no valid ${header} header.` };
    }
    return { caller: user };
  };
}

function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}
