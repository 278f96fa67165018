import { UnrecoverableError, type Job } from 'bullmq';
import { AppError } from '../../shared/src/errors';
import type { JobSpec } from '../../shared/src/job-schema';
import type { JobStore } from '../../shared/src/job-store';
import type { Logger } from '../../shared/src/logger';
import type { QueuedJobData } from '../../shared/src/queue';
import { MaxStepsError, runAgentLoop } from './agent-loop';
import type { ModelProvider } from './providers/model-provider';
import type { SandboxSession } from './sandbox/types';
import type { Tool } from './tools/tool';

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
  sandboxFor(jobId: string, deadline: Date): SandboxSession;
  tools: readonly Tool[];
  allowedDirs: string[];
  sandboxTimeoutMs: number;
  maxOutputTokens: number;
  /** Per-job artifact caps: a job keeps at most this many files and bytes. */
  artifactLimits: { count: number; bytes: number };
  logger: Logger;
}

/**
 * Runs queued jobs. Keeps an AbortController per running job so a cancel message (or shutdown) can
 * stop it; decides at the source whether a failure is final or worth a retry.
 */
export class JobProcessor {
  private readonly running = new Map<string, AbortController>();

  constructor(private readonly deps: ProcessorDeps) {}

  /** Stops a running job on this worker, if it is here. */
  cancel(jobId: string): void {
    this.running.get(jobId)?.abort(new CancelledByUser('cancelled'));
  }

  /** Hands every running job back to the queue (they resume from their checkpoints elsewhere). */
  abortAll(): void {
    for (const controller of this.running.values()) controller.abort(new WorkerShuttingDown('worker shutting down'));
  }

  get activeCount(): number {
    return this.running.size;
  }

  readonly process = async (job: Job<QueuedJobData>): Promise<void> => {
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
      logger.info({ event: 'job.started', attempt: started.attempts }, 'job started');
      await this.run(jobId, started.spec, started.deadline, controller, job, logger);
    } finally {
      this.running.delete(jobId);
    }
  };

  private async run(
    jobId: string,
    spec: JobSpec,
    deadline: Date,
    controller: AbortController,
    job: Job<QueuedJobData>,
    logger: Logger,
  ): Promise<void> {
    const { store } = this.deps;
    const remainingMs = deadline.getTime() - Date.now();
    const timeout = AbortSignal.timeout(Math.max(1, remainingMs));
    const signal = AbortSignal.any([controller.signal, timeout]);
    const sandbox = this.artifactSaving(jobId, this.deps.sandboxFor(jobId, deadline), logger);
    let output: string;
    try {
      try {
        if (remainingMs <= 0) timeout.throwIfAborted();
        output = await runAgentLoop(jobId, spec, deadline, signal, {
          provider: this.deps.providerFor(spec.provider),
          tools: this.deps.tools,
          store,
          sandbox,
          allowedDirs: this.deps.allowedDirs,
          sandboxTimeoutMs: this.deps.sandboxTimeoutMs,
          maxOutputTokens: this.deps.maxOutputTokens,
          logger,
        });
      } finally {
        // Before the verdict is recorded: whoever sees the job ended sees its container gone.
        await sandbox.close().catch((err: unknown) => logger.warn({ event: 'sandbox.close_failed', err }, 'sandbox close failed'));
      }
    } catch (err) {
      await this.fail(jobId, err, { controller, timeout, job, logger });
      return;
    }
    await store.finish(jobId, { status: 'succeeded', stopReason: 'completed', result: { output } });
    logger.info({ event: 'job.succeeded' }, 'job succeeded');
  }

  private async fail(
    jobId: string,
    err: unknown,
    ctx: { controller: AbortController; timeout: AbortSignal; job: Job<QueuedJobData>; logger: Logger },
  ): Promise<void> {
    const { store } = this.deps;
    const { controller, timeout, job, logger } = ctx;
    const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined;
    if (reason instanceof CancelledByUser) {
      await store.finish(jobId, { status: 'cancelled', stopReason: 'cancelled', error: { code: 'cancelled', message: 'Cancelled by the caller.' } });
      logger.info({ event: 'job.cancelled' }, 'job cancelled');
      return;
    }
    if (reason instanceof WorkerShuttingDown) {
      await store.requeue(jobId, { code: 'worker_shutdown', message: 'The worker shut down; the job will resume elsewhere.' });
      logger.info({ event: 'job.handed_back' }, 'job handed back on shutdown');
      throw reason; // BullMQ retries it; the checkpoint makes the retry resume.
    }
    // Past the deadline, whatever surfaced (an SDK's abort error, a killed execution) is the timeout.
    if (timeout.aborted) {
      await this.finalFailure(jobId, 'timeout', 'timeout', 'The job reached its timeoutSeconds.', logger);
    }
    if (err instanceof MaxStepsError) await this.finalFailure(jobId, 'max_steps', 'max_steps', err.message, logger);
    if (err instanceof AppError && !err.retryable) await this.finalFailure(jobId, err.code, 'error', err.detail, logger);

    const retryable = err instanceof AppError ? err : null;
    const code = retryable?.code ?? 'internal';
    const message = retryable?.detail ?? 'The worker hit an internal error.';
    const lastAttempt = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    logger.warn({ event: 'job.attempt_failed', code, lastAttempt, err }, 'job attempt failed');
    if (lastAttempt) await this.finalFailure(jobId, code, 'error', message, logger);
    await store.requeue(jobId, { code, message });
    throw err;
  }

  /** Records a final verdict and tells BullMQ not to retry. */
  private async finalFailure(jobId: string, code: string, stopReason: 'timeout' | 'max_steps' | 'error', message: string, logger: Logger): Promise<never> {
    await this.deps.store.finish(jobId, { status: 'failed', stopReason, error: { code, message } });
    logger.info({ event: 'job.failed', code }, 'job failed');
    throw new UnrecoverableError(code);
  }

  /** Keeps every artifact an execution returns with the job, within the job's caps. */
  private artifactSaving(jobId: string, session: SandboxSession, logger: Logger): SandboxSession {
    const { store, artifactLimits } = this.deps;
    const kept = new Map<string, number>();
    return {
      close: () => session.close(),
      run: async (code, opts) => {
        const result = await session.run(code, opts);
        const saved: typeof result.artifacts = [];
        // One look-up per execution, not per file: every artifact of it belongs to the same step.
        const step = result.artifacts.length > 0 ? await store.stepCount(jobId) : 0;
        for (const artifact of result.artifacts) {
          const total = [...kept.values()].reduce((a, b) => a + b, 0) - (kept.get(artifact.name) ?? 0);
          if ((!kept.has(artifact.name) && kept.size >= artifactLimits.count) || total + artifact.size > artifactLimits.bytes) {
            result.skippedArtifacts.push({ name: artifact.name, reason: 'the job keeps no more artifacts' });
            continue;
          }
          kept.set(artifact.name, artifact.size);
          saved.push(artifact);
          await store.addArtifact(jobId, { name: artifact.name, size: artifact.size, contentType: artifact.contentType, step }, artifact.data);
        }
        result.artifacts = saved;
        if (result.artifacts.length > 0) logger.debug({ event: 'artifacts.saved', count: result.artifacts.length }, 'artifacts saved');
        return result;
      },
    };
  }
}
