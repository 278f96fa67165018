import express, { type Express } from 'express';
import helmet from 'helmet';
import cors from 'cors';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { ArtifactStore } from '../../shared/src/artifact-store';
import type { Config } from '../../shared/src/config';
import type { JobStore } from '../../shared/src/job-store';
import type { Logger } from '../../shared/src/logger';
import type { QueuedJobData } from '../../shared/src/queue';
import type { RedisWatcher } from '../../shared/src/redis-watch';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { startSpan, tracingOn, withSpan } from '../../shared/src/tracing';
import { countRequest } from './api-metrics';
import { authenticate } from './auth';
import { hostCheck } from './host-check';
import { errorHandler, sendProblem } from './problem';
import { buildOpenApi, renderDocsPage } from './openapi';
import { rateLimit } from './rate-limit';
import { RedisRoom } from './redis-room';
import { withTimeout } from '../../shared/src/time';
import { jobsRouter } from './routes/jobs';
import { mcpRouter } from './mcp';

export interface AppDeps {
  config: Config;
  store: JobStore;
  files: ArtifactStore;
  queue: Queue<QueuedJobData>;
  redis: Redis;
  logger: Logger;
  /** The deployment's caller-id secret (`loadAuthSecret`); api-key mode with bare keys needs it. */
  authSecret?: Buffer;
  /** The process's Redis watcher, which also follows the connections the app opens (one per event stream). */
  redisWatcher?: RedisWatcher;
}

/** Builds the HTTP app from its parts; `main.ts` supplies real ones, tests may supply their own. */
export function createApp(deps: AppDeps): Express {
  const { config, redis, logger } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', config.AUTH_MODE === 'proxy' ? config.TRUSTED_PROXIES : false);
  app.set('query parser', 'simple');
  app.use(helmet());
  // One access-log event and one count per request; never headers (they carry credentials) nor
  // bodies. Both name the route's template (`/v1/jobs/:id`); the log, the path only of a request a
  // route matched; the metrics, never a path.
  // With tracing on, each request is a span too (POST /v1/jobs's is the root of its job's trace).
  const logging = logger.isLevelEnabled('info');
  const counting = config.METRICS_ENABLED;
  const tracing = tracingOn();
  if (logging || counting || tracing) {
    trackRoutes(app);
    app.use((req, res, next) => {
      const started = process.hrtime.bigint();
      const span = tracing ? startSpan(req.method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method } }) : undefined;
      // A response cut off before it finished (a client gone mid-stream) ends its span too.
      res.on('close', () => {
        if (span?.isRecording()) span.end();
      });
      res.on('finish', () => {
        const route = matchedRoute(req);
        const template = route?.template ?? UNMATCHED_ROUTE;
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        if (counting) countRequest(req.method, template, res.statusCode, ms / 1000);
        if (span) {
          span.updateName(`${req.method} ${template}`);
          span.setAttributes({ 'http.route': template, 'http.response.status_code': res.statusCode });
          if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
          span.end();
        }
        if (!logging) return;
        logger.info(
          {
            event: 'http.request',
            method: req.method,
            route: template,
            ...(route ? { path: route.path.slice(0, 200) } : {}),
            status: res.statusCode,
            ms,
            caller: res.locals.caller as string | undefined,
          },
          'request',
        );
      });
      if (span) withSpan(span, next);
      else next();
    });
  }
  // Before CORS and every route, health and docs included; after helmet and the access log, so a
  // refusal still carries helmet's headers and shows up in the log.
  app.use(hostCheck(config));
  // No CORS_ORIGINS means no cross-origin access at all (not `*`): no CORS middleware, no CORS headers.
  if (config.CORS_ORIGINS.length > 0) app.use(cors({ origin: config.CORS_ORIGINS }));

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  const room = new RedisRoom({ redis, limitPercent: config.REDIS_NEARLY_FULL_PERCENT, logger });
  app.get('/readyz', async (_req, res) => {
    try {
      await withTimeout(redis.ping(), 1000);
    } catch {
      sendProblem(res, 503, 'not_ready', 'Redis is unreachable.');
      return;
    }
    // Still ready when Redis is nearly full: every replica shares that Redis, so a 503 here would
    // take them all out of rotation at once, and with them reads, cancels and event streams, which
    // all still work. Only submissions are refused (503 redis_nearly_full), and this says why.
    if (await room.nearlyFull()) {
      res.json({
        status: 'ready',
        submissions: 'refused',
        reason: 'redis_nearly_full',
        detail: 'Redis is past REDIS_NEARLY_FULL_PERCENT of its maxmemory: new jobs get 503 until running ones finish or old ones expire.',
      });
      return;
    }
    res.json({ status: 'ready' });
  });

  const openapi = buildOpenApi(config);
  const docsPage = renderDocsPage(openapi);
  app.get('/openapi.json', (_req, res) => {
    res.json(openapi);
  });
  app.get('/docs', (_req, res) => {
    res.type('html').send(docsPage);
  });

  // Everything under /v1 and /mcp is authenticated, rate limited and JSON; one router keeps that in one place.
  const guard = express.Router();
  guard.use(authenticate(config, { redis, logger, authSecret: deps.authSecret }));
  if (config.RATE_LIMIT_PER_MINUTE > 0) guard.use(rateLimit({ redis, prefix: config.MAESTRO_PREFIX, perMinute: config.RATE_LIMIT_PER_MINUTE, logger }));
  guard.use(express.json({ limit: `${config.BODY_LIMIT_KB}kb`, strict: true, type: 'application/json' }));
  const v1 = express.Router();
  v1.use(guard);
  v1.use('/jobs', jobsRouter({ ...deps, room }));
  app.use('/v1', v1);
  // The same jobs as tools for MCP clients (mcp.ts), behind the same guard and so the same ownership.
  app.use('/mcp', guard, mcpRouter({ ...deps, room }));
  app.use((_req, res) => {
    sendProblem(res, 404, 'not_found', 'No such route.');
  });
  app.use(errorHandler(logger));
  return app;
}

/** The access log's `route` for a request no route matched: never its raw path, which may carry anything. */
export const UNMATCHED_ROUTE = '(unmatched)';

const ROUTE = Symbol('route');
const MATCHED = Symbol('matched route');

interface TrackedRequest {
  baseUrl: string;
  path: string;
  [ROUTE]?: unknown;
  [MATCHED]?: { template: string; path: string };
}

/**
 * Makes every request of `app` record the route it matches, as its template (`/v1/jobs/:id`) and its
 * path, at the moment the router matches it (the router sets `req.route` then). By the time the
 * response finishes, `req.path` is relative to the innermost router, and a handler's error has
 * unwound `req.baseUrl` to the app's level, where the error handler runs. The accessor is defined
 * once, on the app's request prototype: one per request made each request object slower to use.
 */
function trackRoutes(app: Express): void {
  const join = (base: string, rest: string): string => (rest === '/' && base !== '' ? base : base + rest);
  Object.defineProperty(app.request, 'route', {
    configurable: true,
    get(this: TrackedRequest) {
      return this[ROUTE];
    },
    set(this: TrackedRequest, value: unknown) {
      this[ROUTE] = value;
      const template = (value as { path?: unknown } | undefined)?.path;
      if (typeof template === 'string') this[MATCHED] = { template: join(this.baseUrl, template), path: join(this.baseUrl, this.path) };
    },
  });
}

/** The route `req` matched (see trackRoutes), if any did. */
function matchedRoute(req: express.Request): { template: string; path: string } | undefined {
  return (req as unknown as TrackedRequest)[MATCHED];
}
