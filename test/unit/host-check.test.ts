import {
  allowedHosts,
  hostMatches,
  normaliseOrigins,
  originAllowed,
  parseHostEntry,
  parseHostPort,
  type HostPort,
} from '../../services/api/src/host-check';
import { ConfigError, loadConfig } from '../../services/shared/src/config';

/** Whether a Host header value would be answered under `env`'s configuration. */
function answers(env: Record<string, string>, hostHeader: string): boolean {
  const list = allowedHosts(loadConfig(env));
  if (list === null) return true;
  const host = parseHostPort(hostHeader);
  return host !== null && list.some((entry) => hostMatches(entry, host));
}

describe('parseHostPort', () => {
  test.each<[string, HostPort]>([
    ['localhost', { host: 'localhost', port: null }],
    ['localhost:3000', { host: 'localhost', port: 3000 }],
    ['127.0.0.1:8080', { host: '127.0.0.1', port: 8080 }],
    ['[::1]', { host: '[::1]', port: null }],
    ['[::1]:3000', { host: '[::1]', port: 3000 }],
    ['[0:0:0:0:0:0:0:1]:3000', { host: '[::1]', port: 3000 }],
    ['[FE80::A]', { host: '[fe80::a]', port: null }],
    ['Maestro.Example.COM', { host: 'maestro.example.com', port: null }],
    ['maestro.example.com.:443', { host: 'maestro.example.com', port: 443 }],
    ['localhost.', { host: 'localhost', port: null }],
    ['maestro_api-1', { host: 'maestro_api-1', port: null }],
  ])('reads %j', (value, expected) => {
    expect(parseHostPort(value)).toEqual(expected);
  });

  test.each([
    ['empty', ''],
    ['a bare IPv6 address', '::1'],
    ['an unclosed bracket', '[::1'],
    ['junk after the bracket', '[::1]x'],
    ['a bracketed name', '[localhost]'],
    ['an IPv6 zone id', '[fe80::1%25eth0]'],
    ['an empty port', 'localhost:'],
    ['a port past 65535', 'localhost:65536'],
    ['a non-numeric port', 'localhost:http'],
    ['two colons', 'a:1:2'],
    ['userinfo', 'user@localhost'],
    ['a path', 'localhost/x'],
    ['a space', 'local host'],
    ['a quote', 'a"b'],
    ['percent-encoding', 'local%68ost'],
    ['an empty label', 'a..b'],
    ['only a dot', '.'],
    ['two trailing dots', 'localhost..'],
    ['a name longer than DNS allows', `${'a.'.repeat(127)}ab`],
  ])('refuses %s', (_what, value) => {
    expect(parseHostPort(value)).toBeNull();
  });

  test('an ALLOWED_HOSTS entry may also be a bare IPv6 address', () => {
    expect(parseHostEntry('::1')).toEqual({ host: '[::1]', port: null });
    expect(parseHostEntry('2001:DB8::1')).toEqual({ host: '[2001:db8::1]', port: null });
    expect(parseHostEntry('[2001:db8::1]:8443')).toEqual({ host: '[2001:db8::1]', port: 8443 });
  });
});

describe('hostMatches', () => {
  const name = { host: 'maestro.lan', port: null };
  const namePort = { host: 'maestro.lan', port: 8080 };

  test('an entry without a port matches its name on any port, or none', () => {
    expect(hostMatches(name, { host: 'maestro.lan', port: 8080 })).toBe(true);
    expect(hostMatches(name, { host: 'maestro.lan', port: null })).toBe(true);
    expect(hostMatches(name, { host: 'maestro.lan.evil.example', port: null })).toBe(false);
  });

  test('an entry with a port matches only that port', () => {
    expect(hostMatches(namePort, { host: 'maestro.lan', port: 8080 })).toBe(true);
    expect(hostMatches(namePort, { host: 'maestro.lan', port: 8081 })).toBe(false);
    expect(hostMatches(namePort, { host: 'maestro.lan', port: null })).toBe(false);
  });
});

