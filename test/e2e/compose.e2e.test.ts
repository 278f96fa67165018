/**
 * End to end: the product as ops run it. Builds and starts docker-compose.yml (plus the scripted
 * model from compose.e2e.yml) under a project name, key prefix and loopback port of its own, then
 * talks to it over HTTP only, as a client would, and inspects it with the docker CLI, as ops would.
 * Whatever happens, afterAll takes the stack down with its volumes.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { JobView, ToolStep } from '../../services/shared/src/job-schema';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { waitFor } from '../support/wait-for';
import { freePort } from '../support/ports';
import { composeEnv, dockerCli, ROOT } from './compose-cli';

const run = promisify(execFile);
const FILES = ['-f', 'docker-compose.yml', '-f', 'test/e2e/compose.e2e.yml'];
const RUN_ID = randomBytes(4).toString('hex');
const PROJECT = `maestro-e2e-${RUN_ID}`;
/** Leads every worker id, and so the maestro.worker label of every sandbox this run creates. */
const PREFIX = `e2e${RUN_ID}`;
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

let apiUrl = '';
let controlUrl = '';
let envFile = '';
let vars: Record<string, string> = {};
const tempDirs: string[] = [];
let allowedDir = '';
let allowedFile = '';
let outsideFile = '';
let secret = '';
/** What `docker compose build` printed in beforeAll. */
let buildOutput = '';

async function writeEnvFile(overrides: Record<string, string> = {}): Promise<void> {
  const all = { ...vars, ...overrides };
  await writeFile(envFile, Object.entries(all).map(([k, v]) => `${k}=${v}\n`).join(''));
}

async function compose(args: string[], files = FILES): Promise<string> {
  return dockerCli(['compose', '-p', PROJECT, '--env-file', envFile, ...files, ...args]);
}

const docker = (args: string[]): Promise<string> => dockerCli(args);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function inspect(id: string): Promise<any> {
  return JSON.parse(await docker(['inspect', id]))[0];
}

async function containersOf(service: string): Promise<string[]> {
  return (await compose(['ps', '-q', service])).split('\n').filter(Boolean);
}

/** Sandbox containers (any state) created by this run's workers. */
async function ourSandboxes(): Promise<{ id: string; worker: string }[]> {
  const out = await docker(['ps', '-a', '--filter', 'label=maestro.role=sandbox', '--format', '{{.ID}} {{.Label "maestro.worker"}}']);
  return out
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [id = '', worker = ''] = line.split(' ');
      return { id, worker };
    })
    .filter((c) => c.worker.startsWith(`${PREFIX}.`));
}


/** The first reply line a Redis server at host:port gives to an inline command, or the connection error. */
async function redisReply(host: string, port: number, command: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let reply = '';
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')));
    socket.on('connect', () => socket.write(`${command}\r\n`));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) socket.end();
    });
    socket.on('error', (err) => resolve(`error: ${err.message}`));
    socket.on('close', () => resolve(reply.split('\r\n')[0] ?? ''));
  });
}

async function http(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const res = await fetch(apiUrl + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? null : JSON.parse(text) };
}

async function submit(task: string, provider: 'openai' | 'anthropic' = 'openai'): Promise<string> {
  const res = await http('POST', '/v1/jobs', { task, provider });
  if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}: ${JSON.stringify(res.body)}`);
  return (res.body as JobView).id;
}

async function getJob(id: string): Promise<JobView> {
  const res = await http('GET', `/v1/jobs/${id}`);
  if (res.status !== 200) throw new Error(`GET /v1/jobs/${id} answered ${res.status}`);
  return res.body as JobView;
}

async function waitForEnd(id: string, timeoutMs = 60_000): Promise<JobView> {
  return waitFor(
    async () => {
      const job = await getJob(id);
      return TERMINAL.has(job.status) ? job : undefined;
    },
    { timeoutMs, intervalMs: 200, what: `job ${id} to end` },
  );
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

async function download(path: string): Promise<Buffer> {
  const res = await fetch(apiUrl + path);
  if (res.status !== 200) throw new Error(`GET ${path} answered ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}

