import { isIP } from 'node:net';
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';

/** A whole number in [min, max]; whatever is wrong with a value, the line says what is expected. */
const int = (min: number, max: number) => {
  const error = `must be a whole number from ${min} to ${max}`;
  return z.coerce.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};
const decimal = (min: number, max: number) => {
  const error = `must be a number from ${min} to ${max}`;
  return z.coerce.number({ error }).min(min, { error }).max(max, { error });
};
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));
const optionalUrl = optionalString.pipe(z.url({ protocol: /^https?$/ }).optional());
const absolutePath = z
  .string()
  .refine((p) => isAbsolute(p), { message: 'must be an absolute path' })
  .optional();
const list = z
  .string()
  .default('')
  .transform((v) =>
    v
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
  );

/** Where a Sentinel listens. */
export interface SentinelAddress {
  host: string;
  port: number;
}

/** Sentinel's own port, for an entry that names none. */
export const SENTINEL_DEFAULT_PORT = 26379;

/** `host:port`, `host` (port 26379) or `[v6]:port`, strictly: null for anything else (a URL, userinfo, an empty port). */
export function parseSentinelAddress(entry: string): SentinelAddress | null {
  const match = /^(?:\[([^\]]+)\]|([A-Za-z0-9_.-]+))(?::(\d{1,5}))?$/.exec(entry);
  if (!match) return null;
  const [, v6, name, portText] = match;
  if (v6 !== undefined && isIP(v6) !== 6) return null;
  const host = v6 ?? (name as string);
  if (host.startsWith('.') || host.endsWith('.') || host.includes('..') || host.length > 253) return null;
  const port = portText === undefined ? SENTINEL_DEFAULT_PORT : Number(portText);
  return port >= 1 && port <= 65535 ? { host, port } : null;
}

const sentinels = list.transform((entries, ctx) => {
  const parsed = entries.map(parseSentinelAddress);
  const bad = parsed.flatMap((address, i) => (address ? [] : [i + 1]));
  if (bad.length > 0) {
    const what = badEntries(bad, 'is not host:port', 'are not host:port');
    ctx.issues.push({ code: 'custom', input: entries, message: `${what} (IPv6 in brackets; the port defaults to ${SENTINEL_DEFAULT_PORT})` });
    return z.NEVER;
  }
  return parsed as SentinelAddress[];
});

