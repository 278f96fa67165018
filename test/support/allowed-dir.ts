import { chmod, mkdir, mkdtemp, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { testRun } from './docker';

/**
 * Where this run's allowed dirs live. Not under os.tmpdir(): the worker refuses /tmp as an allowed
 * dir, because the sandbox mounts its own /tmp there.
 */
export function allowedDirsRoot(): string {
  return path.join('/var/tmp', `maestro-test-${testRun()}`);
}

/** A fresh dir to put in ALLOWED_DIRS, mode 0755 so the sandbox user (65534) can read it, as in production. */
export async function makeAllowedDir(name: string): Promise<string> {
  const root = allowedDirsRoot();
  await mkdir(root, { recursive: true });
  // mkdir and mkdtemp modes are masked by the umask (mkdtemp's is 0700 anyway).
  await chmod(root, 0o755);
  const dir = await mkdtemp(path.join(root, `${name}-`));
  await chmod(dir, 0o755);
  return dir;
}

/** Removes a dir made by makeAllowedDir, and the run's root once no test file uses it any more. */
export async function removeAllowedDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  // ENOTEMPTY while another test file of the run still has its dir there: that file removes the root.
  await rmdir(allowedDirsRoot()).catch(() => undefined);
}
