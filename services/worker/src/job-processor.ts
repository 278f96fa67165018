import { SpanKind, trace, type Span } from '@opentelemetry/api';
import { DelayedError, type Job } from 'bullmq';
import type { JobSpec } from '../../shared/src/job-schema';
import type { Logger } from '../../shared/src/logger';
import { JOBS_QUEUE, type QueuedJobData } from '../../shared/src/queue';
import { contextFrom, inSpan } from '../../shared/src/tracing';
import { runAgentLoop } from './agent-loop';
import type { ModelProvider } from './providers/model-provider';
import type { ArtifactStore } from '../../shared/src/artifact-store';
import { AttemptSuperseded, type JobStore, type SaveArtifactOutcome } from '../../shared/src/job-store';
import type { Artifact, SandboxSession } from './sandbox/types';
import type { ArtifactSink, Tool } from './tools/tool';
import { isUnknownError, verdictOf, WorkerLost, type Verdict } from './verdict';

/** Why a running job's controller was aborted. */
export class CancelledByUser extends Error {
  override readonly name = 'CancelledByUser';
}
export class WorkerShuttingDown extends Error {
  override readonly name = 'WorkerShuttingDown';
}

export interface ProcessorDeps {
  store: JobStore;
  providerFor(name: JobSpec['provider']): ModelProvider;
  /** The job's sandbox; `inputs` when the job has input files, to mount at /input. */
  sandboxFor(jobId: string, deadline: Date, opts: { inputs: boolean }): SandboxSession;
  /** Where input and artifact bytes live. */
  files: ArtifactStore;
  tools: readonly Tool[];
  allowedDirs: string[];
  sandboxTimeoutMs: number;
  maxOutputTokens: number;
  /** A job keeps at most `jobFiles` artifacts and `jobBytes` of them over all its attempts; its caller, `callerBytes` in all. */
  quotas: { jobFiles: number; jobBytes: number; callerBytes: number };
  logger: Logger;
}

/** Where a started attempt stands: which one it is, of how many, and until when the job may run. */
interface Attempt {
  spec: JobSpec;
  deadline: Date;
  /** The store's `attempts` after this start, less the free hand-backs: the job's one attempt counter (see AttemptEnd.attempt). */
  number: number;
  max: number;
  /** Whether a hand-back now would spend no attempt. */
  freeHandBack: boolean;
  /** The store's `attempts` as this start left it: the fence every write of this attempt carries. */
  fence: number;
}

/**
 * Runs queued jobs. Keeps an AbortController per running job so a cancel (its message, or its flag
 * found by pollCancels) or the shutdown can stop it. An attempt's fate is decided by verdictOf and
 * recorded in the store before BullMQ hears of it: a final verdict completes the BullMQ job, anything
 * else puts it back in the queue (putBack). BullMQ never retries a job on its own, and fails one only
 * when the processor reached no verdict (see the worker's `failed` handler).
 */
export class JobProcessor {
  private readonly running = new Map<string, AbortController>();
  private polling = false;

  constructor(private readonly deps: ProcessorDeps) {}

  /** Stops a running job on this worker, if it is here. */
  cancel(jobId: string): void {
    this.running.get(jobId)?.abort(new CancelledByUser('cancelled'));
  }

  /** Hands every running job back to the queue (they resume from their checkpoints elsewhere). */
  abortAll(): void {
    for (const controller of this.running.values()) controller.abort(new WorkerShuttingDown('worker shutting down'));
  }

  /**
   * Stops the running jobs whose owners cancelled or deleted them, read from the store: the cancel
   * flag (or the job's absence) stays where a cancel message is gone once published, so a worker that
   * missed one (its subscriber reconnecting) still stops. One read for all of this worker's jobs; a
   * poll still under way is not doubled.
   */
  async pollCancels(): Promise<void> {
    if (this.polling || this.running.size === 0) return;
    this.polling = true;
    try {
      for (const jobId of await this.deps.store.cancelRequested([...this.running.keys()])) this.cancel(jobId);
    } finally {
      this.polling = false;
    }
  }

  get activeCount(): number {
    return this.running.size;
  }

  /**
   * One attempt at a job, in a span (the messaging conventions' `process jobs`) that continues the
   * trace its POST began: the queued job's data carries the W3C traceparent across the queue.
   */
  readonly process = (job: Job<QueuedJobData>, token?: string): Promise<void> =>
    inSpan(
      `process ${JOBS_QUEUE}`,
      {
        kind: SpanKind.CONSUMER,
        parent: contextFrom(job.data.traceparent),
        attributes: {
          'messaging.system': 'bullmq',
          'messaging.operation.type': 'process',
          'messaging.destination.name': JOBS_QUEUE,
          'maestro.job.id': job.data.jobId,
        },
        notAFailure: (err) => err instanceof DelayedError,
      },
      (span) => this.processNow(job, token, span),
    );

