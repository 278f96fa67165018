// Builds the sandbox image (sandbox-image/) with plain `docker build`.
// SANDBOX_IMAGE names the result (default maestro-sandbox:latest); DEBIAN_IMAGE, when set, replaces
// the official base image (CI machines reach no registry and use a local stand-in).
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const image = process.env.SANDBOX_IMAGE || 'maestro-sandbox:latest';
const args = ['build', '--tag', image, '--label', 'maestro.role=sandbox-image'];
if (process.env.DEBIAN_IMAGE) args.push('--build-arg', `DEBIAN_IMAGE=${process.env.DEBIAN_IMAGE}`);
args.push(join(root, 'sandbox-image'));

console.log(`docker ${args.join(' ')}`);
const child = spawn('docker', args, { stdio: 'inherit' });
child.on('error', (err) => {
  console.error(`sandbox-build: cannot run docker: ${err.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => {
  if (code === 0) {
    console.log(`sandbox-build: built ${image}`);
    process.exit(0);
  }
  console.error(`sandbox-build: docker build failed (${signal ?? `exit ${code}`})`);
  process.exit(code || 1);
});
