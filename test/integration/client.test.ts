/**
 * The TypeScript client (client/) against a real stack: run() follows a job through dropped event
 * streams without losing or repeating an event, errors arrive as typed classes, listJobs walks every
 * page, and files go in (multipart) and come out (artifacts) byte for byte.
 */
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import {
  AuthenticationError,
  BadRequestError,
  ConflictError,
  ConnectionError,
  IntegrityError,
  MaestroClient,
  NotFoundError,
  RateLimitError,
  type FetchLike,
  type JobEvent,
  type JobStatus,
  type OutputEventData,
  type Step,
} from '../../client/src';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { readSse } from '../support/sse';
import { startStack, waitForJobEnd, type Stack } from '../support/stack';

const CALLERS = ['drop', 'errors', 'capped', 'lister', 'files'] as const;
type Caller = (typeof CALLERS)[number];
const keyOf = (caller: Caller): string => `${caller}-${'k'.repeat(40)}`;

let model: ModelServer;
let stack: Stack;
/** Replies by task (or its first line, for a job with inputs: see scriptBySteps). */
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, {
    env: {
      AUTH_MODE: 'api-key',
      API_KEYS: CALLERS.map((c) => `${c}:${keyOf(c)}`).join(','),
      CALLER_MAX_ACTIVE_JOBS: '1',
    },
  });
});
afterAll(async () => {
  // Undefined when beforeAll failed part way.
  (model as ModelServer | undefined)?.releaseHanging();
  await (stack as Stack | undefined)?.close();
  await (model as ModelServer | undefined)?.close();
});

const clientFor = (caller: Caller, fetch?: FetchLike): MaestroClient =>
  new MaestroClient({ baseUrl: stack.api.url, apiKey: keyOf(caller), ...(fetch ? { fetch } : {}) });
const auth = (caller: Caller): Record<string, string> => ({ authorization: `Bearer ${keyOf(caller)}` });

/**
 * The response with its body cut off, like a dropped connection: `whole` complete events pass,
 * then half of the next one, then the stream errors.
 */
function cutAfter(res: Response, whole: number): Response {
  const source = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  let seen = '';
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await source.read();
      if (done) {
        controller.close();
        return;
      }
      seen += decoder.decode(value, { stream: true });
      // Where the event after the `whole` complete ones starts, and a cut halfway into it.
      const starts = [...seen.matchAll(/^id: /gm)].map((m) => m.index);
      const next = starts[whole];
      const end = next === undefined ? seen.length : next + 12;
      const upTo = Math.min(end, seen.length);
      if (upTo > sent) controller.enqueue(encoder.encode(seen.slice(sent, upTo)));
      sent = Math.max(sent, upTo);
      if (next !== undefined && seen.length >= end) {
        await source.cancel();
        controller.error(new TypeError('terminated: connection dropped by the test'));
      }
    },
    async cancel() {
      await source.cancel();
    },
  });
  return new Response(body, { status: res.status, headers: res.headers });
}

