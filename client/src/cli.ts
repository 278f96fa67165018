#!/usr/bin/env node
/*
 * `maestro`: the Maestro API from a shell, built on the client. MAESTRO_URL (default
 * http://127.0.0.1:3000) says where the API is, MAESTRO_API_KEY how to authenticate.
 *
 * Exit codes: 0 done (for `run`: the job succeeded); 1 the job failed or was cancelled; 2 a usage
 * error (a bad option, an unreadable --file); 3 the API refused the request or could not be
 * reached; 130 interrupted (Ctrl-C).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { MaestroClient, type InputFile } from './client';
import { ConnectionError, MaestroError, RateLimitError, ServiceUnavailableError } from './errors';
import { ProgressPrinter, Terminal, artifactLine, describeJob, jobLine } from './cli-output';
import { JOB_STATUSES, PROVIDERS, type ArtifactInfo, type Job, type JobRequest, type JobStatus, type Provider } from './types';

const EXIT = { ok: 0, jobFailed: 1, usage: 2, api: 3, interrupted: 130 } as const;
const DEFAULT_URL = 'http://127.0.0.1:3000';
const VERSION = '0.1.0';

/** A problem with what the user asked for: exit code 2. */
class UsageError extends Error {}
/** Ctrl-C while waiting. */
class Interrupted extends Error {}

interface Context {
  client: MaestroClient;
  baseUrl: string;
  term: Terminal;
  /** Set by a command that decides its own exit code (`run`). */
  exitCode: number;
}

const positiveInt = (what: string) => (value: string): number => {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError(`${what} must be a positive integer.`);
  return Number(value);
};
const collect = (value: string, previous: string[]): string[] => [...previous, value];
const printJson = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
};

