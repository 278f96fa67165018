import { isAbsolute } from 'node:path';
import { z } from 'zod';

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
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

/** Every variable Maestro reads, with its default. Units are in the names. */
export const configSchema = z.object({
  REDIS_URL: z.string().default('redis://127.0.0.1:6379').pipe(z.url({ protocol: /^rediss?$/ })),
  /** A file holding Redis's password, read at start-up (compose generates one on first start). A password in REDIS_URL wins. */
  REDIS_PASSWORD_FILE: optionalString.pipe(absolutePath),
  /** PEM file of the CA(s) that signed a rediss:// server's certificate, when a public CA did not. */
  REDIS_TLS_CA_FILE: optionalString.pipe(absolutePath),
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
  SANDBOX_CPUS: z.coerce.number().min(0.05).max(64).default(1),
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
  SSE_HEARTBEAT_MS: int(100, 300_000).default(15_000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type Config = z.output<typeof configSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * Validates the environment once, at start-up. A bad value throws a ConfigError whose message is one
 * line per offending variable, naming it and what was expected (never echoing the value: it may be a key).
 */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  // An empty variable means "unset": compose files pass `${VAR:-}` through as ''.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const result = configSchema.safeParse(present);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const name = String(issue.path[0] ?? 'environment');
    return `invalid ${name}: ${issue.message}`;
  });
  throw new ConfigError(lines.join('\n'));
}
