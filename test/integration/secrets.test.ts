/**
 * Provider keys live only in the worker's memory (SECURITY.md, "Provider keys are stored nowhere").
 * With marker keys in the stack's environment, jobs are run on both providers that try hard to
 * surface them: code in the sandbox hunting its environment and /proc, a provider whose 401, 500
 * and 400 answers echo the key the way OpenAI's 401 does, and API calls that carry the key in
 * credential headers. Then every place a key could end up is searched for the whole key, its last
 * 12 characters and every 8-character piece of it: all of Redis, every log line, every API
 * response, the sandbox's output and artifacts, and the sandbox containers' configuration.
 */
import { randomBytes } from 'node:crypto';
import { format } from 'node:util';
import type { JobView, ToolStep } from '../../services/shared/src/job-schema';
import { containersWith, docker } from '../support/docker';
import { startModelServer, type ModelServer, type ScriptedReply, type ScriptedRequest } from '../support/model-server';
import { request, startStack, waitForJobEnd, getJob, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const OPENAI_KEY = `sk-MARKER-openai-${randomBytes(16).toString('hex')}`;
const ANTHROPIC_KEY = `sk-ant-MARKER-${randomBytes(16).toString('hex')}`;
const KEYS = { openai: OPENAI_KEY, anthropic: ANTHROPIC_KEY } as const;
const PROVIDERS = ['openai', 'anthropic'] as const;
type Provider = (typeof PROVIDERS)[number];

/**
 * Python that looks for keys everywhere a sandboxed process could: its environment, every
 * process's environment and command line, and leaves a copy as an artifact. It names no key (the
 * code itself is kept in the job's steps, so it must not contain what the scan looks for).
 */
const HUNT_CODE = [
  'import glob, os',
  "print('ENV', sorted(os.environ.items()))",
  "for path in sorted(glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline')):",
  '    try:',
  "        data = open(path, 'rb').read().decode('latin1')",
  '    except Exception as e:',
  "        data = 'unreadable: ' + type(e).__name__",
  '    print(path, repr(data))',
  "print('SUSPECTS', [k for k, v in os.environ.items() if 'sk-' in v or 'KEY' in k.upper()])",
  "with open('/output/environment.txt', 'w') as f:",
  '    f.write(repr(dict(os.environ)))',
  "print('HUNT-DONE')",
].join('\n');

/** The key as the provider received it: OpenAI's in `Authorization`, Anthropic's in `x-api-key`. */
function keyReceived(req: ScriptedRequest): string {
  const raw = req.provider === 'openai' ? req.headers.authorization : req.headers['x-api-key'];
  return String(raw ?? '').replace(/^Bearer /, '');
}

/** An error text that quotes the key whole and masked, like OpenAI's 401 ("sk-proj-****…abcd"). */
function echoing(key: string): string {
  return (
    `Incorrect API key provided: ${key}. You can find your API key at https://platform.openai.com/account/api-keys. ` +
    `(also seen as ${key.slice(0, 8)}${'*'.repeat(24)}${key.slice(-12)})`
  );
}

function reply(req: ScriptedRequest): ScriptedReply {
  const [kind] = req.task.split(' ');
  switch (kind) {
    case 'hunt':
      return req.step === 0 ? { toolCalls: [{ name: 'code_executor', arguments: { code: HUNT_CODE } }] } : { text: 'No keys here.' };
    case 'refused':
      return { status: 401, errorMessage: echoing(keyReceived(req)) };
    case 'broken':
      return { status: 500, errorMessage: echoing(keyReceived(req)) };
    case 'rejected':
      return { status: 400, errorMessage: echoing(keyReceived(req)) };
    default:
      return { text: 'ok' };
  }
}

// ---- where keys could end up ------------------------------------------------------------

interface Haystack {
  where: string;
  text: string;
}

/** Every substring of `s` of length `n`. */
const pieces = (s: string, n: number): string[] => Array.from({ length: s.length - n + 1 }, (_, i) => s.slice(i, i + n));

/** What of any key `text` contains (the whole key, its last 12 characters, any 8-character piece), with context. */
function leaksIn(haystack: Haystack): string[] {
  const found: string[] = [];
  for (const [provider, key] of Object.entries(KEYS)) {
    const hit = [key, key.slice(-12), ...pieces(key, 8)].find((needle) => haystack.text.includes(needle));
    if (hit === undefined) continue;
    const at = haystack.text.indexOf(hit);
    const context = haystack.text.slice(Math.max(0, at - 80), at + hit.length + 80);
    const what = hit === key ? 'the whole key' : hit === key.slice(-12) ? 'its last 12 characters' : `the piece ${JSON.stringify(hit)}`;
    found.push(`${haystack.where}: ${provider} key, ${what}, in …${JSON.stringify(context)}…`);
  }
  return found;
}

const leaksInAll = (haystacks: Haystack[]): string[] => haystacks.flatMap(leaksIn);

const READ_COMMAND: Record<string, string[]> = {
  string: ['GET'],
  hash: ['HGETALL'],
  list: ['LRANGE', '0', '-1'],
  set: ['SMEMBERS'],
  zset: ['ZRANGE', '0', '-1', 'WITHSCORES'],
  stream: ['XRANGE', '-', '+'],
};

function flatten(value: unknown): string {
  if (Buffer.isBuffer(value)) return value.toString('latin1');
  if (Array.isArray(value)) return value.map(flatten).join('\n');
  return value === null || value === undefined ? '' : String(value);
}

/**
 * Every key in Redis with its whole value, BullMQ's included. The whole database rather than only
 * the stack's prefix: a key written without the prefix would be a finding too, and the markers are
 * random, so other tests' keys cannot match.
 */
async function snapshotRedis(stack: Stack, label: string): Promise<Haystack[]> {
  const out: Haystack[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await stack.redis.scan(cursor, 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      const type = await stack.redis.type(key);
      const command = READ_COMMAND[type];
      if (command === undefined) {
        if (type !== 'none') out.push({ where: `redis (${label}) ${key}`, text: `${key} (unreadable type ${type})` });
        continue;
      }
      const [name, ...args] = command as [string, ...string[]];
      // A key can expire or be deleted between SCAN and the read; what is gone cannot leak.
      const value: unknown = await stack.redis.callBuffer(name, key, ...args).catch(() => null);
      out.push({ where: `redis (${label}) ${type} ${key}`, text: `${key}\n${flatten(value)}` });
    }
  } while (cursor !== '0');
  return out;
}

/** Reads an SSE (or any) response for at most `ms`: an event stream of a finished job may stay open. */
async function readFor(res: Response, ms: number): Promise<string> {
  const reader = res.body?.getReader();
  if (!reader) return '';
  const chunks: Uint8Array[] = [];
  const timer = setTimeout(() => void reader.cancel().catch(() => undefined), ms);
  try {
    for (;;) {
      const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
      if (done || value === undefined) break;
      chunks.push(value);
    }
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// ---- the run ----------------------------------------------------------------------------

let model: ModelServer;
let stack: Stack;
const jobs = new Map<string, JobView>();
const responses: Haystack[] = [];
const redisSnapshots: Haystack[] = [];
const consoleLines: string[] = [];
const sandboxConfigs: Haystack[] = [];

/** A call to the API whose answer (status, headers, body) is kept for the final scan. */
async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const res = await request(stack, method, path, body, headers);
  const text = typeof res.body === 'string' ? res.body : JSON.stringify(res.body);
  responses.push({ where: `response to ${method} ${path}`, text: `${res.status}\n${JSON.stringify([...res.headers])}\n${text}` });
  return res as { status: number; body: unknown };
}

async function submit(task: string, provider: Provider, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Promise<string> {
  const res = await call('POST', '/v1/jobs', { task, provider, ...extra }, headers);
  if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}: ${JSON.stringify(res.body)}`);
  return (res.body as JobView).id;
}

async function runToEnd(name: string, id: string): Promise<void> {
  jobs.set(name, await waitForJobEnd(stack, id, 45_000));
}

/** Credentials a careless client might send; in AUTH_MODE=none the API must ignore them and log none. */
const CREDENTIAL_HEADERS = {
  authorization: `Bearer ${OPENAI_KEY}`,
  'x-api-key': ANTHROPIC_KEY,
  cookie: `session=${OPENAI_KEY}`,
  'proxy-authorization': `Bearer ${ANTHROPIC_KEY}`,
};

beforeAll(async () => {
  // Whatever the SDKs or anything else in this process prints goes into the scan, not the terminal.
  for (const method of ['log', 'info', 'warn', 'error', 'debug'] as const) {
    jest.spyOn(console, method).mockImplementation((...args: unknown[]) => {
      consoleLines.push(format(...args));
    });
  }
  model = await startModelServer(reply);
  stack = await startStack(model, {
    env: { OPENAI_API_KEY: OPENAI_KEY, ANTHROPIC_API_KEY: ANTHROPIC_KEY, LOG_LEVEL: 'debug', WORKER_CONCURRENCY: '4' },
  });

  const scenarios: Promise<void>[] = [];
  for (const provider of PROVIDERS) {
    scenarios.push(
      submit(`hunt ${provider}`, provider, { tools: ['code_executor'] }).then((id) => runToEnd(`hunt ${provider}`, id)),
      submit(`refused ${provider}`, provider).then((id) => runToEnd(`refused ${provider}`, id)),
      submit(`rejected ${provider}`, provider).then((id) => runToEnd(`rejected ${provider}`, id)),
      submit(`broken ${provider}`, provider).then(async (id) => {
        // Between attempts the failure is recorded (BullMQ's failedReason, the job's retry event):
        // that is when a quoted key would sit in Redis, so look then as well as at the end.
        await waitFor(async () => {
          const job = await getJob(stack, id);
          return job.attempts >= 1 && job.status === 'queued';
        }, { timeoutMs: 20_000, what: `job "broken ${provider}" to wait for its retry` });
        redisSnapshots.push(...(await snapshotRedis(stack, `while "broken ${provider}" waits to retry`)));
        await runToEnd(`broken ${provider}`, id);
      }),
    );
  }
  scenarios.push(
    submit('plain with credentials', 'openai', {}, CREDENTIAL_HEADERS).then((id) => runToEnd('plain with credentials', id)),
    call('GET', '/v1/jobs', undefined, CREDENTIAL_HEADERS).then(() => undefined),
    call('GET', '/v1/jobs/0000000000zzzzzzzzzzzzzzzz', undefined, CREDENTIAL_HEADERS).then(() => undefined),
    call('POST', '/v1/jobs', { task: 42 }, CREDENTIAL_HEADERS).then(() => undefined),
  );
  await Promise.all(scenarios);

  // Everything a user can read back about the jobs, after they ended.
  for (const job of jobs.values()) {
    await call('GET', `/v1/jobs/${job.id}`);
    await call('POST', `/v1/jobs/${job.id}/cancel`);
    for (const artifact of job.artifacts) {
      const res = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/${encodeURIComponent(artifact.name)}`);
      responses.push({ where: `artifact ${artifact.name} of ${job.id}`, text: `${res.status}\n${await res.text()}` });
    }
    // The SSE route may not exist yet (404) or may keep a finished job's stream open: read briefly.
    const events = await fetch(`${stack.api.url}/v1/jobs/${job.id}/events`, { headers: { accept: 'text/event-stream' } });
    responses.push({ where: `events of ${job.id}`, text: `${events.status}\n${await readFor(events, 1500)}` });
  }
  let cursor: string | null = null;
  do {
    const page = await call('GET', `/v1/jobs?limit=100${cursor ? `&cursor=${cursor}` : ''}`);
    cursor = (page.body as { nextCursor: string | null }).nextCursor;
  } while (cursor !== null);

  redisSnapshots.push(...(await snapshotRedis(stack, 'after every job ended')));

  // The pool keeps a pre-started sandbox made exactly like the ones the jobs ran in.
  const workerId = stack.workers[0]?.workerId as string;
  const containers = await waitFor(
    async () => {
      const found = await containersWith({ 'maestro.worker': workerId });
      return found.length > 0 ? found : undefined;
    },
    { timeoutMs: 20_000, what: 'a pooled sandbox container' },
  );
  for (const info of containers) {
    const inspected = await docker.getContainer(info.Id).inspect().catch(() => null);
    if (inspected) sandboxConfigs.push({ where: `sandbox container ${info.Id.slice(0, 12)}`, text: JSON.stringify(inspected) });
  }
}, 120_000);