/** The --file paths as input files, named by their base name. */
async function readInputs(paths: readonly string[]): Promise<InputFile[]> {
  return Promise.all(
    paths.map(async (path) => {
      try {
        return { name: basename(path), data: await readFile(path) };
      } catch (err) {
        throw new UsageError(`cannot read --file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    }),
  );
}

/**
 * Downloads a job's artifacts into `dir` (made if missing), each at its name (which may hold `/`).
 * A name that would land outside `dir` is refused rather than written.
 */
async function saveArtifacts(client: MaestroClient, jobId: string, artifacts: readonly ArtifactInfo[], dir: string): Promise<Map<string, string>> {
  const root = resolve(dir);
  const saved = new Map<string, string>();
  for (const artifact of artifacts) {
    const target = resolve(root, artifact.name);
    if (!target.startsWith(root + sep)) throw new UsageError(`artifact ${JSON.stringify(artifact.name)} would be saved outside ${dir}; not saved`);
    const { bytes } = await client.downloadArtifact(jobId, artifact.name);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, bytes);
    saved.set(artifact.name, isAbsolute(dir) ? target : relative(process.cwd(), target));
  }
  return saved;
}

function exitCodeOf(status: JobStatus): number {
  return status === 'succeeded' ? EXIT.ok : EXIT.jobFailed;
}

interface RunFlags {
  file: string[];
  provider?: Provider;
  model?: string;
  maxSteps?: number;
  timeout?: number;
  system?: string;
  json?: boolean;
  out?: string;
}

async function runCommand(ctx: Context, task: string, flags: RunFlags): Promise<void> {
  const { client, term } = ctx;
  const request: JobRequest = {
    task,
    ...(flags.provider === undefined ? {} : { provider: flags.provider }),
    ...(flags.model === undefined ? {} : { model: flags.model }),
    ...(flags.maxSteps === undefined ? {} : { maxSteps: flags.maxSteps }),
    ...(flags.timeout === undefined ? {} : { timeoutSeconds: flags.timeout }),
    ...(flags.system === undefined ? {} : { system: flags.system }),
  };
  const files = await readInputs(flags.file);
  const progress = flags.json === true ? undefined : new ProgressPrinter(term);

  // The first Ctrl-C cancels the job and waits for it to end; a second stops waiting.
  const stop = new AbortController();
  let jobId: string | undefined;
  let interrupts = 0;
  const onSigint = (): void => {
    interrupts += 1;
    if (interrupts === 1 && jobId !== undefined) {
      const id = jobId;
      if (progress) term.line(term.style('yellow', `cancelling job ${id} (Ctrl-C again to stop waiting)`));
      client.cancelJob(id).catch(() => {
        stop.abort(new Interrupted());
      });
    } else {
      stop.abort(new Interrupted());
    }
  };
  process.on('SIGINT', onSigint);
  let job: Job;
  try {
    job = await client.run(request, {
      files,
      signal: stop.signal,
      onSubmit: (submitted) => {
        jobId = submitted.id;
        progress?.submitted(submitted);
      },
      onStatus: (status, data) => progress?.status(status, data.retry),
      onStep: (step) => progress?.step(step),
      onOutput: (output) => progress?.output(output.text, output.step, output.stream),
    });
  } finally {
    process.off('SIGINT', onSigint);
    term.stopSpinner();
  }

  const saved = flags.out !== undefined && job.artifacts.length > 0 ? await saveArtifacts(client, job.id, job.artifacts, flags.out) : new Map<string, string>();
  ctx.exitCode = interrupts > 0 && job.status === 'cancelled' ? EXIT.interrupted : exitCodeOf(job.status);
  if (flags.json === true) {
    printJson(job);
  } else {
    if (job.artifacts.length > 0) {
      term.line(term.style('bold', 'artifacts'));
      for (const a of job.artifacts) term.line(artifactLine(term, a, saved.get(a.name)));
    }
    if (job.status === 'succeeded') {
      term.line();
      term.line(job.result?.output ?? '');
    }
  }
  if (job.status !== 'succeeded') {
    const why = job.error ? `${job.error.code}: ${job.error.message}` : (job.stopReason ?? job.status);
    process.stderr.write(`maestro: job ${job.id} ${job.status}: ${why}\n`);
  }
}

async function artifactsCommand(ctx: Context, id: string, flags: { out?: string; json?: boolean }): Promise<void> {
  const { client, term } = ctx;
  const job = await client.getJob(id);
  const saved = flags.out === undefined ? new Map<string, string>() : await saveArtifacts(client, job.id, job.artifacts, flags.out);
  if (flags.json === true) {
    printJson(job.artifacts);
    return;
  }
  if (job.artifacts.length === 0) term.line(term.style('dim', 'no artifacts'));
  for (const a of job.artifacts) term.line(artifactLine(term, a, saved.get(a.name)));
}

function buildProgram(ctxOf: () => Context): Command {
  const program = new Command('maestro')
    .description('Run and manage Maestro agent jobs. MAESTRO_URL says where the API is (default http://127.0.0.1:3000), MAESTRO_API_KEY the key to send.')
    .version(VERSION)
    .option('--url <url>', 'the API (overrides MAESTRO_URL)')
    .exitOverride()
    .showHelpAfterError('(maestro --help shows the commands)')
    .configureHelp({ sortSubcommands: false })
    .addHelpText(
      'after',
      '\nExit codes: 0 done; 1 the job failed or was cancelled; 2 bad usage; 3 the API refused the request or could not be reached; 130 interrupted.',
    );

  program
    .command('run')
    .description('submit a job and follow it live to its end: the steps, each cell\'s code and output, the artifacts, the answer')
    .argument('<task>', 'what the agent should do')
    .option('-f, --file <path>', 'an input file, at /input/<name> in the sandbox (repeatable)', collect, [])
    .addOption(new Option('--provider <provider>', 'the model provider').choices(PROVIDERS))
    .option('--model <model>', 'the model (default: the API\'s)')
    .option('--max-steps <n>', 'model calls at most', positiveInt('--max-steps'))
    .option('--timeout <seconds>', 'the job\'s deadline', positiveInt('--timeout'))
    .option('--system <prompt>', 'a system prompt')
    .option('--json', 'print only the ended job, as JSON')
    .option('-o, --out <dir>', 'save the job\'s artifacts in this directory')
    .action(async (task: string, flags: RunFlags) => runCommand(ctxOf(), task, flags));

  program
    .command('get')
    .description('show a job')
    .argument('<id>', 'the job id')
    .option('--json', 'print the job as JSON, with its steps')
    .action(async (id: string, flags: { json?: boolean }) => {
      const ctx = ctxOf();
      const job = await ctx.client.getJob(id);
      if (flags.json === true) printJson(job);
      else for (const line of describeJob(ctx.term, job)) ctx.term.line(line);
    });

  program
    .command('list')
    .description('list your jobs, newest first')
    .addOption(new Option('--status <status>', 'only jobs with this status').choices(JOB_STATUSES))
    .option('--limit <n>', 'at most this many jobs', positiveInt('--limit'), 20)
    .option('--json', 'print the jobs as a JSON array')
    .action(async (flags: { status?: JobStatus; limit: number; json?: boolean }) => {
      const ctx = ctxOf();
      const jobs = [];
      for await (const job of ctx.client.listJobs({ ...(flags.status === undefined ? {} : { status: flags.status }), limit: Math.min(flags.limit, 100) })) {
        jobs.push(job);
        if (jobs.length >= flags.limit) break;
      }
      if (flags.json === true) printJson(jobs);
      else if (jobs.length === 0) ctx.term.line(ctx.term.style('dim', 'no jobs'));
      else for (const job of jobs) ctx.term.line(jobLine(ctx.term, job));
    });

  program
    .command('cancel')
    .description('cancel a queued or running job')
    .argument('<id>', 'the job id')
    .option('--json', 'print the job as JSON')
    .action(async (id: string, flags: { json?: boolean }) => {
      const ctx = ctxOf();
      const job = await ctx.client.cancelJob(id);
      if (flags.json === true) printJson(job);
      else ctx.term.line(`${job.id} ${job.status === 'cancelled' ? 'cancelled' : `${job.status}, cancelling`}`);
    });

  program
    .command('delete')
    .description('delete a job and all its files (cancelling it first if it is running)')
    .argument('<id>', 'the job id')
    .action(async (id: string) => {
      const ctx = ctxOf();
      await ctx.client.deleteJob(id);
      ctx.term.line(`${id} deleted`);
    });

  program
    .command('artifacts')
    .description('list the files a job produced; --out downloads them')
    .argument('<id>', 'the job id')
    .option('-o, --out <dir>', 'save them in this directory')
    .option('--json', 'print the list as JSON')
    .action(async (id: string, flags: { out?: string; json?: boolean }) => artifactsCommand(ctxOf(), id, flags));

  return program;
}

/** One line saying what went wrong, and the exit code for it. */
function describeError(err: unknown, baseUrl: string): { message: string; code: number } {
  if (err instanceof UsageError) return { message: err.message, code: EXIT.usage };
  if (err instanceof Interrupted) return { message: 'interrupted', code: EXIT.interrupted };
  if (err instanceof ConnectionError) {
    const hint = err.code === 'connection_refused' ? ' — is the API running there? (MAESTRO_URL)' : '';
    return { message: `${err.code}: ${err.detail}${hint}`, code: EXIT.api };
  }
  if (err instanceof MaestroError) {
    const fields = err.errors.length > 0 ? ` (${err.errors.map((e) => `${e.field}: ${e.message}`).join('; ')})` : '';
    const retry = err instanceof RateLimitError || err instanceof ServiceUnavailableError ? (err.retryAfter === undefined ? '' : ` — retry in ${err.retryAfter} s`) : '';
    const hint = err.status === 401 ? ` — set MAESTRO_API_KEY for ${baseUrl}` : '';
    return { message: `${err.code} (HTTP ${err.status}): ${err.detail}${fields}${retry}${hint}`, code: EXIT.api };
  }
  return { message: err instanceof Error ? err.message : String(err), code: EXIT.jobFailed };
}

async function main(argv: readonly string[] = process.argv, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let ctx: Context | undefined;
  const program = buildProgram(() => {
    if (ctx) return ctx;
    const baseUrl = (program.opts<{ url?: string }>().url ?? env.MAESTRO_URL ?? DEFAULT_URL).replace(/\/+$/, '');
    const apiKey = env.MAESTRO_API_KEY;
    ctx = {
      client: new MaestroClient({ baseUrl, ...(apiKey ? { apiKey } : {}) }),
      baseUrl,
      term: new Terminal(process.stdout, env),
      exitCode: EXIT.ok,
    };
    return ctx;
  });
  try {
    await program.parseAsync([...argv]);
    return ctx?.exitCode ?? EXIT.ok;
  } catch (err) {
    ctx?.term.stopSpinner();
    // Commander has printed its own message (and help or the version, which exit 0).
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    const { message, code } = describeError(err, ctx?.baseUrl ?? DEFAULT_URL);
    process.stderr.write(`maestro: ${message}\n`);
    return code;
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`maestro: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
