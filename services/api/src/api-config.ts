import { configCheck, configProblems, loadConfig, type Config, type ConfigCheck } from '../../shared/src/config';
import { redisConfigCheck } from '../../shared/src/redis';
import { authConfigProblems } from './auth';
import { allowedHostsProblem } from './host-check';

/** The API's rules across variables and beyond their syntax, run on whatever of the environment parsed. */
export const API_CONFIG_CHECKS: readonly ConfigCheck[] = [
  configCheck(['AUTH_MODE', 'HOST', 'ALLOW_UNAUTHENTICATED_NON_LOOPBACK', 'API_KEYS', 'TRUSTED_PROXIES'], authConfigProblems),
  configCheck(['ALLOWED_HOSTS'], (config) => {
    const problem = allowedHostsProblem(config);
    return problem === null ? [] : [problem];
  }),
  redisConfigCheck,
];

/**
 * The API's configuration from the environment, or a ConfigError listing every problem at once: each
 * value the schema refuses, and what the API's own rules find in the rest (AUTH_MODE=api-key without
 * API_KEYS, short or repeated keys, proxy mode without TRUSTED_PROXIES, AUTH_MODE=none on a
 * non-loopback HOST, malformed ALLOWED_HOSTS, an unreadable REDIS_PASSWORD_FILE, …).
 */
export function loadApiConfig(env: NodeJS.ProcessEnv): Config {
  return loadConfig(env, API_CONFIG_CHECKS);
}

/** The same rules for a Config that parsed already (startApi's callers need not come through loadApiConfig). */
export function apiConfigProblems(config: Config): string[] {
  return configProblems(config, API_CONFIG_CHECKS);
}