test('run() follows a job through two dropped event streams and a replay, seeing every event exactly once, and resolves with the ended job', async () => {
  script['drop me'] = [
    codeCall("print('one')", { delayMs: 300 }),
    codeCall('import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.15)', { delayMs: 300 }),
    { text: 'done dropping', delayMs: 300 },
  ];
  const sentLastEventIds: (string | null)[] = [];
  const flaky: FetchLike = async (url, init) => {
    if (!url.endsWith('/events')) return fetch(url, init);
    const call = sentLastEventIds.length + 1;
    const headers = new Headers(init.headers);
    sentLastEventIds.push(headers.get('last-event-id'));
    // The third connection loses its Last-Event-ID (a proxy dropping it, say): the server sends the
    // whole history again, and the client must skip what it has already seen.
    if (call === 3) headers.delete('last-event-id');
    const res = await fetch(url, { ...init, headers });
    if (call === 1) return cutAfter(res, 3);
    if (call === 2) return cutAfter(res, 2);
    return res;
  };
  const client = clientFor('drop', flaky);
  const seen: JobEvent[] = [];
  const statuses: JobStatus[] = [];
  const steps: Step[] = [];
  const outputs: OutputEventData[] = [];
  const job = await client.run('drop me', {
    onEvent: (e) => {
      seen.push(e);
    },
    onStatus: (s) => {
      statuses.push(s);
    },
    onStep: (s) => {
      steps.push(s);
    },
    onOutput: (o) => {
      outputs.push(o);
    },
  });

  expect(job.status).toBe('succeeded');
  expect(job.result).toEqual({ output: 'done dropping' });
  expect(job.steps).toHaveLength(5);
  // Three connections: the first cut after 3 events, the second (resumed after the third event) cut
  // after 2 more, the third resumed after the fifth (and stripped of it by the "proxy").
  expect(sentLastEventIds).toEqual([null, seen[2]?.id, seen[4]?.id]);

  // Every event, once, in order: the same as a client reading the history in one go.
  const history = await readSse(`${stack.api.url}/v1/jobs/${job.id}/events`, { headers: auth('drop') });
  expect(seen.map((e) => e.id)).toEqual(history.events.map((e) => e.id));
  expect(new Set(seen.map((e) => e.id)).size).toBe(seen.length);
  expect(statuses).toEqual(['queued', 'running', 'succeeded']);
  expect(steps.map((s) => s.index)).toEqual(job.steps.map((s) => s.index));
  expect(steps).toEqual(job.steps);
  const printedBy = (step: number): string => outputs.filter((o) => o.step === step).map((o) => o.text).join('');
  expect(printedBy(1)).toBe('one\n');
  expect(printedBy(3)).toBe('0\n1\n2\n');
});

test('errors are typed: 404, 409, 400, 401 and no connection', async () => {
  const client = clientFor('errors');
  const missing = await client.getJob('01jzzzzzzzzzzzzzzzzzzzzzzz').catch((e: unknown) => e);
  expect(missing).toBeInstanceOf(NotFoundError);
  expect(missing).toMatchObject({ status: 404, code: 'not_found' });

  script['same key'] = [{ text: 'once' }];
  script['other body'] = [{ text: 'never' }];
  const first = await client.createJob({ task: 'same key' }, { idempotencyKey: 'client-test-key' });
  const again = await client.createJob({ task: 'same key' }, { idempotencyKey: 'client-test-key' });
  expect(again.id).toBe(first.id);
  const conflict = await client.createJob({ task: 'other body' }, { idempotencyKey: 'client-test-key' }).catch((e: unknown) => e);
  expect(conflict).toBeInstanceOf(ConflictError);
  expect(conflict).toMatchObject({ status: 409, code: 'idempotency_key_reused' });
  await waitForJobEnd(stack, first.id, 30_000, auth('errors'));

  const invalid = await client.createJob({ task: '   ' }).catch((e: unknown) => e);
  expect(invalid).toBeInstanceOf(BadRequestError);
  expect((invalid as BadRequestError).errors.map((e) => e.field)).toContain('task');

  const stranger = new MaestroClient({ baseUrl: stack.api.url, apiKey: 'not-a-key-of-anyone-0000000000000000000000' });
  const unauthenticated = await stranger.getJob(first.id).catch((e: unknown) => e);
  expect(unauthenticated).toBeInstanceOf(AuthenticationError);
  expect(unauthenticated).toMatchObject({ status: 401 });

  const port = await new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = server.address() as { port: number };
      server.close(() => {
        resolve(free);
      });
    });
  });
  const nobody = await new MaestroClient({ baseUrl: `http://127.0.0.1:${port}` }).getJob(first.id).catch((e: unknown) => e);
  expect(nobody).toBeInstanceOf(ConnectionError);
  expect(nobody).toMatchObject({ status: 0, code: 'connection_refused' });
});

