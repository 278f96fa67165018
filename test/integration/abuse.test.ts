/**
 * The abuse suite: jobs whose code attacks its sandbox, under runc and under gVisor. Each case is a
 * job submitted over HTTP to a real stack; it asserts what a user sees (the steps' outputs and
 * detail, the artifacts list), that the attack was contained, that the job's containers are gone
 * when it ends, that the worker is still healthy, and that the next job runs normally.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { JobView, ToolStep } from '../../services/shared/src/job-schema';
import { workerHeartbeatKey } from '../../services/shared/src/queue';
import { LABEL } from '../../services/worker/src/sandbox/container-spec';
import { makeAllowedDir, removeAllowedDir } from '../support/allowed-dir';
import { containersWith, docker } from '../support/docker';
import { scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { request, startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

// Long enough that the honest work of a cell (10,000 files under gVisor, say) finishes on a loaded
// 2-core CI machine, where the suite's other file may be moving gigabytes at the same time.
const TIMEOUT_MS = 8000;
const MEMORY_MB = 256;
const PIDS = 64;
const TMP_MB = 16;
const OUTPUT_LIMIT_BYTES = 64 * 1024;
/** Files one execution hands back at most (sandbox-container.ts MAX_FILES). */
const MAX_FILES_PER_CALL = 20;
const MIB = 1024 * 1024;

const code = (lines: string[]): ScriptedReply => ({ toolCalls: [{ name: 'code_executor', arguments: { code: lines.join('\n') } }] });
const SUM = ['print(sum(range(101)))'];
const py = (value: string): string => JSON.stringify(value);
/** Python printing `container=<id>` of the container it runs in: runc shows it in the mount table, gVisor in the cgroup paths. */
const CONTAINER_ID = [
  'import re',
  "m = re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read()) or re.search(r'([0-9a-f]{64})', open('/proc/self/cgroup').read())",
  "print('container=' + (m.group(1) if m else 'unknown'))",
];
const toolSteps = (job: JobView): ToolStep[] => job.steps.filter((s): s is ToolStep => s.type === 'tool');

/**
 * Python that walks the whole filesystem but /proc and /sys, running `visit` (indented for the
 * loop, with `entry` an os.DirEntry) for each entry that is not a directory. It keeps its place in
 * the job's globals (`pending`, set to ["/"] before the first cell) and stops after 3 s, so the
 * same cell repeated goes on where the last one stopped: a full walk takes seconds under gVisor,
 * more than one execution's time limit here. Entry types come from the directory listing, since an
 * lstat per file is slow under gVisor. Ends by printing `report` and whether the walk is complete.
 */
const resumableWalk = (visit: string[], report: string): string[] => [
  'deadline = time.monotonic() + 3.0',
  'while pending and time.monotonic() < deadline:',
  '    try:',
  '        with os.scandir(pending.pop()) as entries:',
  '            for entry in entries:',
  '                if entry.is_dir(follow_symlinks=False):',
  '                    if entry.path not in ("/proc", "/sys"):',
  '                        pending.append(entry.path)',
  '                    continue',
  ...visit.map((line) => `                ${line}`),
  '    except OSError:',
  '        pass',
  `print(${report}, "complete", not pending)`,
];

let model: ModelServer;
const script: Record<string, ScriptedReply[]> = {};
let root: string;
let allowed: string;
let hostOnlyFile: string;
let hostServer: net.Server;
let hostPort: number;
let hostConnections = 0;

beforeAll(async () => {
  root = await makeAllowedDir('abuse');
  allowed = path.join(root, 'allowed');
  await mkdir(allowed, { mode: 0o755 });
  // mkdir's mode is masked by the umask; the sandbox user (65534) must be able to read it.
  await chmod(allowed, 0o755);
  await writeFile(path.join(allowed, 'data.txt'), 'allowed content\n');
  // A worker-side path that is not mounted into any sandbox.
  hostOnlyFile = path.join(root, 'host-only.txt');
  await writeFile(hostOnlyFile, 'HOST-ONLY-CONTENT\n');
  // A server on the host's loopback that sandboxed code must not be able to reach.
  hostServer = net.createServer((socket) => {
    hostConnections++;
    socket.end('hello from the host\n');
  });
  await new Promise<void>((resolve) => hostServer.listen(0, '127.0.0.1', resolve));
  hostPort = (hostServer.address() as net.AddressInfo).port;
  model = await startModelServer(scriptBySteps(script));
});

