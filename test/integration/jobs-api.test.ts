/** The HTTP contract of the job API, against real Redis (no worker: jobs stay queued). */
import { startModelServer, type ModelServer } from '../support/model-server';
import { request, startStack, submitJob, type AnyJson, type Stack } from '../support/stack';

let model: ModelServer;
let stack: Stack;

beforeAll(async () => {
  model = await startModelServer();
  stack = await startStack(model, { workers: 0 });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

function expectProblem(res: { status: number; headers: Headers; body: AnyJson }, status: number): void {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({ status, type: expect.any(String), title: expect.any(String), detail: expect.any(String) });
  expect(JSON.stringify(res.body)).not.toMatch(/at .*\.(ts|js):\d+|node_modules|\/work\//);
}

test('a valid job is accepted with 202, a Location and its defaults', async () => {
  const res = await request(stack, 'POST', '/v1/jobs', { task: 'hello', metadata: { team: 'a' } });
  expect(res.status).toBe(202);
  expect(res.headers.get('location')).toBe(`/v1/jobs/${res.body.id}`);
  expect(res.body).toMatchObject({
    status: 'queued',
    task: 'hello',
    provider: 'openai',
    tools: ['code_executor', 'list_files', 'read_file'],
    maxSteps: 20,
    timeoutSeconds: 600,
    metadata: { team: 'a' },
    steps: [],
    result: null,
    error: null,
    usage: { inputTokens: 0, outputTokens: 0 },
  });
  const got = await request(stack, 'GET', res.headers.get('location') as string);
  expect(got.status).toBe(200);
  expect(got.body.id).toBe(res.body.id);
});

test.each([
  ['a missing task', {}, 'task'],
  ['an empty task', { task: '   ' }, 'task'],
  ['an oversized task', { task: 'x'.repeat(100_001) }, 'task'],
  ['a task of the wrong type', { task: 42 }, 'task'],
  ['an unknown provider', { task: 't', provider: 'gemini' }, 'provider'],
  ['a fractional maxSteps', { task: 't', maxSteps: 2.5 }, 'maxSteps'],
  ['maxSteps as a string', { task: 't', maxSteps: '5' }, 'maxSteps'],
  ['an unknown tool', { task: 't', tools: ['shell'] }, 'tools'],
  ['a repeated tool', { task: 't', tools: ['read_file', 'read_file'] }, 'tools'],
  ['an unknown field', { task: 't', priority: 'high' }, 'priority'],
  ['a __proto__ key', JSON.parse('{"task":"t","__proto__":{"admin":true}}') as object, '__proto__'],
  ['nested metadata', { task: 't', metadata: { a: { b: 1 } } }, 'metadata'],
  ['an array body', [{ task: 't' }], ''],
])('%s is refused with 400 naming the field', async (_name, body, field) => {
  const res = await request(stack, 'POST', '/v1/jobs', body);
  expectProblem(res, 400);
  expect(res.body.errors.map((e: { field: string }) => e.field).join(' ')).toContain(field);
});

test('invalid JSON, a wrong content type and a 2 MB body get 4xx problems', async () => {
  expectProblem(await request(stack, 'POST', '/v1/jobs', '{"task": "unterminated'), 400);
  expectProblem(await request(stack, 'POST', '/v1/jobs', 'task=hello', { 'content-type': 'application/x-www-form-urlencoded' }), 415);
  expectProblem(await request(stack, 'POST', '/v1/jobs', JSON.stringify({ task: 'x'.repeat(2 * 1024 * 1024) })), 413);
});

test('unknown ids, malformed ids and unknown routes are 404 problems', async () => {
  expectProblem(await request(stack, 'GET', '/v1/jobs/01jzzzzzzzzzzzzzzzzzzzzzzz'), 404);
  expectProblem(await request(stack, 'GET', '/v1/jobs/..%2F..%2Fetc%2Fpasswd'), 404);
  expectProblem(await request(stack, 'POST', '/v1/jobs/nope/cancel'), 404);
  expectProblem(await request(stack, 'GET', '/v2/anything'), 404);
});

test('the list is newest first, paginated, and filters by status', async () => {
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) ids.push((await submitJob(stack, { task: `list ${i}` })).id);
  const first = await request(stack, 'GET', '/v1/jobs?limit=2');
  expect(first.status).toBe(200);
  expect(first.body.jobs.map((j: { id: string }) => j.id)).toEqual([ids[4], ids[3]]);
  expect(first.body.jobs[0].steps).toBeUndefined();
  const second = await request(stack, 'GET', `/v1/jobs?limit=2&cursor=${first.body.nextCursor}`);
  expect(second.body.jobs.map((j: { id: string }) => j.id)).toEqual([ids[2], ids[1]]);
  const cancelled = await request(stack, 'POST', `/v1/jobs/${ids[0]}/cancel`);
  expect(cancelled.status).toBe(202);
  const filtered = await request(stack, 'GET', '/v1/jobs?status=cancelled');
  expect(filtered.body.jobs.map((j: { id: string }) => j.id)).toEqual([ids[0]]);
  expectProblem(await request(stack, 'GET', '/v1/jobs?limit=1000'), 400);
  expectProblem(await request(stack, 'GET', '/v1/jobs?status=done'), 400);
  expectProblem(await request(stack, 'GET', '/v1/jobs?cursor=../../x'), 400);
});

test('cancelling an already cancelled job again is harmless', async () => {
  const job = await submitJob(stack, { task: 'cancel twice' });
  expect((await request(stack, 'POST', `/v1/jobs/${job.id}/cancel`)).status).toBe(202);
  const again = await request(stack, 'POST', `/v1/jobs/${job.id}/cancel`);
  expect(again.status).toBe(202);
  expect(again.body.status).toBe('cancelled');
});

test('health and readiness answer while Redis is reachable, and the API keeps serving after bad input', async () => {
  expect((await request(stack, 'GET', '/healthz')).status).toBe(200);
  expect((await request(stack, 'GET', '/readyz')).body).toEqual({ status: 'ready' });
  const res = await request(stack, 'GET', '/healthz');
  expect(res.headers.get('x-powered-by')).toBeNull();
  expect(res.headers.get('x-content-type-options')).toBe('nosniff');
});

test('readiness fails while Redis is unreachable, and job calls answer 503 instead of hanging', async () => {
  const { createServer } = await import('node:net');
  // A port that was free a moment ago: nothing listens there.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const deadPort = (probe.address() as { port: number }).port;
  await new Promise((r) => probe.close(r));
  const { startApi } = await import('../../services/api/src/api-service');
  const { loadConfig } = await import('../../services/shared/src/config');
  const pino = (await import('pino')).default;
  const api = await startApi(loadConfig({ ...stack.env, REDIS_URL: `redis://127.0.0.1:${deadPort}` }), { logger: pino({ level: 'silent' }) });
  try {
    expect((await request({ api }, 'GET', '/healthz')).status).toBe(200);
    expectProblem(await request({ api }, 'GET', '/readyz'), 503);
    const started = Date.now();
    const res = await request({ api }, 'POST', '/v1/jobs', { task: 'no redis' });
    expect(res.status).toBe(503);
    expect(Date.now() - started).toBeLessThan(10_000);
  } finally {
    await api.close();
  }
});
