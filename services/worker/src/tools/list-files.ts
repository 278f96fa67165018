import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { resolveInside } from './path-guard';
import type { Tool } from './tool';

/** Enough for the model to find its way; a huge directory is better explored with code_executor. */
const MAX_ENTRIES = 1000;

const input = z.strictObject({
  path: z.string().describe('Absolute host path of a directory inside one of the allowed directories, e.g. "/data/project".'),
});

type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export const listFilesTool: Tool<z.infer<typeof input>> = {
  name: 'list_files',
  description:
    'List the entries of a directory inside the allowed directories (read-only). Paths are absolute host paths, ' +
    'the same paths the code_executor sandbox sees. Returns each entry with its type (file, dir, symlink, other) ' +
    `and size in bytes, sorted by name, at most ${MAX_ENTRIES} entries. Symbolic links are shown but not followed.`,
  input,
  async run({ path: dirPath }, ctx) {
    const real = await resolveInside(ctx.allowedDirs, dirPath, { mustBe: 'dir' });
    const names = (await fs.readdir(real)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const shown = names.slice(0, MAX_ENTRIES);
    const omitted = names.length - shown.length;

    // lstat, not stat: a symlink is reported as such and its target is never touched, so a link
    // pointing outside the allowed dirs reveals nothing about what it points to.
    const stats = await Promise.all(shown.map((name) => fs.lstat(path.join(real, name)).catch(() => undefined)));
    const lines = shown.map((name, i) => formatEntry(name, stats[i]));

    const header = `${dirPath} (${names.length} ${names.length === 1 ? 'entry' : 'entries'})`;
    const body = names.length === 0 ? '(empty directory)' : ['type     size  name', ...lines].join('\n');
    const note = omitted > 0 ? `\n[${omitted} more entries omitted: only the first ${MAX_ENTRIES} are listed]` : '';
    return {
      output: `${header}\n${body}${note}`,
      isError: false,
      detail: { path: dirPath, entries: names.length, omitted, truncated: omitted > 0 },
    };
  },
};

function formatEntry(name: string, st: Stats | undefined): string {
  const type = entryType(st);
  const size = st === undefined || type === 'dir' ? '-' : String(st.size);
  const suffix = type === 'dir' ? '/' : type === 'symlink' ? ' (symlink, not followed)' : '';
  return `${type.padEnd(7)} ${size.padStart(5)}  ${displayName(name)}${suffix}`;
}

function entryType(st: Stats | undefined): EntryType {
  if (st === undefined) return 'other';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isDirectory()) return 'dir';
  return st.isFile() ? 'file' : 'other';
}

/** A file name with a newline could forge extra listing lines; such names are shown JSON-quoted. */
function displayName(name: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f]/.test(name) ? JSON.stringify(name) : name;
}
