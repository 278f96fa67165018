import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import type { RequestHandler } from 'express';
import proxyaddr from 'proxy-addr';
import type { Config } from '../../shared/src/config';
import { sendProblem } from './problem';

/** Who is calling; every job belongs to one caller. Stored on `res.locals.caller`. */
export type Caller = string;

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '::1', '[::1]']);

/** True when the API would be reachable only from this machine. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host) || (isIP(host) === 4 && host.startsWith('127.'));
}

/**
 * Refuses configurations that would expose an unauthenticated API beyond this machine, and proxy
 * mode with nobody to trust. Returns a one-line reason, or null when the configuration is safe.
 */
export function unsafeAuthConfig(config: Config): string | null {
  if (config.AUTH_MODE === 'none' && !isLoopbackHost(config.HOST) && !config.ALLOW_UNAUTHENTICATED_NON_LOOPBACK) {
    return `AUTH_MODE=none refuses to serve on non-loopback HOST ${config.HOST}: set AUTH_MODE=api-key or proxy, or ALLOW_UNAUTHENTICATED_NON_LOOPBACK=true if something in front already authenticates`;
  }
  if (config.AUTH_MODE === 'api-key' && config.API_KEYS.length === 0) {
    return 'AUTH_MODE=api-key needs API_KEYS (comma-separated keys, or name:key pairs)';
  }
  if (config.AUTH_MODE === 'proxy' && config.TRUSTED_PROXIES.length === 0) {
    return 'AUTH_MODE=proxy needs TRUSTED_PROXIES (addresses or CIDRs of the authenticating proxy)';
  }
  return null;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

interface KeyEntry {
  caller: Caller;
  hash: Buffer;
}

/**
 * `API_KEYS` entries are `name:key` (the caller is `name`) or a bare key (the caller is a short
 * fingerprint of it, so the key itself is never stored with a job).
 */
export function parseApiKeys(entries: string[]): KeyEntry[] {
  return entries.map((entry) => {
    const colon = entry.indexOf(':');
    const [name, key] = colon > 0 ? [entry.slice(0, colon), entry.slice(colon + 1)] : [null, entry];
    return { caller: name ?? `key-${digest(key).toString('hex').slice(0, 12)}`, hash: digest(key) };
  });
}

export function authenticate(config: Config): RequestHandler {
  if (config.AUTH_MODE === 'none') {
    return (_req, res, next) => {
      res.locals.caller = 'anonymous';
      next();
    };
  }
  if (config.AUTH_MODE === 'api-key') {
    const keys = parseApiKeys(config.API_KEYS);
    return (req, res, next) => {
      const match = /^Bearer ([^\s]+)$/.exec(req.get('authorization') ?? '');
      if (!match) {
        res.set('WWW-Authenticate', 'Bearer');
        sendProblem(res, 401, 'unauthenticated', 'Send an API key as "Authorization: Bearer <key>".');
        return;
      }
      // Hashing first gives equal-length buffers, and every key is compared so timing says nothing.
      const presented = digest(match[1] as string);
      let caller: Caller | null = null;
      for (const k of keys) if (timingSafeEqual(k.hash, presented) && caller === null) caller = k.caller;
      if (caller === null) {
        res.set('WWW-Authenticate', 'Bearer error="invalid_token"');
        sendProblem(res, 401, 'unauthenticated', 'The API key is not valid.');
        return;
      }
      res.locals.caller = caller;
      next();
    };
  }
  const trusted = proxyaddr.compile(config.TRUSTED_PROXIES);
  const header = config.AUTH_PROXY_HEADER;
  return (req, res, next) => {
    // The header is believed only from the proxy's own address; anyone else could forge it.
    const peer = req.socket.remoteAddress ?? '';
    if (!trusted(peer, 0)) {
      sendProblem(res, 401, 'unauthenticated', 'Requests must come through the authenticating proxy.');
      return;
    }
    const user = req.get(header)?.trim();
    if (!user || user.length > 256 || hasControlChars(user)) {
      sendProblem(res, 401, 'unauthenticated', `The authenticating proxy sent no valid ${header} header.`);
      return;
    }
    res.locals.caller = user;
    next();
  };
}

function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}
