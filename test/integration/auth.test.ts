/** Callers, ownership, idempotency, rate limits and CORS, through the real API on real Redis. */
import { loadConfig } from '../../services/shared/src/config';
import { authConfigProblems } from '../../services/api/src/auth';
import { scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { readSse } from '../support/sse';
import { request, startStack, waitForJobEnd, type Stack } from '../support/stack';

/** The start-up refusals of an auth configuration, as one message; null when there are none. */
const problemsOf = (config: Parameters<typeof authConfigProblems>[0]): string | null => authConfigProblems(config).join('\n') || null;

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

describe('api-key mode', () => {
  let stack: Stack;
  const alice = bearer('alice-key-0123456789abcdef0123456789abcdef');
  const bob = bearer('bob-key-9876543210fedcba9876543210fedcba');
  beforeAll(async () => {
    stack = await startStack(model, {
      env: { AUTH_MODE: 'api-key', API_KEYS: 'alice:alice-key-0123456789abcdef0123456789abcdef,bob:bob-key-9876543210fedcba9876543210fedcba', RATE_LIMIT_PER_MINUTE: '0' },
    });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a missing, malformed or wrong key is a 401 problem', async () => {
    for (const headers of [{}, { authorization: 'alice-key-0123456789abcdef0123456789abcdef' }, { authorization: 'Basic YWxpY2U6eA==' }, bearer('alice-key-0123456789abcdef0123456789abcdef0'), bearer('')]) {
      const res = await request(stack, 'GET', '/v1/jobs', undefined, headers);
      expect(res.status).toBe(401);
      expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    }
    expect((await request(stack, 'GET', '/v1/jobs', undefined, alice)).status).toBe(200);
    // Health stays open for load balancers and orchestrators.
    expect((await request(stack, 'GET', '/healthz')).status).toBe(200);
  });

  test("one caller cannot see, list, cancel, stream or download another caller's job", async () => {
    script['alice only'] = [
      { toolCalls: [{ name: 'code_executor', arguments: { code: "open('/output/a.txt','w').write('mine')" } }] },
      { text: 'done' },
    ];
    const created = await request(stack, 'POST', '/v1/jobs', { task: 'alice only' }, alice);
    expect(created.status).toBe(202);
    const id = created.body.id as string;
    const own = await waitForJobEnd(stack, id, 30_000, alice);
    expect(own.artifacts.map((a) => a.name)).toEqual(['a.txt']);
    expect((await request(stack, 'GET', `/v1/jobs/${id}/artifacts/a.txt`, undefined, alice)).status).toBe(200);

    expect((await request(stack, 'GET', `/v1/jobs/${id}`, undefined, bob)).status).toBe(404);
    expect((await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, bob)).status).toBe(404);
    expect((await request(stack, 'GET', `/v1/jobs/${id}/artifacts/a.txt`, undefined, bob)).status).toBe(404);
    expect((await readSse(`${stack.api.url}/v1/jobs/${id}/events`, { headers: bob })).status).toBe(404);
    const bobsList = await request(stack, 'GET', '/v1/jobs', undefined, bob);
    expect(bobsList.body.jobs.map((j: { id: string }) => j.id)).not.toContain(id);
    const alicesList = await request(stack, 'GET', '/v1/jobs', undefined, alice);
    expect(alicesList.body.jobs.map((j: { id: string }) => j.id)).toContain(id);
  });

  test('20 concurrent POSTs with one Idempotency-Key create exactly one job', async () => {
    const body = { task: 'exactly once', metadata: { n: '1' } };
    const responses = await Promise.all(
      Array.from({ length: 20 }, () => request(stack, 'POST', '/v1/jobs', body, { ...alice, 'idempotency-key': 'order-42' })),
    );
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 202)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(19);
    expect(new Set(responses.map((r) => r.body.id)).size).toBe(1);
    const list = await request(stack, 'GET', '/v1/jobs?limit=100', undefined, alice);
    expect(list.body.jobs.filter((j: { task: string }) => j.task === 'exactly once')).toHaveLength(1);
  });

  test('the same Idempotency-Key with another body is a 409, and keys are per caller', async () => {
    const first = await request(stack, 'POST', '/v1/jobs', { task: 'keyed' }, { ...alice, 'idempotency-key': 'k-1' });
    expect(first.status).toBe(202);
    const again = await request(stack, 'POST', '/v1/jobs', { task: 'keyed' }, { ...alice, 'idempotency-key': 'k-1' });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(first.body.id);
    const other = await request(stack, 'POST', '/v1/jobs', { task: 'something else' }, { ...alice, 'idempotency-key': 'k-1' });
    expect(other.status).toBe(409);
    const bobs = await request(stack, 'POST', '/v1/jobs', { task: 'keyed' }, { ...bob, 'idempotency-key': 'k-1' });
    expect(bobs.status).toBe(202);
    expect(bobs.body.id).not.toBe(first.body.id);
    const bad = await request(stack, 'POST', '/v1/jobs', { task: 'keyed' }, { ...alice, 'idempotency-key': 'x'.repeat(300) });
    expect(bad.status).toBe(400);
  });
});

