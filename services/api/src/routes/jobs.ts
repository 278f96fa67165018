import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Router, type Request, type Response } from 'express';
import type { Queue } from 'bullmq';
import { z } from 'zod';
import type { ArtifactStore } from '../../../shared/src/artifact-store';
import type { Config } from '../../../shared/src/config';
import { AppError, ConflictError, NotFoundError, ValidationError } from '../../../shared/src/errors';
import { JOB_ID_PATTERN, newJobId } from '../../../shared/src/ids';
import { inputNameProblem } from '../../../shared/src/file-names';
import { createJobRequestSchema, JOB_STATUSES, TOOL_NAMES, type InputInfo, type JobSpec, type JobView } from '../../../shared/src/job-schema';
import type { JobStore } from '../../../shared/src/job-store';
import type { Logger } from '../../../shared/src/logger';
import { cancelChannel, type QueuedJobData } from '../../../shared/src/queue';
import { parseOrThrow } from '../../../shared/src/validation';
import { sendDownload } from '../file-download';
import { discardUpload, readJobUpload, type UploadedFile } from '../job-upload';
import { sendProblem } from '../problem';
import { jobEventsHandler } from './job-events';
import type { Redis } from 'ioredis';
import type { RedisWatcher } from '../../../shared/src/redis-watch';
import type { RedisRoom } from '../redis-room';
import { trace } from '@opentelemetry/api';
import { currentTraceparent } from '../../../shared/src/tracing';
import { jobsCreated, rateLimited } from '../api-metrics';
import { resolveWebhookTarget } from '../../../shared/src/webhooks';

export interface JobsRouterDeps {
  config: Config;
  store: JobStore;
  /** Where inputs are written and artifacts read from. */
  files: ArtifactStore;
  queue: Queue<QueuedJobData>;
  redis: Redis;
  logger: Logger;
  /** Follows each event stream's own Redis connection (see job-events.ts). */
  redisWatcher?: RedisWatcher;
  /** Whether Redis has room for new jobs. */
  room: RedisRoom;
}

export const listQuerySchema = z.strictObject({
  status: z.enum(JOB_STATUSES).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().regex(JOB_ID_PATTERN, 'must be a cursor returned by a previous page').optional(),
});

const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;
const MIB = 1024 * 1024;

function formatBytes(bytes: number): string {
  return bytes < MIB ? `${bytes} bytes` : `${Math.round((bytes / MIB) * 10) / 10} MiB`;
}

/** `Idempotency-Key`: absent, or 1–255 visible ASCII characters. */
function parseIdempotencyKey(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!/^[\x21-\x7e]{1,255}$/.test(raw)) {
    throw new ValidationError('Invalid Idempotency-Key: use 1 to 255 visible ASCII characters.', [
      { field: 'Idempotency-Key', message: 'must be 1 to 255 visible ASCII characters' },
    ]);
  }
  return raw;
}

/** A digest of the request that does not depend on key order, so equal bodies match. */
function fingerprint(body: unknown): string {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(canonical)
      : v !== null && typeof v === 'object'
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]))
        : v;
  return createHash('sha256').update(JSON.stringify(canonical(body))).digest('hex');
}

/**
 * Retry-After for a caller at its active-job cap. A slot frees only when one of its jobs ends, and an
 * agent job takes tens of seconds to minutes (model calls plus executions): half a minute lets a batch
 * client pace itself without spending its rate limit on refusals. Anyone wanting the exact moment can
 * follow one of its jobs' event streams.
 */
const ACTIVE_CAP_RETRY_AFTER_S = 30;

/**
 * Retry-After while Redis is nearly full. Room comes back as running jobs finish (a finished job's
 * history leaves Redis for its record on disk) or as old jobs expire: tens of seconds at the least.
 */
const REDIS_FULL_RETRY_AFTER_S = 30;

function jobIdParam(req: Request): string {
  const id = req.params.id;
  // Anything that is not shaped like a job id cannot be one: answer 404 without asking Redis.
  if (typeof id !== 'string' || !JOB_ID_PATTERN.test(id)) throw new NotFoundError('No such job.');
  return id;
}

/**
 * Refuses a job's webhook URL that webhooks being off, or the SSRF guard, would never let a worker
 * send to: its host is resolved now and every address judged (the worker judges again, and connects
 * only to the address it judged). The detail says why, never the URL (its path may hold a token).
 */
async function checkWebhook(config: Config, url: string): Promise<void> {
  if (!config.WEBHOOKS_ENABLED) {
    throw new AppError({
      code: 'webhooks_disabled',
      status: 400,
      detail: 'This deployment does not send webhooks (WEBHOOKS_ENABLED is off): send the job without `webhook`.',
    });
  }
  const target = await resolveWebhookTarget(url, { allowPrivate: config.WEBHOOK_ALLOW_PRIVATE });
  if (!target.ok) {
    throw new AppError({
      code: 'webhook_url_not_allowed',
      status: 400,
      detail: `webhook.url is not allowed: ${target.reason}. Webhooks go to public http(s) addresses only.`,
    });
  }
}

