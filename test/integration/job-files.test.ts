/**
 * Files in and out of a job: input files by multipart upload (read-only at /input in the sandbox),
 * artifacts that name their own step, downloads with ETag and Range, and DELETE, which removes all
 * of a job from Redis and disk.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { containersWith } from '../support/docker';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, startStack, waitForJobEnd, type AnyJson, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

const KEYS = { alice: 'a'.repeat(40), bob: 'b'.repeat(40) };
const as = (caller: keyof typeof KEYS): Record<string, string> => ({ authorization: `Bearer ${KEYS[caller]}` });

let model: ModelServer;
let stack: Stack;
/** Replies by task (or its first line, for a job with inputs: see scriptBySteps). */
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model, {
    env: {
      AUTH_MODE: 'api-key',
      API_KEYS: `alice:${KEYS.alice},bob:${KEYS.bob}`,
      JOB_INPUT_MAX_FILES: '3',
      JOB_INPUT_MAX_MB: '1',
    },
  });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

interface Upload {
  name: string;
  data: Buffer | string;
}

/** POST /v1/jobs as multipart/form-data, the way `curl -F job=… -F file=@…` sends it. */
async function submitWithFiles(job: unknown, files: Upload[], caller: keyof typeof KEYS = 'alice'): Promise<{ status: number; body: AnyJson }> {
  const form = new FormData();
  form.append('job', JSON.stringify(job));
  for (const f of files) form.append('file', new Blob([f.data]), f.name);
  const res = await fetch(`${stack.api.url}/v1/jobs`, { method: 'POST', headers: as(caller), body: form });
  return { status: res.status, body: (await res.json()) as AnyJson };
}

