/**
 * A throwaway Prometheus for tests that check what Maestro's processes expose on `/metrics`: a
 * container of an image built here from DEBIAN_IMAGE with Debian's `prometheus` package (this
 * machine reaches no registry, so no official image), scraping `127.0.0.1:PORT` targets on this
 * host, its TSDB in a tmpfs, labelled for this test run.
 *
 * How it reaches the host's loopback: the container runs in the host's network namespace
 * (`NetworkMode: 'host'`), so its 127.0.0.1 is the host's, and the targets are scraped at the very
 * addresses the test's servers listen on. Prometheus itself listens on a free loopback port picked
 * here (`--web.listen-address=127.0.0.1:PORT`), so nothing is published beyond this machine. That
 * needs an engine on this host with rootful networking (Docker Engine on Linux, as here); a rootless
 * engine or Docker Desktop has a loopback of its own and would see no target.
 *
 * The image is tagged with a hash of its Dockerfile text (which names the base image), built once and
 * reused while that tag exists (the build took about 15 s here). A container is ready in about 0.4 s,
 * but Debian's Prometheus (2.42) hands its targets to the scrape manager on a fixed 5 s tick, so the
 * first scrape comes about 5 s after start whatever the scrape interval: start Prometheus before, or
 * alongside, the servers it scrapes (a target that is not up yet is simply retried each interval).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { stringify } from 'yaml';
import { followBuild } from '../../services/worker/src/sandbox/image-build';
import { docker, TEST_LABEL, testRun } from './docker';
import { freePort } from './ports';
import { waitFor } from './wait-for';

export interface PrometheusTarget {
  /** The scrape job's name (the `job` label of every series scraped from it). */
  job: string;
  /** `127.0.0.1:PORT` (host:port, no scheme) of a server on this host. */
  target: string;
  /** Default `/metrics`. */
  metricsPath?: string;
}

/** One series of an instant query's result. */
export interface PromSample {
  metric: Record<string, string>;
  value: number;
  /** Unix seconds of the evaluation. */
  timestamp: number;
}

export interface PrometheusInstance {
  /** http://127.0.0.1:PORT of Prometheus's HTTP API and UI. */
  url: string;
  containerId: string;
  /** The prometheus.yml it runs with. */
  config: string;
  /** Instant query (`/api/v1/query`). A scalar result comes back as one sample without labels. */
  query(promql: string): Promise<PromSample[]>;
  /**
   * Polls `promql` until `predicate` holds for its result (default: at least one series), then
   * resolves with that result; throws after `timeoutMs` (default 15 s) with the last result seen.
   */
  waitForQuery(promql: string, predicate?: (samples: PromSample[]) => boolean, opts?: { timeoutMs?: number; intervalMs?: number }): Promise<PromSample[]>;
  /**
   * Waits until every configured target has been scraped successfully (health `up`); the first scrape
   * is about 5 s after start (see above). Default timeout 15 s.
   */
  waitForTargetsUp(opts?: { timeoutMs?: number }): Promise<void>;
  /** Removes the container (and with it the tmpfs TSDB). Idempotent. */
  close(): Promise<void>;
}

export interface StartPrometheusOptions {
  targets: PrometheusTarget[];
  /** scrape_interval (and scrape_timeout); default 1000 ms. */
  scrapeIntervalMs?: number;
  /** The `maestro.role` label; default `test-prometheus`. */
  role?: string;
}

const IMAGE_REPO = 'maestro-test/prometheus';
const IMAGE_ROLE = 'test-prometheus-image';

/** The Dockerfile: Debian's Prometheus and nothing else; the config comes in through the environment. */
export function prometheusDockerfile(baseImage = process.env.DEBIAN_IMAGE ?? 'debian:bookworm-slim'): string {
  return [
    `FROM ${baseImage}`,
    'RUN apt-get update -qq \\',
    ' && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \\',
    ' && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \\',
    ' && /usr/bin/prometheus --version',
    'USER prometheus',
    'ENTRYPOINT ["/usr/bin/prometheus"]',
    '',
  ].join('\n');
}

/** `maestro-test/prometheus:<first 16 hex of sha256(Dockerfile)>`. */
export function prometheusImageTag(dockerfile = prometheusDockerfile()): string {
  return `${IMAGE_REPO}:${createHash('sha256').update(dockerfile).digest('hex').slice(0, 16)}`;
}

/** Builds in flight in this process, by tag: two callers at once wait for one build. */
const builds = new Map<string, Promise<string>>();

