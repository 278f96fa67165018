/**
 * The SSRF guard's judgement of addresses and URLs (services/shared/src/webhooks.ts): what a webhook
 * may never reach without WEBHOOK_ALLOW_PRIVATE, in every spelling an address can take, and that a
 * name with one bad address among good ones is refused.
 */
import { classifyAddress, resolveWebhookTarget, webhookUrlShapeProblem, type Lookup } from '../../services/shared/src/webhooks';

describe('classifyAddress', () => {
  test.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['::1', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['169.254.1.1', 'link-local'],
    ['fe80::1', 'link-local'],
    ['169.254.169.254', 'cloud metadata'],
    ['fd00:ec2::254', 'cloud metadata'],
    ['100.100.100.200', 'cloud metadata'],
    ['100.64.0.1', 'shared address space (CGNAT)'],
    ['100.127.255.254', 'shared address space (CGNAT)'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.1.1.1', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'broadcast'],
    ['192.0.2.10', 'documentation'],
    ['2001:db8::1', 'documentation'],
    ['240.0.0.1', 'reserved'],
    // IPv6 spellings of IPv4 addresses are judged by the IPv4 address they carry.
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:169.254.169.254', 'cloud metadata'],
    ['64:ff9b::a00:1', 'private'],
    ['2002:c0a8:0101::1', 'private'],
    ['not-an-ip', 'reserved'],
  ])('%s is %s', (address, kind) => {
    expect(classifyAddress(address)).toBe(kind);
  });

  test.each(['8.8.8.8', '1.1.1.1', '93.184.215.14', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '2002:0808:0808::1'])(
    '%s is public',
    (address) => {
      expect(classifyAddress(address)).toBeNull();
    },
  );
});

describe('webhookUrlShapeProblem', () => {
  test.each([
    ['ftp://example.com/x', 'ftp://example.com/x', /http/],
    ['file:///etc/passwd', 'file:///etc/passwd', /http/],
    ['gopher://example.com', 'gopher://example.com', /http/],
    ['a relative URL', 'example.com/hook', /absolute/],
    ['a URL with user:password', 'https://user:secret@example.com/hook', /user name or password/],
    ['a URL of 2120 characters', `https://example.com/${'a'.repeat(2100)}`, /2048/],
  ])('%s is refused', (_what, url, why) => {
    expect(webhookUrlShapeProblem(url)).toMatch(why);
  });

  test('a plain https URL with a port, path and query is fine', () => {
    expect(webhookUrlShapeProblem('https://hooks.example.com:8443/maestro?token=abc')).toBeNull();
  });
});

describe('resolveWebhookTarget', () => {
  const answers = (map: Record<string, string[]>): Lookup => async (host) =>
    (map[host] ?? []).map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));

  test('a public name resolves to its first address, which the connection is pinned to', async () => {
    const target = await resolveWebhookTarget('https://hooks.example.com/x', { allowPrivate: false, lookup: answers({ 'hooks.example.com': ['93.184.215.14', '2606:2800::1'] }) });
    expect(target).toEqual({ ok: true, url: new URL('https://hooks.example.com/x'), address: { address: '93.184.215.14', family: 4 } });
  });

  test('one private address among public ones is enough to refuse the name, and the address is not named', async () => {
    const target = await resolveWebhookTarget('https://mixed.example.com/x', { allowPrivate: false, lookup: answers({ 'mixed.example.com': ['93.184.215.14', '10.0.0.5'] }) });
    expect(target).toEqual({ ok: false, code: 'not_allowed', reason: 'its host is or resolves to a private address' });
  });

  test.each([
    ['http://127.0.0.1:8080/hook', 'loopback'],
    ['http://169.254.169.254/latest/meta-data/', 'cloud metadata'],
    ['http://[::1]/hook', 'loopback'],
    ['http://[::ffff:10.0.0.1]/hook', 'private'],
    ['http://0x7f000001/hook', 'loopback'],
    ['http://2130706433/hook', 'loopback'],
  ])('%s is refused without a lookup (%s)', async (url, kind) => {
    const lookup = jest.fn<ReturnType<Lookup>, Parameters<Lookup>>();
    const target = await resolveWebhookTarget(url, { allowPrivate: false, lookup });
    expect(target).toEqual({ ok: false, code: 'not_allowed', reason: `its host is or resolves to a ${kind} address` });
    expect(lookup).not.toHaveBeenCalled();
  });

  test('WEBHOOK_ALLOW_PRIVATE lets a private address through, still pinned', async () => {
    const target = await resolveWebhookTarget('http://127.0.0.1:9/x', { allowPrivate: true });
    expect(target).toMatchObject({ ok: true, address: { address: '127.0.0.1', family: 4 } });
  });

  test('a name that does not resolve is refused as unresolvable', async () => {
    const target = await resolveWebhookTarget('https://nowhere.invalid/x', { allowPrivate: false, lookup: answers({}) });
    expect(target).toMatchObject({ ok: false, code: 'unresolvable' });
  });
});
