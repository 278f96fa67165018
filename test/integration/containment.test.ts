/**
 * What a cell can reach and what outlives it, under runc and gVisor, each case a job over HTTP:
 * the files handed back are only regular files under /output that the sandbox user could read
 * itself, whatever the code does to the runner; and every process a cell starts ends with it.
 */
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { JobView, ToolStep } from '../../services/shared/src/job-schema';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

const SECRET = `ROOT-ONLY-${process.pid}-SECRET`;
const PASSWD_MARK = 'root:x:0:0';

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};
let allowed: string;

beforeAll(async () => {
  allowed = await mkdtemp(path.join('/var/tmp', 'maestro-containment-'));
  await chmod(allowed, 0o755);
  // Owned by root (the test runs as root) and unreadable to the sandbox user.
  await writeFile(path.join(allowed, 'secret.txt'), SECRET, { mode: 0o600 });
  await writeFile(path.join(allowed, 'public.txt'), 'public\n', { mode: 0o644 });
  model = await startModelServer(scriptBySteps(script));
});

afterAll(async () => {
  await model?.close();
  if (allowed) await rm(allowed, { recursive: true, force: true });
});

const toolSteps = (job: JobView): ToolStep[] => job.steps.filter((s): s is ToolStep => s.type === 'tool');
const py = (value: string): string => JSON.stringify(value);