/** Builds the Prometheus image unless its tag exists; resolves with the tag. */
export function ensurePrometheusImage(): Promise<string> {
  const dockerfile = prometheusDockerfile();
  const tag = prometheusImageTag(dockerfile);
  let build = builds.get(tag);
  if (!build) {
    build = buildIfMissing(tag, dockerfile);
    builds.set(tag, build);
    // A failed build may be retried by the next caller.
    build.catch(() => builds.delete(tag));
  }
  return build;
}

async function buildIfMissing(tag: string, dockerfile: string): Promise<string> {
  if (await docker.getImage(tag).inspect().then(() => true, () => false)) return tag;
  const dir = await mkdtemp(join(tmpdir(), 'maestro-prometheus-'));
  const output: string[] = [];
  try {
    await writeFile(join(dir, 'Dockerfile'), dockerfile);
    const stream = await docker.buildImage(
      { context: dir, src: ['Dockerfile'] },
      { t: tag, labels: { 'maestro.role': IMAGE_ROLE }, rm: true, forcerm: true },
    );
    await followBuild(stream, (line) => {
      output.push(line);
      if (output.length > 40) output.shift();
    });
  } catch (err) {
    throw new Error(`building ${tag} failed: ${(err as Error).message}\n${output.join('\n')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (!(await docker.getImage(tag).inspect().then(() => true, () => false))) {
    throw new Error(`building ${tag} reported no error, but the image is not there\n${output.join('\n')}`);
  }
  return tag;
}

/** prometheus.yml for these targets: one scrape job per job name (and metrics path). */
export function prometheusConfig(targets: PrometheusTarget[], scrapeIntervalMs = 1000): string {
  const interval = `${Math.max(1, Math.round(scrapeIntervalMs))}ms`;
  const jobs = new Map<string, { job_name: string; metrics_path: string; static_configs: { targets: string[] }[] }>();
  for (const t of targets) {
    const path = t.metricsPath ?? '/metrics';
    const key = `${t.job}\n${path}`;
    let job = jobs.get(key);
    if (!job) {
      const sameName = [...jobs.values()].filter((j) => j.job_name === t.job).length;
      if (sameName > 0) throw new Error(`scrape job ${t.job} is given two metrics paths; use two job names`);
      job = { job_name: t.job, metrics_path: path, static_configs: [{ targets: [] }] };
      jobs.set(key, job);
    }
    job.static_configs[0]?.targets.push(t.target);
  }
  return stringify({
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: [...jobs.values()],
  });
}

export async function startPrometheus(opts: StartPrometheusOptions): Promise<PrometheusInstance> {
  if (opts.targets.length === 0) throw new Error('startPrometheus needs at least one target');
  for (const t of opts.targets) {
    if (!/^[^/\s:]+:\d+$/.test(t.target)) throw new Error(`a scrape target is host:port, not ${JSON.stringify(t.target)}`);
  }
  const image = await ensurePrometheusImage();
  const config = prometheusConfig(opts.targets, opts.scrapeIntervalMs);

  // The port is free when asked and taken by Prometheus a moment later: another process may take it
  // in between, in which case Prometheus exits at once and another port is tried.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const container = await docker.createContainer({
      Image: image,
      // The config comes in the environment and goes to a tmpfs: the root file system stays read-only.
      Entrypoint: ['/bin/sh', '-c', 'printf "%s\\n" "$PROMETHEUS_YML" > /tmp/prometheus.yml && exec /usr/bin/prometheus --config.file=/tmp/prometheus.yml "$@"', 'prometheus'],
      Cmd: [`--web.listen-address=127.0.0.1:${port}`, '--storage.tsdb.path=/prometheus', '--storage.tsdb.retention.time=1h', '--log.level=warn'],
      Env: [`PROMETHEUS_YML=${config}`],
      Labels: { [TEST_LABEL]: testRun(), 'maestro.role': opts.role ?? 'test-prometheus' },
      HostConfig: {
        NetworkMode: 'host',
        ReadonlyRootfs: true,
        Tmpfs: { '/prometheus': 'rw,size=128m,mode=1777', '/tmp': 'rw,size=1m,mode=1777' },
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        Memory: 512 * 1024 * 1024,
      },
    });
    const remove = (): Promise<void> => container.remove({ force: true, v: true }).catch(() => undefined);
    try {
      await container.start();
      const url = `http://127.0.0.1:${port}`;
      await waitForReady(container, url);
      return instance(container, url, config, opts.targets, remove);
    } catch (err) {
      lastError = err as Error;
      const logs = await containerLogs(container);
      await remove();
      if (!/address already in use/.test(logs)) throw new Error(`${lastError.message}\n${logs}`);
    }
  }
  throw new Error(`Prometheus could not get a free port three times: ${lastError?.message ?? ''}`);
}

