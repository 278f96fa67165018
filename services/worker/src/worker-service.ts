import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { DirectoryArtifactStore } from '../../shared/src/artifact-store';
import { ConfigError, type Config } from '../../shared/src/config';
import { JobStore } from '../../shared/src/job-store';
import { createLogger, type Logger } from '../../shared/src/logger';
import {
  absorbLateConnectionErrors,
  cancelChannel,
  deploymentKey,
  JOBS_QUEUE,
  sandboxAssignmentKey,
  workerHeartbeatKey,
  type QueuedJobData,
} from '../../shared/src/queue';
import { closeRedis, createWorkerRedis, refuseUnsupportedRedis } from '../../shared/src/redis';
import { createRedisWatcher, type RedisWatcher } from '../../shared/src/redis-watch';
import { validateAllowedDirs, type ValidatedAllowedDirs } from './allowed-dirs';
import { CODE_DIR } from './worker-config';
import { hostPathOf } from './host-path';
import { RetentionSweeper } from './retention';
import { JobProcessor } from './job-processor';
import { configuredProviders, createProvider, type ProvidersConfig } from './providers';
import type { ModelProvider } from './providers/model-provider';
import { OUTPUT_DIR } from './sandbox/container-spec';
import { dockerClient } from './sandbox/docker-client';
import { Reaper } from './sandbox/reaper';
import { SandboxManager } from './sandbox/sandbox-manager';
import { ALL_TOOLS } from './tools/registry';
import { collectProcessMetrics, startMetricsServer, type MetricsServer } from '../../shared/src/metrics';
import { startTracing } from '../../shared/src/tracing';
import { instrumentProvider, instrumentSession } from './instrumentation';
import { jobDuration, jobsEnded, measureWorker } from './worker-metrics';
import { WebhookDispatcher } from './webhooks/dispatcher';
import { webhookConfigProblems } from './worker-config';
import { webhookSecretKey } from '../../shared/src/webhooks';

const HEARTBEAT_TTL_S = 15;
const HEARTBEAT_EVERY_MS = 5000;
/** How often the cancel flags of the running jobs are read, should their cancel message have been missed. */
const CANCEL_POLL_MS = 250;
/** How long past the longest job a sandbox may live, and an assignment record outlive its deadline. */
const ASSIGNMENT_MARGIN_MS = 10 * 60_000;
const MIB = 1024 * 1024;
/** Files one execution may hand back, and one job keep: bounds on metadata, where the quotas bound bytes. */
const ARTIFACT_FILES_PER_EXECUTION = 20;
const ARTIFACT_FILES_PER_JOB = 100;
/** How often the artifact store is checked for files no job owns (a crash's leftovers). */
const ORPHAN_SCAN_EVERY_MS = 10 * 60_000;


/**
 * The deployment's id: random, made by the first worker that starts against this Redis and prefix,
 * and the same for every worker after it. A prefix alone defaults to the same value everywhere, so
 * two stacks on one engine would take each other's containers for their own.
 */
async function deploymentIdOf(redis: Redis, prefix: string): Promise<string> {
  await redis.set(deploymentKey(prefix), randomBytes(12).toString('hex'), 'NX');
  const id = await redis.get(deploymentKey(prefix));
  if (!id) throw new Error('could not read the deployment id from Redis');
  return id;
}

export interface RunningWorker {
  workerId: string;
  /** The worker's Redis watcher, for other connections of its process to report to (the health file's). */
  redisWatcher: RedisWatcher;
  /** Where Prometheus scrapes this worker (WORKER_METRICS_PORT; /healthz beside it), when METRICS_ENABLED. */
  metricsUrl?: string;
  /** Graceful stop: running jobs get the grace period, then are handed back. Idempotent. */
  close(): Promise<void>;
}

export interface StartWorkerOptions {
  logger?: Logger;
  /** ALLOWED_DIRS as loadWorkerConfig already validated them (main.ts); validated here when absent. */
  allowedDirs?: ValidatedAllowedDirs;
}

