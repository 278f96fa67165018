import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { ErrorRequestHandler, Response } from 'express';
import type { Logger } from '../../shared/src/logger';
import { AppError, ValidationError, type FieldError } from '../../shared/src/errors';

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  errors?: FieldError[];
  errorId?: string;
}

/** Sends an RFC 9457 problem document. `code` becomes the last segment of `type`. */
export function sendProblem(res: Response, status: number, code: string, detail: string, extra: Partial<Problem> = {}): void {
  const body: Problem = { type: `urn:maestro:problem:${code}`, title: STATUS_CODES[status] ?? 'Error', status, detail, ...extra };
  res.status(status).type('application/problem+json').send(JSON.stringify(body));
}

/** body-parser's own errors, mapped to messages that say what is wrong without echoing internals. */
const BODY_PARSER_ERRORS: Record<string, [number, string, string]> = {
  'entity.parse.failed': [400, 'invalid_json', 'The request body is not valid JSON.'],
  'entity.too.large': [413, 'body_too_large', 'The request body is larger than this server accepts.'],
  'encoding.unsupported': [415, 'unsupported_encoding', 'The request body uses an unsupported content encoding.'],
  'charset.unsupported': [415, 'unsupported_charset', 'The request body must be UTF-8 JSON.'],
  'request.aborted': [400, 'request_aborted', 'The request was aborted by the client.'],
  'request.size.invalid': [400, 'invalid_body_size', 'The request body length does not match Content-Length.'],
  'stream.encoding.set': [500, 'internal', 'Internal error.'],
};

/**
 * The one place errors become responses. AppErrors carry their own status and safe detail; anything
 * else is a 500 with a generic detail and an id to find the logged cause — never a stack or a path.
 */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, next) => {
    if (res.headersSent) {
      next(err);
      return;
    }
    if (err instanceof ValidationError) {
      sendProblem(res, 400, err.code, err.detail, { errors: err.errors });
      return;
    }
    if (err instanceof AppError) {
      if (err.status >= 500) logger.error({ event: 'request.failed', code: err.code, err }, 'request failed');
      sendProblem(res, err.status, err.code, err.detail);
      return;
    }
    const type = (err as { type?: unknown } | null)?.type;
    const known = typeof type === 'string' ? BODY_PARSER_ERRORS[type] : undefined;
    if (known && known[0] < 500) {
      sendProblem(res, known[0], known[1], known[2]);
      return;
    }
    const status = (err as { status?: unknown } | null)?.status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      sendProblem(res, status, 'bad_request', STATUS_CODES[status] ?? 'Bad request.');
      return;
    }
    if (isRedisUnavailable(err)) {
      logger.warn({ event: 'redis.unavailable', path: req.path }, 'redis unavailable');
      sendProblem(res, 503, 'unavailable', 'The job store is unavailable; try again later.');
      return;
    }
    const errorId = randomUUID();
    logger.error({ event: 'request.crashed', errorId, method: req.method, path: req.path, err }, 'unhandled error');
    sendProblem(res, 500, 'internal', 'Internal error. Quote the errorId when reporting it.', { errorId });
  };
}

/** ioredis's ways of saying the server cannot be reached right now. */
function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return (
    err.name === 'MaxRetriesPerRequestError' ||
    /Connection is closed|Stream isn't writeable|ECONNREFUSED|ETIMEDOUT/.test(err.message)
  );
}
