import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../../shared/src/config';
import { INPUT_DIR, RUNNER_PATH } from './sandbox/container-spec';
import { isInside } from './tools/path-guard';

/**
 * Paths no allowed dir may be, cover or lie under. Each one is either read by the file tools on the
 * host, where it would hand the model something that is not data, or mounted at the same path in
 * the sandbox, where it would replace what the image or the engine put there.
 */
const FORBIDDEN: readonly { path: string; why: string }[] = [
  // /proc/<pid>/environ of the worker holds the provider keys; /sys and /dev are the host's kernel and devices.
  { path: '/proc', why: "the host's processes, the worker's environment included" },
  { path: '/sys', why: "the host's kernel state" },
  { path: '/dev', why: "the host's devices" },
  { path: '/etc', why: "the host's configuration and secrets" },
  // Mounted over the sandbox's own, these would swap its Python and libraries for the host's.
  { path: '/usr', why: 'the programs the sandbox runs' },
  { path: '/bin', why: 'the programs the sandbox runs' },
  { path: '/sbin', why: 'the programs the sandbox runs' },
  { path: '/boot', why: "the host's kernel images" },
  // docker.sock lives here, and a socket on a read-only mount can still be connected to: root on the host.
  { path: '/run', why: "the host's runtime state, the Docker socket included" },
  { path: '/var/run', why: "the host's runtime state, the Docker socket included" },
  { path: '/var/lib/docker', why: "every container's files and environment" },
  // The sandbox mounts its own tmpfs there; on the host it holds other processes' files.
  { path: '/tmp', why: "the sandbox's scratch space and the host's shared temp dir" },
  { path: path.posix.dirname(RUNNER_PATH), why: "the sandbox's runner" },
  // A job's input files are mounted there, read-only, in the sandbox.
  { path: INPUT_DIR, why: "the sandbox's inputs dir" },
];

/** /lib, /lib32, /lib64, /libx32 and whatever other library dir a distribution puts at the top. */
const LIB_DIR = /^\/lib[^/]*(\/|$)/;

export interface ValidatedAllowedDirs {
  /** Real paths, deduplicated, in the order given: what the file tools check and the sandbox mounts. */
  dirs: string[];
  /** Mount points strictly below an allowed dir, each to be mounted read-only again in the sandbox. */
  readOnlyMounts: string[];
}

/**
 * Checks ALLOWED_DIRS once, at start-up, for both the file tools and the sandbox; a bad entry throws a
 * ConfigError of one line, `invalid ALLOWED_DIRS: …`, naming every bad entry and why.
 *
 * `codeDir` is the worker's own code and `outputDir` the sandbox's output dir: an allowed dir at that
 * path would be mounted over it. `mountInfo` stands in for /proc/self/mountinfo.
 */
export async function validateAllowedDirs(
  given: readonly string[],
  opts: { codeDir: string; outputDir: string; mountInfo?: string },
): Promise<ValidatedAllowedDirs> {
  const forbidden = await withRealPaths([
    ...FORBIDDEN,
    // The project root holds the worker's source and, often, a .env with the provider keys.
    { path: opts.codeDir, why: "the worker's own code" },
    { path: opts.outputDir, why: "the sandbox's output dir" },
  ]);
  const problems: string[] = [];
  const dirs: string[] = [];
  for (const dir of given) {
    const shown = JSON.stringify(dir);
    const malformed = malformation(dir);
    if (malformed) {
      problems.push(`${shown} ${malformed}`);
      continue;
    }
    const normal = dir.length > 1 ? dir.replace(/\/$/, '') : dir;
    const clash = clashWith(normal, forbidden);
    if (clash) {
      problems.push(`${shown} ${clash}`);
      continue;
    }
    let real: string;
    try {
      // Judged again on the real path, so a symlink to /etc or a path through one is refused too.
      real = await fs.realpath(normal);
    } catch (err) {
      problems.push(`${shown} ${errnoOf(err) === 'EACCES' ? 'cannot be resolved (permission denied)' : 'does not exist'}`);
      continue;
    }
    if (!(await fs.stat(real)).isDirectory()) {
      problems.push(`${shown} is not a directory`);
      continue;
    }
    const realClash = clashWith(real, forbidden);
    if (realClash) {
      problems.push(`${shown} resolves to ${real}, which ${realClash}`);
      continue;
    }
    if (!dirs.includes(real)) dirs.push(real);
  }
  if (problems.length > 0) throw new ConfigError(`invalid ALLOWED_DIRS: ${problems.join('; ')}`);

  const readOnlyMounts = dirs.length === 0 ? [] : await mountsBelow(dirs, opts.mountInfo);
  return { dirs, readOnlyMounts };
}

