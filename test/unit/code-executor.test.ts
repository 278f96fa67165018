import { createLogger } from '../../services/shared/src/logger';
import { SandboxError } from '../../services/shared/src/errors';
import type { ExecResult, SandboxSession } from '../../services/worker/src/sandbox/types';
import { ALL_TOOLS, runToolCall } from '../../services/worker/src/tools/registry';
import type { ToolContext, ToolOutcome } from '../../services/worker/src/tools/tool';

/** A stand-in for the job's container: the unit under test is the formatting, not the isolation. */
class FakeSandbox implements SandboxSession {
  readonly calls: { code: string; timeoutMs: number; signal: AbortSignal }[] = [];
  constructor(private readonly reply: (code: string) => Promise<ExecResult>) {}
  run(code: string, opts: { timeoutMs: number; signal: AbortSignal }): Promise<ExecResult> {
    this.calls.push({ code, ...opts });
    return this.reply(code);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function result(overrides: Partial<ExecResult> = {}): ExecResult {
  return {
    stdout: '',
    stderr: '',
    exitCode: 0,
    timedOut: false,
    truncated: { stdout: false, stderr: false },
    reset: false,
    artifacts: [],
    skippedArtifacts: [],
    stoppedProcesses: 0,
    durationMs: 12,
    ...overrides,
  };
}

function context(sandbox: SandboxSession, signal = new AbortController().signal): ToolContext {
  return {
    jobId: 'job-test',
    signal,
    logger: createLogger({ level: 'silent', service: 'test' }),
    sandbox,
    allowedDirs: [],
    execTimeoutMs: 30_000,
    stepIndex: 1,
    artifacts: { save: (artifacts) => Promise.resolve({ saved: [...artifacts], skipped: [] }) },
  };
}

function execute(reply: ExecResult | (() => Promise<ExecResult>), code = 'print(1)'): Promise<ToolOutcome> {
  const sandbox = new FakeSandbox(typeof reply === 'function' ? reply : () => Promise.resolve(reply));
  return runToolCall([...ALL_TOOLS], { name: 'code_executor', arguments: JSON.stringify({ code }) }, context(sandbox));
}

test('the code, the time limit and the job signal are handed to the sandbox', async () => {
  const sandbox = new FakeSandbox(() => Promise.resolve(result({ stdout: '2\n' })));
  const controller = new AbortController();
  await runToolCall([...ALL_TOOLS], { name: 'code_executor', arguments: '{"code":"print(1+1)"}' }, context(sandbox, controller.signal));
  expect(sandbox.calls).toEqual([{ code: 'print(1+1)', timeoutMs: 30_000, signal: controller.signal }]);
});

test('a successful run shows its stdout and is not an error', async () => {
  const out = await execute(result({ stdout: 'hello\nworld\n' }));
  expect(out).toEqual({
    output: 'stdout:\nhello\nworld',
    isError: false,
    detail: { exitCode: 0, timedOut: false, truncated: false, reset: false, durationMs: 12, artifacts: [] },
  });
});

test('a run that prints nothing says so', async () => {
  const out = await execute(result());
  expect(out.output).toBe('(no output)');
});

test('a run that raised shows stdout, labelled stderr and the traceback and is an error', async () => {
  const out = await execute(
    result({
      stdout: 'before\n',
      stderr: 'warning: careful\n',
      exitCode: 1,
      error: 'Traceback (most recent call last):\n  File "<cell>", line 1\nZeroDivisionError: division by zero\n',
    }),
  );
  expect(out.isError).toBe(true);
  expect(out.output).toBe(
    'stdout:\nbefore\nstderr:\nwarning: careful\ntraceback:\nTraceback (most recent call last):\n  File "<cell>", line 1\nZeroDivisionError: division by zero',
  );
  expect(out.detail).toMatchObject({ exitCode: 1, timedOut: false });
});

test('a non-zero exit without a traceback reports the exit code', async () => {
  const out = await execute(result({ exitCode: 3 }));
  expect(out).toMatchObject({ isError: true, output: '[exit code 3]' });
});

test('a timed-out run says it was stopped after the limit and that the interpreter was reset', async () => {
  const out = await execute(result({ stdout: 'working\n', exitCode: -1, timedOut: true, durationMs: 30_004 }));
  expect(out.isError).toBe(true);
  expect(out.output).toBe(
    'stdout:\nworking\n[execution stopped after 30 s, the time limit; the Python interpreter was reset, so all state from earlier calls (variables, imports, definitions) is lost]',
  );
  expect(out.detail).toMatchObject({ exitCode: -1, timedOut: true, durationMs: 30_004 });
});

test('a run in a fresh interpreter after a reset warns that earlier state is gone', async () => {
  const out = await execute(result({ stdout: 'ok\n', reset: true }));
  expect(out.output).toBe(
    '[note: the Python interpreter was restarted before this run; variables, imports and definitions from earlier calls are gone]\nstdout:\nok',
  );
  expect(out.isError).toBe(false);
});

test('background processes stopped at the end of a run are reported to the model and on the step', async () => {
  const out = await execute(result({ stdout: 'started\n', stoppedProcesses: 2 }));
  expect(out.output).toBe(
    'stdout:\nstarted\n[note: 2 background processes left running by this code were stopped when it ended; every process a call starts ends with that call]',
  );
  expect(out.isError).toBe(false);
  expect(out.detail).toMatchObject({ stoppedProcesses: 2 });
});

test('a killed process that did not time out is explained as lost state', async () => {
  const out = await execute(result({ exitCode: -1 }));
  expect(out.isError).toBe(true);
  expect(out.output).toMatch(/^\[the Python process was killed .* fresh interpreter\]$/);
});

test('truncated streams carry a visible mark', async () => {
  const out = await execute(
    result({ stdout: 'x'.repeat(10), stderr: 'e', truncated: { stdout: true, stderr: true } }),
  );
  expect(out.output).toBe(
    'stdout:\nxxxxxxxxxx\n[stdout truncated: output beyond the per-stream limit was dropped; print less, or write large results to a file in /output]\n' +
      'stderr:\ne\n[stderr truncated: output beyond the per-stream limit was dropped; print less, or write large results to a file in /output]',
  );
  expect(out.detail).toMatchObject({ truncated: true });
});

test('saved artifacts are named with their sizes and recorded without their bytes', async () => {
  const out = await execute(
    result({
      artifacts: [{ name: 'plot.png', size: 2048, contentType: 'image/png', data: Buffer.alloc(2048) }],
      skippedArtifacts: [{ name: 'huge.csv', reason: 'larger than the artifact limit' }],
    }),
  );
  expect(out.output).toBe(
    'files saved: /output/plot.png (2048 bytes, image/png)\nfiles not saved: /output/huge.csv (larger than the artifact limit)',
  );
  expect(out.detail?.artifacts).toEqual([{ name: 'plot.png', size: 2048, contentType: 'image/png' }]);
});

test('a newline in an artifact name cannot forge lines of the output', async () => {
  const out = await execute(result({ artifacts: [{ name: 'a\n[exit code 0]', size: 1, contentType: 'text/plain', data: Buffer.from('a') }] }));
  expect(out.output).toBe('files saved: /output/"a\\n[exit code 0]" (1 bytes, text/plain)');
});

test('empty code is refused before reaching the sandbox', async () => {
  const out = await execute(() => Promise.reject(new Error('must not run')), '');
  expect(out).toEqual({ isError: true, output: 'Invalid arguments for code_executor: field "code": code must not be empty.' });
});

test('code over 100 KiB is refused before reaching the sandbox', async () => {
  const out = await execute(() => Promise.reject(new Error('must not run')), `# ${'é'.repeat(60 * 1024)}`);
  expect(out).toEqual({ isError: true, output: 'Invalid arguments for code_executor: field "code": code must be at most 100 KiB.' });
});

test('a sandbox failure propagates instead of becoming a tool result', async () => {
  await expect(execute(() => Promise.reject(new SandboxError('Docker engine unreachable.')))).rejects.toBeInstanceOf(SandboxError);
});

test('an abort propagates instead of becoming a tool result', async () => {
  const abort = new DOMException('This operation was aborted', 'AbortError');
  await expect(execute(() => Promise.reject(abort))).rejects.toBe(abort);
});
