/**
 * A real Prometheus scrapes the API and a worker (a process of its own, as in production) while jobs
 * run, and what it stored moved as the jobs did: jobs created and ended by status, the job duration
 * and sandbox execution histograms, requests by route template. No scrape holds a job id, a caller
 * or a key.
 */
import { codeCall, startModelServer, type ModelServer } from '../support/model-server';
import { freePort } from '../support/ports';
import { startPrometheus, type PrometheusInstance, type PromSample } from '../support/prometheus';
import { request, startStack, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';
import { spawnWorkerProcess, type WorkerProcess } from '../support/worker-process';

const KEY = 'metrics-test-key-000000000000000000000000';
const CALLER = 'carol-the-caller';

let model: ModelServer;
let stack: Stack;
let worker: WorkerProcess;
let workerMetrics: string;
let prometheus: PrometheusInstance;

beforeAll(async () => {
  model = await startModelServer((req) => {
    if (req.task.startsWith('fail')) return { status: 400, errorMessage: 'no such model' };
    if (req.task.startsWith('crash')) return req.step === 0 ? codeCall('raise SystemExit(3)') : { text: 'exited' };
    return req.step === 0 ? codeCall('print(6 * 7)') : { text: 'forty-two' };
  });
  stack = await startStack(model, { workers: 0, env: { AUTH_MODE: 'api-key', API_KEYS: `${CALLER}:${KEY}` } });
  const port = await freePort();
  worker = spawnWorkerProcess({ env: { ...stack.env, WORKER_METRICS_PORT: String(port) } });
  workerMetrics = `127.0.0.1:${port}`;
  await waitFor(async () => (await fetch(`http://${workerMetrics}/healthz`).catch(() => undefined))?.status === 200, {
    timeoutMs: 30_000,
    what: 'the worker process to serve /healthz',
  });
  const apiMetrics = new URL(stack.api.metricsUrl as string).host;
  prometheus = await startPrometheus({
    targets: [
      { job: 'maestro-api', target: apiMetrics },
      { job: 'maestro-worker', target: workerMetrics },
    ],
  });
  await prometheus.waitForTargetsUp({ timeoutMs: 30_000 });
}, 180_000);

afterAll(async () => {
  await prometheus?.close();
  worker?.child.kill('SIGTERM');
  await worker?.exited;
  await stack?.close();
  await model?.close();
});

const auth = { authorization: `Bearer ${KEY}` };

async function run(task: string): Promise<{ id: string; status: string }> {
  const created = await request(stack, 'POST', '/v1/jobs', { task }, auth);
  expect(created.status).toBe(202);
  const job = await waitForJobEnd(stack, (created.body as { id: string }).id, 60_000, auth);
  return { id: job.id, status: job.status };
}

/** The one value of a query whose result is a single series (0 when it has none yet). */
function only(samples: PromSample[]): number {
  return samples.length === 0 ? 0 : (samples[0] as PromSample).value;
}

test('counters and histograms move as jobs run, as Prometheus stores them', async () => {
  const before = {
    created: only(await prometheus.query('sum(maestro_jobs_created_total{job="maestro-api"})')),
    succeeded: only(await prometheus.query('sum(maestro_jobs_ended_total{job="maestro-worker",status="succeeded"})')),
  };
  expect(before).toEqual({ created: 0, succeeded: 0 });

  const jobs = [await run('compute'), await run('compute again'), await run('crash the cell'), await run('fail the model')];
  expect(jobs.map((j) => j.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'failed']);
  // Unauthenticated and wrongly authenticated requests are counted by reason.
  expect((await request(stack, 'GET', '/v1/jobs')).status).toBe(401);
  expect((await request(stack, 'GET', '/v1/jobs', undefined, { authorization: 'Bearer wrong-key-0000000000000000000000000000' })).status).toBe(401);

  const at = (promql: string, want: number): Promise<PromSample[]> =>
    prometheus.waitForQuery(promql, (s) => only(s) === want, { timeoutMs: 20_000 });
  await at('sum(maestro_jobs_created_total{job="maestro-api",provider="openai"})', 4);
  await at('sum(maestro_jobs_ended_total{job="maestro-worker",status="succeeded",stop_reason="completed",provider="openai"})', 3);
  await at('sum(maestro_jobs_ended_total{job="maestro-worker",status="failed",stop_reason="error"})', 1);
  await at('sum(maestro_job_duration_seconds_count{job="maestro-worker"})', 4);
  // Every job took more than no time, and less than the minute the test gave it.
  expect(only(await prometheus.query('sum(maestro_job_duration_seconds_sum{job="maestro-worker"})'))).toBeGreaterThan(0);
  await at('sum(maestro_job_duration_seconds_bucket{job="maestro-worker",le="60"})', 4);
  // Three cells ran under runc: two ended 0, one raised SystemExit(3).
  await at('sum(maestro_sandbox_execution_duration_seconds_count{job="maestro-worker",runtime="runc"})', 3);
  await at('sum(maestro_sandbox_execution_duration_seconds_count{job="maestro-worker",runtime="runc",outcome="ok"})', 2);
  await at('sum(maestro_sandbox_execution_duration_seconds_count{job="maestro-worker",runtime="runc",outcome="error"})', 1);
  // Five model calls answered (two per job that ran a cell, one failed), their tokens counted.
  await at('sum(maestro_model_call_duration_seconds_count{job="maestro-worker",outcome="ok"})', 6);
  await at('sum(maestro_model_call_duration_seconds_count{job="maestro-worker",outcome="error",model="unanswered"})', 1);
  await at('sum(maestro_model_tokens_total{job="maestro-worker",type="input"})', 60);
  await at('sum(maestro_sandbox_pool_requests_total{job="maestro-worker"})', 3);
  await at('sum(maestro_http_requests_total{job="maestro-api",method="POST",route="/v1/jobs",status="202"})', 4);
  await at('sum(maestro_auth_rejections_total{job="maestro-api",reason="missing_credentials"})', 1);
  await at('sum(maestro_auth_rejections_total{job="maestro-api",reason="invalid_key"})', 1);
  await at('maestro_queue_jobs{job="maestro-api",state="prioritized"}', 0);
  await at('maestro_queue_oldest_waiting_age_seconds{job="maestro-api"}', 0);
  // Node's own metrics, from both processes.
  await prometheus.waitForQuery('count(nodejs_eventloop_lag_seconds)', (s) => only(s) === 2);

  // Nothing stored names a job, the caller or the key: not in any label of any series.
  const series = await prometheus.query('{__name__=~"maestro_.+"}');
  expect(series.length).toBeGreaterThan(10);
  const labels = JSON.stringify(series.map((s) => s.metric));
  for (const secret of [...jobs.map((j) => j.id), CALLER, KEY, stack.env.MAESTRO_PREFIX as string]) expect(labels).not.toContain(secret);
}, 180_000);

test('a scrape of either process holds no job id, caller or key, and the metrics port is not the API’s', async () => {
  const job = await run('compute once more');
  const api = new URL(stack.api.metricsUrl as string);
  expect(api.port).not.toBe(String(stack.api.port));
  // The API's own port has no /metrics, with or without credentials.
  expect((await request(stack, 'GET', '/metrics', undefined, auth)).status).toBe(404);
  for (const url of [stack.api.metricsUrl as string, `http://${workerMetrics}/metrics`]) {
    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toContain('maestro_');
    for (const secret of [job.id, CALLER, KEY, stack.env.MAESTRO_PREFIX as string]) expect(text).not.toContain(secret);
  }
}, 60_000);
