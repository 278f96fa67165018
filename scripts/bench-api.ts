/**
 * npm run bench:api [-- --duration 10 --rounds 3 --connections 10 --jobs 100] — what the API's job
 * path costs, against baselines measured in the same run on the same machine, over loopback:
 *   1. Throughput of POST /v1/jobs (real API, no worker: jobs stay queued) against a bare Express 5
 *      endpoint (express.json() + a 202 with a small JSON body), and the real API with its metrics
 *      on (the default; scraped each second as Prometheus would) against the same with
 *      METRICS_ENABLED=false. Every server runs in a child process (`node --import tsx …`),
 *      autocannon runs in this one, so all cases share the cores the same way. Rounds go through the
 *      cases in turn (the order swapped each round, the two APIs always back to back); medians are
 *      quoted, and for metrics on/off the median of each round's own ratio.
 *   2. Latency from POST /v1/jobs returning to the worker starting the job (its `job.started` log
 *      line, written once markRunning has recorded the start in Redis), against bare BullMQ: `add`
 *      returning to the processor starting; both also from the call, for reference. API, worker and BullMQ all run in this process, so one sub-millisecond clock
 *      (performance.now()) times both. Jobs go one at a time, each waited for to its end, so
 *      queueing does not pollute.
 * Every Redis key made lives under one random prefix and is removed at the end (SCAN + UNLINK).
 * With REDIS_URL unset it starts a throwaway Redis container (REDIS_IMAGE, default redis:7) on a free
 * loopback port, as the test suite does, and removes it at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { Queue, Worker } from 'bullmq';
import express from 'express';
import { Redis } from 'ioredis';
import { startApi } from '../services/api/src/api-service';
import { loadConfig } from '../services/shared/src/config';
import { createLogger } from '../services/shared/src/logger';
import { closeRedis, createWorkerRedis } from '../services/shared/src/redis';
import { createRedisWatcher, redisEndpoint, type RedisWatcher } from '../services/shared/src/redis-watch';
import { startWorker } from '../services/worker/src/worker-service';
import { startModelServer } from '../test/support/model-server';
import { freePort } from '../test/support/ports';
import { startRedisContainer, type RedisContainer } from '../test/support/redis-container';
import { deleteKeys } from './script-support';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '10' },
    jobs: { type: 'string', default: '100' },
    // Internal: this file is also the bare-Express child process.
    'serve-bare': { type: 'string' },
  },
});
const DURATION_S = Number(args.duration);
const WARMUP_S = Number(args.warmup);
const ROUNDS = Number(args.rounds);
const CONNECTIONS = Number(args.connections);
const JOBS = Number(args.jobs);
const WARMUP_JOBS = 10;
/** The Redis used: REDIS_URL, or the container main() starts when it is unset. */
let REDIS_URL = process.env.REDIS_URL ?? '';
const PREFIX = `bench-${randomBytes(4).toString('hex')}`;
const BODY = JSON.stringify({ task: 'benchmark' });
const ROOT = resolve(__dirname, '..');
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

const TARGET_RPS_RATIO = 0.5;
/** Metrics on may cost at most 5% of the throughput with them off. */
const TARGET_METRICS_RATIO = 0.95;
const TARGET_START_RATIO = 3;

// ---- helpers ---------------------------------------------------------------------------------

function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((x, y) => x - y);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}
const median = (samples: number[]): number => pct(samples, 50);
const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');

/** Every connection this process opens reports to it: a Redis outage is one line on stderr, not a stream of them. */
let redisWatcher: RedisWatcher | undefined;
function watched<T extends Redis>(conn: T, name: string): T {
  if (redisWatcher) redisWatcher.watch(conn, name);
  else conn.on('error', () => undefined);
  return conn;
}


/** CPU seconds (user + system, all threads) a process has used so far; Linux only, NaN elsewhere. */
function processCpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th of the line.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return NaN;
  }
}

async function redisInfo(redis: Redis): Promise<{ cpu: number; commands: Map<string, number> }> {
  const [cpuText, statsText] = await Promise.all([redis.info('cpu'), redis.info('commandstats')]);
  const field = (name: string): number => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(cpuText)?.[1] ?? NaN);
  const commands = new Map<string, number>();
  for (const m of statsText.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) commands.set(m[1] as string, Number(m[2]));
  return { cpu: field('used_cpu_user') + field('used_cpu_sys'), commands };
}

