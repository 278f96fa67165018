/**
 * Guessing keys: failed authentications are throttled per client address across the deployment,
 * and the caller id of a bare key says nothing about the key. The real API on real Redis.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import pino from 'pino';
import { startApi, type RunningApi } from '../../services/api/src/api-service';
import { httpCall, type HttpAnswer as Reply } from '../support/http';
import { scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { startStack, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const ALICE_KEY = `alice-${'a1'.repeat(20)}`;
const BARE_KEY = 'b2'.repeat(24);
const API_KEYS = `alice:${ALICE_KEY},${BARE_KEY}`;

let model: ModelServer;
beforeAll(async () => {
  model = await startModelServer(scriptBySteps({}));
});
afterAll(async () => {
  await model?.close();
});

/**
 * One request from a chosen loopback source address (the API listens on 127.0.0.1; Linux accepts any
 * 127.0.0.0/8 source), as a client on another machine would send it.
 */
function call(api: Pick<RunningApi, 'port'>, opts: { path?: string; key?: string; from: string; method?: string; body?: unknown }): Promise<Reply> {
  const headers: Record<string, string> = opts.key === undefined ? {} : { authorization: `Bearer ${opts.key}` };
  return httpCall(api.port, { method: opts.method, path: opts.path ?? '/v1/jobs', headers, body: opts.body, localAddress: opts.from });
}

const guess = (): string => randomBytes(20).toString('hex');
interface LogLine {
  event: string;
  level: number;
  path?: string;
  jobId?: string;
  caller?: string;
}
const logEvents = (lines: string[], event: string): LogLine[] =>
  lines
    .flatMap((l) => l.split('\n'))
    .filter((l) => l.includes(`"${event}"`))
    .map((l) => JSON.parse(l) as LogLine)
    .filter((l) => l.event === event);

describe('with the default limit', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'api-key', API_KEYS } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('300 wrong keys from one address meet 429s with Retry-After, while a right key from another address still gets in', async () => {
    const limit = stack.config.AUTH_FAILURE_LIMIT;
    expect(limit).toBe(20);
    const guesses: string[] = [];
    const replies: Reply[] = [];
    for (let i = 0; i < 300; i++) {
      const key = guess();
      guesses.push(key);
      replies.push(await call(stack.api, { key, from: '127.0.0.1' }));
      if (i % 50 === 0) expect((await call(stack.api, { key: ALICE_KEY, from: '127.0.0.2' })).status).toBe(200);
    }
    expect(replies.slice(0, limit).map((r) => r.status)).toEqual(Array(limit).fill(401));
    const throttled = replies.slice(limit);
    expect(throttled.map((r) => r.status)).toEqual(Array(300 - limit).fill(429));
    for (const r of throttled) {
      expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(r.body.type).toBe('urn:maestro:problem:too_many_auth_failures');
      const retryAfter = Number(r.headers['retry-after']);
      expect(Number.isInteger(retryAfter)).toBe(true);
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(stack.config.AUTH_FAILURE_WINDOW_SECONDS);
    }

    // The blocked address gets no answer about any key, its right one included.
    const right = await call(stack.api, { key: ALICE_KEY, from: '127.0.0.1' });
    expect(right.status).toBe(429);
    expect(Number(right.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await call(stack.api, { from: '127.0.0.1' })).status).toBe(429);
    expect((await call(stack.api, { key: BARE_KEY, from: '127.0.0.2' })).status).toBe(200);

    // Operators see one line for the address, and never a key.
    const lines = logEvents(stack.logs, 'auth.throttled');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, address: '127.0.0.1', limit, windowSeconds: 300 });
    const log = stack.logs.join('');
    for (const key of [ALICE_KEY, BARE_KEY, ...guesses]) expect(log).not.toContain(key);
  });

  test('a burst of parallel guesses gets exactly AUTH_FAILURE_LIMIT answers about its keys', async () => {
    const replies = await Promise.all(Array.from({ length: 100 }, () => call(stack.api, { key: guess(), from: '127.0.0.3' })));
    const statuses = replies.map((r) => r.status);
    expect(statuses.filter((s) => s === 401)).toHaveLength(stack.config.AUTH_FAILURE_LIMIT);
    expect(statuses.filter((s) => s === 429)).toHaveLength(100 - stack.config.AUTH_FAILURE_LIMIT);
  });

  test("the count is the deployment's: a second API replica on the same Redis refuses the blocked address too", async () => {
    for (let i = 0; i < stack.config.AUTH_FAILURE_LIMIT; i++) {
      expect((await call(stack.api, { key: guess(), from: '127.0.0.4' })).status).toBe(401);
    }
    const replica = await startApi(stack.config, { logger: pino({ level: 'silent' }) });
    try {
      expect((await call(replica, { key: ALICE_KEY, from: '127.0.0.4' })).status).toBe(429);
      expect((await call(replica, { key: ALICE_KEY, from: '127.0.0.5' })).status).toBe(200);
    } finally {
      await replica.close();
    }
  });
});

