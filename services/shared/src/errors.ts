/**
 * Errors are values with codes. Anything thrown inside Maestro that a client or an operator should
 * understand is an AppError; everything else is treated as an internal fault and never shown verbatim.
 */
export class AppError extends Error {
  /** Machine-readable code, shown to clients as `error.code` or the problem `type` suffix. */
  readonly code: string;
  /** HTTP status when this error reaches the API. */
  readonly status: number;
  /** Safe, human-readable explanation (no stack, no key, no host path). */
  readonly detail: string;
  /** Whether the operation may succeed if tried again later (infrastructure faults). */
  readonly retryable: boolean;

  constructor(opts: { code: string; status?: number; detail: string; retryable?: boolean; cause?: unknown }) {
    super(opts.detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.status = opts.status ?? 500;
    this.detail = opts.detail;
    this.retryable = opts.retryable ?? false;
  }
}

export interface FieldError {
  /** Dotted path of the offending field, e.g. `metadata.owner`; empty for the body itself. */
  field: string;
  message: string;
}

export class ValidationError extends AppError {
  readonly errors: FieldError[];
  constructor(detail: string, errors: FieldError[] = []) {
    super({ code: 'validation_failed', status: 400, detail });
    this.errors = errors;
  }
}

export class NotFoundError extends AppError {
  constructor(detail = 'No such resource.') {
    super({ code: 'not_found', status: 404, detail });
  }
}

export class ConflictError extends AppError {
  constructor(detail: string, code = 'conflict') {
    super({ code, status: 409, detail });
  }
}

/** A model provider failed. `retryable` marks 429/5xx/connection faults that survived the SDK's own retries. */
export class ProviderError extends AppError {
  constructor(opts: { code: string; detail: string; retryable: boolean; cause?: unknown }) {
    super({ ...opts, status: 502 });
  }
}

/** The sandbox (Docker) failed for reasons of its own, not because of the code it ran. */
export class SandboxError extends AppError {
  constructor(detail: string, opts: { retryable?: boolean; cause?: unknown; code?: string } = {}) {
    super({ code: opts.code ?? 'sandbox_error', status: 500, detail, retryable: opts.retryable ?? true, cause: opts.cause });
  }
}

