/**
 * Live execution output: while a code_executor cell runs, what it prints reaches the job's event
 * stream as `output` events — in order, within a tenth of a second or so, capped like the captured
 * output, and all before that call's step event — while the recorded step keeps the captured output
 * as it always did. Against a real stack: the runner in a real sandbox, Redis, the API's SSE route;
 * and the store's output entries on their own: fenced like steps, never counted as steps, kept in
 * the finished job's record.
 */
import { DirectoryArtifactStore } from '../../services/shared/src/artifact-store';
import { newJobId } from '../../services/shared/src/ids';
import type { JobSpec, Step } from '../../services/shared/src/job-schema';
import { AttemptSuperseded, JobStore } from '../../services/shared/src/job-store';
import type { SandboxRuntime } from '../../services/worker/src/sandbox/types';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { readSse, type SseEvent } from '../support/sse';
import { useStoreFixture } from '../support/store-fixture';
import { getJob, startStack, submitJob, TEST_ARTIFACT_ROOT, type AnyJson, type Stack } from '../support/stack';

/** The stacks' cap per stream (SANDBOX_OUTPUT_LIMIT_KB's default). */
const CAP = 64 * 1024;
/** The runc stack's time limit per cell: room for the 2 s cells here, short for the one that is killed. */
const CELL_TIMEOUT_MS = 6000;
const LINES_CODE = 'import time\nfor i in range(10):\n    print(f"line {i}", flush=True)\n    time.sleep(0.2)';
const LINES = Array.from({ length: 10 }, (_, i) => `line ${i}\n`).join('');
const FLOOD_CODE = 'import sys\nfor _ in range(100): sys.stdout.write("x" * (1<<20))';

interface Output {
  step: number;
  stream: 'stdout' | 'stderr';
  text: string;
}

/** An SSE event with when it arrived. */
type Seen = SseEvent & { at: number };

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
});
afterAll(async () => {
  await model?.close();
});

/** Reads a job's events through its end (or until `stop`), noting when each arrived. */
async function watch(stack: Stack, id: string, opts: { headers?: Record<string, string>; stop?: (events: SseEvent[]) => boolean } = {}): Promise<Seen[]> {
  const times: number[] = [];
  const read = await readSse(`${stack.api.url}/v1/jobs/${id}/events`, {
    headers: opts.headers,
    timeoutMs: 60_000,
    stop: (events) => {
      while (times.length < events.length) times.push(Date.now());
      return opts.stop?.(events) ?? false;
    },
  });
  return read.events.map((e, i) => ({ ...e, at: times[i] as number }));
}

const outputsOf = (events: SseEvent[], step?: number): Output[] =>
  events.filter((e) => e.event === 'output').map((e) => JSON.parse(e.data) as Output).filter((o) => step === undefined || o.step === step);
const textOf = (outputs: Output[], stream: Output['stream']): string =>
  outputs
    .filter((o) => o.stream === stream)
    .map((o) => o.text)
    .join('');
const stepEvent = (events: SseEvent[], index: number): number =>
  events.findIndex((e) => e.event === 'step' && (JSON.parse(e.data) as { index: number }).index === index);
const statusOf = (e: SseEvent | undefined): string | undefined => (e ? (JSON.parse(e.data) as { status?: string }).status : undefined);

/**
 * A cell that prints a line every 200 ms for 2 s: its lines arrive as they are printed, ordered,
 * before its step, and the step is as it always was.
 */
async function printsLinesLive(stack: Stack, task: string): Promise<void> {
  script[task] = [codeCall(LINES_CODE), { text: 'printed' }];
  const job = await submitJob(stack, { task });
  const events = await watch(stack, job.id);
  expect(statusOf(events.at(-1))).toBe('succeeded');

  // Step 0 is the model's call; the cell's step is 1.
  const outputs = outputsOf(events, 1);
  expect(outputsOf(events)).toEqual(outputs);
  expect(outputs.length).toBeGreaterThanOrEqual(8);
  expect(outputs.every((o) => o.stream === 'stdout')).toBe(true);
  expect(textOf(outputs, 'stdout')).toBe(LINES);
  const step = stepEvent(events, 1);
  const outputIndexes = events.flatMap((e, i) => (e.event === 'output' ? [i] : []));
  expect(step).toBeGreaterThan(Math.max(...outputIndexes));
  // Live: the first line came while the cell still had most of its 2 s to run.
  const first = events[outputIndexes[0] as number] as Seen;
  expect((events[step] as Seen).at - first.at).toBeGreaterThanOrEqual(1000);

  // The step keeps the captured output as before, and the job's steps are steps only.
  const ended = await getJob(stack, job.id);
  expect(ended.steps.map((s: AnyJson) => [s.index, s.type])).toEqual([
    [0, 'model'],
    [1, 'tool'],
    [2, 'model'],
  ]);
  expect(ended.steps[1]).toMatchObject({ output: `stdout:\n${LINES.slice(0, -1)}`, exitCode: 0, truncated: false });
  expect(JSON.parse(events[step]?.data as string)).toEqual(ended.steps[1]);

  // Replayed from the finished job's record: the same events, in the same order, with the same ids.
  const replay = await watch(stack, job.id);
  expect(replay.map(({ id, event, data }) => ({ id, event, data }))).toEqual(events.map(({ id, event, data }) => ({ id, event, data })));
}