/** Polls `/-/ready`; fails at once when the container exits (a port taken, a bad flag or config). */
async function waitForReady(container: Docker.Container, url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${url}/-/ready`).catch(() => null);
    await res?.arrayBuffer().catch(() => undefined);
    if (res?.ok) return;
    const state = (await container.inspect()).State;
    if (!state.Running) throw new Error(`the Prometheus container exited (${state.ExitCode}) before it was ready`);
    if (Date.now() > deadline) throw new Error(`Prometheus was not ready at ${url} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function instance(
  container: Docker.Container,
  url: string,
  config: string,
  targets: PrometheusTarget[],
  remove: () => Promise<void>,
): PrometheusInstance {
  let closing: Promise<void> | undefined;

  const query = async (promql: string): Promise<PromSample[]> => {
    const res = await fetch(`${url}/api/v1/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ query: promql }).toString(),
    });
    const body = (await res.json()) as ApiResponse<QueryData>;
    if (body.status !== 'success' || !body.data) throw new Error(`query ${promql} failed: ${body.errorType ?? res.status}: ${body.error ?? ''}`);
    return toSamples(body.data);
  };

  return {
    url,
    containerId: container.id,
    config,
    query,
    async waitForQuery(promql, predicate = (s) => s.length > 0, o = {}) {
      let last: PromSample[] | undefined;
      try {
        return await waitFor(
          async () => {
            last = await query(promql);
            return predicate(last) ? last : undefined;
          },
          { timeoutMs: o.timeoutMs ?? 15_000, intervalMs: o.intervalMs ?? 250, what: `PromQL ${promql}` },
        );
      } catch (err) {
        throw new Error(`${(err as Error).message}; last result: ${JSON.stringify(last)}`);
      }
    },
    async waitForTargetsUp(o = {}) {
      let seen: ActiveTarget[] = [];
      try {
        await waitFor(
          async () => {
            const res = await fetch(`${url}/api/v1/targets?state=active`);
            const body = (await res.json()) as ApiResponse<{ activeTargets: ActiveTarget[] }>;
            seen = body.data?.activeTargets ?? [];
            return targets.every((t) =>
              seen.some((a) => a.labels.job === t.job && a.labels.instance === t.target && a.health === 'up'),
            );
          },
          { timeoutMs: o.timeoutMs ?? 15_000, intervalMs: 200, what: 'every scrape target to be up' },
        );
      } catch (err) {
        const summary = seen.map((a) => `${a.labels.job}/${a.labels.instance}: ${a.health}${a.lastError ? ` (${a.lastError})` : ''}`).join('; ');
        throw new Error(`${(err as Error).message}; targets: ${summary || 'none yet'}`);
      }
    },
    close: () => (closing ??= remove()),
  };
}

interface ApiResponse<T> {
  status: 'success' | 'error';
  data?: T;
  errorType?: string;
  error?: string;
}

type QueryData =
  | { resultType: 'vector'; result: { metric: Record<string, string>; value: [number, string] }[] }
  | { resultType: 'scalar'; result: [number, string] }
  | { resultType: 'matrix'; result: unknown[] }
  | { resultType: 'string'; result: [number, string] };

interface ActiveTarget {
  labels: Record<string, string>;
  scrapeUrl: string;
  health: 'up' | 'down' | 'unknown';
  lastError?: string;
}

function toSamples(data: QueryData): PromSample[] {
  switch (data.resultType) {
    case 'vector':
      return data.result.map((r) => ({ metric: r.metric, value: sampleValue(r.value[1]), timestamp: r.value[0] }));
    case 'scalar':
      return [{ metric: {}, value: sampleValue(data.result[1]), timestamp: data.result[0] }];
    default:
      throw new Error(`an instant query returned a ${data.resultType}; query() handles vectors and scalars`);
  }
}

/** Prometheus writes sample values as strings, with `+Inf`, `-Inf` and `NaN`. */
function sampleValue(text: string): number {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

/** The container's output, stdout and stderr interleaved (the engine multiplexes them without a TTY). */
async function containerLogs(container: Docker.Container): Promise<string> {
  try {
    const raw = await container.logs({ stdout: true, stderr: true, follow: false, tail: 50 });
    const parts: string[] = [];
    let i = 0;
    while (i + 8 <= raw.length) {
      const size = raw.readUInt32BE(i + 4);
      parts.push(raw.subarray(i + 8, i + 8 + size).toString('utf8'));
      i += 8 + size;
    }
    return parts.join('') || raw.toString('utf8');
  } catch {
    return '';
  }
}
