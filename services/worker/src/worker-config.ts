import path from 'node:path';
import { checkConfig, ConfigError, configCheck, type Config, type ConfigCheck, type ParsedEnv } from '../../shared/src/config';
import { redisConfigCheck } from '../../shared/src/redis';
import { webhookSecretKey } from '../../shared/src/webhooks';
import { validateAllowedDirs, type ValidatedAllowedDirs } from './allowed-dirs';
import { OUTPUT_DIR } from './sandbox/container-spec';

const ABOVE_SERVICES = path.resolve(__dirname, '../../..');
/** The project root, which no allowed dir may expose: above services/, or above dist/ once compiled. */
export const CODE_DIR = path.basename(ABOVE_SERVICES) === 'dist' ? path.dirname(ABOVE_SERVICES) : ABOVE_SERVICES;

/** Why a DOCKER_HOST value cannot name an engine the worker can reach, or null when it can (or is unset). */
export function dockerHostProblem(value: string | undefined): string | null {
  if (value === undefined) return null;
  const why = 'invalid DOCKER_HOST: must be unix:///path/to/docker.sock or tcp://host:port';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return why;
  }
  if (url.protocol === 'unix:') return url.pathname.startsWith('/') && url.pathname.length > 1 ? null : why;
  return ['tcp:', 'http:', 'https:'].includes(url.protocol) && url.hostname !== '' ? null : why;
}

/** The worker's rules beyond single values that need no file system but Redis's files. */
export const WORKER_CONFIG_CHECKS: readonly ConfigCheck[] = [
  configCheck(['DOCKER_HOST'], (config) => {
    const problem = dockerHostProblem(config.DOCKER_HOST);
    return problem === null ? [] : [problem];
  }),
  redisConfigCheck,
  configCheck(['WEBHOOKS_ENABLED', 'WEBHOOK_SECRET', 'WEBHOOK_URL'], (config) => webhookConfigProblems(config)),
];

/** Webhooks need a well-formed secret when on, and WEBHOOKS_ENABLED=true when a URL or secret says they are wanted. */
export function webhookConfigProblems(config: { WEBHOOKS_ENABLED: boolean; WEBHOOK_SECRET?: string | undefined; WEBHOOK_URL?: string | undefined }): string[] {
  const problems: string[] = [];
  if (config.WEBHOOK_SECRET !== undefined && webhookSecretKey(config.WEBHOOK_SECRET) === null) {
    problems.push('invalid WEBHOOK_SECRET: must be whsec_ followed by the base64 of 24 to 64 random bytes (`echo whsec_$(openssl rand -base64 32)`)');
  } else if (config.WEBHOOKS_ENABLED && config.WEBHOOK_SECRET === undefined) {
    problems.push('WEBHOOKS_ENABLED=true needs WEBHOOK_SECRET in the worker, to sign deliveries (`echo whsec_$(openssl rand -base64 32)`)');
  }
  if (!config.WEBHOOKS_ENABLED && config.WEBHOOK_URL !== undefined) {
    problems.push('WEBHOOK_URL is set but webhooks are off: set WEBHOOKS_ENABLED=true (in the api and the worker) and WEBHOOK_SECRET');
  }
  return problems;
}

/**
 * The worker's configuration, or a ConfigError listing every problem at once: each value the schema
 * refuses, the worker's own rules on the rest, and every bad ALLOWED_DIRS entry. Files are judged as
 * the process reads them, so call this once the worker has dropped root. `mountInfo` stands in for
 * /proc/self/mountinfo (tests).
 */
export async function loadWorkerConfig(
  parsed: ParsedEnv,
  opts: { mountInfo?: string } = {},
): Promise<{ config: Config; allowedDirs: ValidatedAllowedDirs }> {
  const problems = [...parsed.problems, ...checkConfig(parsed, WORKER_CONFIG_CHECKS)];
  let allowedDirs: ValidatedAllowedDirs | undefined;
  if (!parsed.failed.has('ALLOWED_DIRS')) {
    try {
      allowedDirs = await validateAllowedDirs(parsed.values.ALLOWED_DIRS ?? [], {
        codeDir: CODE_DIR,
        outputDir: OUTPUT_DIR,
        mountInfo: opts.mountInfo,
      });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(err.message);
    }
  }
  if (problems.length > 0 || allowedDirs === undefined) throw new ConfigError(problems.join('\n'));
  return { config: parsed.values as Config, allowedDirs };
}
