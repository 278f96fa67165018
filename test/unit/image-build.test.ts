import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { contextFiles, contextHash, followBuild } from '../../services/worker/src/sandbox/image-build';

describe('the sandbox image build context', () => {
  let dir = '';
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'maestro-image-build-'));
    await writeFile(path.join(dir, 'Dockerfile'), 'FROM scratch\n');
    await writeFile(path.join(dir, 'runner.py'), 'print(1)\n');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('lists every file, nested ones by their relative path, sorted', async () => {
    await mkdir(path.join(dir, 'lib'));
    await writeFile(path.join(dir, 'lib', 'a.py'), '');
    expect(await contextFiles(dir)).toEqual(['Dockerfile', 'lib/a.py', 'runner.py']);
  });

  test('hashes to the same value for the same files and args, and to another when either changes', async () => {
    const files = await contextFiles(dir);
    const base = await contextHash(dir, files, {});
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    expect(await contextHash(dir, files, {})).toBe(base);
    const withArg = await contextHash(dir, files, { DEBIAN_IMAGE: 'local/debian:bookworm-slim' });
    expect(withArg).not.toBe(base);
    await writeFile(path.join(dir, 'runner.py'), 'print(2)\n');
    expect(await contextHash(dir, files, {})).not.toBe(base);
  });
});

describe('following the engine build stream', () => {
  function stream(messages: string[]): PassThrough {
    const s = new PassThrough();
    // Split mid-message, as the engine's chunks are.
    const all = messages.join('\n') + '\n';
    const cut = Math.floor(all.length / 2);
    setImmediate(() => {
      s.write(all.slice(0, cut));
      s.end(all.slice(cut));
    });
    return s;
  }

  test('prints the stream lines and resolves with the image id', async () => {
    const lines: string[] = [];
    const id = await followBuild(
      stream([
        JSON.stringify({ stream: 'Step 1/2 : FROM scratch\n' }),
        JSON.stringify({ stream: ' ---> Using cache\n ---> abc\n' }),
        JSON.stringify({ aux: { ID: 'sha256:abc' } }),
        JSON.stringify({ stream: 'Successfully built abc\n' }),
      ]),
      (line) => lines.push(line),
    );
    expect(id).toBe('sha256:abc');
    expect(lines).toEqual(['Step 1/2 : FROM scratch', ' ---> Using cache', ' ---> abc', 'Successfully built abc']);
  });

  test("rejects with the engine's error message", async () => {
    const lines: string[] = [];
    const done = followBuild(
      stream([
        JSON.stringify({ stream: 'Step 2/4 : RUN false\n' }),
        JSON.stringify({ errorDetail: { code: 1, message: "The command '/bin/sh -c false' returned a non-zero code: 1" }, error: "The command '/bin/sh -c false' returned a non-zero code: 1" }),
      ]),
      (line) => lines.push(line),
    );
    await expect(done).rejects.toThrow("The command '/bin/sh -c false' returned a non-zero code: 1");
    expect(lines).toEqual(['Step 2/4 : RUN false']);
  });
});
