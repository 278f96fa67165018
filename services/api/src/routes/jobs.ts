import { createHash } from 'node:crypto';
import { Router, type Request } from 'express';
import type { Queue } from 'bullmq';
import { z } from 'zod';
import type { Config } from '../../../shared/src/config';
import { AppError, ConflictError, NotFoundError, ValidationError } from '../../../shared/src/errors';
import { JOB_ID_PATTERN, newJobId } from '../../../shared/src/ids';
import { createJobRequestSchema, JOB_STATUSES, TOOL_NAMES, type JobSpec } from '../../../shared/src/job-schema';
import type { JobStore } from '../../../shared/src/job-store';
import type { Logger } from '../../../shared/src/logger';
import { cancelChannel, type QueuedJobData } from '../../../shared/src/queue';
import { parseOrThrow } from '../../../shared/src/validation';
import { sendProblem } from '../problem';
import { jobEventsHandler } from './job-events';
import type { Redis } from 'ioredis';
import type { RedisWatcher } from '../../../shared/src/redis-watch';

export interface JobsRouterDeps {
  config: Config;
  store: JobStore;
  queue: Queue<QueuedJobData>;
  redis: Redis;
  logger: Logger;
  /** Follows each event stream's own Redis connection (see job-events.ts). */
  redisWatcher?: RedisWatcher;
}

export const listQuerySchema = z.strictObject({
  status: z.enum(JOB_STATUSES).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().regex(JOB_ID_PATTERN, 'must be a cursor returned by a previous page').optional(),
});

const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;

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

function jobIdParam(req: Request): string {
  const id = req.params.id;
  // Anything that is not shaped like a job id cannot be one: answer 404 without asking Redis.
  if (typeof id !== 'string' || !JOB_ID_PATTERN.test(id)) throw new NotFoundError('No such job.');
  return id;
}

export function jobsRouter(deps: JobsRouterDeps): Router {
  const { config, store, queue, redis, logger } = deps;
  const requestSchema = createJobRequestSchema({
    maxSteps: config.JOB_MAX_STEPS_LIMIT,
    maxTimeoutSeconds: config.JOB_MAX_TIMEOUT_SECONDS,
  });
  const router = Router();

  router.post('/', async (req, res) => {
    if (!req.is('application/json')) {
      throw new AppError({ code: 'unsupported_media_type', status: 415, detail: 'Send the job as Content-Type: application/json.' });
    }
    const idempotencyKey = parseIdempotencyKey(req.get('idempotency-key'));
    const body = parseOrThrow(requestSchema, req.body, 'job');
    const caller = res.locals.caller as string;
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
      caller,
    };
    const created = await store.create(newJobId(), spec, new Date(), {
      maxActive: config.CALLER_MAX_ACTIVE_JOBS,
      ...(idempotencyKey === undefined ? {} : { idempotency: { key: idempotencyKey, fingerprint: fingerprint(body), ttlSeconds: IDEMPOTENCY_TTL_SECONDS } }),
    });
    if (created.outcome === 'conflict') {
      throw new ConflictError('This Idempotency-Key was already used with a different request body.', 'idempotency_key_reused');
    }
    if (created.outcome === 'existing') {
      // The key and its job are written by one script, so the job exists unless its retention ran out.
      const job = await store.getFor(caller, created.jobId);
      if (!job) throw new ConflictError('The job this Idempotency-Key created has expired; send a new key.', 'idempotency_job_expired');
      res.status(200).location(`/v1/jobs/${job.id}`).json(job);
      return;
    }
    if (created.outcome === 'full') {
      res.set('Retry-After', String(ACTIVE_CAP_RETRY_AFTER_S));
      sendProblem(
        res,
        429,
        'too_many_active_jobs',
        `You have ${created.active} queued or running jobs, the most CALLER_MAX_ACTIVE_JOBS (${config.CALLER_MAX_ACTIVE_JOBS}) allows; submit this one when one of them ends.`,
      );
      return;
    }
    const id = created.job.id;
    try {
      await queue.add('agent', { jobId: id }, {
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
    logger.info({ event: 'job.created', jobId: id, caller, provider: spec.provider, model: spec.model }, 'job created');
    res.status(202).location(`/v1/jobs/${id}`).json(created.job);
  });

  router.get('/', async (req, res) => {
    const query = parseOrThrow(listQuerySchema, req.query, 'query');
    const page = await store.list(res.locals.caller as string, query);
    res.json({ jobs: page.jobs.map(({ steps: _steps, ...summary }) => summary), nextCursor: page.nextCursor });
  });

  router.get('/:id', async (req, res) => {
    const job = await store.getFor(res.locals.caller as string, jobIdParam(req));
    if (!job) throw new NotFoundError('No such job.');
    res.json(job);
  });

  router.post('/:id/cancel', async (req, res) => {
    const id = jobIdParam(req);
    const caller = res.locals.caller as string;
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
    res.status(202).json(await store.getFor(caller, id));
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
    // Artifacts are made by untrusted code: never rendered as a page of this origin.
    res.set({
      'Content-Type': artifact.info.contentType,
      'Content-Length': String(artifact.data.length),
      'Content-Disposition': `attachment; filename*=UTF-8''${encodeURIComponent(name.split('/').pop() ?? 'artifact')}`,
      'Content-Security-Policy': "default-src 'none'; sandbox",
      'Cache-Control': 'private, max-age=0',
    });
    res.end(artifact.data);
  });

  return router;
}