describe('live output under runc', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { env: { SSE_HEARTBEAT_MS: '200', SANDBOX_TIMEOUT_MS: String(CELL_TIMEOUT_MS) } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a cell printing a line every 200 ms: the lines arrive as output events as they are printed, in order, before its step', async () => {
    await printsLinesLive(stack, 'lines under runc');
  });

  test('a cell printing 100 MB: live output is capped like the captured output, and the job goes on', async () => {
    script['flood'] = [codeCall(FLOOD_CODE), codeCall('print("after")'), { text: 'survived' }];
    const job = await submitJob(stack, { task: 'flood' });
    const events = await watch(stack, job.id);
    expect(statusOf(events.at(-1))).toBe('succeeded');

    const ended = await getJob(stack, job.id);
    expect(ended.status).toBe('succeeded');
    expect(ended.result).toEqual({ output: 'survived' });
    const flood = ended.steps[1] as AnyJson;
    expect(flood).toMatchObject({ type: 'tool', exitCode: 0, truncated: true });
    const live = textOf(outputsOf(events, 1), 'stdout');
    expect(live.length).toBeGreaterThan(0);
    expect(live.length).toBeLessThanOrEqual(CAP);
    expect(live).toMatch(/^x+$/);
    // A prefix of the captured output, which the step shows after `stdout:`.
    expect((flood.output as string).startsWith(`stdout:\n${live}`)).toBe(true);
    expect(stepEvent(events, 1)).toBeGreaterThan(events.findLastIndex((e) => e.event === 'output' && (JSON.parse(e.data) as Output).step === 1));
    // The next cell ran in the same healthy sandbox, live too.
    expect(ended.steps[3]).toMatchObject({ type: 'tool', output: 'stdout:\nafter', exitCode: 0, reset: false });
    expect(outputsOf(events, 3)).toEqual([{ step: 3, stream: 'stdout', text: 'after\n' }]);
  });

  test('stderr arrives as stream "stderr", in the order the cell wrote it among its stdout', async () => {
    script['both streams'] = [
      codeCall('import sys, time\nprint("out 1", flush=True)\ntime.sleep(0.3)\nsys.stderr.write("warned\\n")\ntime.sleep(0.3)\nprint("out 2", flush=True)'),
      { text: 'ok' },
    ];
    const job = await submitJob(stack, { task: 'both streams' });
    const events = await watch(stack, job.id);
    const outputs = outputsOf(events, 1);
    expect(outputs).toEqual([
      { step: 1, stream: 'stdout', text: 'out 1\n' },
      { step: 1, stream: 'stderr', text: 'warned\n' },
      { step: 1, stream: 'stdout', text: 'out 2\n' },
    ]);
    expect((await getJob(stack, job.id)).steps[1]).toMatchObject({ output: 'stdout:\nout 1\nout 2\nstderr:\nwarned' });
  });

  test('a cell killed at its time limit has shown what it printed; its step, as before, reports only the kill', async () => {
    script['killed'] = [codeCall('import time\nprint("working", flush=True)\ntime.sleep(600)'), { text: 'gave up' }];
    const job = await submitJob(stack, { task: 'killed' });
    const events = await watch(stack, job.id);
    expect(statusOf(events.at(-1))).toBe('succeeded');
    expect(outputsOf(events, 1)).toEqual([{ step: 1, stream: 'stdout', text: 'working\n' }]);
    const step = (await getJob(stack, job.id)).steps[1] as AnyJson;
    expect(step).toMatchObject({ timedOut: true, exitCode: -1 });
    expect(step.output).not.toContain('working');
  });

  test('a client that reconnects with Last-Event-ID after some output events gets the rest exactly once', async () => {
    script['reconnect'] = [codeCall(LINES_CODE), { text: 'printed' }];
    const job = await submitJob(stack, { task: 'reconnect' });
    const first = await watch(stack, job.id, { stop: (events) => events.filter((e) => e.event === 'output').length >= 3 });
    expect(first.at(-1)?.event).toBe('output');
    const second = await watch(stack, job.id, { headers: { 'Last-Event-ID': first.at(-1)?.id as string } });
    expect(statusOf(second.at(-1))).toBe('succeeded');
    // The second part went on from where the first stopped: more output, then the step.
    expect(outputsOf(second, 1).length).toBeGreaterThan(0);

    const joined = [...first, ...second];
    const ids = joined.map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
    const history = await watch(stack, job.id);
    expect(ids).toEqual(history.map((e) => e.id));
    expect(textOf(outputsOf(joined, 1), 'stdout')).toBe(LINES);
  });
});

