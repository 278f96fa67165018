import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../../shared/src/config';
import { workerHeartbeatKey } from '../../shared/src/queue';
import { closeRedis, createWorkerRedis } from '../../shared/src/redis';
import type { RedisWatcher } from '../../shared/src/redis-watch';
import { dockerClient } from './sandbox/docker-client';

/** The file a container health check reads: fresh means healthy (docker-compose.yml checks its age). */
export const WORKER_HEALTH_FILE = join(tmpdir(), 'maestro-worker.health');

const CHECK_EVERY_MS = 10_000;

/**
 * The worker serves no HTTP, so its health is a file it rewrites only while it can do its work: the
 * worker's own Redis heartbeat is current (its timers run and its Redis connection works, which a
 * mere "process is up" would not show) and the Docker engine answers. A stuck or cut-off worker stops
 * rewriting it, and the file goes stale.
 */
export function startHealthFile(
  config: Config,
  workerId: string,
  path = WORKER_HEALTH_FILE,
  opts: { redisWatcher?: RedisWatcher } = {},
): { close(): Promise<void> } {
  // Own connections, so a check never queues behind the worker's blocking BullMQ commands.
  const redis = createWorkerRedis(config, { maxRetriesPerRequest: 1 });
  // A stale file is the report; an outage is logged once, by the worker's watcher.
  if (opts.redisWatcher) opts.redisWatcher.watch(redis, 'health');
  else redis.on('error', () => undefined);
  const docker = dockerClient(config.DOCKER_HOST);

  const check = async (): Promise<void> => {
    const [beating] = await Promise.all([redis.exists(workerHeartbeatKey(config.MAESTRO_PREFIX, workerId)), docker.ping()]);
    if (beating === 1) await writeFile(path, `${new Date().toISOString()}\n`);
  };
  const run = (): void => void check().catch(() => undefined);
  run();
  const timer = setInterval(run, CHECK_EVERY_MS);

  let closing: Promise<void> | null = null;
  return {
    close: () =>
      (closing ??= (async () => {
        clearInterval(timer);
        await rm(path, { force: true });
        await closeRedis(redis);
      })()),
  };
}
