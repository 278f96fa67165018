import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { createLogger } from '../../services/shared/src/logger';
import { ALL_TOOLS, runToolCall, toolSpecs } from '../../services/worker/src/tools/registry';
import type { Tool, ToolContext, ToolOutcome } from '../../services/worker/src/tools/tool';

let root: string;
let data: string;
let ctx: ToolContext;

beforeAll(async () => {
  root = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'maestro-file-tools-')));
  data = path.join(root, 'data');
  await fs.mkdir(path.join(data, 'sub'), { recursive: true });
  await fs.writeFile(path.join(data, 'lines.txt'), Array.from({ length: 10 }, (_, i) => `line ${i + 1}`).join('\n') + '\n');
  await fs.writeFile(path.join(data, 'image.bin'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x01, 0x02]));
  await fs.writeFile(path.join(data, 'empty.txt'), '');
  await fs.mkdir(path.join(root, 'outside'));
  await fs.writeFile(path.join(root, 'outside', 'secret.txt'), 'top secret\n');
  await fs.symlink(path.join(root, 'outside'), path.join(data, 'escape'));
  ctx = {
    jobId: 'job-test',
    signal: new AbortController().signal,
    logger: createLogger({ level: 'silent', service: 'test' }),
    sandbox: {
      run: () => Promise.reject(new Error('the file tools must not use the sandbox')),
      close: () => Promise.resolve(),
    },
    // Real paths, as validateAllowedDirs hands them over (root went through realpath).
    allowedDirs: [data],
    execTimeoutMs: 30_000,
    stepIndex: 1,
    artifacts: { save: () => Promise.reject(new Error('the file tools save no artifacts')) },
  };
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

function call(name: string, args: unknown): Promise<ToolOutcome> {
  return runToolCall([...ALL_TOOLS], { name, arguments: JSON.stringify(args) }, ctx);
}

describe('read_file', () => {
  test('returns the content of a text file and says the end was reached', async () => {
    const out = await call('read_file', { path: path.join(data, 'lines.txt') });
    expect(out.isError).toBe(false);
    expect(out.output).toBe(`${Array.from({ length: 10 }, (_, i) => `line ${i + 1}`).join('\n')}\n[end of file: lines 1-10 of 10]`);
  });

  test('returns the window of lines chosen by offset and limit and names the offset to continue from', async () => {
    const out = await call('read_file', { path: path.join(data, 'lines.txt'), offset: 3, limit: 2 });
    expect(out.output).toBe('line 3\nline 4\n[lines 3-4 shown; the file continues: call read_file with offset=5 to read more]');
    expect(out.detail).toMatchObject({ nextOffset: 5, linesReturned: 2, truncated: false });
  });

  test('an offset past the end is an error the model sees', async () => {
    const out = await call('read_file', { path: path.join(data, 'lines.txt'), offset: 50 });
    expect(out).toMatchObject({ isError: true });
    expect(out.output).toMatch(/offset 50 is past the end .* which has 10 lines/);
  });

  test('an empty file is reported as empty', async () => {
    const out = await call('read_file', { path: path.join(data, 'empty.txt') });
    expect(out).toEqual(expect.objectContaining({ isError: false, output: '[empty file]' }));
  });

  test('output past the byte cap is cut at a line with a visible mark naming the next offset', async () => {
    const big = path.join(data, 'big.txt');
    const line = 'x'.repeat(1023);
    await fs.writeFile(big, `${line}\n`.repeat(300));
    const out = await call('read_file', { path: big });
    expect(out.output).toMatch(/\[output truncated at 256 KiB: lines 1-256 shown; call read_file with offset=257 to continue\]$/);
    expect(out.detail).toMatchObject({ truncated: true, nextOffset: 257, linesReturned: 256 });
    const next = await call('read_file', { path: big, offset: 257 });
    expect(next.output).toMatch(/\[end of file: lines 257-300 of 300\]$/);
  });

  test('a single line longer than the byte cap is cut with a mark', async () => {
    const long = path.join(data, 'long.txt');
    await fs.writeFile(long, `a${'é'.repeat(200 * 1024)}\nafter\n`);
    const out = await call('read_file', { path: long });
    expect(out.output).toMatch(/\[output truncated: line 1 is longer than 256 KiB .* offset=2 for the next line\]$/);
    expect(out.output).not.toContain('\uFFFD');
    expect(out.detail).toMatchObject({ truncated: true });
  });

  test('a binary file is refused with a clear message', async () => {
    const out = await call('read_file', { path: path.join(data, 'image.bin') });
    expect(out.isError).toBe(true);
    expect(out.output).toMatch(/looks binary/);
  });

  test('a file over the 50 MiB scan cap is refused', async () => {
    const huge = path.join(data, 'huge.log');
    await fs.writeFile(huge, 'text\n');
    await fs.truncate(huge, 51 * 1024 * 1024);
    const out = await call('read_file', { path: huge });
    expect(out).toMatchObject({ isError: true, output: expect.stringMatching(/is 51\.0 MiB, over the 50 MiB read_file limit/) });
  });

  test('a directory is refused and list_files is suggested', async () => {
    const out = await call('read_file', { path: path.join(data, 'sub') });
    expect(out.isError).toBe(true);
    expect(out.output).toMatch(/is a directory; use list_files/);
  });

  test('a file reached through a symlink that leaves the allowed dir is refused', async () => {
    const out = await call('read_file', { path: path.join(data, 'escape', 'secret.txt') });
    expect(out.isError).toBe(true);
    expect(out.output).toMatch(/outside the allowed directories/);
    expect(out.output).not.toContain('top secret');
  });
});