test('once the window has passed, a blocked address may authenticate again', async () => {
  const stack = await startStack(model, {
    workers: 0,
    env: { AUTH_MODE: 'api-key', API_KEYS, AUTH_FAILURE_LIMIT: '2', AUTH_FAILURE_WINDOW_SECONDS: '1' },
  });
  try {
    expect((await call(stack.api, { key: guess(), from: '127.0.0.1' })).status).toBe(401);
    expect((await call(stack.api, { key: guess(), from: '127.0.0.1' })).status).toBe(401);
    const blocked = await call(stack.api, { key: ALICE_KEY, from: '127.0.0.1' });
    expect(blocked.status).toBe(429);
    expect(blocked.headers['retry-after']).toBe('1');
    await waitFor(async () => (await call(stack.api, { key: ALICE_KEY, from: '127.0.0.1' })).status === 200, {
      timeoutMs: 5000,
      what: 'the window to end',
    });
  } finally {
    await stack.close();
  }
});

test('in proxy mode, requests that bypass the proxy are throttled by address too', async () => {
  const stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'proxy', TRUSTED_PROXIES: '192.0.2.10' } });
  try {
    const statuses: number[] = [];
    for (let i = 0; i <= stack.config.AUTH_FAILURE_LIMIT; i++) {
      const res = await fetch(`${stack.api.url}/v1/jobs`, { headers: { 'x-forwarded-user': 'ann@example.com' } });
      statuses.push(res.status);
    }
    expect(statuses.slice(0, -1).every((s) => s === 401)).toBe(true);
    expect(statuses.at(-1)).toBe(429);
  } finally {
    await stack.close();
  }
});

describe('caller ids of bare keys', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'api-key', API_KEYS } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  /** An API on the stack's Redis and prefix, as another replica or a restart would be, with its own log. */
  async function anotherApi(): Promise<{ api: RunningApi; logs: string[] }> {
    const logs: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logs.push(chunk.toString('utf8'));
        done();
      },
    });
    return { api: await startApi(stack.config, { logger: pino({ level: 'info' }, sink) }), logs };
  }
  /** The caller the last request for the job was logged under. */
  const callerIn = (logs: string[], jobId: string): string | undefined =>
    logEvents(logs, 'http.request').filter((l) => l.path?.endsWith(`/${jobId}`)).at(-1)?.caller;

  test('a bare key is logged under an id that is not a hash of the key, and keeps its id and jobs across replicas and restarts', async () => {
    const created = await call(stack.api, { method: 'POST', key: BARE_KEY, from: '127.0.0.1', body: { task: 'mine' } });
    expect(created.status).toBe(202);
    const jobId = created.body.id as string;
    const caller = logEvents(stack.logs, 'job.created').find((l) => l.jobId === jobId)?.caller;
    expect(caller).toMatch(/^key-[0-9a-f]{12}$/);
    expect(caller).not.toBe(`key-${createHash('sha256').update(BARE_KEY).digest('hex').slice(0, 12)}`);
    expect(stack.logs.join('')).not.toContain(BARE_KEY);

    // A second replica, running alongside the first.
    const replica = await anotherApi();
    try {
      expect((await call(replica.api, { path: `/v1/jobs/${jobId}`, key: BARE_KEY, from: '127.0.0.1' })).status).toBe(200);
      await waitFor(() => callerIn(replica.logs, jobId), { what: 'the access log line' });
      expect(callerIn(replica.logs, jobId)).toBe(caller);
    } finally {
      await replica.api.close();
    }

    // A restart: every API of the deployment stopped, then a new one started.
    await stack.api.close();
    const restarted = await anotherApi();
    try {
      const list = await call(restarted.api, { key: BARE_KEY, from: '127.0.0.1' });
      expect(list.status).toBe(200);
      expect(list.body.jobs.map((j: { id: string }) => j.id)).toContain(jobId);
      expect((await call(restarted.api, { path: `/v1/jobs/${jobId}`, key: ALICE_KEY, from: '127.0.0.1' })).status).toBe(404);
      expect((await call(restarted.api, { path: `/v1/jobs/${jobId}`, key: BARE_KEY, from: '127.0.0.1' })).status).toBe(200);
      await waitFor(() => callerIn(restarted.logs, jobId), { what: 'the access log line' });
      expect(callerIn(restarted.logs, jobId)).toBe(caller);
    } finally {
      await restarted.api.close();
    }
  });
});
