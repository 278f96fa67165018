/**
 * Defence against DNS rebinding and cross-site requests when nothing else stands in the way.
 *
 * A web page the operator opens can rebind its own name to 127.0.0.1; the browser then sends the
 * page's requests to the API with `Host: <the page's name>`. Refusing every Host that is not a name
 * this API is known by stops that. An ordinary cross-site page cannot forge Host, but it can send a
 * form POST (no preflight) with its own `Origin`: with no authentication to stop it, state-changing
 * requests from a foreign origin are refused too. Clients outside a browser can send any Host they
 * like and no Origin; these checks are not meant to stop them, authentication is.
 */
import { isIP } from 'node:net';
import type { Request, RequestHandler } from 'express';
import { badEntries, ConfigError, type Config } from '../../shared/src/config';
import { sendProblem } from './problem';

/** A host name or IP literal (IPv6 in brackets), lower-case and without a trailing dot, and a port when one was given. */
export interface HostPort {
  host: string;
  port: number | null;
}

/** The names a loopback-only API is reached by; always allowed (see `allowedHosts`). */
const LOOPBACK: readonly HostPort[] = [
  { host: 'localhost', port: null },
  { host: '127.0.0.1', port: null },
  { host: '[::1]', port: null },
];

/** Listen addresses meaning "every interface": no client reaches the API by them. */
const WILDCARDS = new Set(['0.0.0.0', '[::]']);

// Letters, digits, '-' and '_' (compose service names) in non-empty dot-separated labels. Anything
// else (percent-encoding, userinfo, spaces, quotes) is refused, which also makes a parsed name safe
// to quote back in a problem detail.
const NAME = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;
const MAX_NAME_LENGTH = 253;

/**
 * Parses a Host header value (`name`, `name:port`, `1.2.3.4:port`, `[v6]:port`), strictly: null for
 * anything else, including a bare IPv6 address, an empty port and names longer than DNS allows.
 */
export function parseHostPort(value: string): HostPort | null {
  let host: string;
  let portText: string | undefined;
  if (value.startsWith('[')) {
    const close = value.indexOf(']');
    if (close < 0) return null;
    const inner = value.slice(1, close);
    // Zone ids (fe80::1%eth0) mean nothing to a peer and never appear in a browser's Host.
    if (isIP(inner) !== 6 || inner.includes('%')) return null;
    // The WHATWG form ([::1], not [0:0:0:0:0:0:0:1]) is what browsers send and what entries compare as.
    host = new URL(`http://[${inner}]/`).hostname.toLowerCase();
    const rest = value.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return null;
      portText = rest.slice(1);
    }
  } else {
    const colon = value.indexOf(':');
    if (colon !== value.lastIndexOf(':')) return null;
    host = colon < 0 ? value : value.slice(0, colon);
    if (colon >= 0) portText = value.slice(colon + 1);
    host = host.toLowerCase();
    if (host.endsWith('.')) host = host.slice(0, -1);
    if (host.length === 0 || host.length > MAX_NAME_LENGTH || !NAME.test(host)) return null;
  }
  if (portText === undefined) return { host, port: null };
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  return port <= 65535 ? { host, port } : null;
}

/** Parses one `ALLOWED_HOSTS` entry: what a Host header may hold, or a bare IPv6 address (`::1`). */
export function parseHostEntry(entry: string): HostPort | null {
  return isIP(entry) === 6 ? parseHostPort(`[${entry}]`) : parseHostPort(entry);
}

/** An entry without a port allows its name on any port; with one, only on that port. */
export function hostMatches(entry: HostPort, actual: HostPort): boolean {
  return entry.host === actual.host && (entry.port === null || entry.port === actual.port);
}

/** The line naming every malformed ALLOWED_HOSTS entry by its position (not its text), or null. */
export function allowedHostsProblem(config: Pick<Config, 'ALLOWED_HOSTS'>): string | null {
  const bad = config.ALLOWED_HOSTS.flatMap((entry, i) => (parseHostEntry(entry) ? [] : [i + 1]));
  if (bad.length === 0) return null;
  const what = badEntries(
    bad,
    'is not a host name or IP address with an optional :port',
    'are not host names or IP addresses with an optional :port',
  );
  return `invalid ALLOWED_HOSTS: ${what} (IPv6 in brackets)`;
}

/**
 * The Host values the API answers to, or null when any will do. With AUTH_MODE=none the list is
 * always enforced, since nothing else stops a rebound page; with authentication on, only when
 * ALLOWED_HOSTS is set. Throws a ConfigError naming a malformed entry.
 */
