import type Dockerode from 'dockerode';
import type { Logger } from '../../../shared/src/logger';
import { LABEL, SANDBOX_ROLE } from './container-spec';
import { reaperRemovals } from '../worker-metrics';

/** Which job holds a container taken from the pool (pool containers are labelled before any job has them). */
export interface SandboxAssignment {
  jobId: string;
  deadline: Date;
}

/**
 * Removes sandbox containers nobody will use again: their worker is gone, their job has finished,
 * their deadline has passed, or they are older than any job may run. Containers are found by label
 * only, never by name, and only those of this deployment (a label that is unique to it) are judged,
 * so anything else on the engine is left alone; a live job's container is never touched, so a sweep
 * is safe at any time.
 */
export class Reaper {
  private readonly now: () => Date;

  constructor(
    private readonly opts: {
      docker: Dockerode;
      logger: Logger;
      /**
       * The deployment whose containers this reaper judges. Deployments (and test runs) sharing a
       * Docker engine each judge only their own: another's heartbeats and jobs are not in our Redis.
       */
      deploymentId: string;
      /** Containers older than this are removed whatever their labels say: the longest job plus a margin. */
      maxAgeMs: number;
      isWorkerAlive(workerId: string): Promise<boolean>;
      isJobFinished(jobId: string): Promise<boolean>;
      /** The job a pool container was handed to, if any. */
      assignmentOf(containerId: string): Promise<SandboxAssignment | undefined>;
      now?: () => Date;
    },
  ) {
    this.now = opts.now ?? (() => new Date());
  }

  /** One pass over all sandbox containers of this deployment, running or not. Returns how many were removed. */
  async sweep(): Promise<number> {
    const containers = await this.opts.docker.listContainers({
      all: true,
      filters: { label: [`${LABEL.role}=${SANDBOX_ROLE}`, `${LABEL.deployment}=${this.opts.deploymentId}`] },
    });
    const workers = new Map<string, Promise<boolean>>();
    const jobs = new Map<string, Promise<boolean>>();
    let removed = 0;
    for (const info of containers) {
      const labels = info.Labels ?? {};
      // The engine filtered already; checked again so a wrong filter can never widen the sweep.
      if (labels[LABEL.role] !== SANDBOX_ROLE || labels[LABEL.deployment] !== this.opts.deploymentId) continue;
      const reason = await this.reasonToRemove(info.Id, labels, workers, jobs);
      if (!reason) continue;
      try {
        await this.opts.docker.getContainer(info.Id).remove({ force: true, v: true });
        removed += 1;
        reaperRemovals.inc({ reason });
        this.opts.logger.info({ event: 'sandbox.reaped', containerId: info.Id, reason, jobId: labels[LABEL.job] || undefined });
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        // 404: removed meanwhile (by its own worker, say); 409: a removal is already in progress.
        if (status !== 404 && status !== 409) {
          this.opts.logger.warn({ event: 'sandbox.reap_failed', containerId: info.Id, err: (err as Error).message });
        }
      }
    }
    return removed;
  }

  private async reasonToRemove(
    containerId: string,
    labels: Record<string, string>,
    workers: Map<string, Promise<boolean>>,
    jobs: Map<string, Promise<boolean>>,
  ): Promise<string | undefined> {
    const now = this.now().getTime();
    const created = Date.parse(labels[LABEL.created] ?? '');
    // A container without a readable birth date is as old as can be.
    if (Number.isNaN(created) || now - created > this.opts.maxAgeMs) return 'too_old';
    if (passed(labels[LABEL.deadline], now)) return 'deadline';
    const workerId = labels[LABEL.worker] ?? '';
    if (!workers.has(workerId)) workers.set(workerId, workerId ? this.opts.isWorkerAlive(workerId) : Promise.resolve(false));
    if (!(await workers.get(workerId))) return 'worker_gone';
    let jobId = labels[LABEL.job] ?? '';
    if (!jobId) {
      // Labels are immutable, so a pool container's job is recorded apart when the job takes it.
      const assignment = await this.opts.assignmentOf(containerId);
      if (!assignment) return undefined;
      if (assignment.deadline.getTime() <= now) return 'deadline';
      jobId = assignment.jobId;
    }
    if (!jobs.has(jobId)) jobs.set(jobId, this.opts.isJobFinished(jobId));
    if (await jobs.get(jobId)) return 'job_finished';
    return undefined;
  }
}

function passed(iso: string | undefined, now: number): boolean {
  if (!iso) return false;
  const at = Date.parse(iso);
  return !Number.isNaN(at) && at <= now;
}
