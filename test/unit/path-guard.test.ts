import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resolveInside } from '../../services/worker/src/tools/path-guard';
import { ToolInputError } from '../../services/worker/src/tools/tool';

let root: string;
let data: string;
let allowed: string[];

beforeAll(async () => {
  root = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'maestro-path-guard-')));
  data = path.join(root, 'data');
  await fs.mkdir(path.join(data, 'sub'), { recursive: true });
  await fs.writeFile(path.join(data, 'notes.txt'), 'hello\n');
  await fs.writeFile(path.join(data, 'sub', 'inner.txt'), 'inner\n');
  await fs.mkdir(path.join(root, 'data-evil'));
  await fs.writeFile(path.join(root, 'data-evil', 'secret.txt'), 'secret\n');
  await fs.mkdir(path.join(root, 'outside'));
  await fs.writeFile(path.join(root, 'outside', 'secret.txt'), 'secret\n');
  await fs.symlink(path.join(root, 'outside', 'secret.txt'), path.join(data, 'escape-link'));
  await fs.symlink(path.join(data, 'sub', 'inner.txt'), path.join(data, 'inner-link'));
  await fs.symlink(data, path.join(root, 'data-link'));
  // Real paths, as validateAllowedDirs hands them over (root went through realpath).
  allowed = [data];
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function refusal(input: unknown, dirs: string[] = allowed): Promise<string> {
  const err: unknown = await resolveInside(dirs, input).then(
    () => new Error('expected the path to be refused'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ToolInputError);
  return (err as ToolInputError).message;
}

test('a file inside an allowed dir resolves to its real path', async () => {
  await expect(resolveInside(allowed, path.join(data, 'notes.txt'))).resolves.toBe(path.join(data, 'notes.txt'));
});

test('the allowed dir itself is admitted', async () => {
  await expect(resolveInside(allowed, data, { mustBe: 'dir' })).resolves.toBe(data);
});

test('a ../ escape is refused even when it would land inside', async () => {
  expect(await refusal(path.join(data, 'sub') + '/../../outside/secret.txt')).toMatch(/"\.\." segment/);
  expect(await refusal(`${data}/sub/../notes.txt`)).toMatch(/"\.\." segment/);
});

test('a symlink inside that points outside is refused without revealing its target', async () => {
  const message = await refusal(path.join(data, 'escape-link'));
  expect(message).toMatch(/outside the allowed directories/);
  expect(message).not.toContain(path.join(root, 'outside'));
});

test('a symlink inside that points inside is allowed and resolved', async () => {
  await expect(resolveInside(allowed, path.join(data, 'inner-link'))).resolves.toBe(path.join(data, 'sub', 'inner.txt'));
});

test('an absolute path elsewhere such as /etc/passwd is refused and the allowed dirs are named', async () => {
  const message = await refusal('/etc/passwd');
  expect(message).toMatch(/outside the allowed directories/);
  expect(message).toContain(`Allowed directories: ${data}`);
});

test('a sibling dir sharing the allowed prefix is refused', async () => {
  expect(await refusal(path.join(root, 'data-evil', 'secret.txt'))).toMatch(/outside the allowed directories/);
  expect(await refusal(path.join(root, 'data-evil'))).toMatch(/outside the allowed directories/);
});

test('the parent of an allowed dir is refused', async () => {
  expect(await refusal(root)).toMatch(/outside the allowed directories/);
  expect(await refusal('/')).toMatch(/outside the allowed directories/);
});

test('a missing path inside says it does not exist', async () => {
  expect(await refusal(path.join(data, 'nope.txt'))).toMatch(/does not exist/);
});

test('a missing path outside is refused as outside, so existence elsewhere cannot be probed', async () => {
  expect(await refusal(path.join(root, 'outside', 'nope.txt'))).toMatch(/outside the allowed directories/);
  expect(await refusal(path.join(data, 'escape-link', 'nope'))).toMatch(/outside the allowed directories/);
});

test('a path with a NUL byte is refused', async () => {
  expect(await refusal(`${data}/notes.txt\0.png`)).toMatch(/NUL byte/);
});

test('a relative path is refused', async () => {
  expect(await refusal('notes.txt')).toMatch(/relative/);
});

test('a 5000-character path is refused', async () => {
  expect(await refusal(`${data}/${'a'.repeat(5000)}`)).toMatch(/longer than 4096 bytes/);
});

test('a non-string path is refused', async () => {
  expect(await refusal(42)).toMatch(/must be a string, got a number/);
  expect(await refusal(null)).toMatch(/must be a string, got null/);
  expect(await refusal(['/data'])).toMatch(/must be a string, got an array/);
});

test('an empty path is refused', async () => {
  expect(await refusal('')).toMatch(/empty/);
});

test('every path is refused when no directories are shared', async () => {
  expect(await refusal(path.join(data, 'notes.txt'), [])).toMatch(/No directories are shared/);
});

test('mustBe distinguishes files from directories', async () => {
  await expect(resolveInside(allowed, path.join(data, 'sub'), { mustBe: 'file' })).rejects.toThrow(/is a directory/);
  await expect(resolveInside(allowed, path.join(data, 'notes.txt'), { mustBe: 'dir' })).rejects.toThrow(/not a directory/);
});

test('a path through a symlink to an allowed dir resolves to the real file', async () => {
  await expect(resolveInside(allowed, path.join(root, 'data-link', 'notes.txt'))).resolves.toBe(path.join(data, 'notes.txt'));
});
