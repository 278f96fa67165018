import { createHash, randomBytes } from 'node:crypto';
import express from 'express';
import pino from 'pino';
import supertest from 'supertest';
import { authConfigProblems, authenticate, parseApiKeys } from '../../services/api/src/auth';
import { clientAddress } from '../../services/api/src/auth-throttle';
import { loadConfig } from '../../services/shared/src/config';

const LONG = 'k'.repeat(32);
const apiKeys = (API_KEYS: string): string | null => authConfigProblems(loadConfig({ AUTH_MODE: 'api-key', API_KEYS })).join('\n') || null;

describe('API_KEYS at start-up', () => {
  test('a key shorter than 32 characters is refused in one line naming its entry, never the key', () => {
    const short = 'bobs-key-0123456789';
    const reason = apiKeys(`alice:${LONG},bob:${short}`);
    expect(reason).toMatch(/^invalid API_KEYS: entry 2 \(bob\) has a key shorter than 32 characters/);
    expect(reason).not.toContain('\n');
    expect(reason).not.toContain(short);

    const bare = apiKeys(`${'x'.repeat(31)},alice:${LONG}`);
    expect(bare).toMatch(/^invalid API_KEYS: entry 1 has a key shorter than 32 characters/);
    expect(bare).not.toContain('x'.repeat(31));
  });

  test('the length rule counts the key, not the name in front of it', () => {
    expect(apiKeys(`a-very-long-caller-name-indeed:${'k'.repeat(31)}`)).toMatch(/entry 1 \(a-very-long-caller-name-indeed\)/);
    expect(apiKeys(`alice:${LONG}`)).toBeNull();
    expect(apiKeys(LONG)).toBeNull();
  });

  test('one key under two entries is refused, naming both; two keys under one name are a rotation and allowed', () => {
    const reason = apiKeys(`alice:${LONG},bob:${'b'.repeat(40)},carol:${LONG}`);
    expect(reason).toBe('invalid API_KEYS: entries 1 and 3 have the same key; give each entry a key of its own');
    expect(apiKeys(`${LONG},${LONG}`)).toMatch(/entries 1 and 2 have the same key/);
    expect(apiKeys(`alice:${LONG},alice:${'n'.repeat(32)}`)).toBeNull();
  });

  test('keys are checked only where they are used', () => {
    expect(authConfigProblems(loadConfig({ AUTH_MODE: 'none', API_KEYS: 'short' }))).toEqual([]);
  });
});

describe('caller ids', () => {
  const key = 'c'.repeat(40);

  test("a bare key's id is an HMAC under the deployment secret: stable with it, unlinked to the key's hash", () => {
    const secret = randomBytes(32);
    const [entry] = parseApiKeys([key], secret);
    expect(entry?.caller).toMatch(/^key-[0-9a-f]{12}$/);
    expect(entry?.caller).not.toBe(`key-${createHash('sha256').update(key).digest('hex').slice(0, 12)}`);
    expect(parseApiKeys([key], Buffer.from(secret))[0]?.caller).toBe(entry?.caller);
    expect(parseApiKeys([key], randomBytes(32))[0]?.caller).not.toBe(entry?.caller);
  });

  test('a named key is its name, and a bare key without the secret is a programming error', () => {
    expect(parseApiKeys([`alice:${key}`])[0]?.caller).toBe('alice');
    expect(() => parseApiKeys([key])).toThrow(/secret/);
  });
});

describe('client addresses', () => {
  const of = (ip: string) => clientAddress({ ip, socket: {} as never });

  test('an IPv4-mapped IPv6 address counts as its IPv4 address', () => {
    expect(of('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(of('::FFFF:192.0.2.7')).toBe('192.0.2.7');
    expect(of('192.0.2.7')).toBe('192.0.2.7');
  });

  test('IPv6 addresses count by their /64, however they are written', () => {
    expect(of('2001:db8:1:2::9')).toBe('2001:db8:1:2::/64');
    expect(of('2001:0db8:0001:0002:ffff:1:2:3')).toBe('2001:db8:1:2::/64');
    expect(of('2001:db8:1:3::9')).toBe('2001:db8:1:3::/64');
    expect(of('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(of('::1')).toBe('0:0:0:0::/64');
    expect(of('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });
});

test('while Redis cannot be asked, authentication answers 503 and lets no key through', async () => {
  const config = loadConfig({ AUTH_MODE: 'api-key', API_KEYS: `alice:${LONG}` });
  const redis = { eval: () => Promise.reject(new Error('Connection is closed.')) };
  const app = express();
  app.use(authenticate(config, { redis: redis as never, logger: pino({ level: 'silent' }) }));
  app.get('/', (_req, res) => {
    res.send('in');
  });
  for (const authorization of [`Bearer ${LONG}`, 'Bearer wrong']) {
    const res = await supertest(app).get('/').set('authorization', authorization);
    expect(res.status).toBe(503);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.text).not.toContain(LONG);
  }
});
