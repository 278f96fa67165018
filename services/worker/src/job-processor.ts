import { UnrecoverableError, type Job } from 'bullmq';
import { AppError } from '../../shared/src/errors';
import type { JobSpec } from '../../shared/src/job-schema';
import type { JobStore } from '../../shared/src/job-store';
import type { Logger } from '../../shared/src/logger';
import type { QueuedJobData } from '../../shared/src/queue';
import { MaxStepsError, runAgentLoop } from './agent-loop';
import type { ModelProvider } from './providers/model-provider';
import type { ArtifactStore } from '../../shared/src/artifact-store';
import type { SaveArtifactOutcome } from '../../shared/src/job-store';
import type { Artifact, SandboxSession } from './sandbox/types';
import type { ArtifactSink, Tool } from './tools/tool';

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
    const sandbox = this.deps.sandboxFor(jobId, deadline, { inputs: (spec.inputs ?? []).length > 0 });
    let output: string;
    try {
      try {
        if (remainingMs <= 0) timeout.throwIfAborted();
        output = await runAgentLoop(jobId, spec, deadline, signal, {
          provider: this.deps.providerFor(spec.provider),
          tools: this.deps.tools,
          store,
          sandbox,
          artifacts: this.artifactSink(jobId, spec.caller, logger),
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
