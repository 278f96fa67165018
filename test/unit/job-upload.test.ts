import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { discardUpload, readJobUpload, type UploadedFile, type UploadLimits } from '../../services/api/src/job-upload';
import { AppError, ValidationError } from '../../services/shared/src/errors';
import { waitFor } from '../support/wait-for';

const LIMITS: UploadLimits = { maxFiles: 3, maxTotalBytes: 1 << 20, maxJobBytes: 4096 };
const JOB = { task: 'Sum the second column.' };
const BOUNDARY = 'maestro-test-boundary';

interface Answer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

let root: string;
/** Not created up front: readJobUpload makes it. */
let tempDir: string;
let server: Server;
let url: string;
let port: number;
/** What readJobUpload did with the latest request, for tests whose client never sees an answer. */
let lastOutcome: Promise<unknown> = Promise.resolve();

beforeAll(async () => {
  root = await mkdtemp('/var/tmp/maestro-job-upload-');
  tempDir = join(root, 'uploads');
  server = createServer((req, res) => {
    const answer = (status: number, body: unknown): void => {
      // Not writeHead: it would send the headers before the length is known, and sendAllThenRead wants it.
      res.statusCode = status;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(body));
    };
    const outcome = readJobUpload(req, { limits: LIMITS, tempDir });
    lastOutcome = outcome;
    outcome.then(
      (result) => answer(200, result),
      (err: unknown) => {
        if (err instanceof ValidationError) answer(400, { code: err.code, detail: err.detail, errors: err.errors });
        else if (err instanceof AppError) answer(err.status, { code: err.code, detail: err.detail });
        else answer(500, { code: 'internal', detail: String(err) });
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
  url = `http://127.0.0.1:${port}/`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await rm(root, { recursive: true, force: true });
});

/** The temp files left behind; a refused upload must leave none. */
async function leftovers(): Promise<string[]> {
  return readdir(tempDir).catch(() => []);
}

async function postForm(form: FormData): Promise<Answer> {
  const res = await fetch(url, { method: 'POST', body: form });
  return { status: res.status, body: await res.json() };
}

function jobForm(job: unknown = JOB): FormData {
  const form = new FormData();
  form.append('job', JSON.stringify(job));
  return form;
}

const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

/** One part of a hand-built multipart body: its Content-Disposition parameters as sent, raw. */
function part(disposition: string, body: string | Buffer, contentType?: string): Buffer {
  const head = `--${BOUNDARY}\r\nContent-Disposition: form-data; ${disposition}\r\n${contentType ? `Content-Type: ${contentType}\r\n` : ''}\r\n`;
  return Buffer.concat([Buffer.from(head, 'utf8'), Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8'), Buffer.from('\r\n')]);
}

const jobPart = (job: unknown = JOB): Buffer => part('name="job"', JSON.stringify(job));
const closing = Buffer.from(`--${BOUNDARY}--\r\n`);

/** A hand-built body, for what FormData cannot say: raw control characters, `../`, truncation. */
function rawPost(body: Buffer, contentType = `multipart/form-data; boundary=${BOUNDARY}`): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path: '/', agent: false, headers: { 'content-type': contentType, 'content-length': body.length } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * A client that sends its whole request before it reads a byte of the answer, as Python's http.client
 * does: the socket is paused before it connects, so an answer that arrives early waits in the kernel,
 * where a reset from the server would destroy it.
 */
function sendAllThenRead(body: Buffer, connection: 'keep-alive' | 'close'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.pause();
    socket.on('error', reject);
    const head =
      `POST / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: ${connection}\r\n` +
      `Content-Type: multipart/form-data; boundary=${BOUNDARY}\r\nContent-Length: ${body.length}\r\n\r\n`;
    socket.write(head);
    socket.write(body, (err) => {
      if (err) return;
      let received = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        const end = received.indexOf('\r\n\r\n');
        if (end === -1) return;
        const headers = received.subarray(0, end).toString('latin1');
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(headers)?.[1]);
        if (received.length < end + 4 + length) return;
        socket.destroy();
        resolve({ status: Number(headers.split(' ')[1]), body: JSON.parse(received.subarray(end + 4, end + 4 + length).toString('utf8')) });
      });
      socket.resume();
    });
  });
}

