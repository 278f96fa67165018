import { prepareArtifactDir } from '../../shared/src/artifact-store';
import { ConfigError, parseEnv } from '../../shared/src/config';
import { startHealthFile } from './health-file';
import { dropRoot, WORKER_GID, WORKER_UID } from './privileges';
import { dockerHostProblem, loadWorkerConfig } from './worker-config';
import { startWorker } from './worker-service';

async function main(): Promise<void> {
  const parsed = parseEnv(process.env);
  // Before anything is read or connected: from here on the worker is uid 1000 (compose starts it as
  // root). A DOCKER_HOST that names no socket is reported below; until then the default one counts.
  const dockerHost = parsed.values.DOCKER_HOST;
  const { ARTIFACT_DIR: artifactDir, MAESTRO_PREFIX: prefix } = parsed.values;
  if (process.getuid?.() === 0 && artifactDir !== undefined && prefix !== undefined) {
    // The store may have been made by root (an API started by root beside it): its directories
    // become the worker's. Should this fail, the store's own check after the drop says why.
    await prepareArtifactDir(artifactDir, prefix, { uid: WORKER_UID, gid: WORKER_GID }).catch(() => undefined);
  }
  dropRoot(dockerHostProblem(dockerHost) === null ? dockerHost : undefined);
  // Every configuration problem in one message, the files judged as the worker will read them.
  const { config, allowedDirs } = await loadWorkerConfig(parsed);
  const worker = await startWorker(config, { allowedDirs });
  const health = startHealthFile(config, worker.workerId, undefined, { redisWatcher: worker.redisWatcher });
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
