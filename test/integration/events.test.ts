/** Live job events over Server-Sent Events, resumable with Last-Event-ID. */
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { readSse, type SseEvent } from '../support/sse';
import { startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

let model: ModelServer;
let stack: Stack;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, { env: { SSE_HEARTBEAT_MS: '200' } });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

const ids = (events: SseEvent[]) => events.map((e) => e.id);
const statusOf = (e: SseEvent | undefined) => (e ? (JSON.parse(e.data) as { status?: string }).status : undefined);

test('a client that disconnects mid-job and reconnects with Last-Event-ID gets every event exactly once, in order, through the end', async () => {
  script['stream me'] = [codeCall("print('one')", { delayMs: 300 }), codeCall("print('two')", { delayMs: 300 }), { text: 'streamed', delayMs: 300 }];
  const job = await submitJob(stack, { task: 'stream me' });
  const url = `${stack.api.url}/v1/jobs/${job.id}/events`;

  const first = await readSse(url, { stop: (events) => events.some((e) => e.event === 'step') });
  expect(first.status).toBe(200);
  expect(first.ended).toBe(false);
  const lastSeen = first.events[first.events.length - 1]?.id as string;
  const second = await readSse(url, { headers: { 'Last-Event-ID': lastSeen } });
  expect(second.ended).toBe(true);

  const ended = await waitForJobEnd(stack, job.id);
  expect(ended.status).toBe('succeeded');
  const history = await readSse(url);
  const joined = [...first.events, ...second.events];
  expect(ids(joined)).toEqual(ids(history.events));
  expect(new Set(ids(joined)).size).toBe(joined.length);
  expect(statusOf(joined[0])).toBe('queued');
  expect(statusOf(joined[joined.length - 1])).toBe('succeeded');
  // Every step of the job arrived, as the job shows it.
  const steps = joined.filter((e) => e.event === 'step').map((e) => JSON.parse(e.data) as { index: number });
  expect(steps.map((s) => s.index)).toEqual(ended.steps.map((s) => s.index));
});

test('a client that connects after the job ended gets the whole history and the stream ends', async () => {
  script['already over'] = [{ text: 'quick' }];
  const job = await submitJob(stack, { task: 'already over' });
  await waitForJobEnd(stack, job.id);
  const read = await readSse(`${stack.api.url}/v1/jobs/${job.id}/events`);
  expect(read.ended).toBe(true);
  expect(read.events.map((e) => statusOf(e) ?? e.event)).toEqual(['queued', 'running', 'step', 'succeeded']);
});

test('a quiet stream sends heartbeats', async () => {
  script['slow to answer'] = [{ text: 'eventually', delayMs: 1000 }];
  const job = await submitJob(stack, { task: 'slow to answer' });
  const read = await readSse(`${stack.api.url}/v1/jobs/${job.id}/events`);
  expect(read.comments).toContain('heartbeat');
  expect(statusOf(read.events[read.events.length - 1])).toBe('succeeded');
});

test('a malformed Last-Event-ID is a 400 and an unknown job a 404', async () => {
  script['for ids'] = [{ text: 'ok' }];
  const job = await submitJob(stack, { task: 'for ids' });
  const bad = await fetch(`${stack.api.url}/v1/jobs/${job.id}/events`, { headers: { 'Last-Event-ID': 'not-an-id' } });
  expect(bad.status).toBe(400);
  expect(bad.headers.get('content-type')).toMatch(/problem\+json/);
  const missing = await fetch(`${stack.api.url}/v1/jobs/01jzzzzzzzzzzzzzzzzzzzzzzz/events`);
  expect(missing.status).toBe(404);
});