afterAll(async () => {
  await stack?.close();
  await model?.close();
  jest.restoreAllMocks();
});

const toolSteps = (job: JobView | undefined): ToolStep[] => (job?.steps ?? []).filter((s): s is ToolStep => s.type === 'tool');

test('the providers received the marker keys, so their absence everywhere else means something', () => {
  const sent = model.requests.map((r) => `${r.provider} ${keyReceived(r)}`);
  expect(sent).toContain(`openai ${OPENAI_KEY}`);
  expect(sent).toContain(`anthropic ${ANTHROPIC_KEY}`);
});

describe.each(PROVIDERS)('with %s', (provider) => {
  test('code in the sandbox hunting for provider keys in its environment and /proc finds none', () => {
    const job = jobs.get(`hunt ${provider}`);
    expect(job?.status).toBe('succeeded');
    const [step] = toolSteps(job);
    // The hunt really ran and really printed the environment and /proc.
    expect(step?.output).toContain('HUNT-DONE');
    expect(step?.output).toContain('PATH');
    expect(step?.output).toMatch(/\/proc\/\d+\/environ/);
    expect(step?.output).toContain('SUSPECTS []');
    expect(job?.artifacts.map((a) => a.name)).toContain('environment.txt');
    expect(leaksIn({ where: `hunt ${provider}`, text: JSON.stringify(job) })).toEqual([]);
  });

  test('a 401 whose message echoes the key fails the job with provider_auth, quoting none of the key', () => {
    const job = jobs.get(`refused ${provider}`);
    expect(job).toMatchObject({ status: 'failed', stopReason: 'error', error: { code: 'provider_auth' } });
    expect(leaksIn({ where: `refused ${provider}`, text: JSON.stringify(job) })).toEqual([]);
  });

  test('a 500 on every attempt whose message echoes the key fails the job after its retries, quoting none of the key', () => {
    const job = jobs.get(`broken ${provider}`);
    expect(job).toMatchObject({ status: 'failed', stopReason: 'error', error: { code: 'provider_unavailable' }, attempts: stack.config.JOB_ATTEMPTS });
    expect(leaksIn({ where: `broken ${provider}`, text: JSON.stringify(job) })).toEqual([]);
  });

  test('a 400 whose message echoes the key fails the job with provider_rejected, quoting none of the key', () => {
    const job = jobs.get(`rejected ${provider}`);
    expect(job).toMatchObject({ status: 'failed', stopReason: 'error', error: { code: 'provider_rejected' } });
    expect(leaksIn({ where: `rejected ${provider}`, text: JSON.stringify(job) })).toEqual([]);
  });
});