const toolSteps = (job: JobView): ToolStep[] => job.steps.filter((s): s is ToolStep => s.type === 'tool');

/** What the scripted model was asked, by task and step. */
async function modelRequests(): Promise<{ provider: string; task: string; step: number }[]> {
  const res = await fetch(`${controlUrl}/requests`);
  return (await res.json()) as { provider: string; task: string; step: number }[];
}

/** Resolves once the job's first model step is recorded: its code is running in a sandbox now. */
async function codeRunning(id: string): Promise<void> {
  await waitFor(
    async () => {
      const job = await getJob(id);
      if (TERMINAL.has(job.status)) throw new Error(`job ${id} ended ${job.status} early`);
      return job.status === 'running' && job.steps.some((s) => s.type === 'model');
    },
    { timeoutMs: 30_000, intervalMs: 100, what: `job ${id} to run its code` },
  );
}

async function waitForHealthy(service: string, count: number): Promise<void> {
  await waitFor(
    async () => {
      const ids = await containersOf(service);
      if (ids.length !== count) return false;
      const states = await Promise.all(ids.map(async (id) => (await inspect(id)).State.Health?.Status));
      return states.every((s) => s === 'healthy');
    },
    { timeoutMs: 120_000, intervalMs: 1000, what: `${count} healthy ${service} container(s)` },
  );
}