afterAll(async () => {
  await model?.close();
  await new Promise((resolve) => hostServer?.close(resolve));
  if (root) await removeAllowedDir(root);
});

describe.each(['runc', 'runsc'] as const)('abuse under %s', (runtime) => {
  // Unique provider keys, so a leak of this stack's secrets into a sandbox cannot go unnoticed.
  const openaiKey = `sk-abuse-openai-${randomBytes(12).toString('hex')}`;
  const anthropicKey = `sk-ant-abuse-${randomBytes(12).toString('hex')}`;
  let stack: Stack;
  let workerId: string;
  let seq = 0;

  beforeAll(async () => {
    stack = await startStack(model, {
      env: {
        SANDBOX_RUNTIME: runtime,
        SANDBOX_TIMEOUT_MS: String(TIMEOUT_MS),
        SANDBOX_MEMORY_MB: String(MEMORY_MB),
        SANDBOX_PIDS: String(PIDS),
        SANDBOX_TMP_MB: String(TMP_MB),
        SANDBOX_OUTPUT_LIMIT_KB: String(OUTPUT_LIMIT_BYTES / 1024),
        ALLOWED_DIRS: allowed,
        OPENAI_API_KEY: openaiKey,
        ANTHROPIC_API_KEY: anthropicKey,
      },
    });
    workerId = (stack.workers[0] as { workerId: string }).workerId;
  });

  afterAll(async () => {
    await stack?.close();
  });

  /** Containers of this stack's worker (the pool's and the jobs'), any state. */
  const workerContainers = () => containersWith({ [LABEL.worker]: workerId });

  /**
   * Runs a job whose model makes these code calls one after the other and then answers. Checks on
   * the way out that the job's containers are gone: only the warm pool (one running container) may
   * be left, with no more output volumes than containers.
   */
  async function runJob(name: string, cells: string[][]): Promise<{ job: JobView; tools: ToolStep[] }> {
    const task = `${runtime}: ${name}`;
    script[task] = [...cells.map(code), { text: 'done' }];
    const job = await waitForJobEnd(stack, (await submitJob(stack, { task })).id, 90_000);
    // The pool's replacement was launched when the job took its container, so it is listed by now:
    // a container of the job left behind would make two.
    await waitFor(
      async () => {
        const left = await workerContainers();
        return left.length <= 1 && left.every((c) => c.State === 'running');
      },
      // Removed right after the verdict; under gVisor a container full of processes takes seconds to go.
      { timeoutMs: 30_000, what: `the containers of job "${task}" to be removed` },
    );
    const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL.worker}=${workerId}`] } });
    expect((Volumes ?? []).length).toBeLessThanOrEqual(1);
    expect(job.status).toBe('succeeded');
    expect(job.result).toEqual({ output: 'done' });
    const tools = toolSteps(job);
    expect(tools).toHaveLength(cells.length);
    return { job, tools };
  }

  /** The worker still beats, and a next job computes normally. */
  async function expectNextJobRuns(): Promise<void> {
    const { tools } = await runJob(`next job ${++seq}`, [SUM]);
    expect(tools[0]).toMatchObject({ isError: false, exitCode: 0, timedOut: false, truncated: false });
    expect(tools[0]?.output).toContain('5050');
    expect(await stack.redis.exists(workerHeartbeatKey(stack.prefix, workerId))).toBe(1);
  }

  /** The container named by a CONTAINER_ID step no longer exists. */
  async function expectContainerGone(step: ToolStep | undefined): Promise<void> {
    const id = /container=([0-9a-f]{64})/.exec(step?.output ?? '')?.[1];
    expect(id).toBeDefined();
    await expect(docker.getContainer(id as string).inspect()).rejects.toMatchObject({ statusCode: 404 });
  }

  /** A call right after a kill runs in a fresh interpreter, and says so. */
  function expectFreshAfterKill(step: ToolStep | undefined): void {
    expect(step).toMatchObject({ isError: false, exitCode: 0, reset: true });
    expect(step?.output).toContain('5050');
    expect(step?.output).toMatch(/interpreter was restarted/);
  }

  test('a fork bomb is held by the process and memory limits, then killed; the job goes on', async () => {
    const { tools } = await runJob('fork bomb', [
      CONTAINER_ID,
      [
        'import errno, os, time',
        'kids = []',
        'try:',
        '    while len(kids) < 10000:',
        '        pid = os.fork()',
        '        if pid == 0:',
        '            time.sleep(60)',
        '            os._exit(0)',
        '        kids.append(pid)',
        'except OSError as e:',
        '    print("refused after", len(kids), errno.errorcode[e.errno])',
        'for pid in kids:',
        '    os.kill(pid, 9)',
        '    os.waitpid(pid, 0)',
      ],
      ['import os', 'while True:', '    try:', '        os.fork()', '    except OSError:', '        pass'],
      SUM,
    ]);
    const [whereami, counted, bomb, after] = tools;
    const refused = /refused after (\d+) (\w+)/.exec(counted?.output ?? '');
    if (refused) {
      expect(Number(refused[1])).toBeGreaterThan(0);
      expect(Number(refused[1])).toBeLessThan(PIDS);
      expect(refused[2]).toBe('EAGAIN');
      // Every process spins: the bomb runs until the time limit kills the container.
      expect(bomb).toMatchObject({ isError: true, timedOut: true, exitCode: -1 });
    } else {
      // Under gVisor each guest process costs the sandbox several MiB, and the memory limit can
      // stop the bomb before the process limit does: the whole sandbox is OOM-killed instead.
      expect(counted).toMatchObject({ isError: true, exitCode: -1 });
      expect(counted?.output).toMatch(/out of memory/);
      expect(bomb).toMatchObject({ isError: true, exitCode: -1 });
    }
    expect(bomb?.durationMs).toBeLessThan(TIMEOUT_MS + 10_000);
    expectFreshAfterKill(after);
    await expectContainerGone(whereami);
    await expectNextJobRuns();
  });

  test('a thread bomb is refused below the PIDs limit and the interpreter carries on', async () => {
    const { tools } = await runJob('thread bomb', [
      [
        'import threading, time',
        'started = 0',
        'try:',
        '    while started < 100000:',
        '        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()',
        '        started += 1',
        'except RuntimeError as e:',
        '    print("refused after", started, "threads:", e)',
      ],
      ['print(started, sum(range(101)))'],
    ]);
    const [bomb, after] = tools;
    const refused = /refused after (\d+) threads/.exec(bomb?.output ?? '');
    expect(refused).not.toBeNull();
    expect(Number(refused?.[1])).toBeLessThan(PIDS);
    expect(bomb).toMatchObject({ exitCode: 0, timedOut: false });
    expect(after).toMatchObject({ isError: false, exitCode: 0, reset: false });
    expect(after?.output).toContain(`${refused?.[1]} 5050`);
    await expectNextJobRuns();
  });

  test('a memory balloon past the limit fails, the model is told, and the job goes on', async () => {
    const { tools } = await runJob('memory balloon', [
      ['chunks = []', `for _ in range(${2 * MEMORY_MB}):`, '    chunks.append(b"x" * (1 << 20))', 'print("allocated", len(chunks), "MiB")'],
      SUM,
    ]);
    const [balloon, after] = tools;
    expect(balloon?.isError).toBe(true);
    expect(balloon?.output).not.toContain('allocated');
    // Not the time limit: under gVisor the OOM killer may take one of gVisor's own processes and leave
    // the sandbox idling at its limit, so the worker acts on the engine's oom event instead of waiting.
    expect(balloon?.timedOut).toBe(false);
    if (balloon?.exitCode === -1) {
      // The interpreter was OOM-killed: the model is told, and the next call starts afresh.
      expect(balloon.output).toMatch(/out of memory/);
      expectFreshAfterKill(after);
    } else {
      expect(balloon?.output).toContain('MemoryError');
      expect(after).toMatchObject({ isError: false, exitCode: 0 });
      expect(after?.output).toContain('5050');
    }
    await expectNextJobRuns();
  });

  test('a CPU spin is killed at the time limit and the model is told the interpreter was reset', async () => {
    const { tools } = await runJob('cpu spin', [['x = 1', 'while True:', '    x += 1'], SUM]);
    const [spin, after] = tools;
    expect(spin).toMatchObject({ isError: true, timedOut: true, exitCode: -1 });
    expect(spin?.output).toMatch(/time limit/);
    expect(spin?.output).toMatch(/reset/);
    expect(spin?.durationMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 100);
    expect(spin?.durationMs).toBeLessThan(TIMEOUT_MS + 10_000);
    const told = model.requests.find((r) => r.task === `${runtime}: cpu spin` && r.step === 1);
    expect(told?.toolResults[0]?.content).toMatch(/time limit/);
    expectFreshAfterKill(after);
    await expectNextJobRuns();
  });

  test('code that ignores SIGTERM, with a child that does too, is still killed at the limit', async () => {
    const marker = `abuse-sigterm-${randomBytes(6).toString('hex')}`;
    const { tools } = await runJob('ignores sigterm', [
      CONTAINER_ID,
      [
        'import signal, subprocess, sys',
        'signal.signal(signal.SIGTERM, signal.SIG_IGN)',
        'child = "import signal\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True: pass"',
        `subprocess.Popen([sys.executable, "-c", child, ${py(marker)}], start_new_session=True)`,
        'while True:',
        '    pass',
      ],
      SUM,
    ]);
    const [whereami, stubborn, after] = tools;
    expect(stubborn).toMatchObject({ isError: true, timedOut: true, exitCode: -1 });
    expect(stubborn?.durationMs).toBeLessThan(TIMEOUT_MS + 10_000);
    expectFreshAfterKill(after);
    // runJob saw the container removed; under runc its processes were host processes: none is left.
    const left: string[] = [];
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(marker)) left.push(pid);
    }
    expect(left).toEqual([]);
    await expectContainerGone(whereami);
    await expectNextJobRuns();
  });

  test('100 MB written to stdout (and 50 MB to stderr by a subprocess) is truncated with a mark', async () => {
    const rssBefore = process.memoryUsage().rss;
    const { tools } = await runJob('output flood', [
      ['import sys', 'chunk = "y" * (1 << 20)', 'for _ in range(100):', '    sys.stdout.write(chunk)'],
      ['import os', 'os.system("yes flood | head -c 50000000 >&2")', 'print("after the flood")'],
      SUM,
    ]);
    const [out, err, after] = tools;
    expect(out).toMatchObject({ exitCode: 0, timedOut: false, truncated: true });
    expect(out?.output).toMatch(/\[stdout truncated/);
    expect(out?.output.length).toBeLessThan(OUTPUT_LIMIT_BYTES + 1024);
    expect(err).toMatchObject({ exitCode: 0, timedOut: false, truncated: true });
    expect(err?.output).toContain('after the flood');
    expect(err?.output).toMatch(/\[stderr truncated/);
    expect(err?.output.length).toBeLessThan(OUTPUT_LIMIT_BYTES + 1024);
    expect(after).toMatchObject({ isError: false, exitCode: 0, reset: false });
    expect(after?.output).toContain('5050');
    // The worker held at most the capped output, not the flood.
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 * MIB);
    await expectNextJobRuns();
  });

  test('filling /tmp and the output dir stops at the cap with ENOSPC or EFBIG', async () => {
    const { job, tools } = await runJob('disk fill', [
      [
        'import errno, os',
        'def fill(d):',
        '    total = 0',
        '    chunk = b"\\0" * (1 << 20)',
        '    try:',
        `        for n in range(${4 * TMP_MB}):`,
        '            with open(f"{d}/fill-{n}", "wb") as f:',
        '                for _ in range(4):',
        '                    f.write(chunk)',
        '                    f.flush()',
        '                    total += len(chunk)',
        '    except OSError as e:',
        '        return total, errno.errorcode.get(e.errno)',
        '    return total, None',
        'for d in ("/tmp", "/output"):',
        '    total, err = fill(d)',
        '    st = os.statvfs(d)',
        '    print(d, total >> 20, err, (st.f_blocks * st.f_frsize) >> 20)',
        // The output dir is left empty, so nothing is handed back as an artifact.
        'for name in os.listdir("/output"):',
        '    os.remove("/output/" + name)',
      ],
      SUM,
    ]);
    const [fill, after] = tools;
    expect(fill).toMatchObject({ exitCode: 0, timedOut: false });
    for (const dir of ['/tmp', '/output']) {
      const line = new RegExp(`^${dir} (\\d+) (\\w+) (\\d+)$`, 'm').exec(fill?.output ?? '');
      expect(line).not.toBeNull();
      expect(Number(line?.[1])).toBeLessThanOrEqual(TMP_MB);
      expect(line?.[2]).toMatch(/^(ENOSPC|EFBIG)$/);
      expect(Number(line?.[3])).toBeLessThanOrEqual(TMP_MB);
    }
    expect(after).toMatchObject({ isError: false, exitCode: 0, reset: false });
    expect(job.artifacts).toEqual([]);
    await expectNextJobRuns();
  });

  test('there is only a loopback interface, no route, and no way to a server on the host loopback', async () => {
    const connectionsBefore = hostConnections;
    const { tools } = await runJob('network', [
      [
        'import errno, os, socket',
        'print("ifaces", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))',
        'routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]',
        'print("routes", len(routes))',
        'for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):',
        '    try:',
        `        socket.create_connection((host, ${hostPort}), timeout=2).recv(100)`,
        '        print("connect", host, "CONNECTED")',
        '    except OSError as e:',
        '        print("connect", host, "blocked", type(e).__name__)',
        'try:',
        '    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)',
        '    print("raw OPENED")',
        'except OSError as e:',
        '    print("raw blocked", errno.errorcode.get(e.errno))',
      ],
    ]);
    const output = tools[0]?.output ?? '';
    expect(tools[0]).toMatchObject({ exitCode: 0 });
    expect(output).toContain("ifaces ['lo']");
    expect(output).toContain('routes 0');
    expect(output).toMatch(/connect 127\.0\.0\.1 blocked/);
    expect(output).toMatch(/connect ::1 blocked/);
    expect(output).toMatch(/raw blocked E(PERM|ACCES)/);
    expect(output).not.toMatch(/CONNECTED|OPENED/);
    expect(hostConnections).toBe(connectionsBefore);
    await expectNextJobRuns();
  });

  test('an allowed dir can be read but not written, changed or removed', async () => {
    const before = await readdir(allowed);
    const { tools } = await runJob('write allowed dir', [
      [
        'import errno, os',
        `d = ${py(allowed)}`,
        'attempts = {',
        '    "create": lambda: open(d + "/new.txt", "w").write("x"),',
        '    "append": lambda: open(d + "/data.txt", "a").write("x"),',
        '    "chmod": lambda: os.chmod(d + "/data.txt", 0o777),',
        '    "remove": lambda: os.remove(d + "/data.txt"),',
        '    "mkdir": lambda: os.mkdir(d + "/sub"),',
        '}',
        'for what, attempt in attempts.items():',
        '    try:',
        '        attempt()',
        '        print(what, "SUCCEEDED")',
        '    except OSError as e:',
        '        print(what, errno.errorcode.get(e.errno))',
        'print("read", open(d + "/data.txt").read().strip())',
      ],
    ]);
    const output = tools[0]?.output ?? '';
    for (const what of ['create', 'append', 'chmod', 'remove', 'mkdir']) {
      expect(output).toMatch(new RegExp(`^${what} (EROFS|EACCES|EPERM)$`, 'm'));
    }
    expect(output).toContain('read allowed content');
    expect(await readdir(allowed)).toEqual(before);
    expect(await readFile(path.join(allowed, 'data.txt'), 'utf8')).toBe('allowed content\n');
    await expectNextJobRuns();
  });

  test("the worker's provider keys are nowhere in the sandbox: environment, processes or files", async () => {
    // Sent hex-encoded, so the code itself never holds a key a search could trip over.
    const needles = [openaiKey, anthropicKey].map((k) => Buffer.from(k).toString('hex'));
    // Every regular file is read in full, in chunks that overlap by a key's length.
    const scan = resumableWalk(
      [
        'if entry.is_file(follow_symlinks=False):',
        '    try:',
        '        with open(entry.path, "rb") as f:',
        '            tail = b""',
        '            while chunk := f.read(4 << 20):',
        '                if any(n in tail + chunk for n in needles):',
        '                    hits.append(entry.path)',
        '                    break',
        '                tail = chunk[-overlap:]',
        '        scanned += 1',
        '    except OSError:',
        '        pass',
      ],
      '"hits", hits, "scanned", scanned',
    );
    const { tools } = await runJob('read secrets', [
      [
        'import os, time',
        `needles = [bytes.fromhex(h) for h in ${py(needles.join(','))}.split(",")]`,
        'overlap = max(len(n) for n in needles)',
        'names = [b"OPENAI", b"ANTHROPIC", b"API_KEY", b"REDIS", b"MAESTRO"]',
        'hits = []',
        'print("environ", sorted(os.environ))',
        'for pid in [p for p in os.listdir("/proc") if p.isdigit()]:',
        '    for part in ("environ", "cmdline"):',
        '        try:',
        '            data = open(f"/proc/{pid}/{part}", "rb").read()',
        '        except OSError:',
        '            continue',
        '        if any(n in data for n in needles + (names if part == "environ" else [])):',
        '            hits.append(f"/proc/{pid}/{part}")',
        // A planted copy across a chunk boundary shows that the scan finds what it looks for.
        'with open("/tmp/planted", "wb") as f:',
        '    f.write(b"x" * ((4 << 20) - 5) + needles[0])',
        'pending, scanned = ["/"], 0',
        ...scan,
      ],
      ...Array.from({ length: 15 }, () => scan),
    ]);
    const output = tools.map((t) => t.output).join('\n');
    expect(tools.every((t) => t.exitCode === 0 && !t.timedOut)).toBe(true);
    expect(output).not.toContain(openaiKey);
    expect(output).not.toContain(anthropicKey);
    const environ = /^environ (.*)$/m.exec(output)?.[1] ?? '';
    expect(environ).not.toMatch(/API_KEY|OPENAI|ANTHROPIC|REDIS|MAESTRO|TOKEN|SECRET/);
    const last = /^hits (.*) scanned (\d+) complete True$/m.exec(output);
    expect(last?.[1]).toBe("['/tmp/planted']");
    // The image's Python, numpy, pandas and matplotlib alone are tens of thousands of files.
    expect(Number(last?.[2])).toBeGreaterThan(10_000);
    await expectNextJobRuns();
  });

  test('the code runs as a non-root user with no capabilities, no new privileges and no way to root', async () => {
    const { tools } = await runJob('identity', [
      [
        'import ctypes, errno, os, subprocess',
        'status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)',
        'print("uid", os.getuid(), os.geteuid(), os.getgid(), os.getgroups())',
        'print("id", subprocess.run(["id"], capture_output=True, text=True).stdout.strip())',
        'print("CapEff", status["CapEff"].strip(), "CapPrm", status.get("CapPrm", "0000000000000000").strip())',
        // PR_GET_NO_NEW_PRIVS: gVisor's /proc/self/status has no NoNewPrivs line.
        'print("nnp", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))',
        'try:',
        '    os.setuid(0)',
        '    print("setuid SUCCEEDED")',
        'except OSError as e:',
        '    print("setuid", errno.errorcode.get(e.errno))',
      ],
    ]);
    const output = tools[0]?.output ?? '';
    expect(output).toContain('uid 65534 65534 65534');
    expect(output).toMatch(/^id uid=65534\(\w+\) gid=65534\(\w+\)/m);
    expect(output).toContain('CapEff 0000000000000000 CapPrm 0000000000000000');
    expect(output).toContain('nnp 1');
    expect(output).toContain('setuid EPERM');
    await expectNextJobRuns();
  });

  test('there is no Docker socket, nor any other socket file, inside', async () => {
    // A socket the code binds itself shows that the walk does find sockets.
    const walk = resumableWalk(
      [
        'if not entry.is_file(follow_symlinks=False) and not entry.is_symlink():',
        '    if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):',
        '        sockets.append(entry.path)',
      ],
      '"sockets", sorted(sockets)',
    );
    const { tools } = await runJob('docker socket', [
      [
        'import os, socket, stat, time',
        'print("paths", [p for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock") if os.path.exists(p)])',
        'print("DOCKER_HOST", os.environ.get("DOCKER_HOST"))',
        'probe = socket.socket(socket.AF_UNIX)',
        'probe.bind("/tmp/probe.sock")',
        'pending, sockets = ["/"], []',
        ...walk,
      ],
      walk,
      walk,
      walk,
    ]);
    const output = tools.map((t) => t.output).join('\n');
    expect(output).toContain('paths []');
    expect(output).toContain('DOCKER_HOST None');
    expect(output).toMatch(/^sockets \['\/tmp\/probe\.sock'\] complete True$/m);
    await expectNextJobRuns();
  });

  test('mount and ptrace fail with EPERM, for pid 1 and for a process that is not a child', async () => {
    const { tools } = await runJob('mount and ptrace', [
      [
        'import ctypes, errno, os, time',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]',
        'def attempt(what, call):',
        '    ctypes.set_errno(0)',
        '    if call() == 0:',
        '        print(what, "SUCCEEDED")',
        '        return True',
        '    print(what, errno.errorcode.get(ctypes.get_errno()))',
        '    return False',
        'os.makedirs("/tmp/mnt", exist_ok=True)',
        'attempt("mount-tmpfs", lambda: libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None))',
        'attempt("remount-root", lambda: libc.mount(None, b"/", None, 32, None))', // MS_REMOUNT, read-write
        // A grandchild whose parent has exited is re-parented to pid 1: not ours to trace.
        'r, w = os.pipe()',
        'if os.fork() == 0:',
        '    pid = os.fork()',
        '    if pid == 0:',
        '        time.sleep(30)',
        '        os._exit(0)',
        '    os.write(w, str(pid).encode())',
        '    os._exit(0)',
        'os.wait()',
        'other = int(os.read(r, 32))',
        'for what, pid in (("ptrace-pid1", 1), ("ptrace-other", other)):',
        '    if attempt(what, lambda: libc.ptrace(16, pid, None, None)):',  // PTRACE_ATTACH
        '        os.waitpid(pid, 0x40000000)', // __WALL: wait for the attach stop, then let go
        '        libc.ptrace(17, pid, None, None)', // PTRACE_DETACH
        'os.kill(other, 9)',
      ],
      SUM,
    ]);
    const output = tools[0]?.output ?? '';
    expect(tools[0]).toMatchObject({ exitCode: 0 });
    for (const what of ['mount-tmpfs', 'remount-root', 'ptrace-pid1', 'ptrace-other']) {
      expect(output).toMatch(new RegExp(`^${what} EPERM$`, 'm'));
    }
    expect(tools[1]).toMatchObject({ isError: false, exitCode: 0, reset: false });
    await expectNextJobRuns();
  });

  test('symlinks, odd names and 10,000 tiny files in /output yield only clean capped artifacts', async () => {
    const { job, tools } = await runJob('artifact tricks', [
      [
        'import os',
        'os.symlink("/etc/passwd", "/output/passwd-link")',
        `os.symlink(${py(hostOnlyFile)}, "/output/worker-link")`,
        'os.symlink("/", "/output/root-link")',
        'open("/output/..x", "w").write("dots")',
        'open("/output/new\\nline.txt", "w").write("newline")',
        'os.makedirs("/output/nested/deeper")',
        'open("/output/nested/deeper/n.txt", "w").write("nested")',
        'os.makedirs("/output/burst")',
        'for i in range(10000):',
        '    open(f"/output/burst/{i}.txt", "w").write("x")',
        'print("made")',
      ],
      SUM,
    ]);
    const [tricks, after] = tools;
    expect(tricks).toMatchObject({ exitCode: 0, timedOut: false });
    expect(tricks?.output).toMatch(/passwd-link \(symbolic link\)/);
    expect(after).toMatchObject({ isError: false, exitCode: 0, reset: false });
    expect(after?.output).toContain('5050');

    expect(job.artifacts.length).toBeGreaterThan(0);
    expect(job.artifacts.length).toBeLessThanOrEqual(MAX_FILES_PER_CALL);
    for (const artifact of job.artifacts) {
      expect(artifact.name).not.toMatch(/link|[\n\\]|^\/|(^|\/)\.\.?(\/|$)/);
      const res = await request(stack, 'GET', `/v1/jobs/${job.id}/artifacts/${artifact.name.split('/').map(encodeURIComponent).join('/')}`);
      expect(res.status).toBe(200);
      expect(String(res.body)).not.toMatch(/root:x:0|HOST-ONLY/);
      expect(String(res.body).length).toBeLessThanOrEqual(6);
    }
    // Nothing landed on the worker's side under the names the sandbox chose.
    for (const name of ['..x', 'x', 'nested', 'burst', 'new\nline.txt']) {
      expect(existsSync(path.join(process.cwd(), name))).toBe(false);
      expect(existsSync(path.join(root, name))).toBe(false);
    }
    expect(await readFile(hostOnlyFile, 'utf8')).toBe('HOST-ONLY-CONTENT\n');
    await expectNextJobRuns();
  });
});