test('credentials sent to the API are ignored in auth mode none and recorded nowhere', () => {
  expect(jobs.get('plain with credentials')).toMatchObject({ status: 'succeeded', result: { output: 'ok' } });
  const answered = responses.filter((r) => r.where.startsWith('response to') && r.text.startsWith('5'));
  expect(answered).toEqual([]);
  // The API's own log lines (request logging included): the worker's are scanned in the test below.
  const apiLogs = stack.logs.filter((line) => line.includes('"service":"api"'));
  expect(apiLogs.length).toBeGreaterThan(0);
  expect(leaksInAll(apiLogs.map((text, i) => ({ where: `api log line ${i}`, text })))).toEqual([]);
});

test('no key, nor any 8-character piece of one, is anywhere in Redis, during a retry or after the jobs ended', () => {
  expect(redisSnapshots.length).toBeGreaterThan(0);
  expect(leaksInAll(redisSnapshots)).toEqual([]);
});

test('no key is in any log line the stack wrote, nor in anything printed to the console', () => {
  expect(stack.logs.length).toBeGreaterThan(0);
  expect(leaksInAll(stack.logs.map((text, i) => ({ where: `log line ${i}`, text })))).toEqual([]);
  expect(leaksInAll(consoleLines.map((text, i) => ({ where: `console line ${i}`, text })))).toEqual([]);
});

test('no key is in any API response: jobs, errors, lists, events or artifacts', () => {
  expect(responses.length).toBeGreaterThan(20);
  expect(leaksInAll(responses)).toEqual([]);
});

test('no sandbox container carries a key in its environment, labels or command', () => {
  expect(sandboxConfigs.length).toBeGreaterThan(0);
  expect(leaksInAll(sandboxConfigs)).toEqual([]);
});