  private async processNow(job: Job<QueuedJobData>, token: string | undefined, span: Span): Promise<void> {
    const jobId = job.data.jobId;
    const { store } = this.deps;
    const logger = this.deps.logger.child({ jobId });
    const controller = new AbortController();
    // Registered before the status check so a cancel published in between is not missed.
    this.running.set(jobId, controller);
    try {
      const started = await store.markRunning(jobId, new Date());
      if (started.outcome === 'missing') {
        logger.warn({ event: 'job.missing' }, 'job record missing; dropping');
        return;
      }
      if (started.outcome === 'cancel-requested') {
        await store.finish(jobId, { status: 'cancelled', stopReason: 'cancelled', error: { code: 'cancelled', message: 'Cancelled before it started.' } });
        return;
      }
      if (started.outcome !== 'started') return;
      // The job's own setting, fixed when it was submitted; BullMQ's count of attempts is not read. A
      // start after a hand-back on shutdown spends no attempt (up to a bound, so that a job cannot
      // circle for ever among workers that keep stopping).
      const free = Math.min(started.handBacks, FREE_HAND_BACKS);
      const attempt: Attempt = {
        spec: started.spec,
        deadline: started.deadline,
        number: started.attempts - free,
        max: job.opts.attempts ?? 1,
        freeHandBack: started.handBacks < FREE_HAND_BACKS,
        fence: started.attempts,
      };
      logger.info({ event: 'job.started', attempt: attempt.number }, 'job started');
      span.setAttributes({ 'maestro.job.attempt': attempt.number, 'maestro.job.provider': attempt.spec.provider });
      if (attempt.number > attempt.max) {
        // Every attempt the processor sees to its end on the last one gets a final verdict: a start
        // past it means the worker of the last attempt died (or lost the job) before its verdict.
        const verdict = verdictOf({
          error: new WorkerLost(),
          cancelRequested: false,
          shuttingDown: false,
          freeHandBack: false,
          deadlinePassed: Date.now() >= attempt.deadline.getTime(),
          attempt: attempt.number,
          maxAttempts: attempt.max,
          unknownErrors: 0,
        });
        await this.record(jobId, verdict, attempt.fence, logger);
        return;
      }
      await this.run(jobId, attempt, controller, { job, token }, logger);
    } finally {
      this.running.delete(jobId);
    }
  }

  private async run(
    jobId: string,
    attempt: Attempt,
    controller: AbortController,
    bull: { job: Job<QueuedJobData>; token: string | undefined },
    logger: Logger,
  ): Promise<void> {
    const { store } = this.deps;
    const { spec, deadline } = attempt;
    const remainingMs = deadline.getTime() - Date.now();
    const timeout = AbortSignal.timeout(Math.max(1, remainingMs));
    const signal = AbortSignal.any([controller.signal, timeout]);
    const sandbox = this.deps.sandboxFor(jobId, deadline, { inputs: (spec.inputs ?? []).length > 0 });
    let verdict: Verdict | undefined;
    try {
      try {
        if (remainingMs <= 0) timeout.throwIfAborted();
        const output = await runAgentLoop(jobId, spec, deadline, signal, {
          provider: this.deps.providerFor(spec.provider),
          tools: this.deps.tools,
          store,
          sandbox,
          artifacts: this.artifactSink(jobId, spec.caller, logger),
          allowedDirs: this.deps.allowedDirs,
          sandboxTimeoutMs: this.deps.sandboxTimeoutMs,
          maxOutputTokens: this.deps.maxOutputTokens,
          logger,
          attempt: attempt.fence,
        });
        await store.finish(jobId, { status: 'succeeded', stopReason: 'completed', result: { output } }, new Date(), { attempt: attempt.fence });
        trace.getActiveSpan()?.setAttribute('maestro.job.verdict', 'succeeded');
        logger.info({ event: 'job.succeeded' }, 'job succeeded');
      } catch (err) {
        if (err instanceof AttemptSuperseded) {
          // This worker lost the job (its lock lapsed, in a Redis outage or a stall) and another took
          // it over: the new attempt owns it now, verdict included.
          logger.warn({ event: 'job.superseded', attempt: attempt.number }, 'job taken over by a newer attempt; stopping this one');
          return;
        }
        const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined;
        // An error that no abort explains; an aborted attempt's error (an SDK's abort error, a killed
        // execution) is the abort's doing, and never counts as a bug.
        const unexplained = !signal.aborted;
        if (unexplained) logger.warn({ event: 'job.attempt_failed', attempt: attempt.number, err }, 'job attempt failed');
        verdict = verdictOf({
          error: err,
          cancelRequested: reason instanceof CancelledByUser,
          shuttingDown: reason instanceof WorkerShuttingDown,
          freeHandBack: attempt.freeHandBack,
          deadlinePassed: timeout.aborted || Date.now() >= deadline.getTime(),
          attempt: attempt.number,
          maxAttempts: attempt.max,
          unknownErrors: unexplained && isUnknownError(err) ? await store.countUnknownError(jobId) : 0,
        });
        await this.record(jobId, verdict, attempt.fence, logger);
      }
    } finally {
      // After the verdict, so a job's end waits for no container; before the processor returns, so
      // BullMQ lets no job go whose container is still there. Should this worker die in between, the
      // reaper removes the container: its job has finished.
      await sandbox.close().catch((err: unknown) => logger.warn({ event: 'sandbox.close_failed', err }, 'sandbox close failed'));
    }
    if (verdict !== undefined && verdict.kind !== 'final') await this.putBack(bull.job, bull.token, verdict.kind === 'retry' ? verdict.backoffMs : 0, logger);
  }