/** Every variable Maestro reads, with its default. Units are in the names. */
export const configSchema = z.object({
  REDIS_URL: z.string().default('redis://127.0.0.1:6379').pipe(z.url({ protocol: /^rediss?$/ })),
  /** A file holding Redis's password, read at start-up (compose generates one on first start). A password in REDIS_URL wins. */
  REDIS_PASSWORD_FILE: optionalString.pipe(absolutePath),
  /** PEM file of the CA(s) that signed a rediss:// server's certificate, when a public CA did not. */
  REDIS_TLS_CA_FILE: optionalString.pipe(absolutePath),
  /**
   * Sentinels that know where the Redis master is (`host:port`, comma-separated). When set, the master
   * they name is used and REDIS_URL's host and port are ignored; its password, database and rediss:// still count.
   */
  REDIS_SENTINELS: sentinels,
  /** The name the sentinels monitor the master under (`sentinel monitor <name> …`). */
  REDIS_SENTINEL_MASTER: z.string().trim().min(1).default('mymaster'),
  /** A file holding the sentinels' own password (their `requirepass`), when they have one. */
  REDIS_SENTINEL_PASSWORD_FILE: optionalString.pipe(absolutePath),
  /** Prefix of every BullMQ queue and Redis key, so several deployments (or test runs) can share a Redis. */
  MAESTRO_PREFIX: z.string().regex(/^[A-Za-z0-9_-]{1,40}$/).default('maestro'),
  HOST: z.string().min(1).default('127.0.0.1'),
  PORT: int(0, 65535).default(3000),

  OPENAI_API_KEY: optionalString,
  OPENAI_BASE_URL: optionalUrl,
  ANTHROPIC_API_KEY: optionalString,
  ANTHROPIC_BASE_URL: optionalUrl,
  DEFAULT_PROVIDER: z.enum(['openai', 'anthropic']).default('openai'),
  OPENAI_MODEL: z.string().min(1).default('gpt-5.4-mini'),
  ANTHROPIC_MODEL: z.string().min(1).default('claude-sonnet-4-6'),
  PROVIDER_MAX_RETRIES: int(0, 10).default(2),
  PROVIDER_TIMEOUT_MS: int(1000, 3_600_000).default(120_000),
  MODEL_MAX_OUTPUT_TOKENS: int(1, 200_000).default(4096),

  ALLOWED_DIRS: list.pipe(
    z.array(z.string().refine((d) => isAbsolute(d), { message: 'each entry must be an absolute path' })),
  ),
  SANDBOX_IMAGE: z.string().min(1).default('maestro-sandbox:latest'),
  SANDBOX_RUNTIME: z.enum(['runc', 'runsc']).default('runc'),
  SANDBOX_TIMEOUT_MS: int(100, 600_000).default(30_000),
  SANDBOX_MEMORY_MB: int(32, 65_536).default(512),
  SANDBOX_CPUS: decimal(0.05, 64).default(1),
  SANDBOX_PIDS: int(8, 4096).default(128),
  SANDBOX_POOL_SIZE: int(0, 64).default(2),
  SANDBOX_TMP_MB: int(1, 4096).default(64),
  SANDBOX_OUTPUT_LIMIT_KB: int(1, 10_240).default(64),
  DOCKER_HOST: optionalString,

  WORKER_CONCURRENCY: int(1, 256).default(4),
  /** How long a job's lock lasts without renewal; a dead worker's job is taken over about this long after it died. */
  WORKER_LOCK_MS: int(1000, 600_000).default(30_000),
  WORKER_SHUTDOWN_GRACE_MS: int(0, 3_600_000).default(25_000),
  JOB_ATTEMPTS: int(1, 20).default(3),
  JOB_MAX_STEPS_LIMIT: int(1, 1000).default(100),
  JOB_MAX_TIMEOUT_SECONDS: int(1, 86_400).default(3600),
  JOB_RETENTION_HOURS: int(1, 24 * 365).default(24 * 7),
  REAPER_INTERVAL_MS: int(1000, 3_600_000).default(10_000),

  /**
   * Where input and artifact bytes are kept (Redis holds their metadata only); the API and the workers
   * must see the same directory. A relative path is taken from the working directory.
   */
  ARTIFACT_DIR: z
    .string()
    .trim()
    .min(1)
    .default('data/artifacts')
    .transform((p) => resolve(p)),
  /** Bytes of files one code_executor call may hand back. */
  ARTIFACT_QUOTA_MB_PER_EXECUTION: int(1, 1024).default(25),
  /** Bytes of artifacts one job may keep, all its attempts together. */
  ARTIFACT_QUOTA_MB_PER_JOB: int(1, 100_000).default(100),
  /** Bytes one caller may have stored, inputs and artifacts of all its retained jobs together. */
  ARTIFACT_QUOTA_MB_PER_CALLER: int(1, 10_000_000).default(1024),
  /** Files one multipart job submission may carry. */
  JOB_INPUT_MAX_FILES: int(0, 1000).default(10),
  /** Bytes of all the files of one submission together. */
  JOB_INPUT_MAX_MB: int(1, 10_000).default(50),

  AUTH_MODE: z.enum(['none', 'api-key', 'proxy']).default('none'),
  API_KEYS: list,
  AUTH_PROXY_HEADER: z.string().min(1).default('X-Forwarded-User'),
  TRUSTED_PROXIES: list,
  ALLOW_UNAUTHENTICATED_NON_LOOPBACK: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  CORS_ORIGINS: list,
  /**
   * Host names (optionally with :port) the API answers to. Enforced whenever AUTH_MODE=none, where
   * empty means the loopback names and HOST; with auth on, enforced only when set.
   */
  ALLOWED_HOSTS: list,
  /** Queued plus running jobs one caller may have; past it, POST /v1/jobs answers 429. */
  CALLER_MAX_ACTIVE_JOBS: int(1, 1_000_000).default(100),
  /** Event streams one caller may hold open at once, across API replicas; past it, 429. */
  CALLER_MAX_EVENT_STREAMS: int(1, 10_000).default(10),
  /** Failed authentications one client address may make per AUTH_FAILURE_WINDOW_SECONDS; past it, 429. */
  AUTH_FAILURE_LIMIT: int(1, 1_000_000).default(20),
  AUTH_FAILURE_WINDOW_SECONDS: int(1, 86_400).default(300),
  BODY_LIMIT_KB: int(1, 10_240).default(256),
  RATE_LIMIT_PER_MINUTE: int(0, 1_000_000).default(600),
  /**
   * Share of Redis's maxmemory past which POST /v1/jobs answers 503 (reads go on): what is left is for
   * the running jobs, whose steps still need writing, until they finish and their records leave Redis.
   */
  REDIS_NEARLY_FULL_PERCENT: int(1, 100).default(90),
  SSE_HEARTBEAT_MS: int(100, 300_000).default(15_000),

  /** Prometheus metrics: counted, and served at /metrics on a listener of their own (METRICS_PORT, WORKER_METRICS_PORT). */
  METRICS_ENABLED: z
    .enum(['true', 'false', '1', '0'])
    .default('true')
    .transform((v) => v === 'true' || v === '1'),
  /** The API's metrics listener, on HOST; never the API's own port, so no caller can read it and auth cannot hide it from Prometheus. 0: any free port. */
  METRICS_PORT: int(0, 65535).default(9464),
  /** The worker's metrics and health listener, on HOST. 0: any free port. */
  WORKER_METRICS_PORT: int(0, 65535).default(9465),
  /** Where traces go, over OTLP/HTTP (`/v1/traces` is appended). Unset: no tracing code is loaded and nothing is sent. */
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalUrl,
  /** The `service.name` of the traces; `maestro-api` and `maestro-worker` by default. */
  OTEL_SERVICE_NAME: optionalString,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  /**
   * Webhooks on: jobs may name a `webhook` (the API refuses one otherwise) and every finished job is
   * queued for delivery. The worker then needs WEBHOOK_SECRET; the API never does.
   */
  WEBHOOKS_ENABLED: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** The deployment's webhook: gets every finished job that names none of its own. Worker only. */
  WEBHOOK_URL: optionalString.pipe(z.string().max(2048).pipe(z.url({ protocol: /^https?$/ })).optional()),
  /** The signing secret, `whsec_<base64 of 24 to 64 bytes>` (Standard Webhooks). Worker only. */
  WEBHOOK_SECRET: optionalString,
  /** Lets webhooks reach loopback, private, link-local and metadata addresses (tests, a receiver on the same network). */
  WEBHOOK_ALLOW_PRIVATE: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** One delivery attempt, connection to last byte read. */
  WEBHOOK_TIMEOUT_MS: int(100, 60_000).default(10_000),
  /** Attempts per delivery, the first included; the n-th retry waits WEBHOOK_RETRY_BASE_MS × 4^(n-1). */
  WEBHOOK_MAX_ATTEMPTS: int(1, 12).default(8),
  WEBHOOK_RETRY_BASE_MS: int(10, 3_600_000).default(5000),
});

