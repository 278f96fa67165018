/*
 * What the CLI writes and how: a spinner and colours on a terminal, plain lines anywhere else (a
 * pipe, a file, CI), so its output can be read by a program as well as by a person.
 */
import ora from 'ora';
import type { ArtifactInfo, Job, JobStatus, JobSummary, Step, ToolCall, ToolStep } from './types';

const ANSI = { reset: '\x1b[0m', bold: '\x1b[1m', dim: '\x1b[2m', red: '\x1b[31m', green: '\x1b[32m', yellow: '\x1b[33m', cyan: '\x1b[36m' } as const;
type Style = Exclude<keyof typeof ANSI, 'reset'>;

/** stdout, with a spinner between lines when it is a terminal. */
export class Terminal {
  /** Whether stdout is a terminal: spinner and colours, else plain text. */
  readonly tty: boolean;
  private readonly colour: boolean;
  private readonly spinner: ora.Ora | undefined;
  /** Whether the cursor is at the start of a line (nothing written since the last newline). */
  private lineStart = true;

  constructor(
    /** stdout; `isTTY` is missing when it is a pipe or a file. */
    private readonly out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.tty = out.isTTY === true;
    this.colour = this.tty && env.NO_COLOR === undefined && env.TERM !== 'dumb';
    this.spinner = this.tty ? ora({ stream: out, discardStdin: false, isEnabled: true }) : undefined;
  }

  style(style: Style, text: string): string {
    return this.colour && text !== '' ? `${ANSI[style]}${text}${ANSI.reset}` : text;
  }

  /** Shows the spinner with `text` (on a terminal only). */
  spin(text: string): void {
    if (!this.spinner) return;
    if (!this.lineStart) this.raw('\n');
    if (this.spinner.isSpinning) this.spinner.text = text;
    else this.spinner.start(text);
  }

  /** Takes the spinner off the screen. */
  stopSpinner(): void {
    if (this.spinner?.isSpinning) this.spinner.stop();
  }

  /** One whole line (after ending an unfinished one). */
  line(text = ''): void {
    this.stopSpinner();
    if (!this.lineStart) this.raw('\n');
    this.raw(`${text}\n`);
  }

  /** Text as it comes (a cell's output), each of its lines begun with `prefix`. */
  stream(text: string, prefix: string, style?: Style): void {
    this.stopSpinner();
    const parts = text.split('\n');
    parts.forEach((part, i) => {
      if (part !== '') this.raw(`${this.lineStart ? prefix : ''}${style ? this.style(style, part) : part}`);
      if (i < parts.length - 1) this.raw('\n');
    });
  }

  /** Ends an unfinished line. */
  endLine(): void {
    this.stopSpinner();
    if (!this.lineStart) this.raw('\n');
  }

