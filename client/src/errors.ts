import type { FieldError, Problem } from './types';

const PROBLEM_PREFIX = 'urn:maestro:problem:';

export interface MaestroErrorInit {
  status: number;
  code: string;
  detail: string;
  errors?: FieldError[];
  problem?: Problem;
  retryAfter?: number;
  cause?: unknown;
}

/**
 * What the API refused, from its problem+json answer: `status` (0 when no answer came), `code` (the
 * problem type's last segment: `not_found`, `too_many_active_jobs`, …), `detail`, and `errors`
 * naming each invalid field.
 */
export class MaestroError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly errors: FieldError[];
  /** The problem document as the API sent it, when it sent one. */
  readonly problem: Problem | undefined;

  constructor(init: MaestroErrorInit) {
    super(init.status > 0 ? `${init.status} ${init.code}: ${init.detail}` : `${init.code}: ${init.detail}`, { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code;
    this.detail = init.detail;
    this.errors = init.errors ?? [];
    this.problem = init.problem;
  }
}

/** 400: the request is invalid; `errors` names each field. */
export class BadRequestError extends MaestroError {}
/** 401: no credentials, or wrong ones. */
export class AuthenticationError extends MaestroError {}
/** 404: no such job or file (another caller's job is one too). */
export class NotFoundError extends MaestroError {}
/** 409: an Idempotency-Key reused with another body, or cancelling a job that already ended. */
export class ConflictError extends MaestroError {}
/** 413: the body or the input files are over a limit or the caller's storage quota. */
export class PayloadTooLargeError extends MaestroError {}

/** 429: a rate limit, or the caller's cap of active jobs or event streams. */
export class RateLimitError extends MaestroError {
  /** Seconds to wait, from Retry-After, when the API said. */
  readonly retryAfter: number | undefined;
  constructor(init: MaestroErrorInit) {
    super(init);
    this.retryAfter = init.retryAfter;
  }
}

/** 503: Redis unreachable or nearly full, or the queue unavailable. */
export class ServiceUnavailableError extends MaestroError {
  /** Seconds to wait, from Retry-After, when the API said. */
  readonly retryAfter: number | undefined;
  constructor(init: MaestroErrorInit) {
    super(init);
    this.retryAfter = init.retryAfter;
  }
}

/** No answer: the API could not be reached, or the connection broke (status 0). */
export class ConnectionError extends MaestroError {}

/** A download whose bytes do not hash to the ETag the API sent with them (status 0). */
export class IntegrityError extends MaestroError {}

/** Retry-After in seconds: delta-seconds, or an HTTP date. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

function isProblem(body: unknown): body is Problem {
  if (typeof body !== 'object' || body === null) return false;
  const p = body as Record<string, unknown>;
  return typeof p.type === 'string' && typeof p.status === 'number';
}

/** The error for a non-2xx answer; reads its body. */
export async function errorFromResponse(res: Response): Promise<MaestroError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    // the body broke off: the status still says what happened
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const problem = isProblem(body) ? body : undefined;
  const code = problem?.type.startsWith(PROBLEM_PREFIX) ? problem.type.slice(PROBLEM_PREFIX.length) : (problem?.type ?? `http_${res.status}`);
  const detail = problem?.detail ?? (text.trim().slice(0, 200) || res.statusText || `HTTP ${res.status}`);
  const init: MaestroErrorInit = {
    status: res.status,
    code,
    detail,
    ...(problem?.errors ? { errors: problem.errors } : {}),
    ...(problem ? { problem } : {}),
    ...(res.status === 429 || res.status === 503 ? { retryAfter: parseRetryAfter(res.headers.get('retry-after')) } : {}),
  };
  switch (res.status) {
    case 400:
      return new BadRequestError(init);
    case 401:
      return new AuthenticationError(init);
    case 404:
      return new NotFoundError(init);
    case 409:
      return new ConflictError(init);
    case 413:
      return new PayloadTooLargeError(init);
    case 429:
      return new RateLimitError(init);
    case 503:
      return new ServiceUnavailableError(init);
    default:
      return new MaestroError(init);
  }
}