/** What creating a job came to: the job (made now, or the Idempotency-Key's), or a refusal to answer with. */
export type JobCreation =
  | { outcome: 'created' | 'existing'; job: JobView }
  | { outcome: 'refused'; status: 413 | 429; code: string; detail: string; retryAfterSeconds?: number };

/** Creates a job for `caller` from a request body (not yet validated), as `POST /v1/jobs` does. */
export type JobCreator = (caller: string, raw: unknown, uploads: readonly UploadedFile[], idempotencyKey: string | undefined) => Promise<JobCreation>;

/**
 * Job creation, shared by `POST /v1/jobs` and the MCP tool `run_job` (mcp.ts): validation, the caller's
 * caps and quota, the fair order and the queue. Invalid input, a reused Idempotency-Key and an
 * unavailable queue are thrown (AppErrors); a cap or quota refusal is returned.
 */
export function jobCreator(deps: Pick<JobsRouterDeps, 'config' | 'store' | 'files' | 'queue' | 'logger'>): JobCreator {
  const { config, store, files, queue, logger } = deps;
  const requestSchema = createJobRequestSchema({
    maxSteps: config.JOB_MAX_STEPS_LIMIT,
    maxTimeoutSeconds: config.JOB_MAX_TIMEOUT_SECONDS,
  });
  /** Creates and enqueues a job from its request, with its uploaded input files (none for a JSON request). */
  return async function createJob(caller, raw, uploads, idempotencyKey) {
    const body = parseOrThrow(requestSchema, raw, 'job');
    const inputs: InputInfo[] = uploads.map(({ name, size, contentType, sha256 }) => ({ name, size, contentType, sha256 }));
    if (inputs.length > 0 && body.tools !== undefined && !body.tools.includes('code_executor')) {
      throw new ValidationError('Input files are read with code_executor: enable that tool, or send the job without files.', [
        { field: 'tools', message: 'must include code_executor when the job has input files' },
      ]);
    }
    if (body.webhook !== undefined) await checkWebhook(config, body.webhook.url);
    const provider = body.provider ?? config.DEFAULT_PROVIDER;
    const spec: JobSpec = {
      task: body.task,
      provider,
      model: body.model ?? (provider === 'openai' ? config.OPENAI_MODEL : config.ANTHROPIC_MODEL),
      ...(body.system === undefined ? {} : { system: body.system }),
      tools: body.tools ?? [...TOOL_NAMES],
      maxSteps: body.maxSteps,
      timeoutSeconds: body.timeoutSeconds,
      metadata: body.metadata ?? {},
      inputs,
      ...(body.webhook === undefined ? {} : { webhook: { url: body.webhook.url } }),
      caller,
    };
    const newId = newJobId();
    // The files are in place before the job exists, so no worker can start it without them.
    if (uploads.length > 0) await files.adoptInputs(newId, uploads);
    let created;
    try {
      // A JSON request's fingerprint is its body's, as it has always been; an upload's covers its files too.
      const print = uploads.length === 0 ? fingerprint(body) : fingerprint({ job: body, inputs: inputs.map((f) => [f.name, f.sha256]) });
      created = await store.create(newId, spec, new Date(), {
        maxActive: config.CALLER_MAX_ACTIVE_JOBS,
        storageQuotaBytes: config.ARTIFACT_QUOTA_MB_PER_CALLER * MIB,
        ...(idempotencyKey === undefined ? {} : { idempotency: { key: idempotencyKey, fingerprint: print, ttlSeconds: IDEMPOTENCY_TTL_SECONDS } }),
      });
    } catch (err) {
      if (uploads.length > 0) await files.removeJob(newId);
      throw err;
    }
    if (created.outcome !== 'created' && uploads.length > 0) await files.removeJob(newId);
    if (created.outcome === 'conflict') {
      throw new ConflictError('This Idempotency-Key was already used with a different request body.', 'idempotency_key_reused');
    }
    if (created.outcome === 'existing') {
      // The key and its job are written by one script, so the job exists unless its retention ran out.
      const job = await store.getFor(caller, created.jobId);
      if (!job) throw new ConflictError('The job this Idempotency-Key created has expired; send a new key.', 'idempotency_job_expired');
      return { outcome: 'existing', job };
    }
    if (created.outcome === 'full') {
      rateLimited.inc({ limit: 'active_jobs' });
      return {
        outcome: 'refused',
        status: 429,
        code: 'too_many_active_jobs',
        retryAfterSeconds: ACTIVE_CAP_RETRY_AFTER_S,
        detail: `You have ${created.active} queued or running jobs, the most CALLER_MAX_ACTIVE_JOBS (${config.CALLER_MAX_ACTIVE_JOBS}) allows; submit this one when one of them ends.`,
      };
    }
    if (created.outcome === 'quota') {
      const total = inputs.reduce((sum, f) => sum + f.size, 0);
      return {
        outcome: 'refused',
        status: 413,
        code: 'storage_quota_exceeded',
        detail: `These input files (${formatBytes(total)}) would take your stored files (${formatBytes(created.stored)} now) past your quota of ${config.ARTIFACT_QUOTA_MB_PER_CALLER} MiB (ARTIFACT_QUOTA_MB_PER_CALLER); delete jobs you no longer need.`,
      };
    }
    const id = created.job.id;
    try {
      // The trace's context rides with the job, so the worker's spans join the trace this request began.
      const traceparent = currentTraceparent();
      await queue.add('agent', traceparent === undefined ? { jobId: id } : { jobId: id, traceparent }, {
        jobId: id,
        // The caller's place in the fair order (see job-store CREATE); BullMQ keeps it through retries.
        priority: created.priority,
        attempts: config.JOB_ATTEMPTS,
        backoff: { type: 'exponential', delay: 1000 },
        removeOnComplete: true,
        removeOnFail: true,
      });
    } catch (err) {
      await store
        .finish(id, { status: 'failed', stopReason: 'error', error: { code: 'enqueue_failed', message: 'The job could not be queued.' } })
        .catch(() => undefined);
      if (idempotencyKey !== undefined) await store.releaseIdempotencyKey(caller, idempotencyKey).catch(() => undefined);
      throw new AppError({ code: 'queue_unavailable', status: 503, detail: 'The job queue is unavailable; try again later.', cause: err });
    }
    jobsCreated.inc({ provider: spec.provider });
    trace.getActiveSpan()?.setAttributes({ 'maestro.job.id': id, 'maestro.job.provider': spec.provider, 'maestro.job.inputs': inputs.length });
    logger.info({ event: 'job.created', jobId: id, caller, provider: spec.provider, model: spec.model, inputs: inputs.length }, 'job created');
    return { outcome: 'created', job: created.job };
  };
}

