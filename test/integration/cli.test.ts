/**
 * The `maestro` CLI (client/src/cli.ts), spawned as a user would run it, against a real stack: `run`
 * shows the steps and the answer, exits 0 on success and 1 with the error code on failure; `--json`
 * prints the job, `--file` uploads an input, `--out` saves the artifacts; the other commands, and
 * one-line errors with their exit codes.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Job, JobSummary } from '../../client/src';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, startStack, type Stack } from '../support/stack';

const ROOT = join(__dirname, '..', '..');
const CLI = join(ROOT, 'client', 'src', 'cli.ts');
/** tsx's loader, by its path: the CLI runs in a directory of its own, where `--import tsx` finds nothing. */
const TSX = pathToFileURL(require.resolve('tsx')).href;

let model: ModelServer;
let stack: Stack;
let dir: string;
/** Replies by task (or its first line, for a job with inputs: see scriptBySteps). */
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, { env: { PROVIDER_MAX_RETRIES: '0' } });
  dir = await mkdtemp(join(tmpdir(), 'maestro-cli-'));
});
afterAll(async () => {
  // Undefined when beforeAll failed part way.
  await (stack as Stack | undefined)?.close();
  await (model as ModelServer | undefined)?.close();
  if ((dir as string | undefined) !== undefined) await rm(dir, { recursive: true, force: true });
});

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `maestro args…` to its end, stdout and stderr pipes (so: no TTY, plain output). */
function maestro(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX, CLI, ...args], {
      cwd: dir,
      env: { ...process.env, MAESTRO_URL: stack.api.url, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 50_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => {
        resolve(port);
      });
    });
  });

test('maestro run shows the code, its output and the answer, plainly when stdout is not a terminal, and exits 0', async () => {
  script['cli sum'] = [codeCall('total = sum(range(101))\nprint(total)'), { text: 'The sum is 5050.' }];
  const ran = await maestro(['run', 'cli sum']);
  expect(ran.stderr).toBe('');
  expect(ran.code).toBe(0);
  const lines = ran.stdout.split('\n');
  expect(lines[0]).toMatch(/^job [0-9a-z]{26} \(openai\//);
  expect(ran.stdout).toContain('│ total = sum(range(101))\n');
  expect(ran.stdout).toContain('│ print(total)\n');
  expect(ran.stdout).toMatch(/\n {2}5050\n {2}✓ exit 0 · \d+ ms\n/);
  expect(ran.stdout.trimEnd().split('\n').at(-1)).toBe('The sum is 5050.');
  // Plain: no spinner, no colour, no cursor movement.
  expect(ran.stdout).not.toContain('\x1b');
});

test('a job that fails exits 1 and prints its error code', async () => {
  script['cli fail'] = [{ status: 400, errorMessage: 'the model refuses' }];
  const ran = await maestro(['run', 'cli fail']);
  expect(ran.code).toBe(1);
  const match = /^maestro: job ([0-9a-z]{26}) failed: (\w+): /m.exec(ran.stderr);
  expect(match).not.toBeNull();
  const job = await getJob(stack, match?.[1] as string);
  expect(job.status).toBe('failed');
  expect(match?.[2]).toBe(job.error?.code);
});

test('--json prints only the job; --file uploads an input the job lists', async () => {
  script['cli file'] = [codeCall("print(open('/input/data.csv').read(), end='')"), { text: 'read the file' }];
  await writeFile(join(dir, 'data.csv'), 'x,y\n1,2\n');
  const ran = await maestro(['run', 'cli file', '--file', 'data.csv', '--json']);
  expect(ran.code).toBe(0);
  const job = JSON.parse(ran.stdout) as Job;
  expect(job.status).toBe('succeeded');
  expect(job.inputs).toEqual([expect.objectContaining({ name: 'data.csv', size: 8, contentType: 'text/csv' })]);
  expect(job.steps.find((s) => s.type === 'tool')?.output).toContain('x,y\n1,2');
  expect(job.result).toEqual({ output: 'read the file' });

  const got = await maestro(['get', job.id, '--json']);
  expect(got.code).toBe(0);
  expect((JSON.parse(got.stdout) as Job).steps).toEqual(job.steps);
  const shown = await maestro(['get', job.id]);
  expect(shown.stdout).toContain(`${job.id}  succeeded (completed)`);
  expect(shown.stdout).toContain('read the file');

  const listed = await maestro(['list', '--status', 'succeeded', '--limit', '1', '--json']);
  expect((JSON.parse(listed.stdout) as JobSummary[]).map((j) => j.id)).toEqual([job.id]);
  const table = await maestro(['list', '--limit', '2']);
  expect(table.stdout.split('\n')[0]).toMatch(new RegExp(`^${job.id}  succeeded`));

  const missing = await maestro(['run', 'cli file', '--file', 'no-such.csv']);
  expect(missing.code).toBe(2);
  expect(missing.stderr).toBe('maestro: cannot read --file no-such.csv: ENOENT\n');
});

test('--out saves the artifacts, byte for byte; `maestro artifacts` lists and downloads them', async () => {
  script['cli out'] = [codeCall("open('/output/a.txt', 'wb').write(bytes(range(256)))\nprint('saved')"), { text: 'wrote a.txt' }];
  const ran = await maestro(['run', 'cli out', '--out', 'out']);
  expect(ran.code).toBe(0);
  expect(ran.stdout).toMatch(/artifacts\n {2}a\.txt {2}256 B, text\/plain → out\/a\.txt\n/);
  const expected = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  expect(await readFile(join(dir, 'out', 'a.txt'))).toEqual(expected);

  const id = (/^job ([0-9a-z]{26})/.exec(ran.stdout) as RegExpExecArray)[1] as string;
  const again = await maestro(['artifacts', id, '--out', 'again']);
  expect(again.code).toBe(0);
  expect(again.stdout).toContain('a.txt');
  expect(await readFile(join(dir, 'again', 'a.txt'))).toEqual(expected);

  const deleted = await maestro(['delete', id]);
  expect(deleted).toEqual({ code: 0, stdout: `${id} deleted\n`, stderr: '' });
});

test('errors are one line with an exit code: 404, no API, bad usage, a job that cannot be cancelled', async () => {
  const missing = await maestro(['get', '01jzzzzzzzzzzzzzzzzzzzzzzz']);
  expect(missing).toEqual({ code: 3, stdout: '', stderr: 'maestro: not_found (HTTP 404): No such job.\n' });

  const url = `http://127.0.0.1:${await freePort()}`;
  const refused = await maestro(['list'], { MAESTRO_URL: url });
  expect(refused.code).toBe(3);
  expect(refused.stderr).toMatch(new RegExp(`^maestro: connection_refused: cannot reach ${url} \\(ECONNREFUSED\\)[^\\n]*\\n$`));

  const usage = await maestro(['run']);
  expect(usage.code).toBe(2);
  expect(usage.stderr).toContain("missing required argument 'task'");
  const badNumber = await maestro(['run', 'x', '--max-steps', 'many']);
  expect(badNumber.code).toBe(2);

  script['cli done'] = [{ text: 'done' }];
  const done = JSON.parse((await maestro(['run', 'cli done', '--json'])).stdout) as Job;
  const cancel = await maestro(['cancel', done.id]);
  expect(cancel.code).toBe(3);
  expect(cancel.stderr).toMatch(/^maestro: job_finished \(HTTP 409\): /);
});
