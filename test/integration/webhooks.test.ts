/**
 * Webhooks end to end: a real stack (API, worker, Redis) and receivers on 127.0.0.1 (so this stack
 * sets WEBHOOK_ALLOW_PRIVATE; a second one, without it, shows the SSRF guard at submission). Every
 * delivery is checked with the Standard Webhooks reference library.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { startModelServer, type ModelServer } from '../support/model-server';
import { getJob, request, startStack, submitJob, waitForJobEnd, type AnyJson, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP receiver that records every request and answers as `answer` says. */
async function startReceiver(answer: (path: string, hits: number) => { status: number; headers?: Record<string, string> }): Promise<{
  url: string;
  received: Received[];
  on(path: string): Received[];
  close(): Promise<void>;
}> {
  const received: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '/';
      received.push({ path, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      const { status, headers } = answer(path, received.filter((r) => r.path === path).length);
      res.writeHead(status, headers).end(status >= 300 && status < 400 ? '' : 'ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    on: (path) => received.filter((r) => r.path === path),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** What the reference library makes of a delivery: its payload, or a throw when the signature is wrong. */
function verified(r: Received): AnyJson {
  const headers: Record<string, string> = {};
  for (const name of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) headers[name] = String(r.headers[name]);
  return new Webhook(SECRET).verify(r.body, headers);
}

let model: ModelServer;
let stack: Stack;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let elsewhere: Awaited<ReturnType<typeof startReceiver>>;
/** Paths under /flaky/ fail while this holds. */
let flaky = true;

beforeAll(async () => {
  elsewhere = await startReceiver(() => ({ status: 200 }));
  receiver = await startReceiver((path, hits) => {
    if (path.startsWith('/fail2/')) return { status: hits <= 2 ? 500 : 200 };
    if (path.startsWith('/flaky/')) return { status: flaky ? 503 : 204 };
    if (path.startsWith('/redirect/')) return { status: 302, headers: { location: `${elsewhere.url}/stolen` } };
    return { status: 204 };
  });
  model = await startModelServer((req) => {
    if (req.task.startsWith('fail')) return { status: 401, errorMessage: 'bad key' };
    if (req.task.startsWith('hang')) return { hang: true };
    return { text: `done: ${req.task}` };
  });
  stack = await startStack(model, {
    env: {
      WEBHOOKS_ENABLED: 'true',
      WEBHOOK_SECRET: SECRET,
      WEBHOOK_ALLOW_PRIVATE: 'true',
      WEBHOOK_RETRY_BASE_MS: '300',
      WEBHOOK_MAX_ATTEMPTS: '4',
      WEBHOOK_TIMEOUT_MS: '2000',
      SANDBOX_POOL_SIZE: '0',
    },
  });
});

afterAll(async () => {
  model?.releaseHanging();
  await stack?.close();
  await model?.close();
  await receiver?.close();
  await elsewhere?.close();
});

async function deliveriesOf(id: string, n: number, timeoutMs = 15_000): Promise<AnyJson[]> {
  return waitFor(
    async () => {
      const job = await getJob(stack, id);
      return job.webhookDeliveries.length >= n ? job.webhookDeliveries : undefined;
    },
    { timeoutMs, what: `${n} webhook deliveries of job ${id}` },
  );
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('each terminal status (succeeded, failed, cancelled) is delivered once, signed, with the job summary and no task or steps', async () => {
  const ok = await submitJob(stack, { task: 'ok job', tools: [], webhook: { url: `${receiver.url}/ok/succeeded` }, metadata: { k: 'v' } });
  const failed = await submitJob(stack, { task: 'fail job', tools: [], webhook: { url: `${receiver.url}/ok/failed` } });
  const hanging = await submitJob(stack, { task: 'hang job', tools: [], webhook: { url: `${receiver.url}/ok/cancelled` } });
  expect(ok.webhook).toEqual({ url: `${receiver.url}/ok/succeeded` });
  expect(ok.webhookDeliveries).toEqual([]);
  await waitFor(async () => (await getJob(stack, hanging.id)).status === 'running', { what: 'the hanging job to run' });
  expect((await request(stack, 'POST', `/v1/jobs/${hanging.id}/cancel`)).status).toBe(202);

  for (const [job, status] of [
    [ok, 'succeeded'],
    [failed, 'failed'],
    [hanging, 'cancelled'],
  ] as const) {
    const ended = await waitForJobEnd(stack, job.id);
    expect(ended.status).toBe(status);
    const [delivery] = await deliveriesOf(job.id, 1);
    expect(delivery).toEqual({
      attempt: 1,
      at: expect.any(String),
      target: 'job',
      statusCode: 204,
      error: null,
      durationMs: expect.any(Number),
      willRetry: false,
    });
    const got = receiver.on(`/ok/${status}`);
    expect(got).toHaveLength(1);
    const payload = verified(got[0] as Received);
    expect(got[0]?.headers['webhook-id']).toBe(`msg_${job.id}`);
    expect(got[0]?.headers['content-type']).toBe('application/json');
    expect(payload).toMatchObject({ type: `job.${status}`, timestamp: ended.finishedAt, data: { id: job.id, status, stopReason: ended.stopReason, error: ended.error } });
    expect(payload.data).not.toHaveProperty('task');
    expect(payload.data).not.toHaveProperty('steps');
    expect(got[0]?.body).not.toContain(SECRET);
  }
  expect(verified(receiver.on('/ok/succeeded')[0] as Received).data).toMatchObject({ result: { output: 'done: ok job' }, metadata: { k: 'v' } });
  // The list shows the deliveries too.
  const listed = (await request(stack, 'GET', '/v1/jobs?limit=100')).body.jobs.find((j: AnyJson) => j.id === ok.id);
  expect(listed.webhookDeliveries).toHaveLength(1);
  // Exactly once: nothing more arrives.
  await pause(1500);
  for (const status of ['succeeded', 'failed', 'cancelled']) expect(receiver.on(`/ok/${status}`)).toHaveLength(1);
});

test('a receiver answering 500 twice gets the third attempt, and the job shows all three', async () => {
  const job = await submitJob(stack, { task: 'ok retried', tools: [], webhook: { url: `${receiver.url}/fail2/a` } });
  await waitForJobEnd(stack, job.id);
  const deliveries = await deliveriesOf(job.id, 3);
  expect(deliveries.map((d: AnyJson) => [d.attempt, d.statusCode, d.error, d.willRetry])).toEqual([
    [1, 500, 'HTTP 500', true],
    [2, 500, 'HTTP 500', true],
    [3, 200, null, false],
  ]);
  // Backed off exponentially: 300 ms, then 1200 ms.
  const at: number[] = deliveries.map((d: AnyJson) => Date.parse(d.at));
  const [a1, a2, a3] = at as [number, number, number];
  expect(a2 - a1).toBeGreaterThanOrEqual(300);
  expect(a3 - a2).toBeGreaterThanOrEqual(1200);
  const got = receiver.on('/fail2/a');
  expect(got).toHaveLength(3);
  // Every attempt is signed afresh and verifies; the id stays the same.
  for (const r of got) expect(verified(r).data.id).toBe(job.id);
  expect(new Set(got.map((r) => r.headers['webhook-id']))).toEqual(new Set([`msg_${job.id}`]));
  await pause(1000);
  expect(receiver.on('/fail2/a')).toHaveLength(3);
});

test('a redirect is not followed: the other server gets nothing, and the attempt records the 302 as a failure', async () => {
  const job = await submitJob(stack, { task: 'ok redirected', tools: [], webhook: { url: `${receiver.url}/redirect/a` } });
  await waitForJobEnd(stack, job.id);
  const [first] = await deliveriesOf(job.id, 1);
  expect(first).toMatchObject({ attempt: 1, statusCode: 302, error: 'redirect (302) not followed', willRetry: true });
  await deliveriesOf(job.id, 2);
  expect(receiver.on('/redirect/a').length).toBeGreaterThanOrEqual(2);
  expect(elsewhere.received).toEqual([]);
});

test('deliveries survive a worker stopped mid-retries, and a job the API cancelled while no worker ran is delivered once one starts', async () => {
  const job = await submitJob(stack, { task: 'ok restarted', tools: [], webhook: { url: `${receiver.url}/flaky/a` } });
  await waitForJobEnd(stack, job.id);
  await deliveriesOf(job.id, 1);
  for (const worker of stack.workers) await worker.close();
  const sent = receiver.on('/flaky/a').length;
  const recorded = (await getJob(stack, job.id)).webhookDeliveries.length;
  expect(recorded).toBe(sent);
  expect(recorded).toBeLessThan(4);

  // No worker: a queued job the API cancels is ended (and queued for its webhook) by the API.
  const queued = await submitJob(stack, { task: 'ok never started', tools: [], webhook: { url: `${receiver.url}/ok/api-cancelled` } });
  expect((await request(stack, 'POST', `/v1/jobs/${queued.id}/cancel`)).status).toBe(202);
  expect((await getJob(stack, queued.id)).status).toBe('cancelled');
  await pause(2000);
  expect(receiver.on('/flaky/a')).toHaveLength(sent);
  expect(receiver.on('/ok/api-cancelled')).toHaveLength(0);

  flaky = false;
  await stack.startWorker();
  const deliveries = await deliveriesOf(job.id, recorded + 1, 20_000);
  expect(deliveries.at(-1)).toMatchObject({ attempt: recorded + 1, statusCode: 204, error: null, willRetry: false });
  expect(deliveries.slice(0, -1).every((d: AnyJson) => d.statusCode === 503 && d.willRetry)).toBe(true);
  const [cancelled] = await deliveriesOf(queued.id, 1);
  expect(cancelled).toMatchObject({ attempt: 1, statusCode: 204 });
  expect(verified(receiver.on('/ok/api-cancelled')[0] as Received)).toMatchObject({ type: 'job.cancelled', data: { id: queued.id } });
  expect(receiver.on('/flaky/a').filter((r) => verified(r).data.id === job.id)).toHaveLength(recorded + 1);
});

test('deleting a job ends its delivery, and removes its attempts with it', async () => {
  flaky = true;
  const job = await submitJob(stack, { task: 'ok deleted', tools: [], webhook: { url: `${receiver.url}/flaky/deleted` } });
  await waitForJobEnd(stack, job.id);
  await deliveriesOf(job.id, 1);
  expect((await request(stack, 'DELETE', `/v1/jobs/${job.id}`)).status).toBe(204);
  const sent = receiver.on('/flaky/deleted').length;
  await pause(2000);
  expect(receiver.on('/flaky/deleted')).toHaveLength(sent);
  expect(await stack.redis.exists(`${stack.prefix}:job:${job.id}:webhook-deliveries`)).toBe(0);
  expect(await stack.redis.zscore(`${stack.prefix}:webhooks:due`, job.id)).toBeNull();
});

describe('without WEBHOOK_ALLOW_PRIVATE', () => {
  let guarded: Stack;
  let off: Stack;
  beforeAll(async () => {
    guarded = await startStack(model, { workers: 0, env: { WEBHOOKS_ENABLED: 'true' } });
    off = await startStack(model, { workers: 0 });
  });
  afterAll(async () => {
    await guarded?.close();
    await off?.close();
  });

  test.each([
    ['http://127.0.0.1:9/hook', 'loopback'],
    ['http://169.254.169.254/latest/meta-data/iam/security-credentials/', 'cloud metadata'],
    ['http://10.0.0.8/hook', 'private'],
    ['http://[::1]/hook', 'loopback'],
    ['http://[::ffff:169.254.169.254]/', 'cloud metadata'],
    ['http://100.64.1.1/', 'shared address space (CGNAT)'],
    ['http://localhost:9/hook?token=s3cr3t', 'loopback'],
  ])('%s is refused at submission with a 400 problem naming why (%s)', async (url, kind) => {
    const res = await request(guarded, 'POST', '/v1/jobs', { task: 't', webhook: { url } });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({ type: 'urn:maestro:problem:webhook_url_not_allowed', status: 400 });
    expect(res.body.detail).toContain(`${kind} address`);
    // Neither the URL (its query may hold a token) nor an address it resolved to is echoed.
    expect(res.body.detail).not.toContain('s3cr3t');
    expect(res.body.detail).not.toContain('127.0.0.1');
  });

  test.each([
    ['ftp://example.com/hook', 'http'],
    ['https://user:pw@example.com/hook', 'user name or password'],
    ['not a url', 'absolute'],
  ])('%s is refused as invalid', async (url, why) => {
    const res = await request(guarded, 'POST', '/v1/jobs', { task: 't', webhook: { url } });
    expect(res.status).toBe(400);
    expect(res.body.errors).toEqual([expect.objectContaining({ field: 'webhook.url', message: expect.stringContaining(why) })]);
  });

  test('a deployment with webhooks off refuses any webhook', async () => {
    const res = await request(off, 'POST', '/v1/jobs', { task: 't', webhook: { url: 'https://hooks.example.com/x' } });
    expect(res.status).toBe(400);
    expect(res.body.type).toBe('urn:maestro:problem:webhooks_disabled');
  });
});
