import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DirectoryArtifactStore } from '../../shared/src/artifact-store';
import { ConfigError, type Config } from '../../shared/src/config';
import { JobStore } from '../../shared/src/job-store';
import { createLogger, type Logger } from '../../shared/src/logger';
import { createJobsQueue } from '../../shared/src/queue';
import { closeRedis, createApiRedis, refuseUnsupportedRedis } from '../../shared/src/redis';
import { createRedisWatcher } from '../../shared/src/redis-watch';
import { withTimeout } from '../../shared/src/time';
import { collectProcessMetrics, startMetricsServer, type MetricsServer } from '../../shared/src/metrics';
import { startTracing } from '../../shared/src/tracing';
import { measureQueue } from './api-metrics';
import { createApp } from './app';
import { apiConfigProblems } from './api-config';
import { loadAuthSecret } from './auth';

export interface RunningApi {
  /** Base URL the API serves on, e.g. http://127.0.0.1:3000 */
  url: string;
  port: number;
  /** Where Prometheus scrapes this API (METRICS_PORT), when METRICS_ENABLED. */
  metricsUrl?: string;
  /** Stops accepting, lets in-flight requests end, closes connections. Idempotent. */
  close(): Promise<void>;
}

/** Builds and starts the API from validated config: the API's composition root. */
export async function startApi(config: Config, opts: { logger?: Logger } = {}): Promise<RunningApi> {
  const logger = opts.logger ?? createLogger({ level: config.LOG_LEVEL, service: 'api' });
  // Every problem at once, before anything connects (main.ts has reported these already; other callers may not have).
  const problems = apiConfigProblems(config);
  if (problems.length > 0) throw new ConfigError(problems.join('\n'));

  // Uploads are written here and downloads read from here: a directory it cannot write stops start-up.
  const files = new DirectoryArtifactStore(config.ARTIFACT_DIR, config.MAESTRO_PREFIX);
  try {
    await files.init();
  } catch (err) {
    throw new ConfigError(`invalid ARTIFACT_DIR: cannot create or write to it (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }

  // One watcher for all of the API's connections: an outage is logged once, not per failed reconnect.
  const redisWatcher = createRedisWatcher({ logger, target: config });
  const redis = createApiRedis(config);
  redisWatcher.watch(redis, 'main');
  // Bounded: the API starts, and answers 503, while Redis is unreachable; a Cluster node it refuses.
  await refuseUnsupportedRedis(redis, config, { waitMs: 3000 }).catch(async (err: unknown) => {
    await closeRedis(redis);
    throw err;
  });
  // Read before serving: a bare key's caller id, which owns its jobs, must never be derived from a
  // secret other replicas do not share. Only api-key mode has bare keys.
  let authSecret: Buffer | undefined;
  if (config.AUTH_MODE === 'api-key') {
    try {
      authSecret = await loadAuthSecret(redis, config.MAESTRO_PREFIX);
    } catch (err) {
      await closeRedis(redis);
      throw new Error(`could not load the API key secret from Redis (${(err as Error).message})`);
    }
  }
  // The queue gets a connection of its own: BullMQ loads its many scripts onto whatever connection it
  // is given, and every MULTI on a shared one would copy them (measured: ~8% of the API's CPU).
  const queueRedis = createApiRedis(config);
  redisWatcher.watch(queueRedis, 'queue');
  const queue = createJobsQueue(queueRedis, config.MAESTRO_PREFIX);
  queue.on('error', (err) => {
    if (!redisWatcher.absorb(err, 'queue')) logger.warn({ event: 'queue.error', message: err.message }, 'queue error');
  });
  const store = new JobStore(redis, config.MAESTRO_PREFIX, config.JOB_RETENTION_HOURS * 3600, files);
  // A job the API ends (cancelled before it started) is queued for its webhook like any other.
  store.queueWebhooks = config.WEBHOOKS_ENABLED;
  // Before the app is built: it makes a span per request only if tracing is on by then.
  const tracing = await startTracing(config, 'maestro-api', logger);
  let metrics: MetricsServer | undefined;
  if (config.METRICS_ENABLED) {
    collectProcessMetrics();
    measureQueue({ queue, redis, prefix: config.MAESTRO_PREFIX });
    try {
      metrics = await startMetricsServer({ host: config.HOST, port: config.METRICS_PORT, logger, service: 'api' });
    } catch (err) {
      await Promise.all([tracing.close(), withTimeout(queue.close(), 2000).catch(() => undefined), closeRedis(queueRedis), closeRedis(redis)]);
      throw new ConfigError(`invalid METRICS_PORT: ${(err as Error).message}; set another port, or METRICS_ENABLED=false`);
    }
  }
  const app = createApp({ config, store, files, queue, redis, logger, authSecret, redisWatcher });

  // Node would answer an HTTP/1.1 request without Host with a bare 400 of its own; the host check
  // answers it with a problem document instead.
  const server = createServer({ requireHostHeader: false }, app).listen(config.PORT, config.HOST);
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    // Requests Node's parser refuses (bad header bytes, oversized headers) never reach Express: they
    // still get a problem document, not a bare status line.
    // A response already under way on this socket (the parser failed on what followed it) must not
    // get a second one appended: Node's own handler makes the same check.
    const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    if (!socket.writable || inFlight || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
    const status = tooLarge ? 431 : 400;
    const body = JSON.stringify({
      type: `urn:maestro:problem:${tooLarge ? 'headers_too_large' : 'malformed_request'}`,
      title: tooLarge ? 'Request Header Fields Too Large' : 'Bad Request',
      status,
      detail: tooLarge ? 'The request headers are too large.' : 'The request is not valid HTTP.',
    });
    socket.end(
      `HTTP/1.1 ${status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\n` +
        `Content-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
  await once(server, 'listening');
  const { address, port } = server.address() as AddressInfo;
  logger.info({ event: 'api.listening', address, port, authMode: config.AUTH_MODE }, `listening on ${address}:${port}`);

  let closing: Promise<void> | null = null;
  const shutdown = async (): Promise<void> => {
    logger.info({ event: 'api.stopping' }, 'stopping');
    // Stop accepting, let in-flight requests end, then drop idle keep-alive sockets (and SSE streams).
    server.close();
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), 5000).unref();
    await once(server, 'close').catch(() => undefined);
    // BullMQ's close waits for a connection; with Redis down, that wait would hold shutdown hostage.
    await withTimeout(queue.close().catch(() => undefined), 2000).catch(() => undefined);
    await metrics?.close();
    measureQueue(undefined, queue);
    await tracing.close();
    await closeRedis(queueRedis);
    await closeRedis(redis);
    logger.info({ event: 'api.stopped' }, 'stopped');
  };
  const host = address.includes(':') ? `[${address}]` : address;
  return {
    url: `http://${host}:${port}`,
    port,
    ...(metrics ? { metricsUrl: `http://${host}:${metrics.port}/metrics` } : {}),
    close: () => (closing ??= shutdown()),
  };
}