describe('proxy mode', () => {
  let trusted: Stack;
  let untrusted: Stack;
  beforeAll(async () => {
    trusted = await startStack(model, { workers: 0, env: { AUTH_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1/8,::1' } });
    // Only a proxy at an address this test never uses is trusted: requests from loopback are not.
    untrusted = await startStack(model, { workers: 0, env: { AUTH_MODE: 'proxy', TRUSTED_PROXIES: '192.0.2.10' } });
  });
  afterAll(async () => {
    await trusted?.close();
    await untrusted?.close();
  });

  test('the user header is believed from a trusted proxy, and each user sees only their jobs', async () => {
    const a = await request(trusted, 'POST', '/v1/jobs', { task: 'proxied' }, { 'x-forwarded-user': 'ann@example.com' });
    expect(a.status).toBe(202);
    expect((await request(trusted, 'GET', `/v1/jobs/${a.body.id}`, undefined, { 'x-forwarded-user': 'ann@example.com' })).status).toBe(200);
    expect((await request(trusted, 'GET', `/v1/jobs/${a.body.id}`, undefined, { 'x-forwarded-user': 'ben@example.com' })).status).toBe(404);
  });

  test('a request without the header is a 401', async () => {
    expect((await request(trusted, 'GET', '/v1/jobs')).status).toBe(401);
    expect((await request(trusted, 'GET', '/v1/jobs', undefined, { 'x-forwarded-user': '' })).status).toBe(401);
  });

  test('the header from an untrusted address is a 401, whatever X-Forwarded-For claims', async () => {
    const res = await request(untrusted, 'GET', '/v1/jobs', undefined, {
      'x-forwarded-user': 'ann@example.com',
      'x-forwarded-for': '192.0.2.10',
    });
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/problem\+json/);
  });
});

describe('none mode', () => {
  test('refuses to serve unauthenticated on a non-loopback address unless told to', () => {
    expect(problemsOf(loadConfig({ HOST: '0.0.0.0' }))).toMatch(/AUTH_MODE=none refuses/);
    expect(problemsOf(loadConfig({ HOST: '192.168.1.5' }))).toMatch(/AUTH_MODE=none refuses/);
    expect(problemsOf(loadConfig({ HOST: '127.0.0.1' }))).toBeNull();
    expect(problemsOf(loadConfig({ HOST: '::1' }))).toBeNull();
    expect(problemsOf(loadConfig({ HOST: '0.0.0.0', ALLOW_UNAUTHENTICATED_NON_LOOPBACK: 'true' }))).toBeNull();
    expect(problemsOf(loadConfig({ AUTH_MODE: 'api-key' }))).toMatch(/API_KEYS/);
    expect(problemsOf(loadConfig({ AUTH_MODE: 'proxy' }))).toMatch(/TRUSTED_PROXIES/);
  });
});

describe('rate limit and CORS', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: { RATE_LIMIT_PER_MINUTE: '5', CORS_ORIGINS: 'https://app.example' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a caller over the limit gets 429 with RateLimit and Retry-After headers', async () => {
    const responses = [];
    for (let i = 0; i < 7; i++) responses.push(await request(stack, 'GET', '/v1/jobs'));
    const limited = responses.filter((r) => r.status === 429);
    // A minute boundary may fall inside the loop and reset the window once.
    expect(limited.length).toBeGreaterThanOrEqual(1);
    expect(responses[0]?.headers.get('ratelimit')).toMatch(/limit=5, remaining=\d+, reset=\d+/);
    expect(responses[0]?.headers.get('ratelimit-policy')).toBe('5;w=60');
    expect(Number(limited[0]?.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(limited[0]?.headers.get('content-type')).toMatch(/problem\+json/);
  });

  test('CORS is granted only to the configured origins', async () => {
    const allowed = await fetch(`${stack.api.url}/healthz`, { headers: { origin: 'https://app.example' } });
    expect(allowed.headers.get('access-control-allow-origin')).toBe('https://app.example');
    const other = await fetch(`${stack.api.url}/healthz`, { headers: { origin: 'https://evil.example' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  test('without CORS_ORIGINS no origin gets CORS access', async () => {
    const plain = await startStack(model, { workers: 0 });
    try {
      const res = await fetch(`${plain.api.url}/healthz`, { headers: { origin: 'https://app.example' } });
      expect(res.headers.get('access-control-allow-origin')).toBeNull();
    } finally {
      await plain.close();
    }
  });
});
