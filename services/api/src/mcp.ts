/**
 * The MCP server at `/mcp`: the job API as four tools (`run_job`, `get_job`, `list_jobs`,
 * `cancel_job`) for MCP clients, over Streamable HTTP with the official SDK.
 *
 * It is stateless: each POST gets an McpServer and a transport of its own, built for the caller that
 * authentication found (app.ts mounts it behind the same authentication, rate limit and host check
 * as /v1), so a tool can only ever reach that caller's jobs, and any replica answers any request.
 * GET and DELETE (a standalone event stream, ending a session) are 405, as the transport spec allows
 * a server without sessions. The tools do what the REST routes do, through the same code (jobCreator,
 * cancelJob, the job store); another caller's job is "No such job.", exactly like a missing one.
 *
 * Results are bounded: a job comes back as a brief (texts clipped, the last steps only) with the
 * REST path of the whole job. Errors are tool results with `isError: true` and a message naming the
 * field or the reason; an unexpected fault is logged with an id and answered with that id only.
 * Nothing here logs a task, a result or a key.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Router, type RequestHandler } from 'express';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { CallToolResult, ServerNotification, ServerRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { AppError, ValidationError } from '../../shared/src/errors';
import { JOB_ID_PATTERN } from '../../shared/src/ids';
import { createJobRequestSchema, JOB_STATUSES, TERMINAL_STATUSES, type JobStatus, type JobView, type Step } from '../../shared/src/job-schema';
import type { JobSummary } from '../../shared/src/job-store';
import { sendProblem } from './problem';
import type { RedisRoom } from './redis-room';
import { cancelJob, jobCreator, type JobsRouterDeps } from './routes/jobs';

export type McpDeps = Pick<JobsRouterDeps, 'config' | 'store' | 'files' | 'queue' | 'redis' | 'logger'> & { room: RedisRoom };

/**
 * `run_job` waits this long by default: under the 60 s request timeout MCP clients commonly use (the
 * SDK's own default), so a default call is answered before its client gives up on it.
 */
export const DEFAULT_WAIT_SECONDS = 50;
export const MAX_WAIT_SECONDS = 300;
/** While `run_job` waits, a client that sent a progress token hears how the job is doing this often. */
const PROGRESS_EVERY_MS = 5000;

/** Bounds on what a tool result carries; the REST API has the job whole. */
const RESULT_CHARS = 20_000;
const TASK_CHARS = 2_000;
const STEP_TEXT_CHARS = 1_000;
const STEPS_SHOWN = 20;
const LIST_TEXT_CHARS = 300;

const SERVER_INFO = { name: 'maestro', version: '1.0.0' };
const INSTRUCTIONS =
  'Maestro runs agent jobs: a model works on a task, running Python in a sandbox, until it answers. ' +
  'run_job starts one and waits for its result (up to waitSeconds); a job still running after that keeps going: ' +
  'follow it with get_job, or stop it with cancel_job. list_jobs pages through your jobs, newest first.';

const jobId = z.string().regex(JOB_ID_PATTERN, 'must be a job id, as run_job or list_jobs return it').describe('The job id, as run_job or list_jobs return it.');