describe.each(['runc', 'runsc'] as const)('containment under %s', (runtime) => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(model, { env: { SANDBOX_RUNTIME: runtime, ALLOWED_DIRS: allowed, SANDBOX_TIMEOUT_MS: '10000' } });
  });
  afterAll(async () => {
    await stack?.close();
  });

  async function runJob(name: string, cells: string[][]): Promise<{ job: JobView; tools: ToolStep[] }> {
    const task = `${runtime}: ${name}`;
    script[task] = [...cells.map((lines) => codeCall(lines.join('\n'))), { text: 'done' }];
    const job = await waitForJobEnd(stack, (await submitJob(stack, { task })).id, 90_000);
    expect(job.status).toBe('succeeded');
    const tools = toolSteps(job);
    expect(tools).toHaveLength(cells.length);
    return { job, tools };
  }

  /** Every byte the job can hand out: its artifacts, downloaded, and the text of its steps. */
  async function everythingServed(job: JobView): Promise<string> {
    const parts = [JSON.stringify(job)];
    for (const artifact of job.artifacts) {
      const res = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/${artifact.name.split('/').map(encodeURIComponent).join('/')}`);
      parts.push(Buffer.from(await res.arrayBuffer()).toString('latin1'));
    }
    return parts.join('\n');
  }

  test('symlinked directories and a forged report hand back neither /etc/shadow nor a root-only file of an allowed dir', async () => {
    const { job, tools } = await runJob('forged report', [
      [
        'import os, sys',
        "os.symlink('/etc', '/output/d')",
        `os.symlink(${py(allowed)}, '/output/a')`,
        "print('readable:', os.access('/etc/shadow', os.R_OK), os.access('/output/a/secret.txt', os.R_OK))",
        // The runner is this process's __main__: make its report name files through the links.
        "runner = sys.modules['__main__']",
        "runner.OutputWatcher.scan = lambda self: (['d/shadow', 'a/secret.txt', 'a/public.txt'], [])",
      ],
      [
        // Worse: replace the safe open with one that follows links. It still runs as the sandbox user.
        'import os',
        'def naive_open(root_fd, rel):',
        "    fd = os.open('/output/' + rel, os.O_RDONLY)",
        '    return fd, os.fstat(fd)',
        'runner.open_beneath = naive_open',
        "print('patched')",
      ],
      ['print(sum(range(101)))'],
    ]);
    const [links, patched, after] = tools;
    expect(links?.output).toContain('readable: False False');
    expect(links?.output).toMatch(/files not saved: .*d\/shadow/);
    expect(patched?.output).toMatch(/files not saved: .*d\/shadow/);
    expect(after?.output).toContain('5050');
    // The only bytes that could come back are what the sandbox user may read: the public file.
    for (const artifact of job.artifacts) expect(['a/public.txt']).toContain(artifact.name);
    const served = await everythingServed(job);
    expect(served).not.toContain(SECRET);
    expect(served).not.toMatch(/^root:[^:\n]*:\d+:/m);
  });

  test('a symlink, a hard link, a FIFO and a 1 TB sparse file are refused, and regular files still come back', async () => {
    const { job, tools } = await runJob('odd files', [
      [
        'import errno, os',
        "os.symlink('/etc/passwd', '/output/link.txt')",
        'try:',
        `    os.link(${py(path.join(allowed, 'secret.txt'))}, '/output/hard.txt')`,
        "    print('hard link made')",
        'except OSError as e:',
        "    print('hard link refused', errno.errorcode[e.errno])",
        "os.mkfifo('/output/pipe')",
        'try:',
        "    with open('/output/sparse.bin', 'wb') as f:",
        '        f.truncate(1 << 40)',
        "    print('sparse file made')",
        'except OSError as e:',
        "    print('sparse file refused', errno.errorcode[e.errno])",
        "open('/output/ok.txt', 'w').write('fine')",
      ],
      ['print(sum(range(101)))'],
    ]);
    const [odd, after] = tools;
    expect(odd?.output).toMatch(/files not saved: .*link\.txt \(symbolic link\)/);
    expect(odd?.output).toMatch(/pipe \(not a regular file\)/);
    if (odd?.output.includes('sparse file made')) expect(odd.output).toMatch(/sparse\.bin \(larger than/);
    expect(after?.output).toContain('5050');
    // A refused truncate still leaves the empty file it opened: an ordinary, empty regular file.
    const artifacts = job.artifacts.filter((a) => !(a.name === 'sparse.bin' && a.size === 0));
    expect(artifacts.map((a) => a.name)).toEqual(['ok.txt']);
    const served = await everythingServed(job);
    expect(served).not.toContain(SECRET);
    expect(served).not.toContain(PASSWD_MARK);
  });

  test('a file swapped for a symlink while it is handed back never yields the link target', async () => {
    const regular = 'regular content';
    const swapCells = Array.from({ length: 6 }, () => ['import time', 'time.sleep(0.05)', "print('tick')"]);
    const { job, tools } = await runJob('swap race', [
      [
        'import os, threading',
        'def swap():',
        '    while True:',
        "        os.symlink('/etc/passwd', '/output/race.link')",
        "        os.replace('/output/race.link', '/output/race')",
        "        with open('/output/race.file', 'w') as f:",
        `            f.write(${py(regular)})`,
        "        os.replace('/output/race.file', '/output/race')",
        // A thread of the runner's own process outlives the cell and races the hand-back.
        'threading.Thread(target=swap, daemon=True).start()',
        "print('swapping')",
      ],
      ...swapCells,
    ]);
    expect(tools.every((t) => !t.isError)).toBe(true);
    for (const step of tools) {
      for (const artifact of (step.artifacts ?? []) as { name: string; size: number }[]) {
        // The regular file may be caught half written, never as the link's target.
        if (artifact.name.startsWith('race')) expect(artifact.size).toBeLessThanOrEqual(regular.length);
      }
    }
    expect(await everythingServed(job)).not.toContain(PASSWD_MARK);
  });

  test('background processes end with their cell, whatever they do, and the interpreter keeps its globals', async () => {
    const listOthers = [
      'import os',
      'others = []',
      "for name in os.listdir('/proc'):",
      '    if name.isdigit() and int(name) not in (1, os.getpid()):',
      '        try:',
      "            state = open('/proc/%s/stat' % name).read().rsplit(')', 1)[1].split()[0]",
      "            cmd = open('/proc/%s/cmdline' % name, 'rb').read().replace(b'\\0', b' ').decode()",
      '        except (OSError, IndexError):',
      '            continue',
      "        if state != 'Z':",
      '            others.append(cmd)',
      "print('others:', others, 'x:', x)",
    ];
    const { tools } = await runJob('background processes', [
      [
        'import os, signal, subprocess, time',
        'x = 41',
        "subprocess.Popen(['sleep', '300'], start_new_session=True)",
        // The shell forks a loop into the background and exits: the loop is orphaned to init.
        "subprocess.Popen(['sh', '-c', '(while true; do sleep 1; done) & exit 0'])",
        'if os.fork() == 0:',
        '    signal.signal(signal.SIGTERM, signal.SIG_IGN)',
        '    os.setsid()',
        '    time.sleep(300)',
        '    os._exit(0)',
        'time.sleep(0.5)',
        "print('started')",
      ],
      listOthers,
      ["subprocess.Popen(['sleep', '300'])", 'x += 1', "raise RuntimeError('after starting a process')"],
      listOthers,
    ]);
    const [start, firstCheck, raised, secondCheck] = tools;
    expect(start?.output).toContain('started');
    expect(start?.output).toMatch(/background processes left running by this code were stopped/);
    expect(start?.stoppedProcesses).toBeGreaterThanOrEqual(3);
    expect(firstCheck?.output).toContain('others: [] x: 41');
    expect(raised?.isError).toBe(true);
    expect(raised?.stoppedProcesses).toBe(1);
    expect(secondCheck?.output).toContain('others: [] x: 42');
    expect(secondCheck?.reset).toBe(false);
  });

  test('the API and the worker stay healthy after the attacks', async () => {
    const health = await request(stack, 'GET', '/readyz');
    expect(health.status).toBe(200);
  });
});