describe('list_files', () => {
  test('lists entries sorted with their types and sizes and marks symlinks without following them', async () => {
    const dir = path.join(root, 'listing');
    await fs.mkdir(path.join(dir, 'b-dir'), { recursive: true });
    await fs.writeFile(path.join(dir, 'a.txt'), '12345');
    await fs.symlink(path.join(root, 'outside'), path.join(dir, 'c-link'));
    const local = { ...ctx, allowedDirs: [dir] };
    const out = await runToolCall([...ALL_TOOLS], { name: 'list_files', arguments: JSON.stringify({ path: dir }) }, local);
    expect(out.isError).toBe(false);
    const lines = out.output.split('\n');
    expect(lines[0]).toBe(`${dir} (3 entries)`);
    expect(lines[2]).toMatch(/^file\s+5 {2}a\.txt$/);
    expect(lines[3]).toMatch(/^dir\s+- {2}b-dir\/$/);
    expect(lines[4]).toMatch(/^symlink\s+\d+ {2}c-link \(symlink, not followed\)$/);
    expect(out.output).not.toContain('secret.txt');
    expect(out.output).not.toContain(path.join(root, 'outside'));
  });

  test('a directory outside is refused with the allowed dirs named', async () => {
    const out = await call('list_files', { path: root });
    expect(out.isError).toBe(true);
    expect(out.output).toContain(`outside the allowed directories. Allowed directories: ${data}.`);
  });

  test('more than 1000 entries are capped with a note of how many were omitted', async () => {
    const dir = path.join(data, 'many');
    await fs.mkdir(dir);
    await Promise.all(Array.from({ length: 1005 }, (_, i) => fs.writeFile(path.join(dir, `f${String(i).padStart(4, '0')}`), '')));
    const out = await call('list_files', { path: dir });
    expect(out.output).toMatch(/\[5 more entries omitted: only the first 1000 are listed\]$/);
    expect(out.output).toContain('f0999');
    expect(out.output).not.toContain('f1000');
    expect(out.detail).toMatchObject({ entries: 1005, omitted: 5 });
  });

  test('a file given as the directory is refused', async () => {
    const out = await call('list_files', { path: path.join(data, 'lines.txt') });
    expect(out).toMatchObject({ isError: true, output: expect.stringMatching(/is not a directory/) });
  });
});

describe('registry', () => {
  test('an unknown tool becomes an error result listing the available tools', async () => {
    const out = await call('delete_files', { path: '/' });
    expect(out).toEqual({ isError: true, output: 'Unknown tool "delete_files". Available tools: code_executor, list_files, read_file.' });
  });

  test('malformed JSON arguments become an error result', async () => {
    const out = await runToolCall([...ALL_TOOLS], { name: 'read_file', arguments: '{"path": ' }, ctx);
    expect(out.isError).toBe(true);
    expect(out.output).toMatch(/^The arguments for read_file are not valid JSON \(.+\)\. Send a JSON object\.$/);
  });

  test('arguments that are not an object become an error result', async () => {
    const out = await runToolCall([...ALL_TOOLS], { name: 'read_file', arguments: '["/data"]' }, ctx);
    expect(out).toEqual({ isError: true, output: 'The arguments for read_file must be a JSON object, got an array.' });
  });

  test('a field of the wrong type becomes an error result naming the field', async () => {
    const out = await call('read_file', { path: path.join(data, 'lines.txt'), offset: '3' });
    expect(out.isError).toBe(true);
    expect(out.output).toMatch(/^Invalid arguments for read_file: field "offset": .*expected number/);
  });

  test('a missing field becomes an error result saying it is required', async () => {
    const out = await call('list_files', {});
    expect(out).toEqual({ isError: true, output: 'Invalid arguments for list_files: field "path" is required (string).' });
  });

  test('an unknown field becomes an error result naming it', async () => {
    const out = await call('read_file', { path: path.join(data, 'lines.txt'), lines: 5 });
    expect(out).toEqual({ isError: true, output: 'Invalid arguments for read_file: unknown field "lines".' });
  });

  test('errors that are not the model\'s fault propagate', async () => {
    const failing: Tool = {
      name: 'boom',
      description: 'fails like infrastructure does',
      input: z.strictObject({}),
      run: () => Promise.reject(new Error('redis is down')),
    };
    await expect(runToolCall([failing], { name: 'boom', arguments: '{}' }, ctx)).rejects.toThrow('redis is down');
  });

  test('toolSpecs are JSON Schema objects with properties and required fields and no $schema', () => {
    const specs = toolSpecs([...ALL_TOOLS]);
    expect(specs.map((s) => s.name)).toEqual(['code_executor', 'list_files', 'read_file']);
    for (const spec of specs) {
      expect(spec.description.length).toBeGreaterThan(50);
      expect(spec.inputSchema).toMatchObject({ type: 'object', properties: expect.any(Object), required: expect.any(Array) });
      expect(spec.inputSchema).not.toHaveProperty('$schema');
    }
    const readFile = specs.find((s) => s.name === 'read_file');
    expect(readFile?.inputSchema.required).toEqual(['path']);
    expect(Object.keys(readFile?.inputSchema.properties as object)).toEqual(['path', 'offset', 'limit']);
    expect(specs.find((s) => s.name === 'code_executor')?.inputSchema.required).toEqual(['code']);
  });
});