describe('readJobUpload accepts', () => {
  test('the job as a plain form field, with no input files', async () => {
    const answer = await postForm(jobForm());
    expect(answer).toEqual({ status: 200, body: { job: JOB, files: [] } });
  });

  test('the job as a field with its own Content-Type, as curl -F "job=…;type=application/json" sends it', async () => {
    const answer = await rawPost(Buffer.concat([part('name="job"', JSON.stringify(JOB), 'application/json'), closing]));
    expect(answer).toEqual({ status: 200, body: { job: JOB, files: [] } });
  });

  test('the job as a file part, as curl -F job=@job.json sends it, even with a byte order mark', async () => {
    const form = new FormData();
    form.append('job', new Blob([`\ufeff${JSON.stringify(JOB)}`], { type: 'application/json' }), 'job.json');
    const answer = await postForm(form);
    expect(answer).toEqual({ status: 200, body: { job: JOB, files: [] } });
  });

  test('a CSV and a binary file, stored with their sizes and SHA-256 digests', async () => {
    const csv = Buffer.from('name,amount\nalice,3\nbob,4\n');
    const binary = randomBytes(300_000);
    const form = jobForm();
    form.append('files', new Blob([csv], { type: 'text/csv' }), 'sales.csv');
    // The client's part Content-Type is not believed: the type comes from the extension.
    form.append('files', new Blob([binary], { type: 'text/plain' }), 'blob.bin');
    const answer = await postForm(form);
    expect(answer.status).toBe(200);
    const files = answer.body.files as UploadedFile[];
    expect(files.map(({ path: _path, ...rest }) => rest)).toEqual([
      { name: 'sales.csv', size: csv.length, sha256: sha256(csv), contentType: 'text/csv' },
      { name: 'blob.bin', size: binary.length, sha256: sha256(binary), contentType: 'application/octet-stream' },
    ]);
    for (const [file, bytes] of [[files[0], csv], [files[1], binary]] as const) {
      expect(file?.path.startsWith(`${tempDir}/`)).toBe(true);
      // Buffer.equals: jest's toEqual walks a 300 kB buffer byte by byte, for seconds.
      expect((await readFile(file?.path ?? '')).equals(bytes)).toBe(true);
      expect((await stat(file?.path ?? '')).mode & 0o777).toBe(0o644);
    }
    await discardUpload(files);
    expect(await leftovers()).toEqual([]);
  });

  test('file names as sent, non-ASCII ones included', async () => {
    const form = jobForm();
    form.append('files', new Blob(['a']), 'café.csv');
    form.append('files', new Blob(['b']), 'данные 2024.txt');
    const answer = await postForm(form);
    expect(answer.status).toBe(200);
    expect((answer.body.files as UploadedFile[]).map((f) => f.name)).toEqual(['café.csv', 'данные 2024.txt']);
    await discardUpload(answer.body.files as UploadedFile[]);
  });

  test('as many files as allowed, totalling exactly the byte limit, and a job of exactly its limit', async () => {
    const job = { task: '' };
    job.task = 'x'.repeat(LIMITS.maxJobBytes - JSON.stringify(job).length);
    const form = jobForm(job);
    const sizes = [LIMITS.maxTotalBytes - 2, 1, 1];
    sizes.forEach((size, i) => form.append('files', new Blob([Buffer.alloc(size, i)]), `part-${i}.bin`));
    const answer = await postForm(form);
    expect(answer.status).toBe(200);
    expect((answer.body.files as UploadedFile[]).map((f) => f.size)).toEqual(sizes);
    await discardUpload(answer.body.files as UploadedFile[]);
  });
});

describe('discardUpload', () => {
  test('ignores files that are already gone', async () => {
    await expect(discardUpload([{ name: 'x', size: 0, sha256: '', contentType: 'text/plain', path: join(root, 'never-written') }])).resolves.toBeUndefined();
  });
});

