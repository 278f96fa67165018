/**
 * Webhooks, the parts both services need: where a webhook may point (the SSRF guard: the API applies
 * it when a job names a URL, the worker again, on the address it connects to, before each attempt),
 * and how a delivery is signed (the Standard Webhooks scheme, https://www.standardwebhooks.com).
 * Sending, retrying and recording attempts are the worker's (services/worker/src/webhooks/).
 */
import { createHmac } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

/** Longest webhook URL a job may name. */
export const WEBHOOK_URL_MAX_CHARS = 2048;

/** Why an address is refused as a webhook's destination: its kind, as a problem names it. */
export type AddressKind =
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'shared address space (CGNAT)'
  | 'link-local'
  | 'cloud metadata'
  | 'multicast'
  | 'broadcast'
  | 'documentation'
  | 'reserved';

/** Ranges no webhook may reach without WEBHOOK_ALLOW_PRIVATE, each with its kind; the first match names it. */
const V4_RANGES: [string, number, AddressKind][] = [
  ['169.254.169.254', 32, 'cloud metadata'],
  ['100.100.100.200', 32, 'cloud metadata'],
  ['0.0.0.0', 8, 'unspecified'],
  ['127.0.0.0', 8, 'loopback'],
  ['10.0.0.0', 8, 'private'],
  ['172.16.0.0', 12, 'private'],
  ['192.168.0.0', 16, 'private'],
  ['100.64.0.0', 10, 'shared address space (CGNAT)'],
  ['169.254.0.0', 16, 'link-local'],
  ['192.0.0.0', 24, 'reserved'],
  ['192.0.2.0', 24, 'documentation'],
  ['198.18.0.0', 15, 'reserved'],
  ['198.51.100.0', 24, 'documentation'],
  ['203.0.113.0', 24, 'documentation'],
  ['224.0.0.0', 4, 'multicast'],
  ['255.255.255.255', 32, 'broadcast'],
  ['240.0.0.0', 4, 'reserved'],
];
const V6_RANGES: [string, number, AddressKind][] = [
  ['fd00:ec2::254', 128, 'cloud metadata'],
  ['::', 128, 'unspecified'],
  ['::1', 128, 'loopback'],
  ['fc00::', 7, 'private'],
  ['fe80::', 10, 'link-local'],
  ['fec0::', 10, 'private'],
  ['ff00::', 8, 'multicast'],
  ['2001:db8::', 32, 'documentation'],
  ['100::', 64, 'reserved'],
  ['::', 96, 'reserved'], // IPv4-compatible (deprecated)
];

const lists: [BlockList, AddressKind, 'ipv4' | 'ipv6'][] = [
  ...V4_RANGES.map(([net, prefix, kind]): [BlockList, AddressKind, 'ipv4'] => [blockOf(net, prefix, 'ipv4'), kind, 'ipv4']),
  ...V6_RANGES.map(([net, prefix, kind]): [BlockList, AddressKind, 'ipv6'] => [blockOf(net, prefix, 'ipv6'), kind, 'ipv6']),
];

function blockOf(net: string, prefix: number, type: 'ipv4' | 'ipv6'): BlockList {
  const list = new BlockList();
  list.addSubnet(net, prefix, type);
  return list;
}

/** The IPv4 address an IPv6 one carries, for the forms a packet to it reaches that IPv4 host: mapped, NAT64, 6to4. */
function embeddedV4(address: string): string | null {
  const lower = address.toLowerCase();
  const dotted = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (dotted) return dotted[1] as string;
  const groups = expandV6(lower);
  if (groups === null) return null;
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const [g0, g1, g2, g3, g4, g5, g6, g7] = groups as [number, number, number, number, number, number, number, number];
  // ::ffff:a.b.c.d written in hex
  if (g0 === 0 && g1 === 0 && g2 === 0 && g3 === 0 && g4 === 0 && g5 === 0xffff) return v4(g6, g7);
  // 64:ff9b::/96 (NAT64)
  if (g0 === 0x64 && g1 === 0xff9b && g2 === 0 && g3 === 0 && g4 === 0 && g5 === 0) return v4(g6, g7);
  // 2002::/16 (6to4): the IPv4 address is groups 1 and 2
  if (g0 === 0x2002) return v4(g1, g2);
  return null;
}

/** The eight 16-bit groups of an IPv6 address (an embedded dotted IPv4 tail included), or null. */
function expandV6(address: string): number[] | null {
  let text = address.split('%')[0] as string;
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const part = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const head = part(halves[0] as string);
  const rest = halves.length === 2 ? part(halves[1] as string) : [];
  const fill = halves.length === 2 ? 8 - head.length - rest.length : 0;
  const all = [...head, ...Array<string>(fill).fill('0'), ...rest];
  if (all.length !== 8) return null;
  const groups = all.map((g) => Number.parseInt(g, 16));
  return groups.some((g) => Number.isNaN(g) || g < 0 || g > 0xffff) ? null : groups;
}

