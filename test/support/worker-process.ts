/**
 * A stack's worker as a child process (`tsx services/worker/src/main.ts` with the stack's
 * environment), for tests that kill it as no in-process worker can be killed.
 *
 * Started as root, as the suite runs here, the worker becomes uid 1000 before it touches a file
 * (services/worker/src/privileges.ts), having first made the stack's artifact directory its own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Stack } from './stack';

export interface WorkerProcess {
  child: ChildProcess;
  /** Resolves once the process has exited, however it ended. */
  exited: Promise<void>;
  /** What it wrote to stderr so far: a worker that cannot start says why there (its logs go to stdout). */
  stderr(): string;
}

export function spawnWorkerProcess(stack: Pick<Stack, 'env'>): WorkerProcess {
  return spawnServiceProcess('worker', stack.env);
}

/**
 * Either service as a child process with the stack's environment (and `env` over it): an API of its
 * own process, for tests whose API must not share the test process (its metrics registry, its
 * tracing). Its logs go nowhere; stderr is kept.
 */
export function spawnServiceProcess(service: 'api' | 'worker', env: Record<string, string>): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', '..', 'services', service, 'src', 'main.ts')], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 64 * 1024) stderr += chunk.toString('utf8');
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { child, exited, stderr: () => stderr };
}
