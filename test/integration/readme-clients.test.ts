/**
 * The README's examples for the client, the CLI, webhooks and MCP run as written, against a real
 * stack and the scripted model: the TypeScript snippet as a program of its own, each `maestro`
 * command line through the CLI, the webhook verification function on a real signature, and the MCP
 * client configuration as JSON.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { signWebhook, webhookSecretKey } from '../../services/shared/src/webhooks';
import { codeBlocks, shellWords } from '../support/doc-examples';
import { codeCall, startModelServer, type ModelServer } from '../support/model-server';
import { startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const ROOT = resolve(__dirname, '..', '..');
const README_PATH = join(ROOT, 'README.md');
/** What the scripted model does for any task: one cell that saves a chart, then the answer. */
const CHART = "open('/output/chart.png', 'wb').write(b'\\x89PNG fake chart')\nprint('sum', sum(range(1, 101)))";
const ANSWER = 'The sum is 5050.';

let readme: string;
let model: ModelServer;
let stack: Stack;
let dir: string;

beforeAll(async () => {
  readme = await readFile(README_PATH, 'utf8');
  model = await startModelServer((req) => (req.task.startsWith('hang') ? { hang: true } : req.step === 0 ? codeCall(CHART) : { text: ANSWER }));
  stack = await startStack(model);
  dir = await mkdtemp(join(tmpdir(), 'maestro-readme-'));
  await writeFile(join(dir, 'sales.csv'), 'region,sales\nnorth,10\nsouth,20\n');
}, 60_000);

afterAll(async () => {
  model?.releaseHanging?.();
  await stack?.close();
  await model?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const TSX = join(ROOT, 'node_modules', '.bin', 'tsx');

/** Runs a TypeScript program (tsx) to its end in the example directory; its output and exit code. */
function run(argv: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(TSX, argv, { cwd: dir, env: { ...process.env, MAESTRO_URL: stack.api.url, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', fail);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

test('the client example runs as written', async () => {
  const [snippet] = codeBlocks(readme, '## Client and CLI', 'ts');
  expect(snippet).toContain("from 'maestro/client'");
  // The package's own export, before a build, is its source; the API is the test stack's.
  const program = (snippet as string)
    .replace("from 'maestro/client'", `from ${JSON.stringify(join(ROOT, 'client', 'src', 'index.ts'))}`)
    .replaceAll('http://127.0.0.1:3000', stack.api.url);
  await writeFile(join(dir, 'example.mts'), program);
  const { code, stdout, stderr } = await run(['example.mts']);
  expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
  expect(stdout).toContain('sum 5050');
  expect(stdout).toContain(`succeeded ${ANSWER}`);
}, 90_000);

test('every maestro command line of the README runs as written', async () => {
  const [block] = codeBlocks(readme, '## Client and CLI', 'sh');
  const lines = (block as string).split('\n').filter((l) => l.startsWith('maestro '));
  expect(lines.length).toBeGreaterThanOrEqual(8);
  // The documented id stands for a job of one's own: a finished one, or (for cancel) a running one.
  const finished = await waitForJobEnd(stack, (await submitJob(stack, { task: 'for the README commands' })).id);
  const running = await submitJob(stack, { task: 'hang until cancelled' });
  await waitFor(async () => (await waitForRunning(running.id)) === 'running', { timeoutMs: 20_000, what: 'the job to start' });
  for (const line of lines) {
    const words = shellWords(line.replace(/\s+#\s.*$/, ''));
    const id = words[1] === 'cancel' ? running.id : finished.id;
    const argv = words.slice(1).map((w) => (w === '01m8b1gydeygx5jbeyqk9wz5y2' ? id : w));
    const { code, stdout, stderr } = await run([join(ROOT, 'client', 'src', 'cli.ts'), ...argv]);
    expect({ line, code, stderr: code === 0 ? '' : stderr }).toEqual({ line, code: 0, stderr: '' });
    if (argv.includes('--json')) expect(() => JSON.parse(stdout) as unknown).not.toThrow();
    if (argv[0] === 'run' && !argv.includes('--json')) expect(stdout).toContain(ANSWER);
  }
  // `--out charts/` saved the chart, byte for byte.
  expect(await readFile(join(dir, 'charts', 'chart.png'))).toEqual(Buffer.from('\x89PNG fake chart', 'latin1'));
  expect((await waitForJobEnd(stack, running.id)).status).toBe('cancelled');
}, 240_000);

async function waitForRunning(id: string): Promise<string> {
  const res = await fetch(`${stack.api.url}/v1/jobs/${id}`);
  return ((await res.json()) as { status: string }).status;
}

test('the webhook verification function accepts a real signature and refuses a forged one or an old one', () => {
  const [js] = codeBlocks(readme, '### Webhooks', 'js');
  const verify = new Function('require', `${js as string}\nreturn verify;`)(require) as (secret: string, headers: Record<string, string>, body: string) => boolean;
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const body = JSON.stringify({ type: 'job.succeeded', data: { id: 'x' } });
  const headers = signWebhook(webhookSecretKey(secret) as Buffer, 'msg_x', Math.floor(Date.now() / 1000), body);
  expect(verify(secret, headers, body)).toBe(true);
  expect(verify(secret, headers, body.replace('succeeded', 'failed'))).toBe(false);
  expect(verify(`whsec_${randomBytes(32).toString('base64')}`, headers, body)).toBe(false);
  const old = signWebhook(webhookSecretKey(secret) as Buffer, 'msg_x', Math.floor(Date.now() / 1000) - 3600, body);
  expect(verify(secret, old, body)).toBe(false);
});

test('the MCP client configuration is JSON naming the /mcp endpoint and its credentials', () => {
  const [json] = codeBlocks(readme, '### MCP — `/mcp`', 'json');
  const config = JSON.parse(json as string) as { mcpServers: Record<string, { type: string; url: string; headers: Record<string, string> }> };
  expect(config.mcpServers.maestro).toEqual({ type: 'http', url: 'http://127.0.0.1:3000/mcp', headers: { Authorization: 'Bearer <key>' } });
});
