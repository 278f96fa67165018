/**
 * The agent loop's side of live output: what a running cell prints goes to the store as `output`
 * entries of that call's step, in order, all of them written before the step is recorded (so a
 * watcher gets them before the step event), and a failed append costs the watcher that output, never
 * the job. The sandbox and the store are stand-ins; the real ones have their own tests
 * (test/integration/live-output.test.ts runs all of it together).
 */
import { Writable } from 'node:stream';
import type { JobSpec, Step, Usage } from '../../services/shared/src/job-schema';
import type { JobStore, OutputChunk } from '../../services/shared/src/job-store';
import { createLogger } from '../../services/shared/src/logger';
import { runAgentLoop } from '../../services/worker/src/agent-loop';
import type { ModelProvider, ModelReply } from '../../services/worker/src/providers/model-provider';
import type { ExecResult, RunOptions, SandboxSession } from '../../services/worker/src/sandbox/types';
import { ALL_TOOLS } from '../../services/worker/src/tools/registry';

const SPEC: JobSpec = {
  task: 'print things',
  provider: 'openai',
  model: 'test-model',
  tools: ['code_executor'],
  maxSteps: 5,
  timeoutSeconds: 60,
  metadata: {},
  inputs: [],
  caller: 'ada',
};

const tick = (ms = 0): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A model that runs two cells in one turn, then answers. */
function provider(): ModelProvider {
  let calls = 0;
  const reply = (r: Partial<ModelReply>): ModelReply => ({ text: '', toolCalls: [], usage: { inputTokens: 1, outputTokens: 1 }, stopReason: 'end', ...r });
  return {
    name: 'openai',
    complete: () => {
      calls += 1;
      if (calls > 1) return Promise.resolve(reply({ text: 'done' }));
      return Promise.resolve(
        reply({
          stopReason: 'tool_use',
          toolCalls: [
            { id: 'c1', name: 'code_executor', arguments: '{"code":"first"}' },
            { id: 'c2', name: 'code_executor', arguments: '{"code":"second"}' },
          ],
        }),
      );
    },
  };
}

/** Prints what each cell's script says, some of it synchronously, some after a pause, as a container would. */
class PrintingSandbox implements SandboxSession {
  async run(code: string, opts: RunOptions): Promise<ExecResult> {
    const say = (stream: 'stdout' | 'stderr', text: string): void => opts.onOutput?.(stream, text);
    say('stdout', `${code} 1\n`);
    say('stdout', `${code} 2\n`);
    await tick(5);
    say('stderr', `${code} warn\n`);
    say('stdout', `${code} 3\n`);
    return {
      stdout: `${code} 1\n${code} 2\n${code} 3\n`,
      stderr: `${code} warn\n`,
      exitCode: 0,
      timedOut: false,
      truncated: { stdout: false, stderr: false },
      reset: false,
      artifacts: [],
      skippedArtifacts: [],
      stoppedProcesses: 0,
      durationMs: 1,
    };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

type Write = { kind: 'output'; step: number; chunks: OutputChunk[] } | { kind: 'steps'; steps: Step[] };

/** A store whose output appends are slow (each takes 20 ms) or fail, logging every write as it lands. */
function store(opts: { fail?: boolean } = {}): { store: JobStore; writes: Write[]; appends: number } {
  const writes: Write[] = [];
  const state = { store: undefined as unknown as JobStore, writes, appends: 0 };
  state.store = {
    recordedSteps: () => Promise.resolve([]),
    recordSteps: (_id: string, steps: Step[], _usage: Usage) => {
      writes.push({ kind: 'steps', steps });
      return Promise.resolve();
    },
    appendOutput: async (_id: string, step: number, chunks: readonly OutputChunk[]) => {
      state.appends += 1;
      const copy = chunks.map((c) => ({ ...c }));
      await tick(20);
      if (opts.fail) throw new Error('redis is away');
      writes.push({ kind: 'output', step, chunks: copy });
    },
  } as unknown as JobStore;
  return state;
}

function run(s: JobStore, logs: string[] = []) {
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(chunk.toString('utf8'));
      done();
    },
  });
  return runAgentLoop('job-1', SPEC, new Date(Date.now() + 60_000), new AbortController().signal, {
    provider: provider(),
    tools: ALL_TOOLS,
    store: s,
    sandbox: new PrintingSandbox(),
    artifacts: { save: (artifacts) => Promise.resolve({ saved: [...artifacts], skipped: [] }) },
    allowedDirs: [],
    sandboxTimeoutMs: 30_000,
    maxOutputTokens: 100,
    logger: createLogger({ level: 'info', service: 'test', destination }),
  });
}

test("each cell's output is written as output entries of its step, in order, before the turn's steps are recorded", async () => {
  const s = store();
  expect(await run(s.store)).toBe('done');

  const toolSteps = s.writes.findIndex((w) => w.kind === 'steps' && w.steps.some((step) => step.type === 'tool'));
  const outputs = s.writes.flatMap((w, i) => (w.kind === 'output' ? [{ ...w, i }] : []));
  expect(outputs.length).toBeGreaterThan(0);
  // Every output write landed before the tool steps were recorded.
  expect(outputs.every((w) => w.i < toolSteps)).toBe(true);
  const textOf = (step: number, stream: string) =>
    outputs
      .filter((w) => w.step === step)
      .flatMap((w) => w.chunks)
      .filter((c) => c.stream === stream)
      .map((c) => c.text)
      .join('');
  // Step 0 is the model's; the two calls are steps 1 and 2.
  expect(textOf(1, 'stdout')).toBe('first 1\nfirst 2\nfirst 3\n');
  expect(textOf(1, 'stderr')).toBe('first warn\n');
  expect(textOf(2, 'stdout')).toBe('second 1\nsecond 2\nsecond 3\n');
  // The order across streams is the order printed.
  expect(outputs.filter((w) => w.step === 1).flatMap((w) => w.chunks)).toEqual([
    { stream: 'stdout', text: 'first 1\nfirst 2\n' },
    { stream: 'stderr', text: 'first warn\n' },
    { stream: 'stdout', text: 'first 3\n' },
  ]);
  // All of step 1's output came before any of step 2's.
  expect(outputs.map((w) => w.step)).toEqual([...outputs.map((w) => w.step)].sort());
  // Text handed over while a write was in flight went out together: fewer writes than pieces printed.
  expect(s.appends).toBeLessThan(8);
  // The recorded steps keep the captured output as always.
  const recorded = s.writes.filter((w): w is Extract<Write, { kind: 'steps' }> => w.kind === 'steps').flatMap((w) => w.steps);
  const tool = recorded.filter((step) => step.type === 'tool');
  expect(tool.map((step) => step.index)).toEqual([1, 2]);
  expect(tool[0]?.output).toBe('stdout:\nfirst 1\nfirst 2\nfirst 3\nstderr:\nfirst warn');
});

test('appends that fail do not fail the job: it goes on, its steps are recorded, and each cell logs one warning', async () => {
  const s = store({ fail: true });
  const logs: string[] = [];
  expect(await run(s.store, logs)).toBe('done');
  expect(s.appends).toBeGreaterThan(2);
  const warnings = logs.map((l) => JSON.parse(l) as { level: number; event?: string; step?: number }).filter((l) => l.event === 'job.output_failed');
  expect(warnings.map((w) => [w.level, w.step])).toEqual([
    [40, 1],
    [40, 2],
  ]);
  expect(s.writes.filter((w) => w.kind === 'steps').flatMap((w) => (w.kind === 'steps' ? w.steps.map((step) => step.index) : []))).toEqual([0, 1, 2, 3]);
});