// ---- 1. throughput ---------------------------------------------------------------------------

interface ServerChild {
  name: string;
  url: string;
  child: ChildProcess;
  /** Where its metrics are scraped, when it has them. */
  metricsUrl?: string;
}

async function spawnServer(name: string, argv: string[], env: NodeJS.ProcessEnv, port: number): Promise<ServerChild> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...argv], { cwd: ROOT, env, stdio: ['ignore', 'inherit', 'inherit'] });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} server exited with code ${child.exitCode}`);
    const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (ok) return { name, url, child };
    if (Date.now() > deadline) throw new Error(`${name} server did not answer /healthz within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopServer(server: ServerChild | undefined): Promise<void> {
  if (!server || server.child.exitCode !== null || server.child.signalCode !== null) return;
  const exited = once(server.child, 'exit');
  server.child.kill('SIGTERM');
  const timer = setTimeout(() => server.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** The baseline: what Express 5 itself costs for a JSON POST answered 202. Runs as a child process. */
function serveBare(port: number): void {
  const app = express();
  app.use(express.json());
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.post('/v1/jobs', (req, res) => {
    res.status(202).json({ id: 'bench', status: 'queued', task: (req.body as { task?: unknown }).task });
  });
  const server = app.listen(port, '127.0.0.1');
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  ok: number;
  bad: number;
  /** Share of one core used by the server process, by autocannon (this process) and by Redis. */
  serverCpu: number;
  clientCpu: number;
  redisCpu: number;
  redisCommands: Map<string, number>;
}

async function load(server: ServerChild, seconds: number, redis: Redis): Promise<LoadResult> {
  // A server with metrics is scraped each second while it is under load, as Prometheus would (more often than its default 15 s).
  const scraper = server.metricsUrl === undefined ? undefined : setInterval(() => void fetch(server.metricsUrl as string).then((r) => r.text()).catch(() => undefined), 1000);
  const serverBefore = processCpuSeconds(server.child.pid);
  const clientBefore = process.cpuUsage();
  const redisBefore = await redisInfo(redis);
  const result = await autocannon({
    url: `${server.url}/v1/jobs`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: BODY,
    connections: CONNECTIONS,
    duration: seconds,
  });
  clearInterval(scraper);
  const redisAfter = await redisInfo(redis);
  const client = process.cpuUsage(clientBefore);
  const redisCommands = new Map<string, number>();
  for (const [name, calls] of redisAfter.commands) {
    const delta = calls - (redisBefore.commands.get(name) ?? 0);
    if (delta > 0) redisCommands.set(name, delta);
  }
  return {
    rps: result['2xx'] / result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok: result['2xx'],
    bad: result.non2xx + result.errors + result.timeouts,
    serverCpu: (processCpuSeconds(server.child.pid) - serverBefore) / result.duration,
    clientCpu: (client.user + client.system) / 1e6 / result.duration,
    redisCpu: (redisAfter.cpu - redisBefore.cpu) / result.duration,
    redisCommands,
  };
}

interface ThroughputResults {
  /** The real API as deployed: metrics on. */
  api: LoadResult[];
  bare: LoadResult[];
  /** The real API with METRICS_ENABLED=false. */
  noMetrics: LoadResult[];
}

async function throughput(redis: Redis): Promise<ThroughputResults> {
  const servers: ServerChild[] = [];
  try {
    const apiEnv = (port: number): NodeJS.ProcessEnv => ({
      ...process.env,
      REDIS_URL,
      MAESTRO_PREFIX: PREFIX,
      HOST: '127.0.0.1',
      PORT: String(port),
      AUTH_MODE: 'none',
      RATE_LIMIT_PER_MINUTE: '0',
      // No worker runs, so every job stays active: the per-caller cap would turn all but the first 100 POSTs into 429s.
      CALLER_MAX_ACTIVE_JOBS: '1000000',
      LOG_LEVEL: 'silent',
    });
    const apiPort = await freePort();
    const metricsPort = await freePort();
    const api = await spawnServer('api', ['services/api/src/main.ts'], { ...apiEnv(apiPort), METRICS_PORT: String(metricsPort) }, apiPort);
    api.metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    servers.push(api);
    const offPort = await freePort();
    const noMetrics = await spawnServer('api, metrics off', ['services/api/src/main.ts'], { ...apiEnv(offPort), METRICS_ENABLED: 'false' }, offPort);
    servers.push(noMetrics);
    const barePort = await freePort();
    const bare = await spawnServer('bare', [__filename, '--serve-bare', String(barePort)], { ...process.env }, barePort);
    servers.push(bare);

    for (const s of [api, noMetrics]) {
      const probe = await fetch(`${s.url}/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: BODY });
      if (probe.status !== 202) throw new Error(`POST /v1/jobs answered ${probe.status}: ${await probe.text()}`);
    }
    if (!(await fetch(api.metricsUrl)).ok) throw new Error(`no metrics at ${api.metricsUrl}`);

    console.log(`warm-up: ${WARMUP_S} s each`);
    for (const s of servers) await load(s, WARMUP_S, redis);
    await deleteKeys(redis, `${PREFIX}:*`);

    const results: ThroughputResults = { api: [], bare: [], noMetrics: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      // Swapping the order each round spreads slow drift (thermal, neighbours) over every case; the
      // two APIs always run back to back, so each round's pair saw the same conditions.
      const order = round % 2 === 1 ? [bare, api, noMetrics] : [noMetrics, api, bare];
      for (const s of order) {
        const r = await load(s, DURATION_S, redis);
        (s === api ? results.api : s === bare ? results.bare : results.noMetrics).push(r);
        console.log(
          `  round ${round} ${s.name.padEnd(16)}  ${fmt(r.rps, 0).padStart(6)} req/s  p50 ${fmt(r.p50).padStart(5)} ms  p99 ${fmt(r.p99).padStart(5)} ms` +
            `  cpu: server ${fmt(r.serverCpu * 100, 0)}%  autocannon ${fmt(r.clientCpu * 100, 0)}%  redis ${fmt(r.redisCpu * 100, 0)}%` +
            (r.bad > 0 ? `  NON-2XX/ERRORS ${r.bad}` : ''),
        );
        // Untimed: each round starts from an empty prefix, so Redis's memory does not grow round over round.
        if (s !== bare) await deleteKeys(redis, `${PREFIX}:*`);
      }
    }
    return results;
  } finally {
    for (const s of servers) await stopServer(s);
  }
}

// ---- 2. submit → start latency ---------------------------------------------------------------

/** Start latencies of one kind of enqueue, in ms: from the enqueue call being made, and from it returning. */
interface StartLatency {
  fromCall: number[];
  fromReturn: number[];
}

/** Wall-clock ms with sub-millisecond resolution, one clock for every timing in this process. */
const now = (): number => performance.timeOrigin + performance.now();

/** POST /v1/jobs → the worker's `job.started` log line (written once markRunning returns), one job at a time. */
async function apiStartLatency(): Promise<StartLatency> {
  const model = await startModelServer();
  const prefix = `${PREFIX}-e2e`;
  const config = loadConfig({
    REDIS_URL,
    MAESTRO_PREFIX: prefix,
    HOST: '127.0.0.1',
    PORT: '0',
    AUTH_MODE: 'none',
    RATE_LIMIT_PER_MINUTE: '0',
    LOG_LEVEL: 'silent',
    SANDBOX_POOL_SIZE: '0',
    DEFAULT_PROVIDER: 'openai',
    OPENAI_BASE_URL: model.openaiBaseUrl,
    OPENAI_API_KEY: 'bench',
  });
  const reader = watched(createWorkerRedis(REDIS_URL), 'reader');
  let api: Awaited<ReturnType<typeof startApi>> | undefined;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  // The worker's log is read as it is written: pino writes each line synchronously.
  const started = new Map<string, number>();
  const destination = {
    write(line: string): void {
      if (!line.includes('"event":"job.started"')) return;
      const at = now();
      started.set((JSON.parse(line) as { jobId: string }).jobId, at);
    },
  };
  try {
    api = await startApi(config);
    worker = await startWorker(config, { logger: createLogger({ level: 'info', service: 'worker', destination }) });
    const samples: StartLatency = { fromCall: [], fromReturn: [] };
    for (let i = 0; i < WARMUP_JOBS + JOBS; i++) {
      const called = now();
      const res = await fetch(`${api.url}/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: BODY });
      const created = (await res.json()) as { id: string };
      const returned = now();
      if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}`);
      await waitForEnd(reader, `${prefix}:job:${created.id}:events`);
      // As in (b), the next job goes only once BullMQ has completed this one (removeOnComplete drops its key).
      await waitForGone(reader, `${prefix}:jobs:${created.id}`);
      const job = (await (await fetch(`${api.url}/v1/jobs/${created.id}`)).json()) as { status: string };
      const startedAt = started.get(created.id);
      if (job.status !== 'succeeded' || startedAt === undefined) throw new Error(`job ${created.id} ended ${job.status}`);
      if (i < WARMUP_JOBS) continue;
      samples.fromCall.push(startedAt - called);
      samples.fromReturn.push(startedAt - returned);
    }
    return samples;
  } finally {
    await worker?.close();
    await api?.close();
    await closeRedis(reader);
    await model.close();
  }
}

/** Follows a job's event stream (as SSE does) until its terminal status event. */
async function waitForEnd(reader: Redis, key: string): Promise<void> {
  let last = '0';
  for (;;) {
    const reply = await reader.xread('BLOCK', 10_000, 'STREAMS', key, last);
    if (reply === null) throw new Error(`no event on ${key} within 10 s`);
    for (const [, entries] of reply) {
      for (const [id, fields] of entries) {
        last = id;
        const data = fields[fields.indexOf('data') + 1];
        const status = (JSON.parse(data ?? 'null') as { status?: string } | null)?.status;
        if (fields[fields.indexOf('type') + 1] === 'status' && status !== undefined && TERMINAL.has(status)) return;
      }
    }
  }
}

async function waitForGone(redis: Redis, key: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await redis.exists(key)) === 1) {
    if (Date.now() > deadline) throw new Error(`${key} still exists after 10 s`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Bare BullMQ `add` → the processor starting, one job at a time. */
async function bullmqStartLatency(concurrency: number): Promise<StartLatency> {
  const prefix = `${PREFIX}-bull`;
  // Plain connections, as a bare BullMQ user would make them (the API's own adds auto-pipelining,
  // which batches commands under load but can delay a lone one by a tick).
  const queueConn = watched(new Redis(REDIS_URL), 'bullmq-queue');
  const workerConn = watched(createWorkerRedis(REDIS_URL), 'bullmq-worker');
  const queue = new Queue<{ jobId: string }>('jobs', { connection: queueConn, prefix });
  queue.on('error', (err) => {
    if (!redisWatcher?.absorb(err, 'queue')) console.error(`bare BullMQ queue: ${err.message}`);
  });
  const started = new Map<string, number>();
  const worker = new Worker<{ jobId: string }>(
    'jobs',
    async (job) => {
      started.set(job.data.jobId, now());
    },
    { connection: workerConn, prefix, concurrency },
  );
  worker.on('error', (err) => {
    if (!redisWatcher?.absorb(err, 'worker')) console.error(`bare BullMQ worker: ${err.message}`);
  });
  try {
    await worker.waitUntilReady();
    const samples: StartLatency = { fromCall: [], fromReturn: [] };
    for (let i = 0; i < WARMUP_JOBS + JOBS; i++) {
      const jobId = `bench-${i}`;
      const completed = new Promise<void>((done) => {
        const onCompleted = (job: { id?: string }): void => {
          if (job.id !== jobId) return;
          worker.off('completed', onCompleted);
          done();
        };
        worker.on('completed', onCompleted);
      });
      const called = now();
      await queue.add('agent', { jobId }, { jobId, attempts: 3, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: true, removeOnFail: true });
      const returned = now();
      await completed;
      if (i < WARMUP_JOBS) continue;
      samples.fromCall.push((started.get(jobId) as number) - called);
      samples.fromReturn.push((started.get(jobId) as number) - returned);
    }
    return samples;
  } finally {
    await worker.close();
    await queue.close();
    await closeRedis(workerConn);
    await closeRedis(queueConn);
  }
}

// ---- main ------------------------------------------------------------------------------------

const mean = (samples: number[]): number => samples.reduce((a, b) => a + b, 0) / samples.length;

function latencyRow(name: string, samples: number[]): void {
  console.log(
    `  ${name.padEnd(46)} n=${samples.length}  p50 ${fmt(median(samples), 2).padStart(6)}  p95 ${fmt(pct(samples, 95), 2).padStart(6)}  p99 ${fmt(pct(samples, 99), 2).padStart(6)}  mean ${fmt(mean(samples), 2).padStart(6)}`,
  );
}

function throughputReport({ api, bare, noMetrics }: ThroughputResults): { rpsRatio: number; metricsRatio: number } {
  const cpuPerRequest = (r: LoadResult): number => (r.serverCpu / r.rps) * 1e6;
  console.log('\n  case                              req/s   p50 ms   p99 ms   server CPU µs/req   (medians of the rounds)');
  const cases = [
    ['(a) POST /v1/jobs, real API', api],
    ['(b) bare Express 5, json + 202', bare],
    ['(c) (a) with METRICS_ENABLED=false', noMetrics],
  ] as const;
  for (const [name, rs] of cases) {
    const col = (f: (r: LoadResult) => number, digits: number, width: number): string => fmt(median(rs.map(f)), digits).padStart(width);
    console.log(`  ${name.padEnd(32)}${col((r) => r.rps, 0, 7)}  ${col((r) => r.p50, 1, 7)}  ${col((r) => r.p99, 1, 7)}  ${col(cpuPerRequest, 0, 18)}`);
  }
  const ratioOf = (xs: LoadResult[], ys: LoadResult[]): number => median(xs.map((r) => r.rps)) / median(ys.map((r) => r.rps));
  const perRound = (xs: LoadResult[], ys: LoadResult[]): string => xs.map((r, i) => fmt(r.rps / (ys[i]?.rps ?? NaN), 2)).join(', ');
  const rpsRatio = ratioOf(api, bare);
  console.log(`  ratio (a)/(b) req/s: ${fmt(rpsRatio, 2)}   per round: ${perRound(api, bare)}`);
  // CPU per request does not depend on how much CPU the neighbours left the server: a steadier cross-check.
  console.log(`  ratio (b)/(a) server CPU per request: ${fmt(median(bare.map(cpuPerRequest)) / median(api.map(cpuPerRequest)), 2)}`);
  // Paired: each round ran (a) and (c) back to back, so the median of the rounds' own ratios is
  // steadier than a ratio of medians taken across rounds whose conditions differed.
  const metricsRatio = median(api.map((r, i) => r.rps / (noMetrics[i]?.rps ?? NaN)));
  console.log(`  ratio (a)/(c) req/s, metrics on/off, median of the rounds: ${fmt(metricsRatio, 3)}   per round: ${perRound(api, noMetrics)}   of the medians: ${fmt(ratioOf(api, noMetrics), 3)}`);
  console.log(`  ratio (c)/(a) server CPU per request: ${fmt(median(noMetrics.map(cpuPerRequest)) / median(api.map(cpuPerRequest)), 3)}`);
  const total = api.reduce((n, r) => n + r.ok, 0);
  const calls = new Map<string, number>();
  for (const r of api) for (const [name, n] of r.redisCommands) calls.set(name, (calls.get(name) ?? 0) + n);
  const top = [...calls].sort((x, y) => y[1] - x[1]).slice(0, 10);
  // Counted by Redis, so commands inside MULTI and Lua scripts are included, and other clients of this Redis add noise.
  console.log(`  Redis commands per POST: ${top.map(([name, n]) => `${name} ${fmt(n / total, 2)}`).join(', ')}`);
  return { rpsRatio, metricsRatio };
}

/** A Redis container of this run's own when REDIS_URL is unset, as the test suite's global setup starts one. */
async function ownRedis(): Promise<RedisContainer | undefined> {
  if (REDIS_URL) return undefined;
  console.log(`REDIS_URL is unset: starting a throwaway Redis container (${process.env.REDIS_IMAGE ?? 'redis:7'})`);
  const container = await startRedisContainer({ role: 'bench-redis' });
  REDIS_URL = container.url;
  // Interrupted, the run still removes it; the child servers get the signal from the terminal too.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void container.close().finally(() => process.exit(130));
    });
  }
  return container;
}

async function main(): Promise<void> {
  const container = await ownRedis();
  try {
    await bench();
  } finally {
    if (container) {
      await container.close();
      console.log(`removed the Redis container ${container.id.slice(0, 12)}`);
    }
  }
}

async function bench(): Promise<void> {
  redisWatcher = createRedisWatcher({
    logger: createLogger({ level: 'info', service: 'bench', destination: { write: (line: string) => void process.stderr.write(line) } }),
    target: REDIS_URL,
  });
  const redis = watched(new Redis(REDIS_URL, { maxRetriesPerRequest: 1 }), 'main');
  const results: string[] = [];
  try {
    console.log(`Redis ${redisEndpoint(REDIS_URL)}, prefix ${PREFIX}`);
    console.log(`\n1. Throughput: ${CONNECTIONS} connections, ${ROUNDS} alternating rounds of ${DURATION_S} s per case after ${WARMUP_S} s warm-up;`);
    console.log('   each server in a child process (node --import tsx), autocannon in this one; no worker runs, jobs stay queued');
    const { rpsRatio, metricsRatio } = throughputReport(await throughput(redis));
    results.push(`RESULT post_rps_ratio=${fmt(rpsRatio, 2)} (target >= ${TARGET_RPS_RATIO}) ${rpsRatio >= TARGET_RPS_RATIO ? 'PASS' : 'FAIL'}`);
    results.push(
      `RESULT metrics_on_off_rps_ratio=${fmt(metricsRatio, 3)} (target >= ${TARGET_METRICS_RATIO}) ${metricsRatio >= TARGET_METRICS_RATIO ? 'PASS' : 'FAIL'}`,
    );

    console.log(`\n2. Enqueue → worker start: ${JOBS} sequential jobs per case after ${WARMUP_JOBS} warm-up, each waited for to its end;`);
    console.log('   ms, timed in this process by performance.now()');
    const bull = await bullmqStartLatency(loadConfig({}).WORKER_CONCURRENCY);
    let e2e: StartLatency | undefined;
    try {
      e2e = await apiStartLatency();
    } catch (err) {
      console.log(`  (a) skipped: ${(err as Error).message}`);
    }
    if (e2e) latencyRow('(a) POST /v1/jobs sent → worker start', e2e.fromCall);
    latencyRow('(b) bare BullMQ add called → processor start', bull.fromCall);
    if (e2e) latencyRow('(a) POST /v1/jobs returned → worker start', e2e.fromReturn);
    latencyRow('(b) bare BullMQ add returned → processor start', bull.fromReturn);
    if (e2e) {
      // The target, as the issue states it: from the enqueue returning to its caller (the POST's
      // response read by the client; BullMQ's add resolving) to the job starting. Measured from the
      // call instead, (a) also holds a whole HTTP round trip (client, Express, validation, the job
      // record) that (b) has no counterpart for: printed for reference.
      const ratio = median(e2e.fromReturn) / median(bull.fromReturn);
      console.log(`  ratio (a)/(b), from the return, p50: ${fmt(ratio, 2)}  mean: ${fmt(mean(e2e.fromReturn) / mean(bull.fromReturn), 2)}`);
      console.log(`  ratio (a)/(b), from the call (a with its HTTP round trip), p50: ${fmt(median(e2e.fromCall) / median(bull.fromCall), 2)}  mean: ${fmt(mean(e2e.fromCall) / mean(bull.fromCall), 2)}`);
      results.push(`RESULT start_latency_p50_ratio=${fmt(ratio, 2)} (target <= ${TARGET_START_RATIO}) ${ratio <= TARGET_START_RATIO ? 'PASS' : 'FAIL'}`);
    } else {
      results.push(`RESULT start_latency_p50_ratio=n/a (target <= ${TARGET_START_RATIO}) SKIPPED`);
    }
  } finally {
    try {
      const deleted = await deleteKeys(redis, `${PREFIX}*`);
      console.log(`\ncleanup: ${deleted} Redis keys under ${PREFIX}* removed`);
    } catch (err) {
      console.log(`\ncleanup: could not remove the keys under ${PREFIX}* (${(err as Error).message})`);
    }
    // Closed whatever happened: a connection left retrying would keep the process alive.
    await closeRedis(redis);
  }
  console.log('');
  for (const line of results) console.log(line);
}

if (args['serve-bare'] !== undefined) {
  serveBare(Number(args['serve-bare']));
} else {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
