import { constants, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { z } from 'zod';
import { isInside, resolveInside } from './path-guard';
import { ToolInputError, type Tool } from './tool';

/*
 * Units: `offset` is the 1-based number of the first line returned, `limit` the maximum number of
 * lines. Whatever the limit, at most MAX_OUTPUT_BYTES of file content are returned per call; the
 * footer then names the offset to continue from. Lines are split on "\n" and returned unchanged.
 */
const DEFAULT_LIMIT = 2000;
const MAX_LIMIT = 10_000;
const MAX_OUTPUT_BYTES = 256 * 1024;
/** Reaching line N means scanning everything before it; past this size the model should use code_executor. */
const MAX_SCAN_BYTES = 50 * 1024 * 1024;
/** Same heuristic as git and grep: a NUL early in the file means it is not text. */
const BINARY_SNIFF_BYTES = 8 * 1024;
const CHUNK_BYTES = 64 * 1024;

const input = z.strictObject({
  path: z.string().describe('Absolute host path of a text file inside one of the allowed directories.'),
  offset: z.number().int().min(1).optional().describe('1-based number of the first line to return. Default 1.'),
  limit: z
    .number()
    .int()
    .min(1)
    .max(MAX_LIMIT)
    .optional()
    .describe(`Maximum number of lines to return. Default ${DEFAULT_LIMIT}, at most ${MAX_LIMIT}.`),
});

export const readFileTool: Tool<z.infer<typeof input>> = {
  name: 'read_file',
  description:
    'Read a text file inside the allowed directories (read-only). The path is an absolute host path, the same ' +
    'path the code_executor sandbox sees. Returns lines starting at `offset` (1-based, default 1), at most ' +
    `\`limit\` lines (default ${DEFAULT_LIMIT}) and at most ${MAX_OUTPUT_BYTES / 1024} KiB; a bracketed footer ` +
    'says whether the end of the file was reached or which offset to continue from. Binary files, directories ' +
    `and files over ${MAX_SCAN_BYTES / 1024 / 1024} MiB are refused; read those with code_executor instead.`,
  input,
  async run({ path: filePath, offset = 1, limit = DEFAULT_LIMIT }, ctx) {
    const real = await resolveInside(ctx.allowedDirs, filePath, { mustBe: 'file' });
    const shown = JSON.stringify(filePath);
    const fh = await openChecked(real, shown, ctx.allowedDirs);
    try {
      const st = await fh.stat();
      // fstat on the open descriptor: whatever was swapped in after the path check, this is what we read.
      if (!st.isFile()) throw new ToolInputError(`The path ${shown} is not a regular file.`);
      if (st.size > MAX_SCAN_BYTES) {
        throw new ToolInputError(
          `The file ${shown} is ${formatMiB(st.size)}, over the ${MAX_SCAN_BYTES / 1024 / 1024} MiB read_file limit; ` +
            'inspect it with code_executor instead.',
        );
      }
      const head = Buffer.alloc(Math.min(BINARY_SNIFF_BYTES, st.size));
      await fh.read(head, 0, head.length, 0);
      if (head.includes(0)) {
        throw new ToolInputError(`The file ${shown} looks binary (it contains NUL bytes); read it with code_executor instead.`);
      }
      const window = await readWindow(fh, st.size, offset, limit);
      return formatWindow(filePath, offset, st.size, window);
    } finally {
      await fh.close();
    }
  },
};

async function openChecked(real: string, shown: string, allowedDirs: readonly string[]): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    // O_NOFOLLOW: a symlink swapped in at the last component after resolveInside is refused, not followed.
    // O_NONBLOCK: a FIFO swapped in would otherwise block the open until some writer shows up.
    fh = await fs.open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    throw new ToolInputError(`The file ${shown} changed while being opened or cannot be read.`);
  }
  // O_NOFOLLOW guards only the last component; a parent directory swapped for a symlink is caught by
  // asking the kernel where the descriptor actually points (Linux procfs; skipped where absent).
  const actual = await fs.readlink(`/proc/self/fd/${fh.fd}`).catch(() => undefined);
  if (actual !== undefined && !isInside(allowedDirs, actual)) {
    await fh.close();
    throw new ToolInputError(`The file ${shown} changed while being opened and now lies outside the allowed directories.`);
  }
  return fh;
}