  /** Records a verdict in the store: the job's end, or its return to queued until its next attempt. */
  private async record(jobId: string, verdict: Verdict, fence: number | undefined, logger: Logger): Promise<void> {
    const { store } = this.deps;
    const error = { code: verdict.code, message: verdict.message };
    trace.getActiveSpan()?.setAttributes({ 'maestro.job.verdict': verdict.kind === 'final' ? verdict.status : verdict.kind, 'maestro.job.error_code': verdict.code });
    if (verdict.kind === 'final') {
      await store.finish(jobId, { status: verdict.status, stopReason: verdict.stopReason, error }, new Date(), { attempt: fence });
      logger.info({ event: verdict.status === 'cancelled' ? 'job.cancelled' : 'job.failed', code: verdict.code }, `job ${verdict.status}`);
      return;
    }
    await store.requeue(jobId, error, { handBack: verdict.kind === 'hand-back', attempt: fence });
    if (verdict.kind === 'retry') logger.info({ event: 'job.retry_scheduled', code: verdict.code, backoffMs: verdict.backoffMs }, 'job will be retried');
    else logger.info({ event: 'job.handed_back' }, 'job handed back on shutdown');
  }

  /**
   * Puts the job back in BullMQ's queue, to start again `delayMs` from now, without counting a BullMQ
   * attempt (moveToDelayed skips the count; the store's is the one that counts) and with its priority,
   * which promotion from the delayed set keeps. Not moveToWait: it puts a prioritized job back
   * without the marker that wakes workers blocked on an empty queue, so an idle worker would not see
   * it before its blocking read times out (drainDelay, 5 s), where the delayed set's marker wakes one
   * at once. The DelayedError tells BullMQ the job has moved on, neither completed nor failed.
   */
  private async putBack(job: Job<QueuedJobData>, token: string | undefined, delayMs: number, logger: Logger): Promise<never> {
    try {
      await job.moveToDelayed(Date.now() + delayMs, token);
    } catch (err) {
      // The lock is lost (the job was taken over) or Redis is unreachable: BullMQ holds the job either
      // way, and once its lock lapses the stall check hands it to a worker again.
      logger.warn({ event: 'job.put_back_failed', message: (err as Error).message }, 'could not put the job back in the queue');
    }
    throw new DelayedError();
  }

  /**
   * Keeps an execution's files: the bytes go to the artifact store first, then the metadata to the
   * job if the quotas allow (one script checks and records, so concurrent executions cannot overrun
   * them together); refused bytes are removed again. A job deleted meanwhile loses its directory.
   */
  private artifactSink(jobId: string, caller: string, logger: Logger): ArtifactSink {
    const { store, files, quotas } = this.deps;
    const mib = (bytes: number): string => `${Math.round((bytes / MIB) * 10) / 10} MiB`;
    const reasons: Record<Exclude<SaveArtifactOutcome['outcome'], 'saved'>, string> = {
      gone: 'the job was deleted',
      finished: 'the job has ended',
      job_files: `quota: this job already keeps ${quotas.jobFiles} files, the most one job may keep`,
      job_bytes: `quota: this job's files would pass the ${mib(quotas.jobBytes)} one job may keep`,
      caller_bytes: `quota: the files stored for this job's owner would pass their ${mib(quotas.callerBytes)} quota`,
    };
    return {
      save: async (artifacts, step) => {
        const saved: Artifact[] = [];
        const skipped: { name: string; reason: string }[] = [];
        for (const artifact of artifacts) {
          const bytes = await files.putArtifact(jobId, artifact.data);
          const info = { name: artifact.name, size: bytes.size, contentType: artifact.contentType, sha256: bytes.sha256, step, file: bytes.file };
          const result = await store.saveArtifact(jobId, caller, info, quotas).catch(async (err: unknown) => {
            await files.removeArtifact(jobId, bytes.file);
            throw err;
          });
          if (result.outcome === 'saved') {
            if (result.replaced) await files.removeArtifact(jobId, result.replaced);
            saved.push(artifact);
            continue;
          }
          await (result.outcome === 'gone' ? files.removeJob(jobId) : files.removeArtifact(jobId, bytes.file));
          skipped.push({ name: artifact.name, reason: reasons[result.outcome] });
        }
        if (saved.length > 0 || skipped.length > 0) {
          logger.debug({ event: 'artifacts.saved', step, saved: saved.length, refused: skipped.length }, 'artifacts saved');
        }
        return { saved, skipped };
      },
    };
  }
}

const MIB = 1024 * 1024;
/** Hand-backs on shutdown that spend no attempt; past them, each start counts again. */
const FREE_HAND_BACKS = 10;
