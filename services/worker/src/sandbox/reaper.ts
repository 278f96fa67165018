import type Dockerode from 'dockerode';
import type { Logger } from '../../../shared/src/logger';
import { LABEL, SANDBOX_ROLE } from './container-spec';

/**
 * Removes sandbox containers nobody will use again: their worker is gone, their job has finished or
 * their deadline has passed. Containers are found by label only, never by name, so anything else on
 * the engine is left alone; a live job's container is never touched, so a sweep is safe at any time.
 */
export class Reaper {
  private readonly now: () => Date;

  constructor(
    private readonly opts: {
      docker: Dockerode;
      logger: Logger;
      isWorkerAlive(workerId: string): Promise<boolean>;
      isJobFinished(jobId: string): Promise<boolean>;
      /**
       * Whether a worker id belongs to this deployment. Deployments (and test runs) sharing a Docker
       * engine each judge only their own containers: another's heartbeats and jobs are not in our Redis.
       */
      owns?(workerId: string): boolean;
      now?: () => Date;
    },
  ) {
    this.now = opts.now ?? (() => new Date());
  }

  private owns(workerId: string): boolean {
    return this.opts.owns ? this.opts.owns(workerId) : true;
  }

  /** One pass over all sandbox containers, running or not. Returns how many were removed. */
  async sweep(): Promise<number> {
    const containers = await this.opts.docker.listContainers({
      all: true,
      filters: { label: [`${LABEL.role}=${SANDBOX_ROLE}`] },
    });
    const workers = new Map<string, Promise<boolean>>();
    const jobs = new Map<string, Promise<boolean>>();
    let removed = 0;
    for (const info of containers) {
      const labels = info.Labels ?? {};
      // The engine filtered already; checked again so a wrong filter can never widen the sweep.
      if (labels[LABEL.role] !== SANDBOX_ROLE) continue;
      if (!this.owns(labels[LABEL.worker] ?? '')) continue;
      const reason = await this.reasonToRemove(labels, workers, jobs);
      if (!reason) continue;
      try {
        await this.opts.docker.getContainer(info.Id).remove({ force: true, v: true });
        removed += 1;
        this.opts.logger.info({ event: 'sandbox.reaped', containerId: info.Id, reason, jobId: labels[LABEL.job] || undefined });
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        // 404: removed meanwhile (by its own worker, say); 409: a removal is already in progress.
        if (status !== 404 && status !== 409) {
          this.opts.logger.warn({ event: 'sandbox.reap_failed', containerId: info.Id, err: (err as Error).message });
        }
      }
    }
    await this.pruneVolumes();
    return removed;
  }

  /**
   * Output dirs are anonymous volumes; a container removed without `v` (by hand, or by other
   * tooling) leaves its volume behind. Only dangling ones (used by no container) carrying the
   * sandbox label are removed; a volume in use is refused by the engine anyway.
   */
  private async pruneVolumes(): Promise<void> {
    const { Volumes } = await this.opts.docker.listVolumes({
      filters: { label: [`${LABEL.role}=${SANDBOX_ROLE}`], dangling: ['true'] },
    });
    for (const volume of Volumes ?? []) {
      if (volume.Labels?.[LABEL.role] !== SANDBOX_ROLE || !this.owns(volume.Labels[LABEL.worker] ?? '')) continue;
      await this.opts.docker
        .getVolume(volume.Name)
        .remove()
        .then(
          () => this.opts.logger.debug({ event: 'sandbox.volume_pruned', volume: volume.Name }),
          () => undefined,
        );
    }
  }

  private async reasonToRemove(
    labels: Record<string, string>,
    workers: Map<string, Promise<boolean>>,
    jobs: Map<string, Promise<boolean>>,
  ): Promise<string | undefined> {
    const deadline = labels[LABEL.deadline];
    if (deadline) {
      const at = Date.parse(deadline);
      if (!Number.isNaN(at) && at <= this.now().getTime()) return 'deadline';
    }
    const workerId = labels[LABEL.worker] ?? '';
    if (!workers.has(workerId)) workers.set(workerId, workerId ? this.opts.isWorkerAlive(workerId) : Promise.resolve(false));
    if (!(await workers.get(workerId))) return 'worker_gone';
    const jobId = labels[LABEL.job] ?? '';
    if (jobId) {
      if (!jobs.has(jobId)) jobs.set(jobId, this.opts.isJobFinished(jobId));
      if (await jobs.get(jobId)) return 'job_finished';
    }
    return undefined;
  }
}