interface Window {
  lines: string[];
  /** Number of the first line not returned, when the file has more. */
  nextOffset?: number;
  /** Why the window stopped early: the line limit, the byte cap, or one line longer than the byte cap. */
  stop?: 'limit' | 'bytes' | 'long_line';
  /** Lines in the file, known only when the end was reached. */
  totalLines?: number;
}

async function readWindow(fh: FileHandle, size: number, offset: number, limit: number): Promise<Window> {
  const lines: string[] = [];
  let bytes = 0;
  let lineNo = 0;
  for await (const line of splitLines(fh, size)) {
    lineNo += 1;
    if (lineNo < offset) continue;
    if (lines.length === limit) return { lines, nextOffset: lineNo, stop: 'limit' };
    const cost = line.length + 1;
    if (bytes + cost > MAX_OUTPUT_BYTES) {
      if (lines.length > 0) return { lines, nextOffset: lineNo, stop: 'bytes' };
      lines.push(line.subarray(0, utf8Boundary(line, MAX_OUTPUT_BYTES)).toString('utf8'));
      return { lines, nextOffset: lineNo + 1, stop: 'long_line' };
    }
    bytes += cost;
    lines.push(line.toString('utf8'));
  }
  return { lines, totalLines: lineNo };
}

/** Yields the file's lines (without "\n") up to `size` bytes, so a file growing while read cannot exceed the scan cap. */
async function* splitLines(fh: FileHandle, size: number): AsyncGenerator<Buffer> {
  // Pieces of the current line are concatenated once, at its end: re-concatenating per chunk would
  // make one huge line cost quadratic copying.
  let pending: Buffer[] = [];
  let position = 0;
  while (position < size) {
    const chunk = Buffer.alloc(Math.min(CHUNK_BYTES, size - position));
    const { bytesRead } = await fh.read(chunk, 0, chunk.length, position);
    if (bytesRead === 0) break;
    position += bytesRead;
    const data = chunk.subarray(0, bytesRead);
    let start = 0;
    let nl = data.indexOf(0x0a);
    while (nl !== -1) {
      yield pending.length === 0 ? data.subarray(start, nl) : Buffer.concat([...pending, data.subarray(start, nl)]);
      pending = [];
      start = nl + 1;
      nl = data.indexOf(0x0a, start);
    }
    if (start < data.length) pending.push(data.subarray(start));
  }
  if (pending.length > 0) yield Buffer.concat(pending);
}

/** Cuts before a UTF-8 continuation byte so a truncated line does not end in a broken character. */
function utf8Boundary(buf: Buffer, max: number): number {
  let end = Math.min(max, buf.length);
  while (end > 0 && end < buf.length && ((buf[end] ?? 0) & 0xc0) === 0x80) end -= 1;
  return end;
}

function formatWindow(filePath: string, offset: number, size: number, w: Window) {
  const first = offset;
  const last = offset + w.lines.length - 1;
  const range = w.lines.length === 0 ? 'no lines' : `lines ${first}-${last}`;
  let footer: string;
  if (w.totalLines !== undefined) {
    if (w.totalLines === 0) {
      footer = '[empty file]';
    } else if (w.lines.length === 0) {
      throw new ToolInputError(`offset ${offset} is past the end of ${JSON.stringify(filePath)}, which has ${w.totalLines} lines.`);
    } else {
      footer = `[end of file: ${range} of ${w.totalLines}]`;
    }
  } else if (w.stop === 'limit') {
    footer = `[${range} shown; the file continues: call read_file with offset=${w.nextOffset} to read more]`;
  } else if (w.stop === 'bytes') {
    footer = `[output truncated at ${MAX_OUTPUT_BYTES / 1024} KiB: ${range} shown; call read_file with offset=${w.nextOffset} to continue]`;
  } else {
    footer =
      `[output truncated: line ${first} is longer than ${MAX_OUTPUT_BYTES / 1024} KiB and only its start is shown; ` +
      `read the whole line with code_executor, or call read_file with offset=${w.nextOffset} for the next line]`;
  }
  const body = w.lines.length === 0 ? '' : `${w.lines.join('\n')}\n`;
  return {
    output: `${body}${footer}`,
    isError: false,
    detail: {
      path: filePath,
      sizeBytes: size,
      offset,
      linesReturned: w.lines.length,
      nextOffset: w.nextOffset ?? null,
      truncated: w.stop === 'bytes' || w.stop === 'long_line',
    },
  };
}

function formatMiB(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
