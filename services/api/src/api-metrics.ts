/** The API's Prometheus metrics (docs/observability.md lists them all). */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Gauge, Histogram } from 'prom-client';
import { timeOfJobId } from '../../shared/src/ids';
import { registry } from '../../shared/src/metrics';
import { queueKey, type QueuedJobData } from '../../shared/src/queue';

export const jobsCreated = new Counter({
  name: 'maestro_jobs_created_total',
  help: 'Jobs accepted by POST /v1/jobs (replays of an Idempotency-Key not counted).',
  labelNames: ['provider'] as const,
  registers: [registry],
});

export const httpRequests = new Counter({
  name: 'maestro_http_requests_total',
  help: 'HTTP requests answered, by route template and status.',
  labelNames: ['method', 'route', 'status'] as const,
  registers: [registry],
});

export const httpRequestDuration = new Histogram({
  name: 'maestro_http_request_duration_seconds',
  help: 'Time from a request to its response, by route template (an event stream: until it ends).',
  labelNames: ['method', 'route'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

/** Each (method, route, status)'s series, looked up once: labelling anew per request costs a hash of the labels. */
const requestSeries = new Map<string, { count: Counter.Internal; duration: Histogram.Internal<'method' | 'route'> }>();

/** Counts an answered request and its duration; `route` is the matched route's template, never a path. */
export function countRequest(method: string, route: string, status: number, seconds: number): void {
  const key = `${method} ${route} ${status}`;
  let series = requestSeries.get(key);
  if (!series) {
    series = { count: httpRequests.labels({ method, route, status }), duration: httpRequestDuration.labels({ method, route }) };
    requestSeries.set(key, series);
  }
  series.count.inc();
  series.duration.observe(seconds);
}

export const rateLimited = new Counter({
  name: 'maestro_rate_limited_total',
  help: 'Requests refused with 429 by a per-caller limit: requests a minute, active jobs, open event streams.',
  labelNames: ['limit'] as const,
  registers: [registry],
});

export const authRejections = new Counter({
  name: 'maestro_auth_rejections_total',
  help: 'Requests refused by authentication: missing or invalid credentials, not from the trusted proxy, or throttled.',
  labelNames: ['reason'] as const,
  registers: [registry],
});

/** At most this many waiting jobs are looked at for the oldest: with more, the figure is the oldest among them. */
const OLDEST_SCAN = 1000;

/**
 * The age of the oldest job waiting to start, in ms (0 when none): job ids begin with their creation
 * time (ids.ts), so the smallest id waiting is the oldest. Every Maestro job waits in the prioritized
 * set (in fair order, not age order) or the plain wait list.
 */
const OLDEST_WAITING = `
local oldest = nil
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  if oldest == nil or id < oldest then oldest = id end
end
local head = redis.call('LRANGE', KEYS[2], -1, -1)[1]
if head and (oldest == nil or head < oldest) then oldest = head end
return oldest or false
`;

interface QueueSource {
  queue: Queue<QueuedJobData>;
  redis: Redis;
  prefix: string;
}

let queueSource: QueueSource | undefined;

/**
 * The queue the gauges below read at each scrape: the API's (the latest one started, in a process that
 * runs several). `measureQueue(undefined, queue)` stops reading `queue`, if it is still the one read.
 */
export function measureQueue(source: QueueSource | undefined, stopping?: Queue<QueuedJobData>): void {
  if (source === undefined && stopping !== undefined && queueSource?.queue !== stopping) return;
  queueSource = source;
}

new Gauge({
  name: 'maestro_queue_jobs',
  help: 'Jobs in the queue by state: waiting (plain wait list), prioritized (waiting in fair order), delayed (retries waiting for their backoff), active.',
  labelNames: ['state'] as const,
  registers: [registry],
  async collect() {
    if (!queueSource) return;
    const counts = await queueSource.queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active');
    for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
  },
});

new Gauge({
  name: 'maestro_queue_oldest_waiting_age_seconds',
  help: `Age of the oldest job waiting to start (0 when none); among the first ${OLDEST_SCAN} in fair order when more wait.`,
  registers: [registry],
  async collect() {
    if (!queueSource) return;
    const { redis, prefix } = queueSource;
    const oldest = (await redis.eval(OLDEST_WAITING, 2, queueKey(prefix, 'prioritized'), queueKey(prefix, 'wait'), OLDEST_SCAN)) as string | null;
    this.set(oldest ? Math.max(0, (Date.now() - timeOfJobId(oldest)) / 1000) : 0);
  },
});