/**
 * Mount points in a /proc/<pid>/mountinfo text: the fifth field, with the kernel's octal escapes
 * (`\040` for a space, `\011`, `\012`, `\134`) undone.
 */
export function parseMountPoints(mountInfo: string): string[] {
  const points: string[] = [];
  for (const line of mountInfo.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    points.push(field.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(parseInt(octal, 8))));
  }
  return points;
}

/** Why an entry is not an absolute, normalised path, or undefined when it is one. */
function malformation(dir: string): string | undefined {
  // A NUL would be cut by the C layer, so the path checked would not be the path mounted.
  if (dir.includes('\0')) return 'contains a NUL byte';
  if (!path.posix.isAbsolute(dir)) return 'is not an absolute path';
  // Refused rather than normalised: what is checked, mounted and shown to the model must be one string.
  const trimmed = dir.length > 1 ? dir.replace(/\/$/, '') : dir;
  if (path.posix.normalize(trimmed) !== trimmed || (trimmed.length > 1 && trimmed.endsWith('/'))) {
    return 'is not normalised (no ".", "..", or repeated "/")';
  }
  return undefined;
}

/** Why `dir` (absolute, normalised) is, covers or lies under a forbidden path, or undefined. */
function clashWith(dir: string, forbidden: readonly { path: string; why: string }[]): string | undefined {
  // Everything lies under "/", so only being it counts; mounted, it would replace the sandbox's root.
  if (dir === '/') return 'is the root directory';
  const lib = LIB_DIR.exec(dir);
  if (lib) {
    const top = lib[0].replace(/\/$/, '');
    return `${dir === top ? 'is' : 'lies under'} ${top} (the libraries the sandbox runs)`;
  }
  for (const f of forbidden) {
    if (f.path === '/') continue;
    if (dir === f.path) return `is ${f.path} (${f.why})`;
    if (isInside([f.path], dir)) return `lies under ${f.path} (${f.why})`;
    if (isInside([dir], f.path)) return `covers ${f.path} (${f.why})`;
  }
  return undefined;
}

/** The forbidden paths plus, where a path is or goes through a symlink (/var/run → /run), its real path. */
async function withRealPaths(entries: { path: string; why: string }[]): Promise<{ path: string; why: string }[]> {
  const out = [...entries];
  for (const entry of entries) {
    const real = await fs.realpath(entry.path).catch(() => entry.path);
    if (real !== entry.path) out.push({ path: real, why: entry.why });
  }
  return out;
}

/**
 * Mount points strictly below the allowed dirs. The engine's bind mounts are recursive, but before
 * Engine 25 its read-only flag covers the top mount only: a tmpfs or a writable bind below an allowed
 * dir would be writable from the sandbox. Each is mounted again read-only at its own path; the engine
 * mounts in order of depth, so these land on top. A mount made after start-up is not seen.
 */
async function mountsBelow(dirs: readonly string[], mountInfo: string | undefined): Promise<string[]> {
  let text = mountInfo;
  if (text === undefined) {
    try {
      text = await fs.readFile('/proc/self/mountinfo', 'utf8');
    } catch (err) {
      throw new ConfigError(`invalid ALLOWED_DIRS: the mounts below the allowed dirs cannot be listed (/proc/self/mountinfo: ${errnoOf(err) ?? 'unreadable'})`);
    }
  }
  const below: string[] = [];
  for (const point of parseMountPoints(text)) {
    if (dirs.includes(point) || below.includes(point) || !isInside(dirs, point)) continue;
    // The engine needs the mount point as a source; one it cannot see (hidden by a later mount, or
    // deleted) cannot be made read-only, so start-up refuses it rather than leave it writable.
    const seen = await fs.lstat(point).then(() => true, () => false);
    if (!seen) {
      throw new ConfigError(`invalid ALLOWED_DIRS: the mount ${JSON.stringify(point)} below an allowed dir cannot be made read-only in the sandbox (its path cannot be reached)`);
    }
    below.push(point);
  }
  return below;
}

function errnoOf(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}
