/**
 * With OTEL_EXPORTER_OTLP_ENDPOINT set, a job is one trace: the API's span for its POST is the root,
 * and the worker (a process of its own, so the context really crosses the queue) adds a span per
 * attempt, per model call and per sandbox execution beneath it. No span carries the task, the code,
 * the output or a key. Without the variable, no OpenTelemetry SDK or exporter is loaded at all.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { codeCall, startModelServer, type ModelServer } from '../support/model-server';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../support/otlp-receiver';
import { request, startStack, TEST_OPENAI_KEY, waitForJobEnd, type Stack } from '../support/stack';
import { freePort } from '../support/ports';
import { waitFor } from '../support/wait-for';
import { spawnServiceProcess, type WorkerProcess } from '../support/worker-process';

const TASK = 'TASK-TEXT-7f3a: add the numbers';
const CODE = "print('OUTPUT-TEXT-' + str(40 + 2))  # CODE-TEXT-91c2";
const ANSWER = 'ANSWER-TEXT-5d1e';
const KEY = 'tracing-test-key-0000000000000000000000000';

let model: ModelServer;
let receiver: OtlpReceiver;
let stack: Stack | undefined;
let api: WorkerProcess | undefined;
let worker: WorkerProcess | undefined;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  model = await startModelServer((req) => (req.step === 0 ? codeCall(CODE) : { text: ANSWER }));
});

afterAll(async () => {
  for (const service of [api, worker]) service?.child.kill('SIGTERM');
  await Promise.all([api?.exited, worker?.exited]);
  await stack?.close();
  await model?.close();
  await receiver?.close();
});

function childrenOf(spans: ReceivedSpan[], parent: ReceivedSpan): ReceivedSpan[] {
  return spans.filter((s) => s.traceId === parent.traceId && s.parentSpanId === parent.spanId);
}

test('a job is one trace: the POST is its root, the worker’s attempt, model calls and executions descend from it', async () => {
  // Both services in processes of their own, as deployed: the test process holds neither's tracing.
  stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'api-key', API_KEYS: `dana:${KEY}` } });
  const port = await freePort();
  const env = { ...stack.env, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, PORT: String(port) };
  api = spawnServiceProcess('api', env);
  worker = spawnServiceProcess('worker', env);
  const traced = { api: { url: `http://127.0.0.1:${port}` } };
  await waitFor(async () => (await fetch(`${traced.api.url}/readyz`).catch(() => undefined))?.status === 200, {
    timeoutMs: 30_000,
    what: 'the API process to be ready',
  });
  const created = await request(traced, 'POST', '/v1/jobs', { task: TASK }, { authorization: `Bearer ${KEY}` });
  expect(created.status).toBe(202);
  const id = (created.body as { id: string }).id;
  const job = await waitForJobEnd(traced, id, 60_000, { authorization: `Bearer ${KEY}` });
  expect(job.status).toBe('succeeded');

  const spans = await receiver.waitForSpans(
    (all) => all.some((s) => s.name === 'POST /v1/jobs') && all.filter((s) => s.name.startsWith('chat ')).length >= 2 && all.some((s) => s.name === 'process jobs'),
    20_000,
  );
  const root = spans.find((s) => s.name === 'POST /v1/jobs' && s.attributes['maestro.job.id'] === id) as ReceivedSpan;
  expect(root).toBeDefined();
  expect(root.parentSpanId).toBeUndefined();
  expect(root).toMatchObject({
    kindName: 'server',
    resource: { 'service.name': 'maestro-api' },
    attributes: { 'http.request.method': 'POST', 'http.route': '/v1/jobs', 'http.response.status_code': 202 },
  });

  const attempts = childrenOf(spans, root).filter((s) => s.name === 'process jobs');
  expect(attempts).toHaveLength(1);
  const attempt = attempts[0] as ReceivedSpan;
  expect(attempt).toMatchObject({
    kindName: 'consumer',
    resource: { 'service.name': 'maestro-worker' },
    attributes: { 'maestro.job.id': id, 'maestro.job.attempt': 1, 'maestro.job.verdict': 'succeeded', 'messaging.destination.name': 'jobs' },
  });

  const under = childrenOf(spans, attempt);
  const chats = under.filter((s) => s.name.startsWith('chat '));
  expect(chats).toHaveLength(2);
  for (const chat of chats) {
    expect(chat).toMatchObject({
      name: `chat ${job.model}`,
      kindName: 'client',
      attributes: {
        'gen_ai.operation.name': 'chat',
        'gen_ai.system': 'openai',
        'gen_ai.request.model': job.model,
        'gen_ai.usage.input_tokens': 10,
        'gen_ai.usage.output_tokens': 5,
      },
    });
  }
  const executions = under.filter((s) => s.name === 'sandbox execute');
  expect(executions).toHaveLength(1);
  expect(executions[0]).toMatchObject({ attributes: { 'maestro.sandbox.runtime': 'runc', 'maestro.sandbox.exit_code': 0 } });
  // In time, each child within its parent.
  for (const child of [attempt, ...chats, ...executions]) {
    const parent = child === attempt ? root : attempt;
    expect(BigInt(child.startTimeUnixNano)).toBeGreaterThanOrEqual(BigInt(parent.startTimeUnixNano));
  }

  // The job's words, code, output and the keys are nowhere in what was sent.
  const sent = JSON.stringify(receiver.spans());
  for (const secret of ['TASK-TEXT', 'CODE-TEXT', 'OUTPUT-TEXT', ANSWER, KEY, TEST_OPENAI_KEY, 'add the numbers']) expect(sent).not.toContain(secret);
}, 120_000);

test('without OTEL_EXPORTER_OTLP_ENDPOINT no SDK or exporter is loaded; with it they are', () => {
  const probe = (extra: Record<string, string>): string[] => {
    const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
    if (!('OTEL_EXPORTER_OTLP_ENDPOINT' in extra)) delete env.OTEL_EXPORTER_OTLP_ENDPOINT;
    const out = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'fixtures', 'tracing-probe.ts')], { env, encoding: 'utf8', timeout: 60_000 });
    expect(out.status).toBe(0);
    return JSON.parse(out.stdout) as string[];
  };
  const off = probe({});
  expect(off.filter((name) => name !== '@opentelemetry/api')).toEqual([]);
  const on = probe({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint });
  expect(on).toEqual(expect.arrayContaining(['@opentelemetry/sdk-trace', '@opentelemetry/exporter-trace-otlp-http']));
}, 120_000);