export type Config = z.output<typeof configSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Which entries of a list variable are wrong: "entry 2 is <singular>", "entries 2, 3 and 5 are <plural>" (1-based). */
export function badEntries(positions: readonly number[], singular: string, plural: string): string {
  if (positions.length === 1) return `entry ${positions[0]} ${singular}`;
  return `entries ${positions.slice(0, -1).join(', ')} and ${positions[positions.length - 1]} ${plural}`;
}

/** The environment as the schema sees it: an empty variable means "unset" (compose passes `${VAR:-}` through as ''). */
function presentIn(env: NodeJS.ProcessEnv): Record<string, string> {
  const present: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined && value.trim() !== '') present[name] = value;
  return present;
}

/** The environment checked variable by variable: whatever parsed, and a line for each value that did not. */
export interface ParsedEnv {
  /** Every variable that parsed (an unset optional one is there, as undefined); none of those in `failed`. */
  values: Partial<Config>;
  /** Variables whose value the schema refused; each has at least one line in `problems`. */
  failed: ReadonlySet<keyof Config>;
  /** One `invalid NAME: why` line per problem, never the value (it may be a key). */
  problems: string[];
}

/** Parses the environment without throwing, so that checks across variables can still judge the ones that parsed. */
export function parseEnv(env: NodeJS.ProcessEnv): ParsedEnv {
  const present = presentIn(env);
  const whole = configSchema.safeParse(present);
  if (whole.success) return { values: whole.data, failed: new Set(), problems: [] };
  const failed = new Set<keyof Config>();
  const problems: string[] = [];
  for (const issue of whole.error.issues) {
    const name = String(issue.path[0] ?? 'environment');
    if (name in configSchema.shape) failed.add(name as keyof Config);
    const line = `invalid ${name}: ${issue.message}`;
    if (!problems.includes(line)) problems.push(line);
  }
  // The rest, one by one: what a check across variables may rely on.
  const values: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(configSchema.shape)) {
    if (failed.has(name as keyof Config)) continue;
    const one = schema.safeParse(present[name]);
    if (one.success) values[name] = one.data;
  }
  return { values: values as Partial<Config>, failed, problems };
}