test('a caller at CALLER_MAX_ACTIVE_JOBS gets a RateLimitError with retryAfter', async () => {
  script['hang on'] = [{ hang: true }];
  const client = clientFor('capped');
  const busy = await client.createJob({ task: 'hang on' });
  const refused = await client.createJob({ task: 'hang on' }).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(RateLimitError);
  expect(refused).toMatchObject({ status: 429, code: 'too_many_active_jobs', retryAfter: 30 });
  await client.cancelJob(busy.id);
  expect((await waitForJobEnd(stack, busy.id, 30_000, auth('capped'))).status).toBe('cancelled');
});

test('listJobs walks every page, newest first', async () => {
  script['list me'] = [{ text: 'listed' }];
  let listRequests = 0;
  const client = clientFor('lister', (url, init) => {
    if (new URL(url).pathname === '/v1/jobs' && init.method === 'GET') listRequests += 1;
    return fetch(url, init);
  });
  const ids: string[] = [];
  // One at a time: the caller may have one active job.
  for (let i = 0; i < 5; i++) ids.push((await client.run({ task: 'list me', metadata: { n: String(i) } })).id);
  const listed = [];
  for await (const job of client.listJobs({ limit: 2 })) listed.push(job);
  expect(listed.map((j) => j.id)).toEqual([...ids].reverse());
  expect(listRequests).toBe(3);
  expect(listed.every((j) => !('steps' in j))).toBe(true);
  const succeeded = [];
  for await (const job of client.listJobs({ status: 'succeeded', limit: 100 })) succeeded.push(job.id);
  expect(succeeded).toHaveLength(5);
});

test('createJob with files sends a multipart job; artifacts and inputs download byte for byte, checked against their ETag', async () => {
  script['read my file'] = [
    codeCall(
      [
        'import os',
        "print(open('/input/data.csv').read(), end='')",
        "open('/output/out.bin', 'wb').write(bytes(range(256)) * 3)",
        "os.makedirs('/output/sub', exist_ok=True)",
        "open('/output/sub/notes.txt', 'w').write('hello')",
      ].join('\n'),
    ),
    { text: 'read it' },
  ];
  const csv = 'a,b\n1,2\n';
  const client = clientFor('files');
  const created = await client.createJob({ task: 'read my file' }, { files: [{ name: 'data.csv', data: csv, contentType: 'text/csv' }] });
  expect(created.inputs).toEqual([{ name: 'data.csv', size: csv.length, contentType: 'text/csv', sha256: createHash('sha256').update(csv).digest('hex') }]);
  const printed: string[] = [];
  for await (const event of client.followEvents(created.id)) if (event.type === 'output') printed.push(event.data.text);
  expect(printed.join('')).toBe(csv);

  const job = await client.getJob(created.id);
  expect(job.status).toBe('succeeded');
  expect(job.artifacts.map((a) => a.name).sort()).toEqual(['out.bin', 'sub/notes.txt']);
  const block = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const expected = Buffer.concat([block, block, block]);
  const bin = await client.downloadArtifact(job.id, 'out.bin');
  expect(Buffer.from(bin.bytes)).toEqual(expected);
  expect(bin.contentType).toBe('application/octet-stream');
  expect(bin.sha256).toBe(job.artifacts.find((a) => a.name === 'out.bin')?.sha256);
  const text = await client.downloadArtifact(job.id, 'sub/notes.txt');
  expect(Buffer.from(text.bytes).toString()).toBe('hello');
  const input = await client.downloadInput(job.id, 'data.csv');
  expect(Buffer.from(input.bytes).toString()).toBe(csv);

  // Bytes changed on the way: the ETag does not match them.
  const tampering = clientFor('files', async (url, init) => {
    const res = await fetch(url, init);
    if (!url.includes('/artifacts/')) return res;
    const bytes = new Uint8Array(await res.arrayBuffer());
    bytes[0] = (bytes[0] ?? 0) ^ 0xff;
    return new Response(bytes, { status: res.status, headers: res.headers });
  });
  await expect(tampering.downloadArtifact(job.id, 'out.bin')).rejects.toBeInstanceOf(IntegrityError);
  await expect(client.downloadArtifact(job.id, 'nope.bin')).rejects.toBeInstanceOf(NotFoundError);
});