beforeAll(async () => {
  const allowed = await makeAllowedDir('e2e-allowed');
  const outside = await mkdtemp(join(tmpdir(), 'maestro-e2e-outside-'));
  allowedDir = allowed;
  tempDirs.push(outside);
  secret = `secret-${randomBytes(6).toString('hex')}`;
  allowedFile = join(allowed, 'hello.txt');
  outsideFile = join(outside, 'secret.txt');
  await writeFile(allowedFile, `hello from the allowed dir\n`, { mode: 0o644 });
  await writeFile(outsideFile, `${secret}\n`, { mode: 0o644 });
  // mkdtemp makes 0700 dirs; the worker and the sandboxes read as non-root users.
  for (const dir of [allowed, outside]) await chmod(dir, 0o755);

  envFile = join(allowed, '..', `maestro-e2e-${RUN_ID}.env`);
  const apiPort = await freePort();
  vars = {
    API_PORT: String(apiPort),
    MAESTRO_PREFIX: PREFIX,
    MAESTRO_IMAGE: 'maestro:e2e',
    SANDBOX_IMAGE: 'maestro-sandbox:e2e',
    ALLOWED_DIRS: allowed,
    OPENAI_API_KEY: 'sk-e2e-openai',
    ANTHROPIC_API_KEY: 'sk-ant-e2e',
    PROVIDER_MAX_RETRIES: '0',
    WORKER_CONCURRENCY: '2',
    SANDBOX_POOL_SIZE: '1',
    // A killed worker's job is taken over about this long after it died.
    WORKER_LOCK_MS: '5000',
    WORKER_SHUTDOWN_GRACE_MS: '5000',
    WORKER_STOP_GRACE_PERIOD: '15s',
    REAPER_INTERVAL_MS: '2000',
    // Thirty jobs polled at once go far past a caller's default limit (tested in auth.test.ts).
    RATE_LIMIT_PER_MINUTE: '0',
  };
  await writeEnvFile();
  apiUrl = `http://127.0.0.1:${apiPort}`;

  const started = Date.now();
  buildOutput = await compose(['build']);
  console.log(`e2e: images built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  await compose(['up', '-d']);
  await waitForHealthy('api', 1);
  await waitForHealthy('worker', 1);
  const control = (await compose(['port', 'model', '8081'])).trim();
  controlUrl = `http://${control}`;
  console.log(`e2e: stack ${PROJECT} up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}, 900_000);

afterAll(async () => {
  // Always, even on failure: containers, networks, volumes; then anything this run left behind.
  if (envFile) await compose(['down', '-v', '--remove-orphans', '--timeout', '20']).catch((err: unknown) => console.error(err));
  for (const c of await ourSandboxes().catch(() => [])) await docker(['rm', '-f', '-v', c.id]).catch(() => undefined);
  // Compose labels what it builds with the project, so this run's images go too (the build cache
  // stays, and keeps the next run's build quick).
  const images = (await docker(['images', '-q', '--filter', `label=com.docker.compose.project=${PROJECT}`]).catch(() => '')).split('\n').filter(Boolean);
  if (images.length > 0) await docker(['rmi', '-f', ...new Set(images)]).catch((err: unknown) => console.error(err));
  // The sandbox image is built by the `sandbox` service through the engine, so it has no compose
  // label: it goes by name (--no-prune keeps its layers, the next run's build cache).
  if (vars.SANDBOX_IMAGE) await docker(['rmi', '--no-prune', vars.SANDBOX_IMAGE]).catch(() => undefined);
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
  if (envFile) await rm(envFile, { force: true });
  if (allowedDir) await removeAllowedDir(allowedDir);
}, 120_000);

describe('docker compose up', () => {
  test('the compose files are valid, with and without the proxy override', async () => {
    await compose(['config', '--quiet']);
    await compose(['config', '--quiet'], ['-f', 'docker-compose.yml']);
    await writeEnvFile({
      OAUTH2_PROXY_OIDC_ISSUER_URL: 'https://idp.example.com',
      OAUTH2_PROXY_CLIENT_ID: 'maestro',
      OAUTH2_PROXY_CLIENT_SECRET: 'secret',
      OAUTH2_PROXY_COOKIE_SECRET: 'cookie-secret',
      OAUTH2_PROXY_EMAIL_DOMAINS: 'example.com',
      PUBLIC_HOST: 'maestro.example.com',
      TLS_DIR: '/etc/ssl',
    });
    try {
      const merged = await compose(['config', '--format', 'json'], ['-f', 'docker-compose.yml', '-f', 'compose.proxy.yml']);
      const api = JSON.parse(merged).services.api;
      expect(api.environment.AUTH_MODE).toBe('proxy');
      expect(api.environment.TRUSTED_PROXIES).toBe('172.31.250.2');
      expect(api.ports ?? []).toEqual([]);
    } finally {
      await writeEnvFile();
    }
  });

  test('nothing listens beyond the host loopback: the api on 127.0.0.1, redis and the worker not at all', async () => {
    const [api] = await containersOf('api');
    const bindings = (await inspect(api as string)).NetworkSettings.Ports['3000/tcp'] as { HostIp: string; HostPort: string }[];
    expect(bindings).toEqual([{ HostIp: '127.0.0.1', HostPort: vars.API_PORT }]);
    for (const service of ['redis', 'worker']) {
      for (const id of await containersOf(service)) {
        const ports = (await inspect(id)).NetworkSettings.Ports as Record<string, unknown[] | null>;
        expect(Object.values(ports).filter((b) => b !== null && b.length > 0)).toEqual([]);
      }
    }
  });

  test('from the host, no process outside the stack can run a Redis command at any address of the Redis container', async () => {
    const [redis] = await containersOf('redis');
    const networks = (await inspect(redis as string)).NetworkSettings.Networks as Record<string, { IPAddress: string; GlobalIPv6Address: string }>;
    const addresses = Object.values(networks).flatMap((n) => [n.IPAddress, n.GlobalIPv6Address]).filter(Boolean);
    expect(addresses.length).toBeGreaterThan(0);
    for (const address of addresses) {
      // Each command alone on a fresh connection, as an intruder would try them.
      for (const command of ['PING', 'INFO', 'KEYS *', `GET ${PREFIX}:deployment`, 'CONFIG GET requirepass', 'FLUSHALL']) {
        const reply = await redisReply(address, 6379, command);
        expect([address, command, reply]).toEqual([address, command, expect.stringMatching(/^-NOAUTH /)]);
      }
    }
    // The stack itself got in: a job went through it (the other tests) and the api is ready.
    expect((await fetch(`${apiUrl}/readyz`)).status).toBe(200);
  });

  test('every container runs as a non-root user; the worker drops root itself, into the Docker socket group', async () => {
    // Compose starts the worker as root so it can find the socket's group; by the time it is healthy
    // its only process is uid/gid 1000, with the socket's group and no capabilities.
    const [worker] = await containersOf('worker');
    const status = await readFile(`/proc/${(await inspect(worker as string)).State.Pid as number}/status`, 'utf8');
    const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
    expect(field('Uid').split(/\s+/)).toEqual(['1000', '1000', '1000', '1000']);
    expect(field('Gid').split(/\s+/)).toEqual(['1000', '1000', '1000', '1000']);
    expect(field('Groups')).toBe(String((await stat('/var/run/docker.sock')).gid));
    for (const caps of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb']) expect([caps, field(caps)]).toEqual([caps, '0000000000000000']);
    expect((await docker(['top', worker as string, '-o', 'pid,uid'])).trim().split('\n').slice(1)).toHaveLength(1);

    for (const service of ['api', 'redis', 'model']) {
      const [id] = await containersOf(service);
      const user = String((await inspect(id as string)).Config.User);
      // [service, …] so a failure names the service.
      expect([service, user]).not.toEqual([service, expect.stringMatching(/^(|root|0)(:.*)?$/)]);
      const uid = (await compose(['exec', '-T', service, 'id', '-u'])).trim();
      expect([service, uid]).not.toEqual([service, '0']);
    }
    const sandboxUser = JSON.parse(await docker(['image', 'inspect', vars.SANDBOX_IMAGE as string]))[0].Config.User;
    expect(sandboxUser).toBe('65534:65534');
  });

  test('docker compose build builds the Maestro image once: its npm ci steps appear as often as in the Dockerfile', async () => {
    const inDockerfile = (await readFile(join(ROOT, 'Dockerfile'), 'utf8')).match(/^RUN npm ci\b/gm)?.length ?? 0;
    expect(inDockerfile).toBeGreaterThan(0);
    // BuildKit's plain progress: one `#<n> [<service> <stage> i/n] RUN …` header per step of each
    // build, repeated when steps interleave (so counted once per step number). The scripted model
    // (compose.e2e.yml) is the test's own partial build of the Dockerfile's build stage, not counted.
    const steps = new Set(buildOutput.match(/^#\d+ \[(?!model )[^\]]*\] RUN npm ci\b.*$/gm) ?? []);
    expect([...steps]).toHaveLength(inDockerfile);
  });

  test('sandbox containers carry Maestro\'s labels only: no com.docker.compose label from their image', async () => {
    // One worker with a pool of one: its warm sandbox exists once the worker is healthy.
    const sandboxes = await waitFor(async () => {
      const found = await ourSandboxes();
      return found.length > 0 ? found : undefined;
    }, { timeoutMs: 30_000, what: 'a pooled sandbox' });
    for (const { id } of sandboxes) {
      const labels = Object.keys(((await inspect(id)).Config.Labels ?? {}) as Record<string, string>);
      expect(labels).toContain('maestro.role');
      expect(labels.filter((k) => k.startsWith('com.docker.compose.'))).toEqual([]);
    }
    const image = JSON.parse(await docker(['image', 'inspect', vars.SANDBOX_IMAGE as string]))[0].Config.Labels as Record<string, string>;
    expect(image).toMatchObject({ 'maestro.role': 'sandbox-image', 'maestro.sandbox-context': expect.stringMatching(/^[0-9a-f]{64}$/) });
  });

  test('docker compose ps -a lists the stack\'s services, one container each, and no sandbox container', async () => {
    await waitFor(async () => (await ourSandboxes()).length > 0, { timeoutMs: 30_000, what: 'a pooled sandbox' });
    const services = (await compose(['config', '--services'])).split('\n').filter(Boolean).sort();
    const listed = (await compose(['ps', '-a', '--format', '{{.Service}}'])).split('\n').filter(Boolean).sort();
    expect(listed).toEqual(services);
  });

  test('an OpenAI job runs its code in a sandbox whose only network interface is loopback', async () => {
    const job = await waitForEnd(await submit('e2e:interfaces', 'openai'));
    expect(job).toMatchObject({ status: 'succeeded', stopReason: 'completed' });
    const [tool] = toolSteps(job);
    expect(tool).toMatchObject({ name: 'code_executor', isError: false });
    expect(tool?.output).toMatch(/^interfaces=lo$/m);
  });

  test('an Anthropic job runs to completion', async () => {
    const job = await waitForEnd(await submit(`e2e:square 12 anthropic-${RUN_ID}`, 'anthropic'));
    expect(job).toMatchObject({ status: 'succeeded', provider: 'anthropic', result: { output: 'The answer is 144.' } });
  });

  test('metrics, counted as the jobs above ran, are served on the stack’s network (api:9464, worker:9465) and published on no port', async () => {
    const [api] = await containersOf('api');
    const published = (await inspect(api as string)).NetworkSettings.Ports as Record<string, { HostPort: string }[] | null>;
    expect(Object.entries(published).filter(([, b]) => b !== null && b.length > 0).map(([port]) => port)).toEqual(['3000/tcp']);
    // From inside the stack, as a Prometheus on its network would scrape them: the api reaches the worker by name.
    const scrape = async (url: string): Promise<string> =>
      compose(['exec', '-T', 'api', 'node', '-e', `fetch(${JSON.stringify(url)}).then(async (r) => { if (!r.ok) process.exit(1); process.stdout.write(await r.text()); }, () => process.exit(2))`]);
    const apiMetrics = await scrape('http://127.0.0.1:9464/metrics');
    expect(apiMetrics).toMatch(/^maestro_jobs_created_total\{provider="openai"\} [1-9]/m);
    const workerMetrics = await scrape('http://worker:9465/metrics');
    expect(workerMetrics).toMatch(/^maestro_jobs_ended_total\{status="succeeded",stop_reason="completed",provider="openai"\} [1-9]/m);
    expect(await scrape('http://worker:9465/healthz')).toBe('{"status":"ok"}');
  });

  test('the file tools and the sandbox read inside the allowed dir and nothing outside it', async () => {
    const job = await waitForEnd(await submit(`e2e:files ${allowedFile} ${outsideFile}`));
    expect(job.status).toBe('succeeded');
    const [inside, outside, sandbox] = toolSteps(job);
    expect(inside).toMatchObject({ name: 'read_file', isError: false });
    expect(inside?.output).toContain('hello from the allowed dir');
    expect(outside).toMatchObject({ name: 'read_file', isError: true });
    expect(sandbox).toMatchObject({ name: 'code_executor', isError: false });
    expect(sandbox?.output).toContain(`sandbox-read ${allowedFile} hello from the allowed dir`);
    expect(sandbox?.output).toContain(`sandbox-refused ${outsideFile}`);
    expect(JSON.stringify(job)).not.toContain(secret);
  });

  test('a running job is cancelled and its sandbox removed', async () => {
    const id = await submit(`e2e:sleep 300 cancel-${RUN_ID}`);
    await codeRunning(id);
    // One worker with a pool of one: its sandboxes are the job's and the refilled pool's.
    await waitFor(async () => (await ourSandboxes()).length === 2, { timeoutMs: 30_000, what: "the job's sandbox and a pooled one" });
    expect((await http('POST', `/v1/jobs/${id}/cancel`)).status).toBe(202);
    const job = await waitForEnd(id, 15_000);
    expect(job).toMatchObject({ status: 'cancelled', stopReason: 'cancelled' });
    await waitFor(async () => (await ourSandboxes()).length === 1, { timeoutMs: 15_000, what: "the job's sandbox to go" });
  });

  test('a job whose worker dies mid-job resumes from its checkpoint and finishes', async () => {
    const task = `e2e:sleep 8 restart-${RUN_ID}`;
    const id = await submit(task);
    await codeRunning(id);
    const before = new Set((await ourSandboxes()).map((c) => c.worker));
    const [worker] = await containersOf('worker');
    // SIGKILL the worker process from the host (not `docker kill`, which Docker counts as a
    // deliberate stop), so the restart policy brings the container back, as after a crash. It is
    // the container's PID 1, which no signal from inside the container could kill.
    process.kill((await inspect(worker as string)).State.Pid as number, 'SIGKILL');
    await waitFor(async () => (await inspect(worker as string)).RestartCount >= 1, { timeoutMs: 30_000, what: 'the worker to be restarted' });

    const job = await waitForEnd(id, 120_000);
    expect(job).toMatchObject({ status: 'succeeded', result: { output: 'done: slept' } });
    expect(job.attempts).toBeGreaterThanOrEqual(2);
    // The model's first answer came from the checkpoint, not from asking again.
    expect((await modelRequests()).filter((r) => r.task === task && r.step === 0)).toHaveLength(1);
    // The dead worker's sandboxes are reaped once its heartbeat has expired.
    await waitFor(async () => !(await ourSandboxes()).some((c) => before.has(c.worker)), {
      timeoutMs: 60_000,
      intervalMs: 1000,
      what: "the dead worker's sandboxes to be reaped",
    });
  }, 240_000);

  test('three workers run thirty jobs, each exactly once', async () => {
    await compose(['up', '-d', '--scale', 'worker=3', '--no-recreate']);
    await waitForHealthy('worker', 3);
    const tasks = Array.from({ length: 30 }, (_, i) => `e2e:square ${i + 1} scale-${RUN_ID}-${i}`);
    const ids = await Promise.all(tasks.map((task, i) => submit(task, i % 2 === 0 ? 'openai' : 'anthropic')));
    const jobs = await Promise.all(ids.map((id) => waitForEnd(id, 180_000)));
    jobs.forEach((job, i) => {
      expect(job).toMatchObject({ status: 'succeeded', attempts: 1, result: { output: `The answer is ${(i + 1) ** 2}.` } });
    });
    const seen = await modelRequests();
    for (const task of tasks) expect(seen.filter((r) => r.task === task && r.step === 0)).toHaveLength(1);
  }, 300_000);

  test('a job for a provider with no key fails with provider_not_configured, and the worker keeps running', async () => {
    await writeEnvFile({ ANTHROPIC_API_KEY: '' });
    await compose(['up', '-d', '--no-deps', '--scale', 'worker=1', 'worker']);
    await waitForHealthy('worker', 1);
    const job = await waitForEnd(await submit(`e2e:square 3 nokey-${RUN_ID}`, 'anthropic'));
    expect(job).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'provider_not_configured' } });
    const [worker] = await containersOf('worker');
    const state = (await inspect(worker as string)).State;
    expect(state).toMatchObject({ Status: 'running', Restarting: false });
    expect((await inspect(worker as string)).RestartCount).toBe(0);
  });

  test('input files and artifacts live in the artifacts volume and survive `docker compose restart api worker`', async () => {
    const csv = 'n\n1\n2\n39\n';
    const form = new FormData();
    form.append('job', JSON.stringify({ task: `e2e:inputs files-${RUN_ID}` }));
    form.append('file', new Blob([csv]), 'data.csv');
    const res = await fetch(`${apiUrl}/v1/jobs`, { method: 'POST', body: form });
    expect(res.status).toBe(202);
    const job = await waitForEnd(((await res.json()) as JobView).id);
    expect(job.status).toBe('succeeded');
    expect(toolSteps(job)[0]?.output).toMatch(/^42$/m);
    expect(job.inputs).toEqual([{ name: 'data.csv', size: csv.length, contentType: 'text/csv', sha256: sha256(csv) }]);
    expect(job.artifacts.map((a) => a.name)).toEqual(['summary.csv']);
    const paths = [`/v1/jobs/${job.id}/inputs/data.csv`, `/v1/jobs/${job.id}/artifacts/summary.csv`];
    const before = await Promise.all(paths.map(download));
    expect(before.map(sha256)).toEqual([sha256(csv), job.artifacts[0]?.sha256]);
    const volume = `${PROJECT}_artifacts`;
    expect((await docker(['volume', 'ls', '-q', '--filter', `name=${volume}`])).trim()).toBe(volume);

    await compose(['restart', 'api', 'worker']);
    await waitForHealthy('api', 1);
    await waitForHealthy('worker', 1);
    const after = await Promise.all(paths.map(download));
    expect(after.map(sha256)).toEqual(before.map(sha256));
    expect((await getJob(job.id)).inputs).toEqual(job.inputs);
  }, 180_000);

  test('docker compose down -v leaves no sandbox container, container or volume behind', async () => {
    await compose(['down', '-v', '--remove-orphans', '--timeout', '20']);
    expect(await ourSandboxes()).toEqual([]);
    expect((await compose(['ps', '-a', '-q'])).trim()).toBe('');
    expect((await docker(['volume', 'ls', '-q', '--filter', `label=com.docker.compose.project=${PROJECT}`])).trim()).toBe('');
  });
});

