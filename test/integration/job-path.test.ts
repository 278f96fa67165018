/**
 * The whole job path on real parts: HTTP API → BullMQ on Redis → worker → the real OpenAI and
 * Anthropic SDKs talking to the scripted model server → Python in a real sandbox container.
 */
import { createServer, type Server } from 'node:net';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ToolStep } from '../../services/shared/src/job-schema';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { CONTAINER_ID_CODE, docker } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { waitFor } from '../support/wait-for';
import { startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

const done = (text: string): ScriptedReply => ({ text });

let model: ModelServer;
let stack: Stack;
let root: string;
let allowed: string;
let hostServer: Server;
let hostPort: number;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  root = await makeAllowedDir('files');
  allowed = join(root, 'data');
  await mkdir(allowed);
  await mkdir(join(root, 'data-evil'));
  await writeFile(join(allowed, 'notes.txt'), 'first line\nsecret-free content\n');
  await writeFile(join(root, 'data-evil', 'loot.txt'), 'should never be read\n');
  await writeFile(join(root, 'outside.txt'), 'OUTSIDE-CONTENT\n');
  await symlink('/etc/passwd', join(allowed, 'passwd-link'));
  // A server on the host's loopback that sandboxed code must not be able to reach.
  hostServer = createServer((s) => s.end('hello from the host\n'));
  await new Promise<void>((r) => hostServer.listen(0, '127.0.0.1', r));
  hostPort = (hostServer.address() as { port: number }).port;

  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, { env: { ALLOWED_DIRS: allowed, SANDBOX_TIMEOUT_MS: '3000' } });
});

afterAll(async () => {
  await stack?.close();
  await model?.close();
  await new Promise((r) => hostServer?.close(r));
  if (root) await removeAllowedDir(root);
});

const toolSteps = (steps: { type: string }[]): ToolStep[] => steps.filter((s): s is ToolStep => s.type === 'tool');

describe.each(['openai', 'anthropic'] as const)('with %s', (provider) => {
  test('a job whose model runs code succeeds with the model step, the tool output, the answer and usage', async () => {
    const task = `sum with ${provider}`;
    script[task] = [codeCall('print(sum(range(101)))'), done('The sum is 5050.')];
    const job = await waitForJobEnd(stack, (await submitJob(stack, { task, provider })).id);

    expect(job.status).toBe('succeeded');
    expect(job.stopReason).toBe('completed');
    expect(job.provider).toBe(provider);
    expect(job.result).toEqual({ output: 'The sum is 5050.' });
    const [first, tool, last] = job.steps;
    expect(first).toMatchObject({ index: 0, type: 'model', toolCalls: [{ name: 'code_executor' }] });
    expect(tool).toMatchObject({ index: 1, type: 'tool', name: 'code_executor', isError: false, exitCode: 0, timedOut: false });
    expect((tool as ToolStep).output).toContain('5050');
    expect(last).toMatchObject({ index: 2, type: 'model', text: 'The sum is 5050.' });
    expect(job.usage).toEqual({ inputTokens: 20, outputTokens: 10 });
    expect(job.attempts).toBe(1);
  });
});

test('two code_executor calls in one job share interpreter state', async () => {
  script['notebook state'] = [codeCall('x = 41'), codeCall('print(x + 1)'), done('42')];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'notebook state' })).id);
  expect(job.status).toBe('succeeded');
  const [, second] = toolSteps(job.steps);
  expect(second?.output).toContain('42');
  expect(second?.isError).toBe(false);
});

test('two jobs never share a container, and no container of a job remains after it ends', async () => {
  // Docker bind-mounts /etc/hostname from the container's own directory, whose name is its id.
  const hostnameCode = codeCall(CONTAINER_ID_CODE);
  script['whoami one'] = [hostnameCode, done('one')];
  script['whoami two'] = [hostnameCode, done('two')];
  const [a, b] = await Promise.all([submitJob(stack, { task: 'whoami one' }), submitJob(stack, { task: 'whoami two' })]);
  const jobs = await Promise.all([waitForJobEnd(stack, a.id), waitForJobEnd(stack, b.id)]);
  const containers = jobs.map((job) => /container=(\w+)/.exec(toolSteps(job.steps)[0]?.output ?? '')?.[1]);
  expect(containers[0]).toMatch(/^[0-9a-f]{64}$/);
  expect(containers[1]).toMatch(/^[0-9a-f]{64}$/);
  expect(containers[0]).not.toBe(containers[1]);
  // The verdict is recorded first and the container removed right after (the reaper is the backstop).
  for (const id of containers) {
    await waitFor(
      () => docker.getContainer(id as string).inspect().then(() => false, (e: { statusCode?: number }) => e.statusCode === 404),
      { timeoutMs: 5000, what: `container ${id} to be removed` },
    );
  }
});

