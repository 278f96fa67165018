import pino, { type Logger } from 'pino';

export type { Logger };

/** Paths pino blanks wherever they appear, so no credential reaches a log line. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers["x-api-key"]',
  'headers.cookie',
  '*.OPENAI_API_KEY',
  '*.ANTHROPIC_API_KEY',
  '*.API_KEYS',
  '*.WEBHOOK_SECRET',
  'headers["webhook-signature"]',
  '*.apiKey',
  'apiKey',
];

/** One root logger per process; children carry `service`, `jobId` and the like. */
export function createLogger(opts: { level: string; service: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    { level: opts.level, base: { service: opts.service }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    opts.destination,
  );
}
