import { AppError } from '../../shared/src/errors';
import type { StopReason } from '../../shared/src/job-schema';
import { MaxStepsError } from './agent-loop';

/** Tries a job gets at an error that is no AppError (a bug, most likely) before it fails for good. */
export const UNKNOWN_ERROR_TRIES = 2;
/** The wait before the first retry; each later one waits twice as long as the one before. */
export const RETRY_BACKOFF_MS = 1000;

/** The worker running a job's last attempt stopped before the attempt ended: found when the job starts again. */
export class WorkerLost extends AppError {
  constructor() {
    super({ code: 'worker_lost', detail: "The worker running the job's last attempt stopped before it ended.", retryable: true });
  }
}

/** How an attempt ended that produced no result, and where the job stands. */
export interface AttemptEnd {
  /** What the attempt threw. */
  error: unknown;
  /** The job's owner asked to stop it (the cancel message or the polled flag reached this worker). */
  cancelRequested: boolean;
  /** This worker is shutting down and the job's grace period is over. */
  shuttingDown: boolean;
  /**
   * Handing the job back would spend none of its attempts: a start after a hand-back is not counted,
   * up to a bound (so that a job cannot circle for ever among workers that keep stopping).
   */
  freeHandBack: boolean;
  /** The job's deadline (timeoutSeconds from its first start) has passed. */
  deadlinePassed: boolean;
  /**
   * This attempt's number, from 1: the job store's `attempts`, which every start increments. It is the
   * one attempt counter; BullMQ's attemptsMade never moves (the processor puts jobs back itself).
   */
  attempt: number;
  /** Attempts the job may have (JOB_ATTEMPTS when it was submitted). */
  maxAttempts: number;
  /** Errors that are no AppError this job has hit, this one included; read only for such an error. */
  unknownErrors: number;
}

export type Verdict =
  /** The job ends here. */
  | { kind: 'final'; status: 'failed' | 'cancelled'; stopReason: StopReason; code: string; message: string }
  /** Another attempt, resuming from the checkpoint after `backoffMs`. */
  | { kind: 'retry'; code: string; message: string; backoffMs: number }
  /** Back to the queue at once, to resume on another worker. */
  | { kind: 'hand-back'; code: 'worker_shutdown'; message: string };

/** Whether `err` is an error nobody classified: no AppError, no MaxStepsError. */
export function isUnknownError(err: unknown): boolean {
  return !(err instanceof AppError) && !(err instanceof MaxStepsError);
}

/**
 * The fate of an attempt that ended without a result, decided in one place. The caller's wish comes
 * first, then the clock, then the worker's shutdown (whatever surfaced then, an SDK's abort error or a
 * killed execution, is their doing), then the error itself: MaxStepsError and non-retryable AppErrors
 * are final, retryable AppErrors get another attempt while one is left, unknown errors at most
 * UNKNOWN_ERROR_TRIES. A shutdown hands the job back, to resume elsewhere, while that is free or an
 * attempt is left; otherwise the job fails `worker_lost`.
 */
export function verdictOf(end: AttemptEnd): Verdict {
  const attemptLeft = end.attempt < end.maxAttempts;
  const fail = (stopReason: StopReason, code: string, message: string): Verdict => ({ kind: 'final', status: 'failed', stopReason, code, message });
  if (end.cancelRequested) return { kind: 'final', status: 'cancelled', stopReason: 'cancelled', code: 'cancelled', message: 'Cancelled by the caller.' };
  if (end.deadlinePassed) return fail('timeout', 'timeout', 'The job reached its timeoutSeconds.');
  if (end.shuttingDown) {
    if (end.freeHandBack || attemptLeft) return { kind: 'hand-back', code: 'worker_shutdown', message: 'The worker shut down; the job will resume elsewhere.' };
    return fail('error', 'worker_lost', 'The worker shut down during the last attempt of the job.');
  }
  const { error } = end;
  if (error instanceof MaxStepsError) return fail('max_steps', 'max_steps', error.message);
  if (error instanceof AppError) {
    if (error.retryable && attemptLeft) return { kind: 'retry', code: error.code, message: error.detail, backoffMs: backoffMs(end.attempt) };
    return fail('error', error.code, error.detail);
  }
  if (attemptLeft && end.unknownErrors < UNKNOWN_ERROR_TRIES) {
    return { kind: 'retry', code: 'internal', message: 'The worker hit an internal error.', backoffMs: backoffMs(end.attempt) };
  }
  return fail('error', 'internal', 'The worker hit an internal error.');
}

/** Exponential, as BullMQ's own `exponential` backoff with a 1 s delay was: 1 s after attempt 1, 2 s after attempt 2, … */
function backoffMs(attempt: number): number {
  return RETRY_BACKOFF_MS * 2 ** (attempt - 1);
}