  private raw(text: string): void {
    if (text === '') return;
    this.out.write(text);
    this.lineStart = text.endsWith('\n');
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

const STATUS_STYLE: Record<JobStatus, Style> = { queued: 'dim', running: 'cyan', succeeded: 'green', failed: 'red', cancelled: 'yellow' };
export const styledStatus = (t: Terminal, status: JobStatus): string => t.style(STATUS_STYLE[status], status);

/** The code of a code_executor call, or undefined when its arguments hold none. */
export function codeOf(call: ToolCall): string | undefined {
  try {
    const args = JSON.parse(call.arguments) as { code?: unknown };
    return typeof args.code === 'string' ? args.code : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Prints the live progress of a job, from its events: each model turn's tool calls (a code cell's
 * code), each cell's output as it streams, each tool step's outcome; the answer is left to the end.
 */
export class ProgressPrinter {
  /** Tool steps whose output arrived as output events (so their step's output is not printed again). */
  private readonly streamed = new Set<number>();

  constructor(private readonly t: Terminal) {}

  submitted(job: Job): void {
    this.t.line(this.t.style('dim', `job ${job.id} (${job.provider}/${job.model})`));
    this.t.spin('queued');
  }

  status(status: JobStatus, retry: { code: string; message: string } | undefined): void {
    if (status === 'queued' && retry) {
      this.t.line(this.t.style('yellow', `retrying: ${retry.code}: ${retry.message}`));
      this.t.spin('queued for another attempt');
    } else if (status === 'running') {
      this.t.spin('thinking');
    } else if (status !== 'queued') {
      this.t.endLine();
    }
  }

  step(step: Step): void {
    if (step.type === 'model') {
      if (step.toolCalls.length === 0) return; // the answer: shown once the job has ended
      if (step.text.trim() !== '') this.t.line(this.t.style('dim', step.text.trim()));
      for (const call of step.toolCalls) this.call(call);
      const first = step.toolCalls[0];
      this.t.spin(first?.name === 'code_executor' ? 'running code' : `running ${first?.name ?? 'tools'}`);
      return;
    }
    this.toolStep(step);
    this.t.spin('thinking');
  }

  output(text: string, step: number, stream: 'stdout' | 'stderr'): void {
    this.streamed.add(step);
    this.t.stream(text, '  ', stream === 'stderr' ? 'red' : undefined);
  }

  private call(call: ToolCall): void {
    const code = call.name === 'code_executor' ? codeOf(call) : undefined;
    if (code === undefined) {
      this.t.line(`${this.t.style('cyan', '›')} ${this.t.style('bold', call.name)} ${this.t.style('dim', call.arguments)}`);
      return;
    }
    this.t.line(`${this.t.style('cyan', '›')} ${this.t.style('bold', 'code')}`);
    for (const line of code.replace(/\n+$/, '').split('\n')) this.t.line(this.t.style('dim', `  │ ${line}`));
  }

  private toolStep(step: ToolStep): void {
    if (!this.streamed.has(step.index) && step.output.trim() !== '') {
      const lines = step.output.replace(/\n+$/, '').split('\n');
      const shown = step.name === 'code_executor' ? lines : lines.slice(0, 10);
      for (const line of shown) this.t.line(`  ${line}`);
      if (shown.length < lines.length) this.t.line(this.t.style('dim', `  … ${lines.length - shown.length} more lines`));
    }
    this.t.endLine();
    const took = formatMs(step.durationMs);
    if (step.timedOut === true) this.t.line(this.t.style('red', `  ✗ timed out · ${took}`));
    else if (step.isError) this.t.line(this.t.style('red', `  ✗ ${step.exitCode === undefined ? 'error' : `exit ${step.exitCode}`} · ${took}`));
    else this.t.line(this.t.style('green', `  ✓ ${step.exitCode === undefined ? 'done' : `exit ${step.exitCode}`} · ${took}`));
  }
}

export function artifactLine(t: Terminal, a: ArtifactInfo, savedAs?: string): string {
  return `  ${a.name}  ${t.style('dim', `${formatBytes(a.size)}, ${a.contentType}`)}${savedAs === undefined ? '' : ` → ${savedAs}`}`;
}

/** A job for a person to read: its state, the request, the outcome, the files; not its steps. */
export function describeJob(t: Terminal, job: JobSummary & { steps?: Step[] }): string[] {
  const lines = [
    `${t.style('bold', job.id)}  ${styledStatus(t, job.status)}${job.stopReason ? ` (${job.stopReason})` : ''}`,
    `task      ${job.task.split('\n')[0] ?? ''}`,
    `model     ${job.provider}/${job.model}`,
    `created   ${job.createdAt}`,
  ];
  if (job.finishedAt) lines.push(`finished  ${job.finishedAt}${job.startedAt ? ` (${formatMs(Date.parse(job.finishedAt) - Date.parse(job.startedAt))} running)` : ''}`);
  lines.push(`usage     ${job.steps ? `${job.steps.length} steps, ` : ''}${job.usage.inputTokens} tokens in, ${job.usage.outputTokens} out`);
  if (job.inputs.length > 0) lines.push(`inputs    ${job.inputs.map((f) => `${f.name} (${formatBytes(f.size)})`).join(', ')}`);
  if (job.artifacts.length > 0) lines.push(`artifacts ${job.artifacts.map((f) => `${f.name} (${formatBytes(f.size)})`).join(', ')}`);
  if (job.error) lines.push(t.style('red', `error     ${job.error.code}: ${job.error.message}`));
  if (job.result) lines.push('', job.result.output);
  return lines;
}

/** One line of `maestro list`. */
export function jobLine(t: Terminal, job: JobSummary): string {
  const task = (job.task.split('\n')[0] ?? '').slice(0, 60);
  return `${job.id}  ${t.style(STATUS_STYLE[job.status], job.status.padEnd(9))}  ${job.createdAt}  ${task}`;
}
