/**
 * DNS rebinding and cross-site requests, through the real API: which Host and Origin headers it
 * answers, and what a refused caller is told. fetch cannot set Host, so these requests go through
 * node:http (or a raw socket) to the stack's loopback port with the Host a browser would send.
 */
import { connect } from 'node:net';
import { httpCall, type HttpAnswer as Answer } from '../support/http';
import { startModelServer, type ModelServer } from '../support/model-server';
import { request, startStack, type Stack } from '../support/stack';

/** One request to the stack's port, sent with exactly the given Host (and other) headers. */
function send(stack: Stack, method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<Answer> {
  return httpCall(stack.api.port, { method, path, headers, body });
}

/** Sends raw bytes on a fresh connection and returns the whole answer. */
function sendRaw(stack: Stack, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(stack.api.port, '127.0.0.1', () => socket.end(raw));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.on('error', reject);
  });
}

function expectHostRefused(res: Answer, status = 421): void {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({ type: 'urn:maestro:problem:host_not_allowed', status });
  expect(res.body.detail).toContain('ALLOWED_HOSTS');
}

let model: ModelServer;
beforeAll(async () => {
  model = await startModelServer();
});
afterAll(async () => {
  await model?.close();
});

describe('with AUTH_MODE=none and ALLOWED_HOSTS unset', () => {
  let stack: Stack;
  let own: string;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0 });
    own = `127.0.0.1:${stack.api.port}`;
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a rebound name is refused with 421 on every route, naming ALLOWED_HOSTS', async () => {
    for (const path of ['/v1/jobs', '/healthz', '/readyz', '/openapi.json', '/docs', '/nowhere']) {
      const res = await send(stack, 'GET', path, { host: `rebind.example:${stack.api.port}` });
      expectHostRefused(res);
      expect(res.body.detail).toContain('"rebind.example"');
    }
  });

  test('the loopback names it listens on are answered', async () => {
    for (const host of [own, `localhost:${stack.api.port}`, `LocalHost.:${stack.api.port}`]) {
      const res = await send(stack, 'GET', '/v1/jobs', { host });
      expect([host, res.status]).toEqual([host, 200]);
    }
    expect((await send(stack, 'GET', '/healthz', { host: own })).status).toBe(200);
  });

  test('a malformed Host is a 400, and what it held is not echoed', async () => {
    const res = await send(stack, 'GET', '/healthz', { host: 'evil.example<script>' });
    expectHostRefused(res, 400);
    expect(JSON.stringify(res.body)).not.toContain('script');
  });

  test.each([
    ['HTTP/1.0', 'GET /healthz HTTP/1.0\r\n\r\n'],
    ['HTTP/1.1', 'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n'],
  ])('an %s request without Host is refused with a problem document', async (_version, raw) => {
    const answer = await sendRaw(stack, raw);
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toMatch(/\r\ncontent-type: application\/problem\+json/i);
    expect(answer).toContain('ALLOWED_HOSTS');
  });

  test('an absolute-form request is judged by the host in its target, not its Host header', async () => {
    const answer = await sendRaw(stack, `GET http://rebind.example/healthz HTTP/1.1\r\nHost: ${own}\r\nConnection: close\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 421 /);
    expect(answer).toContain('host_not_allowed');
  });

  test('a POST from a foreign origin is refused with 403 and creates no job', async () => {
    const task = `from evil ${Date.now()}`;
    const res = await send(stack, 'POST', '/v1/jobs', { host: own, origin: 'https://evil.example' }, { task });
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({ type: 'urn:maestro:problem:origin_not_allowed', status: 403 });
    const list = await request(stack, 'GET', '/v1/jobs?limit=100');
    expect(list.body.jobs.filter((j: { task: string }) => j.task === task)).toEqual([]);
  });

  test('Origin: null is refused', async () => {
    const res = await send(stack, 'POST', '/v1/jobs', { host: own, origin: 'null' }, { task: 'from a sandboxed frame' });
    expect(res.status).toBe(403);
    expect(res.body.type).toBe('urn:maestro:problem:origin_not_allowed');
  });

  test('a POST without Origin, as curl and the SDKs send it, is accepted', async () => {
    const res = await send(stack, 'POST', '/v1/jobs', { host: own }, { task: 'no origin' });
    expect(res.status).toBe(202);
  });

  test('a POST from the same origin is accepted', async () => {
    const res = await send(stack, 'POST', '/v1/jobs', { host: own, origin: `http://${own}` }, { task: 'same origin' });
    expect(res.status).toBe(202);
  });

  test('a GET from a foreign origin is still answered: reading is what CORS governs', async () => {
    const res = await send(stack, 'GET', '/v1/jobs', { host: own, origin: 'https://evil.example' });
    expect(res.status).toBe(200);
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
  });
});

describe('with AUTH_MODE=none and ALLOWED_HOSTS and CORS_ORIGINS set', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: { ALLOWED_HOSTS: 'maestro.test', CORS_ORIGINS: 'https://app.example' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a listed name is answered on any port, and other names are still refused', async () => {
    expect((await send(stack, 'GET', '/v1/jobs', { host: `maestro.test:${stack.api.port}` })).status).toBe(200);
    expect((await send(stack, 'GET', '/healthz', { host: 'MAESTRO.test' })).status).toBe(200);
    expectHostRefused(await send(stack, 'GET', '/v1/jobs', { host: `rebind.example:${stack.api.port}` }));
  });

  test('the loopback address stays answered, so health checks on 127.0.0.1 keep working', async () => {
    expect((await send(stack, 'GET', '/readyz', { host: `127.0.0.1:${stack.api.port}` })).status).toBe(200);
  });

  test('a POST from an origin in CORS_ORIGINS is accepted and granted CORS', async () => {
    const res = await send(stack, 'POST', '/v1/jobs', { host: 'maestro.test', origin: 'https://app.example' }, { task: 'from the app' });
    expect(res.status).toBe(202);
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example');
  });
});

describe('with AUTH_MODE=api-key', () => {
  const key = 'k'.repeat(40);
  let open: Stack;
  let listed: Stack;
  beforeAll(async () => {
    const env = { AUTH_MODE: 'api-key', API_KEYS: `alice:${key}` };
    open = await startStack(model, { workers: 0, env });
    listed = await startStack(model, { workers: 0, env: { ...env, ALLOWED_HOSTS: 'maestro.example.com' } });
  });
  afterAll(async () => {
    await open?.close();
    await listed?.close();
  });

  test('without ALLOWED_HOSTS any Host reaches authentication', async () => {
    const res = await send(open, 'GET', '/v1/jobs', { host: 'rebind.example' });
    expect(res.status).toBe(401);
    expect(res.body.type).toBe('urn:maestro:problem:unauthenticated');
    expect((await send(open, 'GET', '/v1/jobs', { host: 'rebind.example', authorization: `Bearer ${key}` })).status).toBe(200);
  });

  test('Origin is left to authentication: a keyed POST from another origin is accepted', async () => {
    const res = await send(open, 'POST', '/v1/jobs', { host: 'api.example', origin: 'https://evil.example', authorization: `Bearer ${key}` }, { task: 'keyed' });
    expect(res.status).toBe(202);
  });

  test('with ALLOWED_HOSTS set, a foreign Host is refused before authentication', async () => {
    expectHostRefused(await send(listed, 'GET', '/v1/jobs', { host: 'rebind.example', authorization: `Bearer ${key}` }));
    const ok = await send(listed, 'GET', '/v1/jobs', { host: 'maestro.example.com', authorization: `Bearer ${key}` });
    expect(ok.status).toBe(200);
  });
});