describe('allowedHosts', () => {
  test('with AUTH_MODE=none and no ALLOWED_HOSTS, the loopback names and HOST are allowed on any port', () => {
    for (const host of ['localhost:3000', '127.0.0.1:3000', '[::1]:3000', 'LOCALHOST.:1234', '127.0.0.1']) {
      expect([host, answers({}, host)]).toEqual([host, true]);
    }
    expect(answers({ HOST: '192.168.1.5', ALLOW_UNAUTHENTICATED_NON_LOOPBACK: 'true' }, '192.168.1.5:3000')).toBe(true);
    expect(answers({ HOST: 'maestro.lan', ALLOW_UNAUTHENTICATED_NON_LOOPBACK: 'true' }, 'Maestro.LAN:3000')).toBe(true);
    expect(answers({ HOST: '::1' }, '[::1]:3000')).toBe(true);
  });

  test('with AUTH_MODE=none a foreign name is refused, whatever its port or case', () => {
    for (const host of ['rebind.example', 'rebind.example:3000', 'localhost.rebind.example', '127.0.0.2:3000', '10.0.0.1']) {
      expect([host, answers({}, host)]).toEqual([host, false]);
    }
  });

  test('a wildcard HOST is not a name anyone reaches the API by, so it adds nothing', () => {
    const env = { ALLOW_UNAUTHENTICATED_NON_LOOPBACK: 'true' };
    const loopback = ['localhost', '127.0.0.1', '[::1]'].map((host) => ({ host, port: null }));
    expect(allowedHosts(loadConfig({ ...env, HOST: '0.0.0.0' }))).toEqual(loopback);
    expect(allowedHosts(loadConfig({ ...env, HOST: '::' }))).toEqual(loopback);
    expect(answers({ ...env, HOST: '0.0.0.0' }, '0.0.0.0:3000')).toBe(false);
    expect(answers({ ...env, HOST: '0.0.0.0' }, '127.0.0.1:3000')).toBe(true);
  });

  test('ALLOWED_HOSTS replaces HOST in the list but the loopback names stay', () => {
    const env = { HOST: '0.0.0.0', ALLOW_UNAUTHENTICATED_NON_LOOPBACK: 'true', ALLOWED_HOSTS: 'maestro.lan, api.example.com:8443' };
    expect(answers(env, 'maestro.lan:3000')).toBe(true);
    expect(answers(env, 'api.example.com:8443')).toBe(true);
    expect(answers(env, 'api.example.com:443')).toBe(false);
    expect(answers(env, '127.0.0.1:3000')).toBe(true);
    expect(answers(env, 'rebind.example:3000')).toBe(false);
  });

  test('with authentication on, any Host is answered unless ALLOWED_HOSTS is set', () => {
    const apiKey = { AUTH_MODE: 'api-key', API_KEYS: `alice:${'k'.repeat(40)}` };
    expect(allowedHosts(loadConfig(apiKey))).toBeNull();
    expect(allowedHosts(loadConfig({ AUTH_MODE: 'proxy', TRUSTED_PROXIES: '10.0.0.2' }))).toBeNull();
    expect(answers({ ...apiKey, ALLOWED_HOSTS: 'maestro.example.com' }, 'maestro.example.com')).toBe(true);
    expect(answers({ ...apiKey, ALLOWED_HOSTS: 'maestro.example.com' }, 'rebind.example')).toBe(false);
  });

  test('a malformed ALLOWED_HOSTS entry is a config error naming its position, not its text', () => {
    const err: unknown = (() => {
      try {
        allowedHosts(loadConfig({ ALLOWED_HOSTS: 'maestro.lan,https://x.example/' }));
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toBe('invalid ALLOWED_HOSTS: entry 2 is not a host name or IP address with an optional :port (IPv6 in brackets)');
  });
});

describe('originAllowed', () => {
  const host = { host: '127.0.0.1', port: 3000 };
  const cors = normaliseOrigins(['https://app.example/', 'HTTPS://Other.Example:8443', 'not a url', '*']);

  test('CORS_ORIGINS are compared in the form browsers send', () => {
    expect([...cors]).toEqual(['https://app.example', 'https://other.example:8443']);
    expect(originAllowed('https://app.example', host, cors)).toBe(true);
    expect(originAllowed('https://other.example:8443', host, cors)).toBe(true);
    expect(originAllowed('https://other.example', host, cors)).toBe(false);
  });

  test('the request’s own host and port is the same origin', () => {
    expect(originAllowed('http://127.0.0.1:3000', host, cors)).toBe(true);
    expect(originAllowed('http://localhost.:3000', { host: 'localhost', port: 3000 }, cors)).toBe(true);
    expect(originAllowed('http://[::1]:3000', { host: '[::1]', port: 3000 }, cors)).toBe(true);
    expect(originAllowed('http://127.0.0.1:3001', host, cors)).toBe(false);
    expect(originAllowed('http://127.0.0.1', host, cors)).toBe(false);
    expect(originAllowed('http://localhost:3000', host, cors)).toBe(false);
  });

  test('null, foreign and malformed origins are refused', () => {
    for (const origin of ['null', 'https://evil.example', '', 'garbage', 'file:///etc/passwd', 'http://127.0.0.1:3000/', 'http://u@127.0.0.1:3000', 'https://app.example, https://evil.example']) {
      expect([origin, originAllowed(origin, host, cors)]).toEqual([origin, false]);
    }
  });
});