/**
 * A rule about what one variable cannot say alone (AUTH_MODE=api-key needs API_KEYS) or beyond its
 * syntax (a file that must be readable). It runs only when every variable it reads parsed: a bad one
 * is reported already, and judging its default instead would report what nobody wrote.
 */
export interface ConfigCheck {
  readonly reads: readonly (keyof Config)[];
  /** One line per problem: `invalid NAME: why`, or a sentence naming the variables; never a secret value. */
  problems(config: Config): string[];
}

/** A ConfigCheck whose rule sees only the variables it declares it reads. */
export function configCheck<K extends keyof Config>(reads: readonly K[], problems: (config: Pick<Config, K>) => string[]): ConfigCheck {
  return { reads, problems };
}

/** The problems the checks find in whatever parsed; a check reading a variable that did not parse is skipped. */
export function checkConfig(parsed: Pick<ParsedEnv, 'values' | 'failed'>, checks: readonly ConfigCheck[]): string[] {
  const problems: string[] = [];
  for (const check of checks) {
    if (check.reads.some((name) => parsed.failed.has(name))) continue;
    for (const line of check.problems(parsed.values as Config)) if (!problems.includes(line)) problems.push(line);
  }
  return problems;
}

/** Every problem of a config that parsed, for start-up paths given a Config rather than an environment. */
export function configProblems(config: Config, checks: readonly ConfigCheck[]): string[] {
  return checkConfig({ values: config, failed: new Set() }, checks);
}

/**
 * Validates the environment once, at start-up. A bad value throws a ConfigError whose message is one
 * line per problem, naming the variable and what was expected (never echoing the value: it may be a
 * key): every schema error, then whatever `checks` (a service's rules across variables) find in the
 * variables that parsed, so that one start shows every mistake, not one per restart.
 */
export function loadConfig(env: NodeJS.ProcessEnv, checks: readonly ConfigCheck[] = []): Config {
  const parsed = parseEnv(env);
  const problems = [...parsed.problems, ...checkConfig(parsed, checks)];
  if (problems.length > 0) throw new ConfigError(problems.join('\n'));
  return parsed.values as Config;
}
