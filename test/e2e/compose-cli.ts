/** The docker and docker compose CLIs, as the end-to-end tests drive them: the way ops would. */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const ROOT = resolve(__dirname, '..', '..');

/**
 * The environment the CLIs see: only what a run sets itself (in its own --env-file, so a developer's
 * .env never leaks in), plus what the CLIs and CI's base-image stand-ins need.
 */
export function composeEnv(): NodeJS.ProcessEnv {
  const pass = ['PATH', 'HOME', 'DOCKER_HOST', 'DOCKER_CONFIG', 'NODE_IMAGE', 'DEBIAN_IMAGE', 'REDIS_IMAGE'];
  return Object.fromEntries(pass.filter((k) => process.env[k]).map((k) => [k, process.env[k]]));
}

/** `docker <args>` from the checkout; its stdout, or an error holding the tail of its stderr. */
export async function dockerCli(args: string[], env: NodeJS.ProcessEnv = composeEnv()): Promise<string> {
  try {
    return (await run('docker', args, { cwd: ROOT, env, maxBuffer: 64 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`docker ${args.slice(0, 6).join(' ')} failed: ${e.stderr?.slice(-4000) ?? e.message}`);
  }
}
