/**
 * The Maestro API client: `new MaestroClient({ baseUrl, apiKey })`, then `createJob`, `getJob`,
 * `listJobs`, `cancelJob`, `deleteJob`, `downloadArtifact`, `followEvents` and `run`. It stands
 * alone: nothing of the server is imported, only the platform's fetch and Web Crypto (Node.js 20+).
 */
export { MaestroClient } from './client';
export type { CreateJobOptions, Download, FetchLike, FollowOptions, InputFile, ListJobsOptions, MaestroClientOptions, RunOptions } from './client';
export {
  AuthenticationError,
  BadRequestError,
  ConflictError,
  ConnectionError,
  IntegrityError,
  MaestroError,
  NotFoundError,
  PayloadTooLargeError,
  RateLimitError,
  ServiceUnavailableError,
  errorFromResponse,
  parseRetryAfter,
} from './errors';
export type { MaestroErrorInit } from './errors';
export { ROUTES, fillPath } from './routes';
export type { Route, RouteName } from './routes';
export { compareEventIds, readSse } from './sse';
export type { SseMessage } from './sse';
export * from './types';
