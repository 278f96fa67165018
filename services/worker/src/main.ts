import { ConfigError, loadConfig } from '../../shared/src/config';
import { startHealthFile } from './health-file';
import { dropRoot } from './privileges';
import { startWorker } from './worker-service';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  // Before anything is read or connected: from here on the worker is uid 1000 (compose starts it as root).
  dropRoot(config.DOCKER_HOST);
  const worker = await startWorker(config);
  const health = startHealthFile(config, worker.workerId);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      void Promise.all([health.close(), worker.close()]).then(() => process.exit(0));
    });
  }
}

main().catch((err: unknown) => {
  // One clear line for configuration mistakes; other start-up failures get their message, not a stack.
  const message = err instanceof ConfigError ? err.message : `start-up failed: ${(err as Error).message}`;
  console.error(`maestro worker: ${message.replace(/\n/g, '\nmaestro worker: ')}`);
  process.exit(1);
});