/** The router mounted at /mcp (after authentication and the rate limit). */
export function mcpRouter(deps: McpDeps): Router {
  const { config, logger } = deps;
  const create = jobCreator(deps);
  const request = createJobRequestSchema({ maxSteps: config.JOB_MAX_STEPS_LIMIT, maxTimeoutSeconds: config.JOB_MAX_TIMEOUT_SECONDS }).shape;
  const schemas = {
    runJob: z.strictObject({
      task: request.task.describe('What the agent should do, in plain language (1 to 100,000 characters).'),
      provider: request.provider.describe('The model provider; the deployment default when left out.'),
      model: request.model.describe("The provider's model name; the deployment default when left out."),
      maxSteps: request.maxSteps.describe(`Model calls at most (1 to ${config.JOB_MAX_STEPS_LIMIT}).`),
      timeoutSeconds: request.timeoutSeconds.describe(`The job's deadline from its start, in seconds (1 to ${config.JOB_MAX_TIMEOUT_SECONDS}).`),
      waitSeconds: z
        .number()
        .int()
        .min(0)
        .max(MAX_WAIT_SECONDS)
        .default(DEFAULT_WAIT_SECONDS)
        .describe(
          `How long to wait for the job to end before returning it still running (0 to ${MAX_WAIT_SECONDS}). Over ${DEFAULT_WAIT_SECONDS}, make sure your client's request timeout is longer, or send a progress token: progress is reported every 5 s.`,
        ),
    }),
    getJob: z.strictObject({ id: jobId }),
    listJobs: z.strictObject({
      status: z.enum(JOB_STATUSES).optional().describe('Only jobs with this status.'),
      limit: z.number().int().min(1).max(100).default(20).describe('Jobs per page (1 to 100).'),
      cursor: z
        .string()
        .regex(JOB_ID_PATTERN, 'must be a nextCursor returned by a previous page')
        .optional()
        .describe('The nextCursor of the previous page.'),
    }),
    cancelJob: z.strictObject({ id: jobId }),
  };
  const jobOutput = z.looseObject({
    id: z.string(),
    status: z.enum(JOB_STATUSES),
    result: z.looseObject({ output: z.string() }).nullable(),
    error: z.looseObject({ code: z.string(), message: z.string() }).nullable(),
    usage: z.looseObject({ inputTokens: z.number(), outputTokens: z.number() }),
  });
  const listOutput = z.object({ jobs: z.array(z.looseObject({ id: z.string(), status: z.enum(JOB_STATUSES) })), nextCursor: z.string().nullable() });

  /** One caller's server: every tool closes over `caller`, and over nothing a request could change. */
  function serverFor(caller: string): McpServer {
    const server = new McpServer(SERVER_INFO, { instructions: INSTRUCTIONS });
    const guarded = <A>(tool: string, run: (args: A, signal: AbortSignal, progress: Progress) => Promise<CallToolResult>) => {
      return async (args: A, extra: ToolExtra): Promise<CallToolResult> => {
        try {
          return await run(args, extra.signal, progressReporter(extra));
        } catch (err) {
          return toolFailure(err, (errorId) => logger.error({ event: 'mcp.tool_failed', tool, caller, errorId, err }, 'MCP tool failed'));
        }
      };
    };

    server.registerTool(
      'run_job',
      {
        title: 'Run a job',
        description:
          'Starts an agent job (a model working on `task`, running Python in a sandbox when it needs to) and waits up to waitSeconds for it to end. ' +
          'Returns the job: its status, its result or error, its token usage and its last steps in brief. ' +
          'If it is still queued or running when the wait ends, it goes on: call get_job with its id later, or cancel_job to stop it.',
        inputSchema: schemas.runJob,
        outputSchema: jobOutput.extend({ note: z.string().optional() }),
      },
      guarded('run_job', async ({ waitSeconds, ...body }: z.output<typeof schemas.runJob>, signal, progress) => {
        if (await deps.room.nearlyFull()) {
          return failure('redis_nearly_full', 'The job store is nearly full, so new jobs wait until running ones finish; existing jobs can still be read. Retry later.');
        }
        const created = await create(caller, body, [], undefined);
        if (created.outcome === 'refused') return failure(created.code, created.detail);
        const id = created.job.id;
        logger.info({ event: 'mcp.run_job', jobId: id, caller, waitSeconds }, 'MCP run_job');
        const status = await waitForEnd(deps.store, id, waitSeconds * 1000, signal, (waited, now) =>
          progress(waited / 1000, waitSeconds, `Job ${id} is ${now}.`),
        );
        if (status === null) return failure('not_found', 'The job was deleted while it ran.');
        const job = await deps.store.getFor(caller, id);
        if (!job) return failure('not_found', 'The job was deleted while it ran.');
        const ended = TERMINAL_STATUSES.includes(job.status);
        return success({
          ...jobBrief(job),
          ...(ended
            ? {}
            : { note: `The job is still ${job.status} after ${waitSeconds} s and goes on: call get_job with id ${id} to see how it ends, or cancel_job to stop it.` }),
        });
      }),
    );

    server.registerTool(
      'get_job',
      {
        title: 'Get a job',
        description:
          'One of your jobs: status, result or error, token usage, artifacts and its last steps in brief (long texts are clipped; GET /v1/jobs/{id} has it whole).',
        inputSchema: schemas.getJob,
        outputSchema: jobOutput,
        annotations: { readOnlyHint: true },
      },
      guarded('get_job', async ({ id }: z.output<typeof schemas.getJob>) => {
        const job = await deps.store.getFor(caller, id);
        return job ? success(jobBrief(job)) : failure('not_found', 'No such job.');
      }),
    );

    server.registerTool(
      'list_jobs',
      {
        title: 'List jobs',
        description: 'Your jobs, newest first, in pages: pass nextCursor back as cursor for the next page (it is null on the last one).',
        inputSchema: schemas.listJobs,
        outputSchema: listOutput,
        annotations: { readOnlyHint: true },
      },
      guarded('list_jobs', async (query: z.output<typeof schemas.listJobs>) => {
        const page = await deps.store.list(caller, query);
        return success({ jobs: page.jobs.map(listBrief), nextCursor: page.nextCursor });
      }),
    );

    server.registerTool(
      'cancel_job',
      {
        title: 'Cancel a job',
        description:
          'Stops one of your jobs: a queued one at once, a running one within about a second (it then ends cancelled). A job that already succeeded or failed cannot be cancelled.',
        inputSchema: schemas.cancelJob,
        outputSchema: jobOutput,
        annotations: { destructiveHint: true, idempotentHint: true },
      },
      guarded('cancel_job', async ({ id }: z.output<typeof schemas.cancelJob>) => {
        const job = await cancelJob(deps, caller, id);
        return job ? success(jobBrief(job)) : failure('not_found', 'No such job.');
      }),
    );
    return server;
  }

  const router = Router();
  router.post('/', async (req, res) => {
    const server = serverFor(res.locals.caller as string);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    // A client gone mid-call aborts the call's signal (run_job stops waiting; the job goes on).
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
  const notAllowed: RequestHandler = (_req, res) => {
    res.set('Allow', 'POST');
    sendProblem(res, 405, 'method_not_allowed', 'This MCP server keeps no sessions: send every message with POST.');
  };
  router.get('/', notAllowed);
  router.delete('/', notAllowed);
  return router;
}

type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

type Progress = (progress: number, total: number, message: string) => void;

/** Reports progress when the call asked for it (a progress token); a no-op otherwise. */
function progressReporter(extra: ToolExtra): Progress {
  const token = extra._meta?.progressToken;
  if (token === undefined) return () => undefined;
  return (progress, total, message) => {
    extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress, total, message } }).catch(() => undefined);
  };
}