describe('readJobUpload refuses, leaving no temp file behind,', () => {
  afterEach(async () => {
    expect(await leftovers()).toEqual([]);
  });

  test('more files than JOB_INPUT_MAX_FILES allows (413)', async () => {
    const form = jobForm();
    for (let i = 0; i <= LIMITS.maxFiles; i++) form.append('files', new Blob([`file ${i}`]), `f${i}.txt`);
    const answer = await postForm(form);
    expect(answer.status).toBe(413);
    expect(answer.body.code).toBe('too_many_files');
    expect(answer.body.detail).toContain(`at most ${LIMITS.maxFiles} input files (JOB_INPUT_MAX_FILES)`);
  });

  test('files that together pass JOB_INPUT_MAX_MB (413)', async () => {
    const form = jobForm();
    form.append('files', new Blob([Buffer.alloc(LIMITS.maxTotalBytes / 2)]), 'a.bin');
    form.append('files', new Blob([Buffer.alloc(LIMITS.maxTotalBytes / 2 + 1)]), 'b.bin');
    const answer = await postForm(form);
    expect(answer.status).toBe(413);
    expect(answer.body.code).toBe('inputs_too_large');
    expect(answer.body.detail).toContain(`1 MB (${LIMITS.maxTotalBytes} bytes), the limit JOB_INPUT_MAX_MB sets`);
  });

  test('an upload 20 MiB over the limit, and fetch gets the 413', async () => {
    const form = jobForm();
    form.append('files', new Blob([Buffer.alloc(LIMITS.maxTotalBytes + (20 << 20))]), 'huge.bin');
    const answer = await postForm(form);
    expect(answer.status).toBe(413);
    expect(answer.body.code).toBe('inputs_too_large');
  });

  test.each(['keep-alive', 'close'] as const)(
    'an upload 20 MiB over the limit from a client that reads only after sending it all (Connection: %s)',
    async (connection) => {
      const body = Buffer.concat([jobPart(), part('name="files"; filename="huge.bin"', Buffer.alloc(LIMITS.maxTotalBytes + (20 << 20))), closing]);
      const answer = await sendAllThenRead(body, connection);
      expect(answer.status).toBe(413);
      expect(answer.body.code).toBe('inputs_too_large');
    },
  );

  test.each([
    ['a parent-directory path', 'filename="../x"', '"../x"', 'without / or \\'],
    ['a path with a directory', 'filename="a/b"', '"a/b"', 'without / or \\'],
    ['a Windows path', 'filename="a\\\\b"', '"a\\\\b"', 'without / or \\'],
    ['a hidden name', 'filename=".hidden"', '".hidden"', 'must not start with a dot'],
    ['the name ..', 'filename=".."', '".."', 'must not start with a dot'],
    ['a 300-byte name', `filename="${'n'.repeat(296)}.csv"`, 'nnnn', 'at most 255 bytes'],
    ['a raw tab', 'filename="a\tb.txt"', '"a\\tb.txt"', 'control characters'],
    ['a NUL, percent-encoded', "filename*=UTF-8''a%00b.txt", '"a\\u0000b.txt"', 'control characters'],
    ['a newline, percent-encoded', "filename*=UTF-8''a%0Ab.txt", '"a\\nb.txt"', 'control characters'],
    ['a C1 control character', "filename*=UTF-8''a%C2%85b.txt", '"a\\u0085b.txt"', 'control characters'],
  ])('a file name that is %s (400)', async (_what, filenameParam, shown, problem) => {
    const answer = await rawPost(Buffer.concat([jobPart(), part(`name="files"; ${filenameParam}`, 'data'), closing]));
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe('validation_failed');
    expect(answer.body.detail).toContain(shown);
    expect(answer.body.detail).toContain(problem);
    // eslint-disable-next-line no-control-regex
    expect(answer.body.detail).not.toMatch(/[\u0000-\u001f\u0085]/);
    expect(answer.body.errors).toEqual([{ field: 'files', message: expect.stringContaining(problem) }]);
  });

  test('a raw NUL in a part header, which busboy refuses as malformed (400)', async () => {
    const answer = await rawPost(Buffer.concat([jobPart(), part('name="files"; filename="a\0b.txt"', 'data'), closing]));
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe('invalid_multipart');
    expect(answer.body.detail).toContain('a part has a malformed header');
  });

  test('two files of the same name (400)', async () => {
    const form = jobForm();
    form.append('files', new Blob(['1']), 'data.csv');
    form.append('other', new Blob(['2']), 'data.csv');
    const answer = await postForm(form);
    expect(answer.status).toBe(400);
    expect(answer.body.detail).toBe('Two input files are named "data.csv"; each name must be unique.');
    expect(answer.body.errors).toEqual([{ field: 'files', message: '"data.csv" appears more than once' }]);
  });

  test('a form without a job part, even after files were written (400)', async () => {
    const form = new FormData();
    form.append('files', new Blob(['a,b\n']), 'data.csv');
    const answer = await postForm(form);
    expect(answer.status).toBe(400);
    expect(answer.body.detail).toBe('No `job` part: send the job as a form field named job.');
    expect(answer.body.errors).toEqual([{ field: 'job', message: 'is required' }]);
  });

  test.each([
    ['two job fields', (form: FormData) => form.append('job', JSON.stringify(JOB))],
    ['a job field and a job file', (form: FormData) => form.append('job', new Blob([JSON.stringify(JOB)]), 'job.json')],
  ])('%s (400)', async (_what, addSecond) => {
    const form = jobForm();
    form.append('files', new Blob(['x']), 'x.txt');
    addSecond(form);
    const answer = await postForm(form);
    expect(answer.status).toBe(400);
    expect(answer.body.errors).toEqual([{ field: 'job', message: 'appears more than once' }]);
  });

  test('a job that is not JSON (400)', async () => {
    const form = new FormData();
    form.append('job', '{"task": "unfinished');
    const answer = await postForm(form);
    expect(answer.status).toBe(400);
    expect(answer.body.detail).toBe('Invalid job: the `job` part is not valid JSON.');
    expect(answer.body.errors).toEqual([{ field: 'job', message: 'is not valid JSON' }]);
  });

  test.each([
    ['field', (form: FormData, text: string) => form.append('job', text)],
    ['file', (form: FormData, text: string) => form.append('job', new Blob([text]), 'job.json')],
  ])('a job %s over its limit (413)', async (_what, add) => {
    const form = new FormData();
    add(form, JSON.stringify({ task: 'x'.repeat(LIMITS.maxJobBytes) }));
    const answer = await postForm(form);
    expect(answer.status).toBe(413);
    expect(answer.body).toEqual({ code: 'job_too_large', detail: `The \`job\` part is larger than ${LIMITS.maxJobBytes} bytes (BODY_LIMIT_KB).` });
  });

  test('a text field other than job, named in the answer (400)', async () => {
    const form = jobForm();
    form.append('model', 'gpt-5');
    const answer = await postForm(form);
    expect(answer.status).toBe(400);
    expect(answer.body.detail).toContain('The form field "model" is not part of a job upload');
    expect(answer.body.errors).toEqual([{ field: 'model', message: 'is not a job or a file with a filename' }]);
  });

  test('a file part without a filename (400)', async () => {
    const answer = await rawPost(Buffer.concat([jobPart(), part('name="data"', 'bytes', 'application/octet-stream'), closing]));
    expect(answer.status).toBe(400);
    expect(answer.body.errors).toEqual([{ field: 'data', message: 'is not a job or a file with a filename' }]);
  });

  test('a body cut short in the middle of a file (400)', async () => {
    const file = part('name="files"; filename="data.bin"', Buffer.alloc(200_000, 7));
    const answer = await rawPost(Buffer.concat([jobPart(), file.subarray(0, 150_000)]));
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe('invalid_multipart');
    expect(answer.body.detail).toBe('The multipart/form-data body is malformed: it ends before its closing boundary (was the upload cut short?).');
  });

  test('a body that ends without its closing boundary (400)', async () => {
    const answer = await rawPost(jobPart());
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe('invalid_multipart');
  });

  test('a multipart Content-Type without a boundary (400)', async () => {
    const answer = await rawPost(Buffer.concat([jobPart(), closing]), 'multipart/form-data');
    expect(answer).toEqual({
      status: 400,
      body: { code: 'invalid_multipart', detail: 'The multipart/form-data body is malformed: the Content-Type has no boundary parameter.' },
    });
  });

  test('a body that is not multipart/form-data at all (415)', async () => {
    const answer = await rawPost(Buffer.from('job=%7B%7D'), 'application/x-www-form-urlencoded');
    expect(answer.status).toBe(415);
    expect(answer.body.code).toBe('unsupported_media_type');
  });

  test('an upload whose client goes away halfway', async () => {
    const head = Buffer.concat([jobPart(), Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n\r\n`)]);
    const req = request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/',
      agent: false,
      headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}`, 'content-length': head.length + 500_000 },
    });
    req.on('error', () => undefined);
    req.write(head);
    req.write(Buffer.alloc(100_000, 1));
    await waitFor(async () => (await leftovers()).length === 1, { what: 'the temp file to appear' });
    const outcome = lastOutcome;
    req.destroy();
    await expect(outcome).rejects.toMatchObject({ code: 'request_aborted', status: 400 });
  });
});
