import { EventEmitter } from 'node:events';
import { PRIORITY_LIMIT, Queue, type ConnectionOptions, type Worker } from 'bullmq';

/** The BullMQ queue every job goes through. Its job id is the Maestro job id. */
export const JOBS_QUEUE = 'jobs';

/**
 * BullMQ's highest priority number (2^21 - 1), served last. Every Maestro job carries a number from
 * 1 up: BullMQ serves its plain wait list (priority 0) before any prioritized job, so 0 would jump
 * the fair order.
 */
export const MAX_QUEUE_PRIORITY = PRIORITY_LIMIT;

/**
 * One of BullMQ 5's own keys of the jobs queue: `wait`, `active`, `prioritized`, `delayed`, `paused`,
 * or a job id (the job's hash). Job-store scripts read them to tell an idle queue and a job BullMQ
 * no longer holds.
 */
export function queueKey(prefix: string, part: string): string {
  return `${prefix}:${JOBS_QUEUE}:${part}`;
}

export interface QueuedJobData {
  jobId: string;
  /** The W3C trace context of the request that created the job, when tracing is on (see tracing.ts). */
  traceparent?: string;
}

/** Channel on which the API asks workers to stop a running job. */
export function cancelChannel(prefix: string): string {
  return `${prefix}:cancel`;
}

/** Key a live worker refreshes; its absence tells the reaper the worker is gone. */
export function workerHeartbeatKey(prefix: string, workerId: string): string {
  return `${prefix}:worker:${workerId}`;
}

/** Holds the deployment's random id: every worker sharing this Redis and prefix labels its sandboxes with it. */
export function deploymentKey(prefix: string): string {
  return `${prefix}:deployment`;
}

/** Which job holds a sandbox container taken from the pool, for the reaper. */
export function sandboxAssignmentKey(prefix: string, containerId: string): string {
  return `${prefix}:sandbox:${containerId}`;
}

export function createJobsQueue(connection: ConnectionOptions, prefix: string): Queue<QueuedJobData> {
  return absorbLateConnectionErrors(new Queue<QueuedJobData>(JOBS_QUEUE, { connection, prefix }));
}

/**
 * BullMQ's RedisConnection drops every listener when it closes, yet still re-emits a failed start-up
 * (`initializing.catch(err => this.emit('error', err))`) afterwards: closing a queue or worker whose
 * Redis never answered, or is torn down mid start-up, would then throw from an 'error' event nobody
 * hears. Such a late error concerns a connection we already closed, so it is dropped.
 */
export function absorbLateConnectionErrors<T extends Queue | Worker>(owner: T): T {
  for (const field of ['connection', 'blockingConnection']) {
    const connection = (owner as unknown as Record<string, unknown>)[field];
    if (!(connection instanceof EventEmitter)) continue;
    const emit = connection.emit.bind(connection);
    connection.emit = (event: string | symbol, ...args: unknown[]): boolean =>
      event === 'error' && connection.listenerCount('error') === 0 ? false : emit(event, ...args);
  }
  return owner;
}