/**
 * Waits for the job to end, up to `waitMs`, reading only its status (one HGET, every 100 ms at first,
 * then at most every second). Returns the status it had last: terminal, still active when the wait
 * or the call ended, or null when the job is gone.
 */
async function waitForEnd(
  store: McpDeps['store'],
  id: string,
  waitMs: number,
  signal: AbortSignal,
  onProgress: (waitedMs: number, status: JobStatus) => void,
): Promise<JobStatus | null> {
  const started = Date.now();
  let delay = 100;
  let reported = started;
  for (;;) {
    const status = await store.status(id);
    if (status === null || TERMINAL_STATUSES.includes(status)) return status;
    const now = Date.now();
    const left = started + waitMs - now;
    if (left <= 0 || signal.aborted) return status;
    if (now - reported >= PROGRESS_EVERY_MS || reported === started) {
      onProgress(now - started, status);
      reported = now;
    }
    try {
      await sleep(Math.min(delay, left), undefined, { signal });
    } catch {
      return status; // the call was abandoned
    }
    delay = Math.min(delay * 2, 1000);
  }
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}… [${text.length - max} more characters]`;
}

function stepBrief(step: Step): Record<string, unknown> {
  if (step.type === 'model') {
    return {
      index: step.index,
      type: 'model',
      text: clip(step.text, STEP_TEXT_CHARS),
      toolCalls: step.toolCalls.map((c) => ({ name: c.name, arguments: clip(c.arguments, STEP_TEXT_CHARS) })),
    };
  }
  return { index: step.index, type: 'tool', name: step.name, output: clip(step.output, STEP_TEXT_CHARS), isError: step.isError };
}

/** A job as a tool returns it: what a model needs to act on, bounded in size. */
function jobBrief(job: JobView): Record<string, unknown> & { id: string; status: JobStatus } {
  const steps = job.steps;
  return {
    id: job.id,
    status: job.status,
    task: clip(job.task, TASK_CHARS),
    provider: job.provider,
    model: job.model,
    createdAt: job.createdAt,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
    attempts: job.attempts,
    stopReason: job.stopReason,
    result: job.result && { output: clip(job.result.output, RESULT_CHARS) },
    error: job.error,
    usage: job.usage,
    inputs: job.inputs.map((f) => f.name),
    artifacts: job.artifacts.map(({ name, size, contentType, step }) => ({ name, size, contentType, step, path: `/v1/jobs/${job.id}/artifacts/${name}` })),
    stepCount: steps.length,
    steps: steps.slice(-STEPS_SHOWN).map(stepBrief),
    path: `/v1/jobs/${job.id}`,
  };
}

function listBrief(job: JobSummary): Record<string, unknown> {
  return {
    id: job.id,
    status: job.status,
    task: clip(job.task, LIST_TEXT_CHARS),
    createdAt: job.createdAt,
    finishedAt: job.finishedAt,
    stopReason: job.stopReason,
    result: job.result && { output: clip(job.result.output, LIST_TEXT_CHARS) },
    error: job.error,
  };
}

function success(value: Record<string, unknown>): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(value) }], structuredContent: value };
}

function failure(code: string, message: string): CallToolResult {
  return { isError: true, content: [{ type: 'text', text: `${code}: ${message}` }] };
}

/** An error thrown by a tool, as the tool's answer: AppErrors say what they are, anything else only its id. */
function toolFailure(err: unknown, log: (errorId: string) => void): CallToolResult {
  if (err instanceof ValidationError) {
    const fields = err.errors.map((e) => `${e.field || '(body)'}: ${e.message}`);
    return failure(err.code, fields.length > 1 ? `${err.detail} All problems: ${fields.join('; ')}.` : err.detail);
  }
  // An AppError's detail is safe to show by contract; one of the server's side is logged, as problem.ts does.
  if (err instanceof AppError && err.status < 500) return failure(err.code, err.detail);
  if (redisUnavailable(err)) return failure('unavailable', 'The job store is unavailable; try again later.');
  const errorId = randomUUID();
  log(errorId);
  if (err instanceof AppError) return failure(err.code, `${err.detail} (errorId ${errorId})`);
  return failure('internal', `Internal error. Quote errorId ${errorId} when reporting it.`);
}

/** ioredis's ways of saying the server cannot be reached right now (as problem.ts judges them). */
function redisUnavailable(err: unknown): boolean {
  return err instanceof Error && (err.name === 'MaxRetriesPerRequestError' || /Connection is closed|Stream isn't writeable|ECONNREFUSED|ETIMEDOUT/.test(err.message));
}