/** Builds and starts a worker from validated config: the worker's composition root. */
export async function startWorker(config: Config, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  // First, before anything connects: a bad value must stop start-up, not fail every call of a healthy-looking worker.
  const allowed = opts.allowedDirs ?? (await validateAllowedDirs(config.ALLOWED_DIRS, { codeDir: CODE_DIR, outputDir: OUTPUT_DIR }));
  const allowedDirs = allowed.dirs;
  const webhookProblems = webhookConfigProblems(config);
  if (webhookProblems.length > 0) throw new ConfigError(webhookProblems.join('\n'));
  const webhookKey = config.WEBHOOK_SECRET === undefined ? null : webhookSecretKey(config.WEBHOOK_SECRET);
  // The prefix leads the id so that everything a deployment (or a test run) created can be told apart.
  const workerId = `${config.MAESTRO_PREFIX}.${hostname()}.${process.pid}.${randomBytes(3).toString('hex')}`;
  const logger = (opts.logger ?? createLogger({ level: config.LOG_LEVEL, service: 'worker' })).child({ workerId });

  const redis = createWorkerRedis(config);
  const subscriber = createWorkerRedis(config);
  // One watcher for all of the worker's connections, BullMQ's included: an outage is logged once,
  // not per failed reconnect of each.
  const redisWatcher = createRedisWatcher({ logger, target: config });
  redisWatcher.watch(redis, 'main');
  redisWatcher.watch(subscriber, 'subscriber');
  const files = new DirectoryArtifactStore(config.ARTIFACT_DIR, config.MAESTRO_PREFIX);
  const store = new JobStore(redis, config.MAESTRO_PREFIX, config.JOB_RETENTION_HOURS * 3600, files);
  // Every job this worker ends is queued for its webhook in the script that records its end.
  store.queueWebhooks = config.WEBHOOKS_ENABLED;
  await files.init().catch(async (err: unknown) => {
    await Promise.all([closeRedis(subscriber), closeRedis(redis)]);
    throw new ConfigError(`invalid ARTIFACT_DIR: cannot create or write to it (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  });
  // Before anything is written: a Cluster node would fail the multi-key scripts of BullMQ and the store.
  await refuseUnsupportedRedis(redis, config).catch(async (err: unknown) => {
    await Promise.all([closeRedis(subscriber), closeRedis(redis)]);
    throw err;
  });
  const deploymentId = await deploymentIdOf(redis, config.MAESTRO_PREFIX);
  const docker = dockerClient(config.DOCKER_HOST);
  await docker.ping().catch((err: unknown) => {
    throw new Error(`the Docker engine is unreachable (${(err as Error).message})`);
  });
  // Every sandbox runs this image and nothing here builds it: without it, no job could run.
  const imagePresent = await docker.getImage(config.SANDBOX_IMAGE).inspect().then(
    () => true,
    (err: { statusCode?: number; message: string }) => {
      if (err.statusCode === 404) return false;
      throw new Error(`cannot inspect the sandbox image ${config.SANDBOX_IMAGE} (${err.message})`);
    },
  );
  if (!imagePresent) {
    await Promise.all([closeRedis(subscriber), closeRedis(redis)]);
    throw new ConfigError(
      `the sandbox image ${config.SANDBOX_IMAGE} (SANDBOX_IMAGE) does not exist: build it with \`npm run sandbox:build\`, or start the stack with \`docker compose up\`, which builds it`,
    );
  }

  // The engine resolves a bind mount's source on its own host: where ARTIFACT_DIR is there, when
  // this worker runs in a container (a compose volume) rather than on that host.
  const hostFiles = new DirectoryArtifactStore(await hostPathOf(docker, config.ARTIFACT_DIR), config.MAESTRO_PREFIX);

  const sandboxes = new SandboxManager({
    docker,
    logger,
    settings: {
      image: config.SANDBOX_IMAGE,
      runtime: config.SANDBOX_RUNTIME,
      timeoutMs: config.SANDBOX_TIMEOUT_MS,
      memoryMb: config.SANDBOX_MEMORY_MB,
      cpus: config.SANDBOX_CPUS,
      pids: config.SANDBOX_PIDS,
      poolSize: config.SANDBOX_POOL_SIZE,
      allowedDirs,
      readOnlySubmounts: allowed.readOnlyMounts,
      outputLimitBytes: config.SANDBOX_OUTPUT_LIMIT_KB * 1024,
      artifactBytesPerExecution: config.ARTIFACT_QUOTA_MB_PER_EXECUTION * MIB,
      artifactFilesPerExecution: ARTIFACT_FILES_PER_EXECUTION,
      tmpSizeMb: config.SANDBOX_TMP_MB,
      workerId,
      deploymentId,
    },
    assign: async (containerId, { jobId, deadline }) => {
      const ttlMs = Math.max(1000, deadline.getTime() - Date.now() + ASSIGNMENT_MARGIN_MS);
      await redis.set(sandboxAssignmentKey(config.MAESTRO_PREFIX, containerId), JSON.stringify({ jobId, deadline }), 'PX', ttlMs);
    },
  });

  // Healthy while the heartbeat reaches Redis and the reaper's sweeps reach the Docker engine (the
  // health file's test, for the metrics listener's /healthz).
  let heartbeatAt = 0;
  let engineAt = Date.now();
  const healthy = (): boolean => Date.now() - heartbeatAt < HEARTBEAT_TTL_S * 1000 && Date.now() - engineAt < 3 * config.REAPER_INTERVAL_MS + 10_000;
  const heartbeat = async (): Promise<void> => {
    await redis.set(workerHeartbeatKey(config.MAESTRO_PREFIX, workerId), new Date().toISOString(), 'EX', HEARTBEAT_TTL_S);
    heartbeatAt = Date.now();
  };
  await heartbeat();
  const heartbeatTimer = setInterval(() => {
    heartbeat().catch((err: unknown) => logger.warn({ event: 'heartbeat.failed', message: (err as Error).message }, 'heartbeat failed'));
  }, HEARTBEAT_EVERY_MS);

  const reaper = new Reaper({
    docker,
    logger,
    isWorkerAlive: async (id) => id === workerId || (await redis.exists(workerHeartbeatKey(config.MAESTRO_PREFIX, id))) === 1,
    isJobFinished: (jobId) => store.isFinished(jobId),
    assignmentOf: async (containerId) => {
      const raw = await redis.get(sandboxAssignmentKey(config.MAESTRO_PREFIX, containerId));
      if (raw === null) return undefined;
      const { jobId, deadline } = JSON.parse(raw) as { jobId: string; deadline: string };
      return { jobId, deadline: new Date(deadline) };
    },
    deploymentId,
    maxAgeMs: config.JOB_MAX_TIMEOUT_SECONDS * 1000 + ASSIGNMENT_MARGIN_MS,
  });
  const retention = new RetentionSweeper({
    store,
    files,
    logger,
    orphanScanEvery: Math.max(1, Math.round(ORPHAN_SCAN_EVERY_MS / config.REAPER_INTERVAL_MS)),
  });
  const sweep = (): void => {
    reaper.sweep().then(
      () => {
        engineAt = Date.now();
      },
      (err: unknown) => logger.warn({ event: 'reaper.failed', message: (err as Error).message }, 'reaper sweep failed'),
    );
    retention.sweep().catch((err: unknown) => logger.warn({ event: 'retention.failed', message: (err as Error).message }, 'retention sweep failed'));
  };
  sweep();
  const reaperTimer = setInterval(sweep, config.REAPER_INTERVAL_MS);
  await sandboxes.start();

  const providersConfig: ProvidersConfig = {
    openai: { apiKey: config.OPENAI_API_KEY, baseURL: config.OPENAI_BASE_URL },
    anthropic: { apiKey: config.ANTHROPIC_API_KEY, baseURL: config.ANTHROPIC_BASE_URL },
    maxRetries: config.PROVIDER_MAX_RETRIES,
    timeoutMs: config.PROVIDER_TIMEOUT_MS,
  };
  const tracing = await startTracing(config, 'maestro-worker', logger);
  const providers = new Map<string, ModelProvider>();
  const processor = new JobProcessor({
    store,
    providerFor: (name) => {
      let provider = providers.get(name);
      if (!provider) {
        provider = instrumentProvider(createProvider(name, providersConfig));
        providers.set(name, provider);
      }
      return provider;
    },
    sandboxFor: (jobId, deadline, { inputs }) =>
      instrumentSession(sandboxes.session(jobId, { deadline, ...(inputs ? { inputsHostDir: hostFiles.inputsDir(jobId) } : {}) }), config.SANDBOX_RUNTIME),
    files,
    tools: ALL_TOOLS,
    allowedDirs,
    sandboxTimeoutMs: config.SANDBOX_TIMEOUT_MS,
    maxOutputTokens: config.MODEL_MAX_OUTPUT_TOKENS,
    quotas: {
      jobFiles: ARTIFACT_FILES_PER_JOB,
      jobBytes: config.ARTIFACT_QUOTA_MB_PER_JOB * MIB,
      callerBytes: config.ARTIFACT_QUOTA_MB_PER_CALLER * MIB,
    },
    logger,
  });

  // Every job this worker ends is counted as it is recorded (the store tells).
  store.onFinished = (job) => {
    if (!config.METRICS_ENABLED) return;
    jobsEnded.inc({ status: job.status, stop_reason: job.stopReason ?? 'none', provider: job.provider });
    if (job.finishedAt) jobDuration.observe({ status: job.status, provider: job.provider }, (Date.parse(job.finishedAt) - Date.parse(job.createdAt)) / 1000);
  };
  // Finished jobs' webhooks, from whichever process ended them (the API too), until delivered or given up.
  let webhooks: WebhookDispatcher | undefined;
  if (config.WEBHOOKS_ENABLED) {
    webhooks = new WebhookDispatcher({
      store,
      logger,
      settings: {
        key: webhookKey as Buffer,
        deploymentUrl: config.WEBHOOK_URL,
        allowPrivate: config.WEBHOOK_ALLOW_PRIVATE,
        timeoutMs: config.WEBHOOK_TIMEOUT_MS,
        maxAttempts: config.WEBHOOK_MAX_ATTEMPTS,
        retryBaseMs: config.WEBHOOK_RETRY_BASE_MS,
      },
    });
    webhooks.start();
  }
  const stopMeasuring = measureWorker({ runtime: config.SANDBOX_RUNTIME, ready: () => sandboxes.poolReady }, processor);

  await subscriber.subscribe(cancelChannel(config.MAESTRO_PREFIX));
  subscriber.on('message', (_channel, jobId: string) => processor.cancel(jobId));
  // The message is the fast path; a message published while the subscriber reconnects is lost, the flag it follows is not.
  const cancelPollTimer = setInterval(() => {
    processor.pollCancels().catch((err: unknown) => logger.debug({ event: 'cancel_poll.failed', message: (err as Error).message }, 'cancel poll failed'));
  }, CANCEL_POLL_MS);

  const worker = absorbLateConnectionErrors(new Worker<QueuedJobData>(JOBS_QUEUE, processor.process, {
    connection: redis,
    prefix: config.MAESTRO_PREFIX,
    concurrency: config.WORKER_CONCURRENCY,
    lockDuration: config.WORKER_LOCK_MS,
    stalledInterval: config.WORKER_LOCK_MS,
    // A job whose worker died is taken over twice before it is declared lost.
    maxStalledCount: 2,
  }));
  worker.on('error', (err) => {
    // BullMQ relays its connections' errors here too: those are the watcher's.
    if (!redisWatcher.absorb(err, 'worker')) logger.warn({ event: 'worker.error', message: err.message }, 'worker error');
  });
  const lateVerdicts = new Set<Promise<void>>();
  worker.on('failed', (job) => {
    // The processor records every verdict it reaches before BullMQ lets the job go (completes it or
    // gets it back delayed), so BullMQ gives a job up for good (finishedOn) only when none was
    // reached: it stalled more than maxStalledCount times (failed with no call to the processor:
    // deferredFailure), or on BullMQ's last try an error escaped the processor (the store failing
    // while the verdict was recorded). Without one it would read as queued or running forever and
    // hold a place in its caller's cap. finish() leaves a recorded verdict alone.
    if (!job?.finishedOn) return;
    const error = job.deferredFailure
      ? { code: 'worker_lost', message: 'The workers running this job kept stopping.' }
      : { code: 'internal', message: 'The worker hit an internal error and could not record the outcome of the job.' };
    const recording = store.finish(job.data.jobId, { status: 'failed', stopReason: 'error', error }).then(
      () => undefined,
      (finishErr: unknown) => {
        logger.warn({ event: 'job.verdict_failed', jobId: job.data.jobId, message: (finishErr as Error).message }, 'could not record a failed job');
      },
    );
    // Shutdown waits for these, should BullMQ give up a job while the worker closes.
    lateVerdicts.add(recording);
    void recording.finally(() => lateVerdicts.delete(recording));
  });
  if (config.AUTH_MODE !== 'none' && config.SANDBOX_RUNTIME === 'runc') {
    // Authentication means callers who are not all the operator; under runc their code shares the host's kernel.
    logger.warn(
      { event: 'worker.runtime_warning', runtime: 'runc' },
      'sandboxes run under runc, sharing the host kernel with code from authenticated callers; set SANDBOX_RUNTIME=runsc (gVisor) unless every caller is trusted',
    );
  }
  if (configuredProviders(providersConfig).length === 0) {
    logger.warn(
      { event: 'worker.no_provider', variables: ['OPENAI_API_KEY', 'OPENAI_BASE_URL', 'ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL'] },
      'no model provider is configured: every job will fail with provider_not_configured; set OPENAI_API_KEY (or OPENAI_BASE_URL for a local OpenAI-compatible server) or ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL optional) in the worker\'s environment',
    );
  }
  logger.info({ event: 'worker.started', concurrency: config.WORKER_CONCURRENCY, runtime: config.SANDBOX_RUNTIME, pool: config.SANDBOX_POOL_SIZE }, 'worker started');

  let closing: Promise<void> | null = null;
  const shutdown = async (): Promise<void> => {
    logger.info({ event: 'worker.stopping', active: processor.activeCount }, 'stopping');
    // Running jobs get the grace period to finish; then they are handed back and resume elsewhere.
    const grace = setTimeout(() => processor.abortAll(), config.WORKER_SHUTDOWN_GRACE_MS);
    await worker.close();
    await Promise.all(lateVerdicts);
    await webhooks?.close();
    clearTimeout(grace);
    clearInterval(cancelPollTimer);
    clearInterval(reaperTimer);
    clearInterval(heartbeatTimer);
    await sandboxes.close();
    stopMeasuring();
    await metrics?.close();
    await tracing.close();
    await redis.del(workerHeartbeatKey(config.MAESTRO_PREFIX, workerId)).catch(() => undefined);
    await closeRedis(subscriber);
    await closeRedis(redis);
    logger.info({ event: 'worker.stopped' }, 'stopped');
  };
  // Prometheus scrapes this worker here, beside a health check that reads as the health file does.
  let metrics: MetricsServer | undefined;
  if (config.METRICS_ENABLED) {
    collectProcessMetrics();
    metrics = await startMetricsServer({
      host: config.HOST,
      port: config.WORKER_METRICS_PORT,
      logger,
      service: 'worker',
      routes: { '/healthz': () => (healthy() ? { status: 200, body: { status: 'ok' } } : { status: 503, body: { status: 'unhealthy' } }) },
    }).catch(async (err: unknown) => {
      await (closing ??= shutdown());
      throw new ConfigError(`invalid WORKER_METRICS_PORT: ${(err as Error).message}; set another port, or METRICS_ENABLED=false`);
    });
  }
  const metricsHost = config.HOST.includes(':') ? `[${config.HOST}]` : config.HOST;
  return {
    workerId,
    redisWatcher,
    ...(metrics ? { metricsUrl: `http://${metricsHost}:${metrics.port}/metrics` } : {}),
    close: () => (closing ??= shutdown()),
  };
}

