/** The worker's Prometheus metrics (docs/observability.md lists them all). */
import { Counter, Gauge, Histogram } from 'prom-client';
import { BoundedLabel, registry } from '../../shared/src/metrics';

export const jobsEnded = new Counter({
  name: 'maestro_jobs_ended_total',
  help: 'Jobs that reached a final status, by status, stop reason and provider.',
  labelNames: ['status', 'stop_reason', 'provider'] as const,
  registers: [registry],
});

export const jobDuration = new Histogram({
  name: 'maestro_job_duration_seconds',
  help: 'Time from a job’s submission to its end (queueing, retries and every attempt included).',
  labelNames: ['status', 'provider'] as const,
  buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200],
  registers: [registry],
});

export const modelCallDuration = new Histogram({
  name: 'maestro_model_call_duration_seconds',
  help: 'Model calls, from request to whole reply (the SDK’s own retries included), by provider, model and outcome (ok, error, aborted).',
  labelNames: ['provider', 'model', 'outcome'] as const,
  buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120],
  registers: [registry],
});

export const modelTokens = new Counter({
  name: 'maestro_model_tokens_total',
  help: 'Tokens the providers reported, by provider, model and type (input, output).',
  labelNames: ['provider', 'model', 'type'] as const,
  registers: [registry],
});

/**
 * A job names its model, so model names come from callers: the first 50 distinct ones a worker sees
 * answered get series of their own, later ones read `other`. A name is counted only once a provider
 * has answered a call for it (failed calls read `unanswered`), so typos mint no series.
 */
export const modelLabel = new BoundedLabel(50);

export const sandboxExecutionDuration = new Histogram({
  name: 'maestro_sandbox_execution_duration_seconds',
  help: 'code_executor executions, container wait included, by runtime and outcome (ok: exit 0, error: the code raised or exited non-zero, killed: timeout, memory or crash, failed: no answer).',
  labelNames: ['runtime', 'outcome'] as const,
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

export const poolRequests = new Counter({
  name: 'maestro_sandbox_pool_requests_total',
  help: 'Containers jobs asked for: hit (one was waiting in the warm pool), miss (the pool was empty: one had to be started), bypass (a job with input files: its mounts need a container of its own).',
  labelNames: ['runtime', 'result'] as const,
  registers: [registry],
});

export const sandboxKills = new Counter({
  name: 'maestro_sandbox_kills_total',
  help: 'Sandbox containers killed, by reason: timeout, cancelled, crashed (out of memory included), protocol (the runner broke its protocol).',
  labelNames: ['reason'] as const,
  registers: [registry],
});

export const reaperRemovals = new Counter({
  name: 'maestro_reaper_removals_total',
  help: 'Sandbox containers the reaper removed, by reason: job_finished, worker_gone, deadline, too_old.',
  labelNames: ['reason'] as const,
  registers: [registry],
});

/** What the gauges below read at each scrape: each running worker's (a process may run several). */
const pools = new Set<{ runtime: string; ready(): number }>();
const processors = new Set<{ activeCount: number }>();

/** Counts a worker's pool and processor in the gauges until the returned function is called. */
export function measureWorker(pool: { runtime: string; ready(): number }, processor: { activeCount: number }): () => void {
  pools.add(pool);
  processors.add(processor);
  return () => {
    pools.delete(pool);
    processors.delete(processor);
  };
}

new Gauge({
  name: 'maestro_sandbox_pool_size',
  help: 'Warm containers ready for a job right now, by runtime.',
  labelNames: ['runtime'] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const pool of pools) this.inc({ runtime: pool.runtime }, pool.ready());
  },
});

new Gauge({
  name: 'maestro_worker_active_jobs',
  help: 'Jobs this worker is running now.',
  registers: [registry],
  collect() {
    let n = 0;
    for (const p of processors) n += p.activeCount;
    this.set(n);
  },
});
