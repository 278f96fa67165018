import { Queue, type ConnectionOptions } from 'bullmq';

/** The BullMQ queue every job goes through. Its job id is the Maestro job id. */
export const JOBS_QUEUE = 'jobs';

export interface QueuedJobData {
  jobId: string;
}

/** Channel on which the API asks workers to stop a running job. */
export function cancelChannel(prefix: string): string {
  return `${prefix}:cancel`;
}

/** Key a live worker refreshes; its absence tells the reaper the worker is gone. */
export function workerHeartbeatKey(prefix: string, workerId: string): string {
  return `${prefix}:worker:${workerId}`;
}

export function createJobsQueue(connection: ConnectionOptions, prefix: string): Queue<QueuedJobData> {
  return new Queue<QueuedJobData>(JOBS_QUEUE, { connection, prefix });
}
