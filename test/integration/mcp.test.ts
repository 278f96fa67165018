/**
 * The MCP server at /mcp, through the official MCP client over Streamable HTTP against a real stack:
 * its four tools and their schemas, a job run to its result, a cancel, errors that name the field,
 * and the same authentication and ownership as /v1 (another caller's job is "No such job.").
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { request, startStack, waitForJobEnd, type AnyJson, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const ALICE_KEY = 'alice-mcp-key-0123456789abcdef0123456789';
const BOB_KEY = 'bob-mcp-key-9876543210fedcba9876543210ab';
const alice = { authorization: `Bearer ${ALICE_KEY}` };
const bob = { authorization: `Bearer ${BOB_KEY}` };

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};
const clients: Client[] = [];

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  model?.releaseHanging();
  await model?.close();
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
});

/** The official client, connected to the stack's /mcp with these headers. */
async function connect(stack: Stack, headers: Record<string, string> = {}): Promise<Client> {
  const client = new Client({ name: 'maestro-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(`${stack.api.url}/mcp`), { requestInit: { headers } });
  await client.connect(transport);
  clients.push(client);
  return client;
}

async function call(client: Client, name: string, args: Record<string, unknown>, timeoutMs = 60_000): Promise<CallToolResult & { structuredContent?: AnyJson }> {
  return (await client.callTool({ name, arguments: args }, undefined, { timeout: timeoutMs })) as CallToolResult;
}

const textOf = (result: CallToolResult): string => result.content.map((c) => (c.type === 'text' ? c.text : '')).join('\n');

describe('api-key mode', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { env: { AUTH_MODE: 'api-key', API_KEYS: `alice:${ALICE_KEY},bob:${BOB_KEY}` } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('lists exactly the four tools, each with an input schema', async () => {
    const client = await connect(stack, alice);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['cancel_job', 'get_job', 'list_jobs', 'run_job']);
    for (const tool of tools) {
      expect(tool.description).toBeTruthy();
      expect(tool.inputSchema.type).toBe('object');
      expect(tool.outputSchema?.type).toBe('object');
    }
    const run = tools.find((t) => t.name === 'run_job')?.inputSchema as AnyJson;
    expect(run.required).toEqual(['task']);
    expect(Object.keys(run.properties).sort()).toEqual(['maxSteps', 'model', 'provider', 'task', 'timeoutSeconds', 'waitSeconds']);
    expect(run.properties.waitSeconds).toMatchObject({ type: 'integer', minimum: 0, maximum: 300, default: 50 });
    expect(run.properties.provider.enum).toEqual(['openai', 'anthropic']);
    expect(run.additionalProperties).toBe(false);
    const get = tools.find((t) => t.name === 'get_job')?.inputSchema as AnyJson;
    expect(get.required).toEqual(['id']);
    const list = tools.find((t) => t.name === 'list_jobs')?.inputSchema as AnyJson;
    expect(Object.keys(list.properties).sort()).toEqual(['cursor', 'limit', 'status']);
  });

  test('run_job runs a job to its result; get_job and list_jobs find it, and so does the REST API', async () => {
    const task = 'mcp: add the integers from 1 to 100';
    script[task] = [codeCall('print(sum(range(101)))'), { text: 'The sum is 5050.' }];
    const client = await connect(stack, alice);
    const run = await call(client, 'run_job', { task, waitSeconds: 45 });
    expect(run.isError).toBeFalsy();
    const job = run.structuredContent;
    expect(job).toMatchObject({ status: 'succeeded', stopReason: 'completed', result: { output: 'The sum is 5050.' }, error: null, task, path: `/v1/jobs/${job.id}` });
    expect(job.usage.inputTokens).toBeGreaterThan(0);
    expect(job.steps.map((s: AnyJson) => s.type)).toEqual(['model', 'tool', 'model']);
    expect(job.steps[1]).toMatchObject({ name: 'code_executor', isError: false });
    expect(job.steps[1].output).toContain('5050');
    expect(job.note).toBeUndefined();
    // The text content is the same job, as JSON, for clients that read only text.
    expect(JSON.parse(textOf(run))).toEqual(job);

    const got = await call(client, 'get_job', { id: job.id });
    expect(got.isError).toBeFalsy();
    expect(got.structuredContent).toMatchObject({ id: job.id, status: 'succeeded', result: { output: 'The sum is 5050.' }, stepCount: 3 });

    const listed = await call(client, 'list_jobs', { status: 'succeeded', limit: 5 });
    expect(listed.isError).toBeFalsy();
    expect(listed.structuredContent.jobs.map((j: AnyJson) => j.id)).toContain(job.id);
    expect(listed.structuredContent).toHaveProperty('nextCursor');

    const rest = await request(stack, 'GET', `/v1/jobs/${job.id}`, undefined, alice);
    expect(rest.status).toBe(200);
    expect(rest.body.result).toEqual({ output: 'The sum is 5050.' });
    // Neither the task nor a key reaches the logs.
    const logs = stack.logs.join('');
    expect(logs).toContain('"event":"mcp.run_job"');
    expect(logs).not.toContain('add the integers');
    expect(logs).not.toContain(ALICE_KEY);
  });

  test('run_job returns a job still running when its wait ends, and cancel_job cancels it', async () => {
    const task = 'mcp: hang until cancelled';
    script[task] = [{ hang: true }];
    const client = await connect(stack, alice);
    const before = model.requests.length;
    // A client that asks for progress hears the job's id and status while run_job waits.
    const progress: { progress: number; message?: string }[] = [];
    const run = (await client.callTool({ name: 'run_job', arguments: { task, waitSeconds: 1 } }, undefined, { onprogress: (p) => progress.push(p) })) as CallToolResult & {
      structuredContent: AnyJson;
    };
    expect(run.isError).toBeFalsy();
    const id = run.structuredContent.id as string;
    expect(progress[0]?.message).toMatch(new RegExp(`^Job ${id} is (queued|running)\\.$`));
    expect(['queued', 'running']).toContain(run.structuredContent.status);
    expect(run.structuredContent.note).toMatch(/get_job/);
    // Running: the model has the request and will not answer.
    await waitFor(async () => model.requests.slice(before).some((r) => r.task === task) || undefined, { timeoutMs: 20_000, what: 'the model request' });

    const cancelled = await call(client, 'cancel_job', { id });
    expect(cancelled.isError).toBeFalsy();
    expect(cancelled.structuredContent.id).toBe(id);
    const ended = await waitForJobEnd(stack, id, 20_000, alice);
    expect(ended.status).toBe('cancelled');
    const got = await call(client, 'get_job', { id });
    expect(got.structuredContent).toMatchObject({ status: 'cancelled', stopReason: 'cancelled' });
    // A job that ended is not cancelled again: a clear conflict, not a crash.
    script['mcp: quick'] = [{ text: 'ok' }];
    const done = await call(client, 'run_job', { task: 'mcp: quick', waitSeconds: 30 });
    expect(done.structuredContent.status).toBe('succeeded');
    const again = await call(client, 'cancel_job', { id: done.structuredContent.id });
    expect(again.isError).toBe(true);
    expect(textOf(again)).toMatch(/job_finished: The job has already ended \(succeeded\)/);
  });

  test('without a valid key the server refuses with 401, before any tool', async () => {
    const refusals: Record<string, string>[] = [{}, { authorization: `Bearer ${ALICE_KEY}x` }, { authorization: ALICE_KEY }];
    for (const headers of refusals) {
      await expect(connect(stack, headers)).rejects.toMatchObject({ code: 401 });
    }
    // The same refusal as /v1: a 401 problem document, whatever the message.
    const res = await fetch(`${stack.api.url}/mcp`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    expect(res.headers.get('www-authenticate')).toBe('Bearer');
  });

  test("another caller's job is not found through get_job and cancel_job, nor listed", async () => {
    const task = 'mcp: alice only';
    script[task] = [{ hang: true }];
    const mine = await connect(stack, alice);
    const run = await call(mine, 'run_job', { task, waitSeconds: 0 });
    const id = run.structuredContent.id as string;

    const theirs = await connect(stack, bob);
    const missing = '0000000000zzzzzzzzzzzzzzzz';
    const notFound = textOf(await call(theirs, 'get_job', { id: missing }));
    expect(notFound).toBe('not_found: No such job.');
    for (const tool of ['get_job', 'cancel_job']) {
      const res = await call(theirs, tool, { id });
      expect(res.isError).toBe(true);
      // Word for word what a job that does not exist gets: nothing says this one does.
      expect(textOf(res)).toBe(notFound);
    }
    const listed = await call(theirs, 'list_jobs', {});
    expect(listed.structuredContent.jobs.map((j: AnyJson) => j.id)).not.toContain(id);
    // Bob's cancel did nothing: Alice's job is still going, and Alice can cancel it.
    expect(['queued', 'running']).toContain((await call(mine, 'get_job', { id })).structuredContent.status);
    expect((await call(mine, 'cancel_job', { id })).isError).toBeFalsy();
    expect((await waitForJobEnd(stack, id, 20_000, alice)).status).toBe('cancelled');
  });

  test('bad arguments are tool errors that name the field; nothing crashes', async () => {
    const client = await connect(stack, alice);
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['run_job', {}, /task/],
      ['run_job', { task: '   ' }, /must not be empty at task|task: must not be empty/],
      ['run_job', { task: 'x', waitSeconds: 301 }, /waitSeconds/],
      ['run_job', { task: 'x', waitSeconds: -1 }, /waitSeconds/],
      ['run_job', { task: 'x', maxSteps: 0 }, /maxSteps/],
      ['run_job', { task: 'x', timeoutSeconds: 10 ** 9 }, /timeoutSeconds/],
      ['run_job', { task: 'x', provider: 'mistral' }, /provider/],
      ['run_job', { task: 'x', model: 'bad model!' }, /model/],
      ['run_job', { task: 'x', wait_seconds: 5 }, /wait_seconds/],
      ['run_job', { task: 7 }, /task/],
      ['get_job', { id: 'not-a-job-id' }, /id/],
      ['get_job', {}, /id/],
      ['cancel_job', { id: '../etc/passwd' }, /id/],
      ['list_jobs', { limit: 0 }, /limit/],
      ['list_jobs', { status: 'done' }, /status/],
      ['list_jobs', { cursor: 'nope' }, /cursor/],
      ['no_such_tool', {}, /no_such_tool/],
    ];
    for (const [tool, args, message] of cases) {
      const res = await call(client, tool, args);
      expect([tool, args, res.isError]).toEqual([tool, args, true]);
      expect(textOf(res)).toMatch(message);
    }
    // The server is still there, and made no job of any of it.
    const listed = await call(client, 'list_jobs', { limit: 100 });
    expect(listed.structuredContent.jobs.map((j: AnyJson) => j.task)).not.toContain('x');
  });

  test('GET and DELETE are 405: the server keeps no sessions', async () => {
    for (const method of ['GET', 'DELETE']) {
      const res = await request(stack, method, '/mcp', undefined, { ...alice, accept: 'text/event-stream' });
      expect([method, res.status]).toEqual([method, 405]);
      expect(res.headers.get('allow')).toBe('POST');
    }
  });
});

describe('proxy mode and the rate limit', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1/8,::1', RATE_LIMIT_PER_MINUTE: '8' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test("the proxy's user header is the caller; without it, 401; every MCP request counts against the limit", async () => {
    await expect(connect(stack)).rejects.toMatchObject({ code: 401 });
    const ann = await connect(stack, { 'x-forwarded-user': 'ann@example.com' });
    const listed = await call(ann, 'list_jobs', {});
    expect(listed.structuredContent).toEqual({ jobs: [], nextCursor: null });
    // Keep calling: the limit (8 a minute, counted per HTTP request) stops the caller with a 429,
    // within 20 calls even if a minute ends among them.
    let refused: unknown;
    for (let i = 0; i < 20 && refused === undefined; i++) {
      await ann.listTools().catch((err: unknown) => {
        refused = err;
      });
    }
    expect(refused).toMatchObject({ code: 429 });
    expect(String(refused)).toMatch(/Too many requests/);
  });
});