/**
 * Cancels the caller's job, as `POST /v1/jobs/{id}/cancel` and the MCP tool `cancel_job` do, and
 * returns it as it is then. Another caller's job is not found, like a missing one; an ended one is a conflict.
 */
export async function cancelJob(deps: Pick<JobsRouterDeps, 'config' | 'store' | 'queue' | 'redis' | 'logger'>, caller: string, id: string): Promise<JobView | null> {
  const { config, store, queue, redis, logger } = deps;
  const job = await store.getFor(caller, id);
  if (!job) throw new NotFoundError('No such job.');
  const before = await store.requestCancel(id);
  if (before === 'succeeded' || before === 'failed') {
    throw new ConflictError(`The job has already ended (${before}).`, 'job_finished');
  }
  if (before === 'queued') {
    // A waiting or delayed job is removed outright; one a worker has locked is not, and gets the message below.
    const removed = await queue.remove(id);
    if (removed === 1) {
      await store.finish(id, { status: 'cancelled', stopReason: 'cancelled', error: { code: 'cancelled', message: 'Cancelled before it started.' } });
    }
  }
  if (before === 'queued' || before === 'running') await redis.publish(cancelChannel(config.MAESTRO_PREFIX), id);
  logger.info({ event: 'job.cancel_requested', jobId: id, caller, status: before }, 'cancel requested');
  return store.getFor(caller, id);
}

