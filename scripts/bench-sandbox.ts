/**
 * npm run bench:sandbox — how fast a job's code starts running, against `docker run` measured in the
 * same run on the same machine:
 *   (a) docker run --rm --network none IMAGE python3 -c 'print(1)'
 *   (b) the first run('print(1)') of a new session, the pool warm (refilled between repetitions, untimed)
 *   (c) a later run in the same session
 * (a), (b) and (c) under runc, then under runsc. Every container made carries the bench's labels and
 * is removed at the end.
 */
import { execFile } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import Dockerode from 'dockerode';
import { createLogger } from '../services/shared/src/logger';
import { LABEL } from '../services/worker/src/sandbox/container-spec';
import { SandboxManager } from '../services/worker/src/sandbox/sandbox-manager';
import type { SandboxRuntime } from '../services/worker/src/sandbox/types';
import { testSandboxSettings } from '../test/support/docker';

const run = promisify(execFile);
const REPS = Number(process.argv[2] ?? 30);
const IMAGE = process.env.SANDBOX_IMAGE ?? 'maestro-sandbox:latest';
const WORKER_ID = `bench-${process.pid}-${Date.now()}`;

function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((x, y) => x - y);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

function report(name: string, samples: number[]): number {
  const p50 = pct(samples, 50);
  console.log(`${name.padEnd(44)} n=${samples.length}  p50 ${p50.toFixed(2).padStart(8)} ms  p95 ${pct(samples, 95).toFixed(2).padStart(8)} ms`);
  return p50;
}

async function dockerRun(runtime: SandboxRuntime): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const started = performance.now();
    const { stdout } = await run('docker', [
      'run', '--rm', '--network', 'none', '--runtime', runtime,
      '--label', `${LABEL.role}=sandbox`, '--label', `${LABEL.worker}=${WORKER_ID}`, '--label', `${LABEL.job}=`,
      IMAGE, 'python3', '-c', 'print(1)',
    ]);
    samples.push(performance.now() - started);
    if (stdout.trim() !== '1') throw new Error(`docker run printed ${JSON.stringify(stdout)}`);
  }
  return samples;
}

async function sessions(docker: Dockerode, runtime: SandboxRuntime): Promise<{ first: number[]; later: number[] }> {
  const manager = new SandboxManager({
    docker,
    logger: createLogger({ level: 'warn', service: 'bench' }),
    settings: testSandboxSettings({ image: IMAGE, runtime, poolSize: 1, workerId: WORKER_ID }),
  });
  const first: number[] = [];
  const later: number[] = [];
  const signal = new AbortController().signal;
  try {
    await manager.start();
    for (let i = 0; i < REPS; i++) {
      await manager.fillPool();
      const session = manager.session(`bench-job-${i}`, { deadline: new Date(Date.now() + 60_000) });
      let started = performance.now();
      const a = await session.run('print(1)', { timeoutMs: 10_000, signal });
      first.push(performance.now() - started);
      // The refill the take started would compete for the CPU with (c); it is waited for, untimed.
      await manager.fillPool();
      started = performance.now();
      const b = await session.run('print(1)', { timeoutMs: 10_000, signal });
      later.push(performance.now() - started);
      if (a.stdout !== '1\n' || b.stdout !== '1\n') throw new Error(`unexpected output ${JSON.stringify([a, b])}`);
      await session.close();
    }
  } finally {
    await manager.close();
  }
  return { first, later };
}

async function main(): Promise<void> {
  const docker = new Dockerode();
  try {
    console.log(`image ${IMAGE}, ${REPS} repetitions per case`);
    for (const runtime of ['runc', 'runsc'] as const) {
      const cold = report(`(a) docker run, ${runtime}`, await dockerRun(runtime));
      const { first, later } = await sessions(docker, runtime);
      const warm = report(`(b) first run of a session (warm pool), ${runtime}`, first);
      report(`(c) later run in the same session, ${runtime}`, later);
      console.log(`    ratio (a)/(b) p50, ${runtime}: ${(cold / warm).toFixed(0)}x`);
    }
  } finally {
    const left = await docker.listContainers({ all: true, filters: { label: [`${LABEL.worker}=${WORKER_ID}`] } });
    await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
