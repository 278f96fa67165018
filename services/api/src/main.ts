import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { ConfigError, loadConfig } from '../../shared/src/config';
import { JobStore } from '../../shared/src/job-store';
import { createLogger } from '../../shared/src/logger';
import { createJobsQueue } from '../../shared/src/queue';
import { closeRedis, createApiRedis } from '../../shared/src/redis';
import { createApp } from './app';
import { unsafeAuthConfig } from './auth';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger({ level: config.LOG_LEVEL, service: 'api' });
  const unsafe = unsafeAuthConfig(config);
  if (unsafe) throw new ConfigError(unsafe);

  const redis = createApiRedis(config.REDIS_URL);
  redis.on('error', (err) => logger.warn({ event: 'redis.error', message: err.message }, 'redis error'));
  const queue = createJobsQueue(redis, config.MAESTRO_PREFIX);
  queue.on('error', (err) => logger.warn({ event: 'queue.error', message: err.message }, 'queue error'));
  const store = new JobStore(redis, config.MAESTRO_PREFIX, config.JOB_RETENTION_HOURS * 3600);
  const app = createApp({ config, store, queue, redis, logger });

  const server = app.listen(config.PORT, config.HOST);
  await once(server, 'listening');
  const { address, port } = server.address() as AddressInfo;
  logger.info({ event: 'api.listening', address, port, authMode: config.AUTH_MODE }, `listening on ${address}:${port}`);

  let closing = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (closing) return;
    closing = true;
    logger.info({ event: 'api.stopping', signal }, 'stopping');
    const deadline = setTimeout(() => process.exit(1), 10_000).unref();
    // Stop accepting, let in-flight requests end, then drop idle keep-alive sockets (and SSE streams).
    server.close();
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), 5000).unref();
    await once(server, 'close').catch(() => undefined);
    await queue.close();
    await closeRedis(redis);
    clearTimeout(deadline);
    logger.info({ event: 'api.stopped' }, 'stopped');
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  // One clear line for configuration mistakes; other start-up failures get their message, not a stack.
  const message = err instanceof ConfigError ? err.message : `start-up failed: ${(err as Error).message}`;
  console.error(`maestro api: ${message.replace(/\n/g, '\nmaestro api: ')}`);
  process.exit(1);
});
