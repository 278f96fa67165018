/**
 * Builds the sandbox image: `npm run sandbox:build` on a host (through scripts/sandbox-build.mjs), and
 * compose's `sandbox` service from the Maestro image, which then exits 0.
 *
 * Environment: SANDBOX_IMAGE, the tag (default maestro-sandbox:latest); DEBIAN_IMAGE, when set, the
 * base image in place of the official one; DOCKER_HOST, the engine. Arguments: `--force` builds even
 * when the image is current; `--drop-root`, for the compose service, which starts as root, becomes
 * uid 1000 in the Docker socket's group first, as the worker does (privileges.ts).
 */
import path from 'node:path';
import { dropRoot } from './privileges';
import { dockerClient } from './sandbox/docker-client';
import { buildSandboxImage } from './sandbox/image-build';
// The project root (/app in the Maestro image), which holds sandbox-image/.
import { CODE_DIR as ROOT } from './worker-config';


function setting(name: string): string | undefined {
  const value = process.env[name]?.trim();
  return value ? value : undefined;
}

async function main(): Promise<void> {
  const args = new Set(process.argv.slice(2));
  for (const arg of args) if (arg !== '--force' && arg !== '--drop-root') throw new Error(`unknown argument ${arg} (known: --force, --drop-root)`);
  const dockerHost = setting('DOCKER_HOST');
  if (args.has('--drop-root')) dropRoot(dockerHost);
  const docker = dockerClient(dockerHost);
  await docker.ping().catch((err: unknown) => {
    throw new Error(`the Docker engine is unreachable (${(err as Error).message})`);
  });
  await buildSandboxImage({
    docker,
    image: setting('SANDBOX_IMAGE') ?? 'maestro-sandbox:latest',
    contextDir: path.join(ROOT, 'sandbox-image'),
    debianImage: setting('DEBIAN_IMAGE'),
    force: args.has('--force'),
    log: (line) => console.log(line),
  });
}

// PID 1 in its container (so no root init stays behind): without handlers it would ignore both.
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => process.exit(1));

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`maestro sandbox-build: ${(err as Error).message.replace(/\n/g, '\nmaestro sandbox-build: ')}`);
    process.exit(1);
  },
);
