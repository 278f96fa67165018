import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ToolInputError } from './tool';

/** Linux PATH_MAX; anything longer is not a real path, only a way to make us work hard. */
const MAX_PATH_BYTES = 4096;

/**
 * True when `realPath` is one of `allowedRealDirs` or beneath one. Decided segment by segment with
 * path.relative, because a string prefix would let `/data` admit `/data-evil`.
 */
export function isInside(allowedRealDirs: readonly string[], realPath: string): boolean {
  return allowedRealDirs.some((dir) => {
    const rel = path.relative(dir, realPath);
    return rel === '' || (!path.isAbsolute(rel) && rel.split(path.sep)[0] !== '..');
  });
}

/**
 * Checks a model-supplied path and returns its real path inside one of the allowed dirs, or throws
 * ToolInputError with a message the model can act on. Messages echo only what the caller passed
 * and the allowed dirs (which are shared on purpose), never where a symlink really points.
 */
export async function resolveInside(
  allowedRealDirs: readonly string[],
  input: unknown,
  opts: { mustBe?: 'file' | 'dir' } = {},
): Promise<string> {
  if (allowedRealDirs.length === 0) {
    throw new ToolInputError('No directories are shared with this job, so no path can be read.');
  }
  if (typeof input !== 'string') throw new ToolInputError(`The path must be a string, got ${describeType(input)}.`);
  if (input === '') throw new ToolInputError('The path is empty; give an absolute path inside the allowed directories.');
  if (Buffer.byteLength(input, 'utf8') > MAX_PATH_BYTES) {
    throw new ToolInputError(`The path is longer than ${MAX_PATH_BYTES} bytes.`);
  }
  // A NUL would be cut by the C layer, so the path checked here would not be the path opened.
  if (input.includes('\0')) throw new ToolInputError('The path contains a NUL byte.');
  const shown = JSON.stringify(input);
  if (!path.isAbsolute(input)) {
    throw new ToolInputError(`The path ${shown} is relative; give an absolute path. ${allowedList(allowedRealDirs)}`);
  }
  // Refused outright rather than normalised away: a `..` is never needed to name a file and is the
  // classic way to walk out of a directory whose check ran on the unnormalised string.
  if (input.split('/').includes('..')) {
    throw new ToolInputError(`The path ${shown} contains a ".." segment, which is not allowed.`);
  }

  let real: string;
  try {
    // realpath resolves every symlink, so containment is judged on what would actually be opened.
    real = await fs.realpath(input);
  } catch (err) {
    // Say "does not exist" only when the nearest existing ancestor is inside, so the tool cannot be
    // used to probe which files exist elsewhere on the host.
    if (isInside(allowedRealDirs, await nearestExistingAncestor(input))) {
      throw new ToolInputError(`The path ${shown} ${errnoOf(err) === 'EACCES' ? 'cannot be accessed' : 'does not exist'}.`);
    }
    throw outside(shown, allowedRealDirs);
  }
  if (!isInside(allowedRealDirs, real)) throw outside(shown, allowedRealDirs);

  if (opts.mustBe !== undefined) {
    const st = await fs.stat(real);
    if (opts.mustBe === 'dir' && !st.isDirectory()) {
      throw new ToolInputError(`The path ${shown} is not a directory.`);
    }
    if (opts.mustBe === 'file' && !st.isFile()) {
      throw new ToolInputError(
        st.isDirectory() ? `The path ${shown} is a directory; use list_files to see its contents.` : `The path ${shown} is not a regular file.`,
      );
    }
  }
  return real;
}

function outside(shown: string, allowedRealDirs: readonly string[]): ToolInputError {
  return new ToolInputError(`The path ${shown} is outside the allowed directories. ${allowedList(allowedRealDirs)}`);
}

function allowedList(allowedRealDirs: readonly string[]): string {
  return `Allowed directories: ${allowedRealDirs.join(', ')}.`;
}

async function nearestExistingAncestor(p: string): Promise<string> {
  let current = path.dirname(p);
  for (;;) {
    try {
      return await fs.realpath(current);
    } catch {
      const parent = path.dirname(current);
      if (parent === current) return current;
      current = parent;
    }
  }
}

function errnoOf(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}
