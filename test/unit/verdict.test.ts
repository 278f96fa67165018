import { ProviderError, SandboxError, ValidationError } from '../../services/shared/src/errors';
import { MaxStepsError } from '../../services/worker/src/agent-loop';
import { RETRY_BACKOFF_MS, UNKNOWN_ERROR_TRIES, verdictOf, WorkerLost, type AttemptEnd } from '../../services/worker/src/verdict';

/** An attempt that failed with `error` on attempt 1 of 3, nothing else going on. */
function end(error: unknown, more: Partial<AttemptEnd> = {}): AttemptEnd {
  return {
    error,
    cancelRequested: false,
    shuttingDown: false,
    freeHandBack: false,
    deadlinePassed: false,
    attempt: 1,
    maxAttempts: 3,
    unknownErrors: 0,
    ...more,
  };
}

const unavailable = new ProviderError({ code: 'provider_unavailable', detail: 'The provider answered 503.', retryable: true });
const rejected = new ProviderError({ code: 'provider_rejected', detail: 'The provider rejected the request (HTTP 400).', retryable: false });
const abort = new DOMException('This operation was aborted', 'AbortError');

describe('the verdict on a failed attempt', () => {
  test('a retryable error is retried while attempts are left, with a backoff that doubles', () => {
    expect(verdictOf(end(unavailable))).toEqual({ kind: 'retry', code: 'provider_unavailable', message: 'The provider answered 503.', backoffMs: RETRY_BACKOFF_MS });
    expect(verdictOf(end(new SandboxError('Docker hiccup'), { attempt: 2 }))).toMatchObject({ kind: 'retry', code: 'sandbox_error', backoffMs: 2 * RETRY_BACKOFF_MS });
  });

  test('a retryable error on the last attempt is final, with its own code', () => {
    expect(verdictOf(end(unavailable, { attempt: 3 }))).toEqual({
      kind: 'final',
      status: 'failed',
      stopReason: 'error',
      code: 'provider_unavailable',
      message: 'The provider answered 503.',
    });
    expect(verdictOf(end(unavailable, { attempt: 1, maxAttempts: 1 }))).toMatchObject({ kind: 'final', code: 'provider_unavailable' });
  });

  test('a non-retryable error is final on the first attempt, with its code and detail', () => {
    expect(verdictOf(end(rejected))).toEqual({
      kind: 'final',
      status: 'failed',
      stopReason: 'error',
      code: 'provider_rejected',
      message: 'The provider rejected the request (HTTP 400).',
    });
    expect(verdictOf(end(new ValidationError('bad input')))).toMatchObject({ kind: 'final', code: 'validation_failed' });
  });

  test('max_steps is final, failed with stopReason max_steps', () => {
    const error = new MaxStepsError('The model was still calling tools after 3 model calls (maxSteps).');
    expect(verdictOf(end(error))).toEqual({ kind: 'final', status: 'failed', stopReason: 'max_steps', code: 'max_steps', message: error.message });
  });

  test('a passed deadline is final, failed with timeout, whatever error surfaced', () => {
    for (const error of [abort, unavailable, new Error('boom')]) {
      expect(verdictOf(end(error, { deadlinePassed: true }))).toEqual({
        kind: 'final',
        status: 'failed',
        stopReason: 'timeout',
        code: 'timeout',
        message: 'The job reached its timeoutSeconds.',
      });
    }
  });

  test('a cancel is final, cancelled, and wins over the deadline and the shutdown', () => {
    const cancelled = { kind: 'final', status: 'cancelled', stopReason: 'cancelled', code: 'cancelled', message: 'Cancelled by the caller.' };
    expect(verdictOf(end(abort, { cancelRequested: true }))).toEqual(cancelled);
    expect(verdictOf(end(abort, { cancelRequested: true, deadlinePassed: true, shuttingDown: true, attempt: 3 }))).toEqual(cancelled);
  });

  test('a shutdown hands the job back while an attempt is left for it, whatever error surfaced', () => {
    for (const error of [abort, rejected, new Error('boom')]) {
      expect(verdictOf(end(error, { shuttingDown: true }))).toEqual({
        kind: 'hand-back',
        code: 'worker_shutdown',
        message: 'The worker shut down; the job will resume elsewhere.',
      });
    }
  });

  test('a shutdown on the last attempt hands the job back while hand-backs are free', () => {
    expect(verdictOf(end(abort, { shuttingDown: true, freeHandBack: true, attempt: 1, maxAttempts: 1 }))).toMatchObject({ kind: 'hand-back' });
    expect(verdictOf(end(abort, { shuttingDown: true, freeHandBack: true, attempt: 3 }))).toMatchObject({ kind: 'hand-back' });
  });

  test('a shutdown on the last attempt, with no free hand-back left, is final, failed with worker_lost', () => {
    expect(verdictOf(end(abort, { shuttingDown: true, attempt: 1, maxAttempts: 1 }))).toEqual({
      kind: 'final',
      status: 'failed',
      stopReason: 'error',
      code: 'worker_lost',
      message: 'The worker shut down during the last attempt of the job.',
    });
    expect(verdictOf(end(abort, { shuttingDown: true, attempt: 3 }))).toMatchObject({ kind: 'final', code: 'worker_lost' });
  });

  test('a shutdown past the deadline is a timeout, not a hand-back', () => {
    expect(verdictOf(end(abort, { shuttingDown: true, deadlinePassed: true }))).toMatchObject({ kind: 'final', code: 'timeout' });
  });

  test('a worker lost on the last attempt, found when the job starts past it, is final worker_lost', () => {
    expect(verdictOf(end(new WorkerLost(), { attempt: 2, maxAttempts: 1 }))).toEqual({
      kind: 'final',
      status: 'failed',
      stopReason: 'error',
      code: 'worker_lost',
      message: "The worker running the job's last attempt stopped before it ended.",
    });
  });

  describe('an unknown error (no AppError: a bug)', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'x')");

    test('on the first attempt, the first one seen, is retried as internal, its message kept from the caller', () => {
      expect(verdictOf(end(bug, { unknownErrors: 1 }))).toEqual({
        kind: 'retry',
        code: 'internal',
        message: 'The worker hit an internal error.',
        backoffMs: RETRY_BACKOFF_MS,
      });
    });

    test(`is final once ${UNKNOWN_ERROR_TRIES} have been seen, however many attempts are left`, () => {
      const final = { kind: 'final', status: 'failed', stopReason: 'error', code: 'internal', message: 'The worker hit an internal error.' };
      expect(verdictOf(end(bug, { attempt: 2, maxAttempts: 10, unknownErrors: UNKNOWN_ERROR_TRIES }))).toEqual(final);
      expect(verdictOf(end('a thrown string', { attempt: 2, maxAttempts: 10, unknownErrors: UNKNOWN_ERROR_TRIES }))).toEqual(final);
    });

    test('on the last attempt is final as internal, even the first one seen', () => {
      expect(verdictOf(end(bug, { attempt: 3, unknownErrors: 1 }))).toMatchObject({ kind: 'final', code: 'internal' });
      expect(verdictOf(end(bug, { attempt: 1, maxAttempts: 1, unknownErrors: 1 }))).toMatchObject({ kind: 'final', code: 'internal' });
    });

    test('after retryable faults, counts only the unknown ones', () => {
      expect(verdictOf(end(bug, { attempt: 2, maxAttempts: 5, unknownErrors: 1 }))).toMatchObject({ kind: 'retry', code: 'internal' });
    });
  });
});