describe('docker compose up with no configuration', () => {
  const project = `maestro-e2e-zero-${RUN_ID}`;
  const prefix = `e2ez${RUN_ID}`;
  let env: NodeJS.ProcessEnv = {};

  /** Compose with no --env-file and no .env: only the process environment below. */
  async function zeroCompose(args: string[]): Promise<string> {
    try {
      // --env-file /dev/null: no .env is read, not even one a developer keeps in the checkout.
      const { stdout } = await run('docker', ['compose', '-p', project, '--project-directory', ROOT, '--env-file', '/dev/null', ...FILES, ...args], {
        cwd: ROOT,
        env,
        maxBuffer: 64 * 1024 * 1024,
      });
      return stdout;
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`docker compose ${args.join(' ')} failed: ${e.stderr?.slice(-4000) ?? e.message}`);
    }
  }

  afterAll(async () => {
    await zeroCompose(['down', '-v', '--remove-orphans', '--timeout', '20']).catch((err: unknown) => console.error(err));
    const left = (await docker(['ps', '-aq', '--filter', 'label=maestro.role=sandbox']).catch(() => '')).split('\n').filter(Boolean);
    for (const id of left) {
      const worker = (await docker(['inspect', '--format', '{{index .Config.Labels "maestro.worker"}}', id]).catch(() => '')).trim();
      if (worker.startsWith(`${prefix}.`)) await docker(['rm', '-f', '-v', id]).catch(() => undefined);
    }
  }, 120_000);

  test('comes up healthy with no .env and no DOCKER_GID, and runs a job’s code as a non-root worker', async () => {
    const port = await freePort();
    // Not configuration a user does: a free port instead of 3000, a key prefix so this test finds
    // its own sandboxes, the images the first stack built (so nothing is rebuilt), an allowed dir
    // that this run removes (the default /srv/maestro/files would be created on the host), and the
    // scripted model's key (compose.e2e.yml points the worker at it).
    env = {
      ...composeEnv(),
      API_PORT: String(port),
      MAESTRO_PREFIX: prefix,
      MAESTRO_IMAGE: 'maestro:e2e',
      SANDBOX_IMAGE: 'maestro-sandbox:e2e',
      ALLOWED_DIRS: allowedDir,
      OPENAI_API_KEY: 'sk-e2e-openai',
    };
    expect(Object.keys(env)).not.toContain('DOCKER_GID');
    await zeroCompose(['up', '-d', '--wait', '--wait-timeout', '180']);

    const [worker] = (await zeroCompose(['ps', '-q', 'worker'])).split('\n').filter(Boolean);
    const status = await readFile(`/proc/${(await inspect(worker as string)).State.Pid as number}/status`, 'utf8');
    expect(/^Uid:\s*(\d+)/m.exec(status)?.[1]).toBe('1000');

    const res = await fetch(`http://127.0.0.1:${port}/v1/jobs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ task: 'e2e:interfaces', provider: 'openai' }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as JobView;
    const job = await waitFor(
      async () => {
        const view = (await (await fetch(`http://127.0.0.1:${port}/v1/jobs/${id}`)).json()) as JobView;
        return TERMINAL.has(view.status) ? view : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: `job ${id} to end` },
    );
    expect(job).toMatchObject({ status: 'succeeded' });
    expect(toolSteps(job)[0]?.output).toMatch(/^interfaces=lo$/m);
  }, 300_000);
});