describe.each(['runsc'] as SandboxRuntime[])('live output under %s', (runtime) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack(model, { env: { SSE_HEARTBEAT_MS: '200', SANDBOX_RUNTIME: runtime } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  test('a cell printing a line every 200 ms: the lines arrive as output events as they are printed, in order, before its step', async () => {
    await printsLinesLive(stack, `lines under ${runtime}`);
  });
});

describe("the store's output entries", () => {
  const fixture = useStoreFixture('out');
  const { prefix } = fixture;
  let store: JobStore;
  const spec: JobSpec = {
    task: 'print',
    provider: 'openai',
    model: 'm',
    tools: ['code_executor'],
    maxSteps: 5,
    timeoutSeconds: 60,
    metadata: {},
    inputs: [],
    caller: 'ada',
  };
  const usage = { inputTokens: 1, outputTokens: 1 };
  const modelStep = (index: number): Step => ({
    index,
    type: 'model',
    startedAt: new Date().toISOString(),
    durationMs: 1,
    text: '',
    toolCalls: [],
    usage,
    stopReason: 'end',
  });
  const entries = async (id: string): Promise<[string, string, string][]> =>
    (await fixture.redis.xrange(`${prefix}:job:${id}:events`, '-', '+')).map(([entryId, fields]) => [entryId, fields[1] as string, fields[3] as string]);

  /** A job on its first attempt, its model step recorded. */
  async function running(): Promise<string> {
    const id = newJobId();
    expect((await store.create(id, spec, new Date(), { maxActive: 100 })).outcome).toBe('created');
    await store.markRunning(id, new Date());
    await store.recordSteps(id, [modelStep(0)], usage, { attempt: 1 });
    return id;
  }

  beforeAll(() => {
    store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
  });

  test('are appended in order as `output` events, are not steps, and stay in the finished record with their ids', async () => {
    const id = await running();
    await store.appendOutput(id, 1, [{ stream: 'stdout', text: 'a\n' }, { stream: 'stderr', text: 'oops\n' }], { attempt: 1 });
    await store.appendOutput(id, 1, [{ stream: 'stdout', text: 'b\n' }], { attempt: 1 });
    await store.recordSteps(id, [modelStep(1)], usage, { attempt: 1 });

    const live = await entries(id);
    expect(live.map(([, type]) => type)).toEqual(['status', 'status', 'step', 'output', 'output', 'output', 'step']);
    expect(live.filter(([, type]) => type === 'output').map(([, , data]) => JSON.parse(data) as unknown)).toEqual([
      { step: 1, stream: 'stdout', text: 'a\n' },
      { step: 1, stream: 'stderr', text: 'oops\n' },
      { step: 1, stream: 'stdout', text: 'b\n' },
    ]);
    expect((await store.recordedSteps(id)).map((step) => step.index)).toEqual([0, 1]);
    expect((await store.getFor('ada', id))?.steps.map((step) => step.index)).toEqual([0, 1]);

    expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
    expect((await store.getFor('ada', id))?.steps.map((step) => step.index)).toEqual([0, 1]);
    const log = await store.eventLog('ada', id);
    expect(log?.live).toBe(false);
    const recorded = log && !log.live ? log.events : [];
    expect(recorded.slice(0, -1).map((e) => [e.id, e.type, e.data])).toEqual(live);
    expect(recorded.at(-1)?.type).toBe('status');
  });

  test('one landing while the record is written goes into the record', async () => {
    const files = new DirectoryArtifactStore(TEST_ARTIFACT_ROOT, prefix);
    let interfered = false;
    const racing = Object.assign(Object.create(files) as DirectoryArtifactStore, {
      putRecord: async (jobId: string, data: Buffer): Promise<string> => {
        if (!interfered) {
          interfered = true;
          await store.appendOutput(jobId, 1, [{ stream: 'stdout', text: 'late\n' }], { attempt: 1 });
        }
        return files.putRecord(jobId, data);
      },
    });
    const id = await running();
    expect(await new JobStore(fixture.redis, prefix, 3600, racing).finish(id, { status: 'failed', stopReason: 'cancelled', error: { code: 'cancelled', message: 'x' } })).toBe(true);
    const log = await store.eventLog('ada', id);
    expect(log && !log.live ? log.events.map((e) => e.type) : []).toEqual(['status', 'status', 'step', 'output', 'status']);
  });

  test("are refused from a superseded attempt, and nothing is written for a job that ended or was deleted", async () => {
    const id = await running();
    await store.markRunning(id, new Date()); // a second attempt took the job over
    await expect(store.appendOutput(id, 1, [{ stream: 'stdout', text: 'stale' }], { attempt: 1 })).rejects.toBeInstanceOf(AttemptSuperseded);
    expect((await entries(id)).some(([, type]) => type === 'output')).toBe(false);

    expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'done' } })).toBe(true);
    const before = await entries(id);
    await store.appendOutput(id, 1, [{ stream: 'stdout', text: 'after the end' }], { attempt: 2 });
    expect(await entries(id)).toEqual(before);

    const deleted = await running();
    await store.remove(deleted);
    await store.appendOutput(deleted, 1, [{ stream: 'stdout', text: 'after deletion' }], { attempt: 1 });
    expect(await fixture.redis.exists(`${prefix}:job:${deleted}`, `${prefix}:job:${deleted}:events`)).toBe(0);
  });
});