export function jobsRouter(deps: JobsRouterDeps): Router {
  const { config, store, files, queue, redis, logger } = deps;
  const uploadLimits = {
    maxFiles: config.JOB_INPUT_MAX_FILES,
    maxTotalBytes: config.JOB_INPUT_MAX_MB * MIB,
    maxJobBytes: config.BODY_LIMIT_KB * 1024,
  };
  const create = jobCreator(deps);
  const router = Router();

  router.post('/', async (req, res) => {
    const multipart = req.is('multipart/form-data') !== false;
    if (!multipart && !req.is('application/json')) {
      throw new AppError({
        code: 'unsupported_media_type',
        status: 415,
        detail: 'Send the job as Content-Type: application/json, or as multipart/form-data with a `job` part and input files.',
      });
    }
    const idempotencyKey = parseIdempotencyKey(req.get('idempotency-key'));
    // Before an upload is read: nothing is taken in that could not be stored.
    if (await deps.room.nearlyFull()) {
      res.set('Retry-After', String(REDIS_FULL_RETRY_AFTER_S));
      sendProblem(
        res,
        503,
        'redis_nearly_full',
        'The job store is nearly full (REDIS_NEARLY_FULL_PERCENT of Redis maxmemory), so new jobs wait until running ones finish; existing jobs can still be read. Retry later.',
      );
      return;
    }
    if (!multipart) {
      await createJob(req, res, req.body, [], idempotencyKey);
      return;
    }
    const upload = await readJobUpload(req, { limits: uploadLimits, tempDir: files.uploadDir() });
    try {
      await createJob(req, res, upload.job, upload.files, idempotencyKey);
    } finally {
      // Adopted files have moved into their job; whatever is left here belongs to no job.
      await discardUpload(upload.files);
    }
  });

  /** Creates and enqueues a job from its request and answers for it (see jobCreator). */
  async function createJob(_req: Request, res: Response, raw: unknown, uploads: readonly UploadedFile[], idempotencyKey: string | undefined): Promise<void> {
    const created = await create(res.locals.caller as string, raw, uploads, idempotencyKey);
    if (created.outcome === 'refused') {
      if (created.retryAfterSeconds !== undefined) res.set('Retry-After', String(created.retryAfterSeconds));
      sendProblem(res, created.status, created.code, created.detail);
      return;
    }
    res.status(created.outcome === 'created' ? 202 : 200).location(`/v1/jobs/${created.job.id}`).json(created.job);
  }

  router.get('/', async (req, res) => {
    const query = parseOrThrow(listQuerySchema, req.query, 'query');
    const page = await store.list(res.locals.caller as string, query);
    res.json({ jobs: page.jobs, nextCursor: page.nextCursor });
  });

  router.get('/:id', async (req, res) => {
    const job = await store.getFor(res.locals.caller as string, jobIdParam(req));
    if (!job) throw new NotFoundError('No such job.');
    res.json(job);
  });

  router.delete('/:id', async (req, res) => {
    const id = jobIdParam(req);
    const caller = res.locals.caller as string;
    if ((await store.owner(id)) !== caller) throw new NotFoundError('No such job.');
    // Stopped first, so that no worker goes on writing for it; whatever a late worker still tries
    // to write finds no job and is dropped (see job-store).
    const before = await store.requestCancel(id);
    if (before === 'queued' || before === 'running') {
      await queue.remove(id);
      await redis.publish(cancelChannel(config.MAESTRO_PREFIX), id);
    }
    await store.remove(id);
    await files.removeJob(id);
    logger.info({ event: 'job.deleted', jobId: id, caller, status: before }, 'job deleted');
    res.status(204).end();
  });

  router.post('/:id/cancel', async (req, res) => {
    res.status(202).json(await cancelJob(deps, res.locals.caller as string, jobIdParam(req)));
  });

  router.get(
    '/:id/events',
    jobEventsHandler({
      store,
      redis,
      logger,
      redisWatcher: deps.redisWatcher,
      heartbeatMs: config.SSE_HEARTBEAT_MS,
      jobIdParam,
      prefix: config.MAESTRO_PREFIX,
      maxStreamsPerCaller: config.CALLER_MAX_EVENT_STREAMS,
    }),
  );

  router.get('/:id/artifacts/*name', async (req, res) => {
    const id = jobIdParam(req);
    const segments = (req.params as { name?: string[] }).name ?? [];
    const name = segments.join('/');
    if (name.length === 0 || name.length > 1024) throw new NotFoundError('No such artifact.');
    const artifact = await store.artifact(res.locals.caller as string, id, name);
    if (!artifact) throw new NotFoundError('No such artifact.');
    const { file } = artifact;
    if (file !== undefined) {
      await sendDownload(req, res, artifact, (range) => files.open(id, { kind: 'artifact', file }, range));
      return;
    }
    // Made before the artifact store: its bytes are still in Redis until the job expires.
    const bytes = await store.legacyArtifactBytes(id, name);
    if (!bytes) throw new NotFoundError('No such artifact.');
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    await sendDownload(req, res, { ...artifact, size: bytes.length, sha256 }, (range) =>
      Promise.resolve(Readable.from([range ? bytes.subarray(range.start, range.end + 1) : bytes])),
    );
  });

  router.get('/:id/inputs/:name', async (req, res) => {
    const id = jobIdParam(req);
    const name = req.params.name as string;
    if (inputNameProblem(name) !== null) throw new NotFoundError('No such input file.');
    const input = await store.input(res.locals.caller as string, id, name);
    if (!input) throw new NotFoundError('No such input file.');
    await sendDownload(req, res, input, (range) => files.open(id, { kind: 'input', name }, range));
  });

  return router;
}