export function allowedHosts(config: Pick<Config, 'AUTH_MODE' | 'ALLOWED_HOSTS' | 'HOST'>): HostPort[] | null {
  const problem = allowedHostsProblem(config);
  if (problem) throw new ConfigError(problem);
  const listed = config.ALLOWED_HOSTS.map((entry) => parseHostEntry(entry) as HostPort);
  if (config.AUTH_MODE !== 'none' && listed.length === 0) return null;
  // Loopback names stay allowed even when ALLOWED_HOSTS is set: compose's healthcheck and local tools
  // reach the API as 127.0.0.1, and allowing them opens nothing, because a page can make a browser
  // send a loopback Host only from a loopback origin, never by rebinding a name of its own.
  if (listed.length > 0) return [...LOOPBACK, ...listed];
  const own = parseHostEntry(config.HOST);
  return own && !WILDCARDS.has(own.host) ? [...LOOPBACK, own] : [...LOOPBACK];
}

/**
 * Whether a browser's `Origin` may send a state-changing request: one of `corsOrigins` (already
 * normalised by `normaliseOrigins`), or the same host and port the request was sent to. `null`, and
 * anything that is not an origin as browsers serialise it, never may.
 */
export function originAllowed(origin: string, requestHost: HostPort, corsOrigins: ReadonlySet<string>): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false;
  }
  // A browser sends exactly the serialised origin; a path, userinfo or odd casing means something else made it.
  if (url.origin === 'null' || url.origin !== origin) return false;
  if (corsOrigins.has(url.origin)) return true;
  const own = parseHostPort(url.host);
  return own !== null && own.host === requestHost.host && own.port === requestHost.port;
}

/** CORS_ORIGINS entries in the form browsers send (`https://app.example`, no trailing slash). */
export function normaliseOrigins(entries: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (const entry of entries) {
    try {
      const { origin } = new URL(entry);
      if (origin !== 'null') out.add(origin);
    } catch {
      // Not a URL: no browser's Origin can equal it, so it allows nothing.
    }
  }
  return out;
}

/** GET, HEAD and OPTIONS change nothing here; any other method, unknown ones included, is treated as changing state. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * The authority the request is for. An absolute-form target (`GET http://evil.example/v1/jobs`)
 * names it itself and its Host header must be ignored (RFC 9112 §3.2.2); Express would still route it.
 */
function authorityOf(req: Request): string | undefined {
  const target = req.originalUrl;
  if (target.startsWith('/')) return req.headers.host;
  try {
    return new URL(target).host;
  } catch {
    return undefined;
  }
}

/** Refuses requests for hosts the API is not known by and, with AUTH_MODE=none, state-changing requests from foreign origins. */
export function hostCheck(config: Config): RequestHandler {
  const allowed = allowedHosts(config);
  // With API keys a foreign page has no credentials to send (keys are bearer tokens, never cookies).
  // Proxy mode's session cookie is the proxy's to guard (SameSite, its own CSRF checks).
  const checkOrigin = config.AUTH_MODE === 'none';
  const corsOrigins = normaliseOrigins(config.CORS_ORIGINS);
  if (allowed === null) return (_req, _res, next) => next();
  return (req, res, next) => {
    const authority = authorityOf(req);
    const host = authority === undefined ? null : parseHostPort(authority);
    // Two statuses: RFC 9112 §3.2 requires 400 for a missing or invalid Host, while a well-formed Host
    // naming another server is what 421 Misdirected Request means (RFC 9110 §15.5.20: this server
    // will not answer authoritatively for that name).
    if (host === null) {
      sendProblem(
        res,
        400,
        'host_not_allowed',
        'The Host header is missing or malformed. The API answers only to the names in ALLOWED_HOSTS (by default localhost, 127.0.0.1, [::1] and HOST), a defence against DNS rebinding.',
      );
      return;
    }
    if (!allowed.some((entry) => hostMatches(entry, host))) {
      // Quoting the name is safe: parseHostPort admits only letters, digits, '.', '-', '_' and IPv6 hex, at most 253 of them.
      sendProblem(
        res,
        421,
        'host_not_allowed',
        `The API does not answer to the host name "${host.host}", a defence against DNS rebinding. If clients reach this server by that name, add it to ALLOWED_HOSTS.`,
      );
      return;
    }
    const origin = req.headers.origin;
    if (checkOrigin && origin !== undefined && !SAFE_METHODS.has(req.method) && !originAllowed(origin, host, corsOrigins)) {
      sendProblem(
        res,
        403,
        'origin_not_allowed',
        'The API refuses requests that change state from a web page of another origin while AUTH_MODE=none. Add the page\'s origin to CORS_ORIGINS to allow it; clients outside a browser send no Origin header.',
      );
      return;
    }
    next();
  };
}
