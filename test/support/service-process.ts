import { spawn } from 'node:child_process';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');

export interface ServiceExit {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a service's entry point from source, as `npm start` would (`tsx services/<service>/src/main.ts`),
 * with exactly the environment given, and collects what it printed and its exit code. A process
 * still running after `timeoutMs` is killed (code null): the tests using this expect it to stop.
 */
export function runServiceProcess(service: 'api' | 'worker', env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<ServiceExit> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(ROOT, 'node_modules', '.bin', 'tsx'), [`services/${service}/src/main.ts`], {
      cwd: ROOT,
      // Metrics listeners on free ports, unless a test names one: test files run side by side.
      env: { METRICS_PORT: '0', WORKER_METRICS_PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