test('an unknown tool and malformed arguments become error results and the job goes on', async () => {
  script['clumsy model'] = [
    { toolCalls: [{ name: 'launch_rockets', arguments: {} }] },
    { toolCalls: [{ name: 'code_executor', arguments: '{"code": "print(1)"' }] },
    { toolCalls: [{ name: 'code_executor', arguments: { source: 'print(1)' } }] },
    done('recovered'),
  ];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'clumsy model' })).id);
  expect(job.status).toBe('succeeded');
  const tools = toolSteps(job.steps);
  expect(tools).toHaveLength(3);
  expect(tools.every((t) => t.isError)).toBe(true);
  expect(tools[0]?.output).toMatch(/Unknown tool "launch_rockets"/);
  expect(tools[1]?.output).toMatch(/not valid JSON/);
  expect(tools[2]?.output).toMatch(/code/);
  // The model was shown each error.
  const seen = model.requests.filter((r) => r.task === 'clumsy model').flatMap((r) => r.toolResults.map((t) => t.content));
  expect(seen.join('\n')).toMatch(/launch_rockets/);
});

test('a model that never stops calling tools makes exactly maxSteps calls and fails with max_steps, unretried', async () => {
  script['endless tools'] = [codeCall('print("again")')];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'endless tools', maxSteps: 3 })).id);
  expect(job.status).toBe('failed');
  expect(job.stopReason).toBe('max_steps');
  expect(job.error?.code).toBe('max_steps');
  expect(job.attempts).toBe(1);
  expect(model.requests.filter((r) => r.task === 'endless tools')).toHaveLength(3);
  expect(job.steps.filter((s) => s.type === 'model')).toHaveLength(3);
});

test('code that loops forever is killed at the time limit, the model is told, and the job goes on', async () => {
  script['forever'] = [codeCall('while True: pass'), codeCall('print("alive again")'), done('survived')];
  const started = Date.now();
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'forever' })).id);
  expect(job.status).toBe('succeeded');
  const [killed, after] = toolSteps(job.steps);
  expect(killed).toMatchObject({ isError: true, timedOut: true });
  expect(killed?.output).toMatch(/timed out|time limit/i);
  expect(killed?.output).toMatch(/reset|state/i);
  expect(after?.output).toContain('alive again');
  expect(Date.now() - started).toBeLessThan(20_000);
  const told = model.requests.find((r) => r.task === 'forever' && r.step === 1);
  expect(told?.toolResults[0]?.content).toMatch(/time/i);
});

test('code that opens a network connection fails inside the container', async () => {
  script['phone home'] = [
    codeCall(
      [
        'import socket',
        'try:',
        `    socket.create_connection(("127.0.0.1", ${hostPort}), timeout=2).recv(100)`,
        '    print("CONNECTED")',
        'except OSError as e:',
        '    print("BLOCKED", type(e).__name__)',
        'import os',
        'print("ifaces", sorted(os.listdir("/sys/class/net")))',
      ].join('\n'),
    ),
    done('no network'),
  ];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'phone home' })).id);
  const output = toolSteps(job.steps)[0]?.output ?? '';
  expect(output).toContain('BLOCKED');
  expect(output).not.toContain('CONNECTED');
  expect(output).toContain("ifaces ['lo']");
});

test('read_file works inside an allowed dir and refuses escapes, outside symlinks, other paths and prefix siblings', async () => {
  const read = (path: string) => ({ name: 'read_file', arguments: { path } });
  script['file tour'] = [
    {
      toolCalls: [
        read(join(allowed, 'notes.txt')),
        read(`${allowed}/../outside.txt`),
        read(join(allowed, 'passwd-link')),
        read('/etc/passwd'),
        read(join(root, 'data-evil', 'loot.txt')),
      ],
    },
    done('toured'),
  ];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'file tour' })).id);
  expect(job.status).toBe('succeeded');
  const [inside, dotdot, link, elsewhere, sibling] = toolSteps(job.steps);
  expect(inside).toMatchObject({ isError: false });
  expect(inside?.output).toContain('secret-free content');
  for (const refused of [dotdot, link, elsewhere, sibling]) {
    expect(refused?.isError).toBe(true);
    expect(refused?.output).not.toMatch(/OUTSIDE-CONTENT|should never be read|root:x:0/);
  }
});
