/**
 * `npm start`: the API and one worker on this host, as two processes sharing this environment.
 * Each validates its own configuration; if either exits, the other is stopped and the exit code kept.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const services = ['api', 'worker'] as const;
const children = new Map<string, ChildProcess>();
let exitCode: number | null = null;

function stopAll(signal: NodeJS.Signals): void {
  for (const child of children.values()) if (child.exitCode === null) child.kill(signal);
}

for (const name of services) {
  const child = spawn(process.execPath, [join(__dirname, '..', 'services', name, 'src', 'main.js')], {
    stdio: 'inherit',
    env: process.env,
  });
  children.set(name, child);
  child.on('exit', (code, signal) => {
    children.delete(name);
    exitCode ??= code ?? (signal ? 1 : 0);
    if (children.size > 0) stopAll('SIGTERM');
    else process.exit(exitCode);
  });
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => stopAll(signal));