/** A multipart request built by hand (names fetch's FormData would escape, bodies cut short), sent raw. */
function rawMultipart(parts: { name: string; filename?: string; filenameStar?: string; data: string | Buffer }[], opts: { truncate?: number } = {}) {
  const boundary = `----maestro${randomBytes(8).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition =
      `form-data; name="${p.name}"` +
      (p.filename === undefined ? '' : `; filename="${p.filename}"`) +
      (p.filenameStar === undefined ? '' : `; filename*=UTF-8''${p.filenameStar}`);
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n\r\n`, 'latin1'), Buffer.from(p.data), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  let body = Buffer.concat(chunks);
  if (opts.truncate !== undefined) body = body.subarray(0, opts.truncate);
  return new Promise<{ status: number; contentType: string | undefined; body: AnyJson }>((resolve, reject) => {
    const req = httpRequest(`${stack.api.url}/v1/jobs`, {
      method: 'POST',
      headers: { ...as('alice'), 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': body.length },
    });
    req.on('response', (res) => {
      const got: Buffer[] = [];
      res.on('data', (c: Buffer) => got.push(c));
      res.on('end', () => {
        const text = Buffer.concat(got).toString('utf8');
        resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'], body: JSON.parse(text) as AnyJson });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Every file in the stack's artifact store (uploads in flight included), relative to it. */
async function storedFiles(): Promise<string[]> {
  const root = join(stack.config.ARTIFACT_DIR, stack.prefix);
  const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(root.length + 1));
}

/** Every Redis key of the stack that names job `id`. */
async function keysNaming(id: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await stack.redis.scan(cursor, 'MATCH', `${stack.prefix}:*`, 'COUNT', 1000);
    cursor = next;
    found.push(...keys.filter((k) => k.includes(id)));
  } while (cursor !== '0');
  return found;
}

async function jobKeys(): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await stack.redis.scan(cursor, 'MATCH', `${stack.prefix}:job:*`, 'COUNT', 1000);
    cursor = next;
    found.push(...keys);
  } while (cursor !== '0');
  return found.sort();
}

async function download(path: string, headers: Record<string, string> = {}, caller: keyof typeof KEYS = 'alice') {
  const res = await fetch(`${stack.api.url}${path}`, { headers: { ...as(caller), ...headers } });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

test('two code_executor calls in one model turn: each artifact names its own step', async () => {
  script['two cells in one turn'] = [
    {
      toolCalls: [
        { name: 'code_executor', arguments: { code: "open('/output/first.txt', 'w').write('one')" } },
        { name: 'code_executor', arguments: { code: "open('/output/second.txt', 'w').write('two')" } },
      ],
    },
    { text: 'both written' },
  ];
  const created = await submitWithFiles({ task: 'two cells in one turn' }, []);
  expect(created.status).toBe(202);
  const job = await waitForJobEnd(stack, created.body.id as string, 30_000, as('alice'));
  expect(job.status).toBe('succeeded');
  const steps = job.steps.map((s) => [s.index, s.type, s.type === 'tool' ? s.input : null]);
  expect(steps).toEqual([
    [0, 'model', null],
    [1, 'tool', { code: "open('/output/first.txt', 'w').write('one')" }],
    [2, 'tool', { code: "open('/output/second.txt', 'w').write('two')" }],
    [3, 'model', null],
  ]);
  expect(job.artifacts.map((a) => [a.name, a.step, a.sha256])).toEqual([
    ['first.txt', 1, sha256('one')],
    ['second.txt', 2, sha256('two')],
  ]);
});

test('a multipart job reads its CSV with pandas at /input, cannot write there, and lists its inputs and chart', async () => {
  const csv = 'city,visits\nLyon,3\nNantes,5\nLille,9\n';
  const binary = randomBytes(70_000);
  script['analyse my data'] = [
    codeCall(
      [
        'import hashlib, pandas as pd, matplotlib',
        "matplotlib.use('Agg')",
        'import matplotlib.pyplot as plt',
        "df = pd.read_csv('/input/data.csv')",
        "print('total visits', df['visits'].sum())",
        "print('blob', hashlib.sha256(open('/input/blob.bin', 'rb').read()).hexdigest())",
        "df.plot.bar(x='city', y='visits')",
        "plt.savefig('/output/chart.png')",
        'for attempt in (lambda: open("/input/data.csv", "a"), lambda: open("/input/new.txt", "w")):',
        '    try:',
        '        attempt()',
        "        print('WROTE UNDER /input')",
        '    except OSError as e:',
        "        print('refused:', e.strerror)",
      ].join('\n'),
    ),
    { text: 'Lille had the most visits.' },
  ];
  const created = await submitWithFiles({ task: 'analyse my data' }, [
    { name: 'data.csv', data: csv },
    { name: 'blob.bin', data: binary },
  ]);
  expect(created.status).toBe(202);
  expect(created.body.inputs).toEqual([
    { name: 'data.csv', size: csv.length, contentType: 'text/csv', sha256: sha256(csv) },
    { name: 'blob.bin', size: binary.length, contentType: 'application/octet-stream', sha256: sha256(binary) },
  ]);
  const job = await waitForJobEnd(stack, created.body.id as string, 60_000, as('alice'));
  expect(job.status).toBe('succeeded');

  // The model was told what it was given.
  const first = model.requests.find((r) => r.task.startsWith('analyse my data'));
  expect(first?.task).toContain(`/input/data.csv (${csv.length} bytes, text/csv)`);
  expect(first?.task).toContain(`/input/blob.bin (${binary.length} bytes, application/octet-stream)`);

  const tool = job.steps.find((s) => s.type === 'tool');
  expect(tool?.output).toContain('total visits 17');
  expect(tool?.output).toContain(`blob ${sha256(binary)}`);
  expect(tool?.output).not.toContain('WROTE UNDER /input');
  // Appending to an input is refused by its mode, creating a file by the read-only mount.
  expect(tool?.output).toContain('refused: Permission denied\nrefused: Read-only file system');

  expect(job.inputs.map((f) => f.name)).toEqual(['data.csv', 'blob.bin']);
  expect(job.artifacts).toEqual([{ name: 'chart.png', size: expect.any(Number), contentType: 'image/png', sha256: expect.any(String), step: 1 }]);
  const chart = await download(`/v1/jobs/${job.id}/artifacts/chart.png`);
  expect(chart.status).toBe(200);
  expect(sha256(chart.body)).toBe(job.artifacts[0]?.sha256);
  const input = await download(`/v1/jobs/${job.id}/inputs/blob.bin`);
  expect(input.status).toBe(200);
  expect(input.body.equals(binary)).toBe(true);
  // Another caller sees neither.
  expect((await download(`/v1/jobs/${job.id}/inputs/blob.bin`, {}, 'bob')).status).toBe(404);
  expect((await download(`/v1/jobs/${job.id}/artifacts/chart.png`, {}, 'bob')).status).toBe(404);
});

test('a Range request answers 206 with exactly those bytes; If-None-Match with the ETag answers 304', async () => {
  const data = randomBytes(5000);
  script['keep my file'] = [{ text: 'kept' }];
  const created = await submitWithFiles({ task: 'keep my file' }, [{ name: 'numbers.bin', data }]);
  expect(created.status).toBe(202);
  const path = `/v1/jobs/${created.body.id as string}/inputs/numbers.bin`;

  const whole = await download(path);
  expect(whole.status).toBe(200);
  expect(whole.headers.get('etag')).toBe(`"${sha256(data)}"`);
  expect(whole.headers.get('accept-ranges')).toBe('bytes');
  expect(whole.body.equals(data)).toBe(true);

  const part = await download(path, { range: 'bytes=100-199' });
  expect(part.status).toBe(206);
  expect(part.headers.get('content-range')).toBe('bytes 100-199/5000');
  expect(part.body.equals(data.subarray(100, 200))).toBe(true);
  const tail = await download(path, { range: 'bytes=-10' });
  expect(tail.status).toBe(206);
  expect(tail.body.equals(data.subarray(4990))).toBe(true);
  const past = await download(path, { range: 'bytes=5000-' });
  expect(past.status).toBe(416);
  expect(past.headers.get('content-range')).toBe('bytes */5000');
  // A range for an older copy (If-Range with another ETag) gets the whole, current file.
  const stale = await download(path, { range: 'bytes=0-9', 'if-range': '"0000"' });
  expect(stale.status).toBe(200);
  expect(stale.body.length).toBe(5000);

  const cached = await download(path, { 'if-none-match': `"${sha256(data)}"` });
  expect(cached.status).toBe(304);
  expect(cached.body.length).toBe(0);
  expect((await download(path, { 'if-none-match': '"something-else"' })).status).toBe(200);
});

test('bad uploads get a 4xx problem and leave nothing stored, on disk or in Redis', async () => {
  script['never runs'] = [{ text: 'no' }];
  const job = JSON.stringify({ task: 'never runs' });
  const before = { files: await storedFiles(), keys: await jobKeys() };
  const cases: [string, Promise<{ status: number; contentType?: string; body: AnyJson }>, number, RegExp][] = [
    ['too many files', rawMultipart([{ name: 'job', data: job }, ...[1, 2, 3, 4].map((n) => ({ name: 'file', filename: `f${n}.txt`, data: 'x' }))]), 413, /JOB_INPUT_MAX_FILES/],
    ['too large', rawMultipart([{ name: 'job', data: job }, { name: 'file', filename: 'big.bin', data: randomBytes(1024 * 1024 + 1) }]), 413, /JOB_INPUT_MAX_MB/],
    ['a parent path', rawMultipart([{ name: 'job', data: job }, { name: 'file', filename: '../x', data: 'x' }]), 400, /name/],
    // A raw NUL is not allowed in a header at all; percent-encoded (RFC 5987), it reaches the name check.
    ['a NUL', rawMultipart([{ name: 'job', data: job }, { name: 'file', filename: 'a\u0000b', data: 'x' }]), 400, /malformed/],
    ['an encoded NUL', rawMultipart([{ name: 'job', data: job }, { name: 'file', filenameStar: 'a%00b', data: 'x' }]), 400, /control characters/],
    ['an encoded newline', rawMultipart([{ name: 'job', data: job }, { name: 'file', filenameStar: 'a%0Ab', data: 'x' }]), 400, /control characters/],
    ['300 bytes', rawMultipart([{ name: 'job', data: job }, { name: 'file', filename: 'n'.repeat(300), data: 'x' }]), 400, /255 bytes/],
    ['no job part', rawMultipart([{ name: 'file', filename: 'data.csv', data: 'a,b\n' }]), 400, /job/],
    ['a job part that fails validation', rawMultipart([{ name: 'job', data: JSON.stringify({ task: '' }) }, { name: 'file', filename: 'data.csv', data: 'a,b\n' }]), 400, /task/],
    ['a job part that is not JSON', rawMultipart([{ name: 'job', data: '{"task":' }, { name: 'file', filename: 'data.csv', data: 'a,b\n' }]), 400, /job/],
    ['files without code_executor', rawMultipart([{ name: 'job', data: JSON.stringify({ task: 'x', tools: ['read_file'] }) }, { name: 'file', filename: 'data.csv', data: 'a,b\n' }]), 400, /code_executor/],
    ['a truncated body', rawMultipart([{ name: 'job', data: job }, { name: 'file', filename: 'data.csv', data: randomBytes(50_000) }], { truncate: 30_000 }), 400, /./],
  ];
  for (const [what, pending, status, detail] of cases) {
    const res = await pending;
    expect({ what, status: res.status, type: res.contentType }).toEqual({ what, status, type: 'application/problem+json; charset=utf-8' });
    expect({ what, detail: res.body.detail as string }).toEqual({ what, detail: expect.stringMatching(detail) });
  }
  expect(await storedFiles()).toEqual(before.files);
  expect(await jobKeys()).toEqual(before.keys);
});

test('DELETE cancels a running job and removes all of it; another caller gets 404; a second DELETE is 404', async () => {
  script['delete me while I run'] = [
    codeCall("open('/output/partial.txt', 'w').write('partial')"),
    codeCall('import time; time.sleep(60)'),
    { text: 'never reached' },
  ];
  const created = await submitWithFiles({ task: 'delete me while I run' }, [{ name: 'in.txt', data: 'input' }]);
  expect(created.status).toBe(202);
  const id = created.body.id as string;
  await waitFor(async () => (await getJob(stack, id, as('alice'))).steps.length >= 3, { timeoutMs: 30_000, what: 'the second cell to start' });
  expect((await storedFiles()).filter((f) => f.includes(id))).toHaveLength(2); // the input and the artifact
  expect(await containersWith({ 'maestro.job': id })).not.toEqual([]);

  const bobs = await fetch(`${stack.api.url}/v1/jobs/${id}`, { method: 'DELETE', headers: as('bob') });
  expect(bobs.status).toBe(404);
  expect(bobs.headers.get('content-type')).toMatch(/problem\+json/);
  expect((await getJob(stack, id, as('alice'))).status).toBe('running');

  const deleted = await fetch(`${stack.api.url}/v1/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
  expect(deleted.status).toBe(204);
  expect(await deleted.text()).toBe('');
  expect((await fetch(`${stack.api.url}/v1/jobs/${id}`, { headers: as('alice') })).status).toBe(404);
  expect((await download(`/v1/jobs/${id}/inputs/in.txt`)).status).toBe(404);
  expect((await fetch(`${stack.api.url}/v1/jobs/${id}`, { method: 'DELETE', headers: as('alice') })).status).toBe(404);

  // The worker stops the job (its sandbox goes) and BullMQ lets go of it: nothing names the job any more.
  await waitFor(async () => (await containersWith({ 'maestro.job': id })).length === 0, { timeoutMs: 10_000, what: 'the sandbox to go' });
  await waitFor(async () => (await keysNaming(id)).length === 0, { timeoutMs: 10_000, what: 'every key of the job to go' });
  expect((await storedFiles()).filter((f) => f.includes(id))).toEqual([]);
  const list = await fetch(`${stack.api.url}/v1/jobs`, { headers: as('alice') });
  expect(((await list.json()) as AnyJson).jobs.map((j: AnyJson) => j.id)).not.toContain(id);
  expect(await stack.redis.get(`${stack.prefix}:caller:alice:stored-bytes`)).not.toBe(null);
});

test('deleting a finished job gives its bytes back to its caller', async () => {
  script['store then delete'] = [codeCall("open('/output/big.bin', 'wb').write(b'x' * 300000)"), { text: 'stored' }];
  const storedKey = `${stack.prefix}:caller:alice:stored-bytes`;
  const before = Number(await stack.redis.get(storedKey));
  const created = await submitWithFiles({ task: 'store then delete' }, [{ name: 'in.txt', data: 'y'.repeat(1000) }]);
  const job = await waitForJobEnd(stack, created.body.id as string, 30_000, as('alice'));
  expect(job.artifacts.map((a) => a.size)).toEqual([300_000]);
  expect(Number(await stack.redis.get(storedKey))).toBe(before + 301_000);
  const deleted = await fetch(`${stack.api.url}/v1/jobs/${job.id}`, { method: 'DELETE', headers: as('alice') });
  expect(deleted.status).toBe(204);
  expect(Number(await stack.redis.get(storedKey))).toBe(before);
  // BullMQ lets go of the job once the worker has removed its container, right after the verdict.
  await waitFor(async () => (await keysNaming(job.id)).length === 0, { timeoutMs: 10_000, what: 'every key of the job to go' });
});
