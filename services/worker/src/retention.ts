import type { ArtifactStore } from '../../shared/src/artifact-store';
import type { JobStore } from '../../shared/src/job-store';
import type { Logger } from '../../shared/src/logger';

/**
 * Jobs removed per sweep at most; a backlog drains over the next sweeps. Every finished job passes
 * through here (its record is a file), so a sweep every REAPER_INTERVAL_MS must keep up with the
 * deployment's finishing rate: 1000 per 10 s is 100 jobs/s.
 */
const BATCH = 1000;
/**
 * A job directory with no record is left alone this long: the API writes a submission's inputs just
 * before it records the job.
 */
export const ORPHAN_AFTER_MS = 60 * 60_000;

/**
 * Removes what jobs stored once their retention (JOB_RETENTION_HOURS) ends: their Redis keys, their
 * directory (record and files) and their files' share of their caller's quota. Also removes, more
 * rarely, what a crash left behind: a job directory whose job no longer exists, an upload whose
 * request died. Any number of workers may sweep at once: removing a job twice is harmless.
 */
export class RetentionSweeper {
  private sweeps = 0;

  constructor(
    private readonly opts: {
      store: JobStore;
      files: ArtifactStore;
      logger: Logger;
      /** Every how many sweeps the store's directories are checked for orphans too. */
      orphanScanEvery: number;
    },
  ) {}

  async sweep(now = new Date()): Promise<{ expired: number; orphans: number }> {
    const { store, files, logger } = this.opts;
    let expired = 0;
    for (const jobId of await store.dueForRemoval(now, BATCH)) {
      await store.remove(jobId);
      await files.removeJob(jobId);
      expired += 1;
    }
    let orphans = 0;
    if (this.sweeps++ % this.opts.orphanScanEvery === 0) {
      for await (const { jobId, modifiedMs } of files.jobs()) {
        if (now.getTime() - modifiedMs < ORPHAN_AFTER_MS) continue;
        if ((await store.status(jobId)) !== null || (await store.storedFilesOwner(jobId)) !== null) continue;
        await files.removeJob(jobId);
        orphans += 1;
      }
      orphans += await files.removeStaleTemp(ORPHAN_AFTER_MS);
    }
    if (expired > 0 || orphans > 0) logger.info({ event: 'retention.swept', expired, orphans }, 'removed expired job files');
    return { expired, orphans };
  }
}