/**
 * What kind of address no webhook may reach `address` is, or null for a public one: loopback,
 * private (RFC 1918, ULA fc00::/7), link-local (169.254/16, fe80::/10), cloud metadata, unspecified,
 * multicast, CGNAT (100.64/10), documentation and reserved ranges; an IPv6 address carrying an IPv4
 * one (mapped, NAT64, 6to4) is judged by that one. Anything that is not an IP address is `reserved`.
 */
export function classifyAddress(address: string): AddressKind | null {
  const family = isIP(address);
  if (family === 0) return 'reserved';
  if (family === 6) {
    const v4 = embeddedV4(address);
    if (v4 !== null) return classifyAddress(v4);
  }
  const type = family === 4 ? 'ipv4' : 'ipv6';
  for (const [list, kind, listType] of lists) if (listType === type && list.check(address, type)) return kind;
  return null;
}

/** A webhook URL's shape problem, or null: http(s), a host, no user:password, at most WEBHOOK_URL_MAX_CHARS. */
export function webhookUrlShapeProblem(raw: string): string | null {
  if (raw.length > WEBHOOK_URL_MAX_CHARS) return `must be at most ${WEBHOOK_URL_MAX_CHARS} characters`;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return 'must be an absolute http:// or https:// URL';
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be an http:// or https:// URL';
  if (url.hostname === '') return 'must name a host';
  if (url.username !== '' || url.password !== '') return 'must not carry a user name or password (deliveries are signed instead)';
  return null;
}

/** A host name as URL gives it, without IPv6's brackets. */
export function hostOf(url: URL): string {
  return url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
}

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

export type Lookup = (host: string) => Promise<ResolvedAddress[]>;

/** Every address a host resolves to (the system resolver, as a connection would use it). */
export const systemLookup: Lookup = async (host) => {
  const found = await dnsLookup(host, { all: true, verbatim: true });
  return found.map(({ address, family }) => ({ address, family: family === 6 ? 6 : 4 }));
};

/** Where a webhook may be sent, or why not. */
export type WebhookTarget =
  | { ok: true; url: URL; address: ResolvedAddress }
  | { ok: false; code: 'bad_url' | 'unresolvable' | 'not_allowed'; reason: string };

/**
 * Resolves a webhook URL's host once and judges every address it has: refused when any is one no
 * webhook may reach (unless `allowPrivate`), so a name that answers with a public and a private
 * address cannot be used to reach the private one. The first address is returned for the connection
 * to be pinned to, so that no second resolution can change it (DNS rebinding).
 */
export async function resolveWebhookTarget(raw: string, opts: { allowPrivate: boolean; lookup?: Lookup }): Promise<WebhookTarget> {
  const shape = webhookUrlShapeProblem(raw);
  if (shape !== null) return { ok: false, code: 'bad_url', reason: `the URL ${shape}` };
  const url = new URL(raw);
  const host = hostOf(url);
  let addresses: ResolvedAddress[];
  if (isIP(host) !== 0) {
    addresses = [{ address: host, family: isIP(host) === 6 ? 6 : 4 }];
  } else {
    try {
      addresses = await (opts.lookup ?? systemLookup)(host);
    } catch {
      addresses = [];
    }
    if (addresses.length === 0) return { ok: false, code: 'unresolvable', reason: 'its host name does not resolve' };
  }
  if (!opts.allowPrivate) {
    for (const { address } of addresses) {
      const kind = classifyAddress(address);
      // The address is not named: it may be an internal name's, which the caller need not learn.
      if (kind !== null) return { ok: false, code: 'not_allowed', reason: `its host is or resolves to a ${kind} address` };
    }
  }
  return { ok: true, url, address: addresses[0] as ResolvedAddress };
}

/** The key a `whsec_<base64>` secret (the Standard Webhooks form) stands for, or null when it is not one. */
export function webhookSecretKey(secret: string): Buffer | null {
  const match = /^whsec_([A-Za-z0-9+/]+={0,2})$/.exec(secret.trim());
  if (!match) return null;
  const key = Buffer.from(match[1] as string, 'base64');
  return key.length >= 24 && key.length <= 64 ? key : null;
}

/**
 * The Standard Webhooks headers for one delivery attempt: `webhook-signature` is `v1,` and the base64
 * HMAC-SHA256, keyed with the secret's bytes, of `<id>.<timestamp>.<body>`.
 */
export function signWebhook(key: Buffer, id: string, timestampSeconds: number, body: string): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> {
  const signature = createHmac('sha256', key).update(`${id}.${timestampSeconds}.${body}`).digest('base64');
  return { 'webhook-id': id, 'webhook-timestamp': String(timestampSeconds), 'webhook-signature': `v1,${signature}` };
}
