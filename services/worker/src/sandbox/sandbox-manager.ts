import type Dockerode from 'dockerode';
import { SandboxError } from '../../../shared/src/errors';
import type { Logger } from '../../../shared/src/logger';
import { artifactLimits, type SandboxContainerLabels, type SandboxContainerMounts } from './container-spec';
import type { SandboxAssignment } from './reaper';
import { SandboxContainer } from './sandbox-container';
import { SandboxPool } from './sandbox-pool';
import { JobSandboxSession } from './sandbox-session';
import type { SandboxSession, SandboxSettings } from './types';
import { poolRequests } from '../worker-metrics';

/**
 * Owns every sandbox container of this worker: the warm pool and the one container of each job's
 * session. `close()` removes all of them, whatever state they are in.
 */
export class SandboxManager {
  private readonly containers = new Set<SandboxContainer>();
  private readonly launches = new Set<Promise<unknown>>();
  private readonly pool: SandboxPool;
  private readonly logger: Logger;
  private starting: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private closed = false;
  private events: (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;

  constructor(
    private readonly opts: {
      docker: Dockerode;
      settings: SandboxSettings;
      logger: Logger;
      /**
       * Records which job took a pool container, for the reaper (a container's labels cannot change).
       * Not awaited before the job's code runs: until it lands, the worker's liveness guards the container.
       */
      assign?: (containerId: string, assignment: SandboxAssignment) => Promise<void>;
    },
  ) {
    // Checked once here, so bad settings stop the worker at start rather than fail every launch.
    artifactLimits(opts.settings);
    this.logger = opts.logger.child({ component: 'sandbox' });
    this.pool = new SandboxPool({
      size: opts.settings.poolSize,
      launch: () => this.launch({ jobId: '', created: new Date() }),
      logger: this.logger,
    });
  }

  /** Watches for out-of-memory kills and fills the pool. Idempotent. */
  start(): Promise<void> {
    this.starting ??= (async () => {
      await this.watchOutOfMemory();
      await this.pool.fill();
    })();
    return this.starting;
  }

  /** Follows the engine's `oom` events for this worker's containers (see SandboxContainer.outOfMemory). */
  private async watchOutOfMemory(): Promise<void> {
    const events = (await this.opts.docker.getEvents({
      filters: { type: ['container'], event: ['oom'], label: [`maestro.worker=${this.opts.settings.workerId}`] },
    })) as NodeJS.ReadableStream & { destroy?: () => void };
    this.events = events;
    let buffered = '';
    events.on('data', (chunk: Buffer) => {
      // The engine sends one JSON object per line; a line may span chunks. Nothing here is sandbox
      // output: these come from the engine itself.
      buffered = (buffered + chunk.toString('utf8')).slice(-64 * 1024);
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        let id: unknown;
        try {
          id = (JSON.parse(line) as { id?: unknown }).id;
        } catch {
          continue;
        }
        for (const container of this.containers) {
          if (container.id === id) {
            this.logger.warn({ event: 'sandbox.out_of_memory', containerId: id });
            container.outOfMemory();
          }
        }
      }
    });
    events.on('error', (err: Error) => {
      if (!this.closed) this.logger.warn({ event: 'sandbox.events_failed', message: err.message });
    });
  }

  /** Containers waiting in the pool, ready for a job. */
  get poolReady(): number {
    return this.pool.available;
  }

  /** Resolves once the pool is full again (after takes); for benchmarks and tests that need a warm pool. */
  fillPool(): Promise<void> {
    return this.pool.fill();
  }

  /**
   * The sandbox of one job; no container is taken until its first run. With `inputsHostDir` (a
   * directory on the Docker host, see hostPathOf) the job's files are mounted read-only at /input:
   * mounts are fixed when a container is created, so such a job gets a container of its own, never
   * one from the pool, and so does every container that replaces it after a reset.
   */
  session(jobId: string, opts: { deadline: Date; inputsHostDir?: string }): SandboxSession {
    const logger = this.logger.child({ jobId });
    const mounts: SandboxContainerMounts = opts.inputsHostDir === undefined ? {} : { inputsHostDir: opts.inputsHostDir };
    return new JobSandboxSession({
      logger,
      acquire: () => this.acquire({ jobId, created: new Date(), deadline: opts.deadline }, mounts),
      release: (container) => this.release(container),
    });
  }

  /** Removes every container this manager created and closes the pool. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.events?.destroy?.();
      await this.pool.close();
      await Promise.allSettled([...this.launches]);
      const results = await Promise.allSettled([...this.containers].map((c) => this.release(c)));
      const failed = results.filter((r) => r.status === 'rejected').length;
      if (failed > 0) this.logger.warn({ event: 'sandbox.close_incomplete', failed });
    })();
    return this.closing;
  }

  /** A container for a job, from the pool or launched for it; the session waits for it or, once aborted, removes it. */
  private async acquire(labels: SandboxContainerLabels, mounts: SandboxContainerMounts): Promise<SandboxContainer> {
    if (this.closed) throw new SandboxError('the sandbox manager is closed', { retryable: true });
    // A pool container has no job mounts: a job that needs some gets a fresh container.
    const pooled = this.opts.settings.poolSize > 0 && mounts.inputsHostDir === undefined;
    // take() calls its launch before it returns, so `missed` is known below.
    let missed = false;
    const pending = pooled
      ? this.pool.take(() => {
          missed = true;
          return this.launch(labels);
        })
      : this.launch(labels, mounts);
    poolRequests.inc({ runtime: this.opts.settings.runtime, result: !pooled ? 'bypass' : missed ? 'miss' : 'hit' });
    const { assign } = this.opts;
    if (assign && labels.deadline) {
      const assignment = { jobId: labels.jobId, deadline: labels.deadline };
      void pending
        .then((c) => assign(c.id, assignment))
        .catch((err: unknown) => this.logger.warn({ event: 'sandbox.assign_failed', err: (err as Error).message }));
    }
    return pending;
  }

  private launch(labels: SandboxContainerLabels, mounts: SandboxContainerMounts = {}): Promise<SandboxContainer> {
    const launched = SandboxContainer.launch({
      docker: this.opts.docker,
      settings: this.opts.settings,
      labels,
      mounts,
      logger: this.logger,
    }).then(async (container) => {
      if (this.closed) {
        await container.remove().catch(() => undefined);
        throw new SandboxError('the sandbox manager is closed', { retryable: true });
      }
      this.containers.add(container);
      return container;
    });
    this.launches.add(launched);
    void launched.finally(() => this.launches.delete(launched)).catch(() => undefined);
    return launched;
  }

  private async release(container: SandboxContainer): Promise<void> {
    await container.remove();
    this.containers.delete(container);
  }
}
