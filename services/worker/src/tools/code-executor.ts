import { z } from 'zod';
import type { ExecResult } from '../sandbox/types';
import type { Tool, ToolOutcome } from './tool';

/** Generous for a notebook cell; a model pasting megabytes of data should read a file instead. */
const MAX_CODE_BYTES = 100 * 1024;
/** Where the runner looks for files to return; the sandbox mounts it as a tmpfs. */
const OUTPUT_DIR = '/output';

const input = z.strictObject({
  code: z
    .string()
    .min(1, 'code must not be empty')
    .max(MAX_CODE_BYTES)
    .refine((code) => Buffer.byteLength(code, 'utf8') <= MAX_CODE_BYTES, `code must be at most ${MAX_CODE_BYTES / 1024} KiB`)
    .describe('Python 3 source to run.'),
});

export const codeExecutorTool: Tool<z.infer<typeof input>> = {
  name: 'code_executor',
  description:
    'Run Python 3 code in this job\'s sandbox and get its stdout, stderr, traceback and exit code. State persists ' +
    'between calls like a notebook: variables, imports and functions defined in one call are there in the next, ' +
    'unless the interpreter is reset (after a time-out or crash; the result says so). Each call has a time limit. ' +
    'There is no network access. numpy, pandas and matplotlib are installed. The allowed directories are mounted ' +
    `read-only at the same absolute paths as in list_files and read_file. Files you want to hand back must be written to ${OUTPUT_DIR}; ` +
    'output beyond a per-stream limit is cut off, so print summaries rather than whole data sets.',
  input,
  async run({ code }, ctx) {
    // Errors from run (SandboxError, abort) are infrastructure or cancellation, not the model's doing:
    // they propagate so the job can be retried or end cancelled.
    const result = await ctx.sandbox.run(code, {
      timeoutMs: ctx.execTimeoutMs,
      signal: ctx.signal,
      ...(ctx.onOutput ? { onOutput: ctx.onOutput } : {}),
    });
    const kept = await ctx.artifacts.save(result.artifacts, ctx.stepIndex);
    return formatExecResult({ ...result, artifacts: kept.saved, skippedArtifacts: [...result.skippedArtifacts, ...kept.skipped] }, ctx.execTimeoutMs);
  },
};

/** The text the model sees for one execution, plus detail for the job's step (no artifact bytes). */
export function formatExecResult(r: ExecResult, timeoutMs: number): ToolOutcome {
  const parts: string[] = [];
  if (r.reset) {
    parts.push(
      '[note: the Python interpreter was restarted before this run; variables, imports and definitions from earlier calls are gone]',
    );
  }
  if (r.stdout !== '' || r.truncated.stdout) parts.push(section('stdout', r.stdout, r.truncated.stdout));
  if (r.stderr !== '' || r.truncated.stderr) parts.push(section('stderr', r.stderr, r.truncated.stderr));
  if (r.error !== undefined && r.error !== '') parts.push(`traceback:\n${withoutFinalNewline(r.error)}`);

  if (r.timedOut) {
    parts.push(
      `[execution stopped after ${formatSeconds(timeoutMs)}, the time limit; the Python interpreter was reset, ` +
        'so all state from earlier calls (variables, imports, definitions) is lost]',
    );
  } else if (r.exitCode === -1) {
    parts.push(
      '[the Python process was killed (for example, it ran out of memory or crashed); its state is lost and ' +
        'the next call starts a fresh interpreter]',
    );
  } else if (r.exitCode !== 0 && r.error === undefined) {
    parts.push(`[exit code ${r.exitCode}]`);
  }

  if (r.stoppedProcesses > 0) {
    const n = r.stoppedProcesses;
    parts.push(
      `[note: ${n} background process${n === 1 ? '' : 'es'} left running by this code ${n === 1 ? 'was' : 'were'} stopped when it ended; ` +
        'every process a call starts ends with that call]',
    );
  }
  if (r.artifacts.length > 0) {
    const names = r.artifacts.map((a) => `${OUTPUT_DIR}/${displayName(a.name)} (${a.size} bytes, ${displayName(a.contentType)})`);
    parts.push(`files saved: ${names.join(', ')}`);
  }
  if (r.skippedArtifacts.length > 0) {
    const names = r.skippedArtifacts.map((s) => `${OUTPUT_DIR}/${displayName(s.name)} (${displayName(s.reason)})`);
    parts.push(`files not saved: ${names.join(', ')}`);
  }
  if (parts.length === 0 || (r.reset && parts.length === 1)) parts.push('(no output)');

  return {
    output: parts.join('\n'),
    isError: r.exitCode !== 0 || r.timedOut,
    detail: {
      exitCode: r.exitCode,
      timedOut: r.timedOut,
      truncated: r.truncated.stdout || r.truncated.stderr,
      reset: r.reset,
      ...(r.stoppedProcesses > 0 ? { stoppedProcesses: r.stoppedProcesses } : {}),
      durationMs: r.durationMs,
      artifacts: r.artifacts.map((a) => ({ name: a.name, size: a.size, contentType: a.contentType })),
    },
  };
}

function section(label: 'stdout' | 'stderr', text: string, truncated: boolean): string {
  const mark = truncated
    ? `\n[${label} truncated: output beyond the per-stream limit was dropped; print less, or write large results to a file in ${OUTPUT_DIR}]`
    : '';
  return `${label}:\n${withoutFinalNewline(text)}${mark}`;
}

function withoutFinalNewline(text: string): string {
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

function formatSeconds(ms: number): string {
  const s = ms / 1000;
  return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
}

/** Names come from the sandbox, which is hostile: a newline in one could forge lines of our own. */
function displayName(name: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f]/.test(name) ? JSON.stringify(name) : name;
}
