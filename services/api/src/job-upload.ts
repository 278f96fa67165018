import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import busboy from 'busboy';
import { contentTypeOf } from '../../shared/src/content-type';
import { AppError, ValidationError } from '../../shared/src/errors';
import { inputNameProblem } from '../../shared/src/file-names';

export interface UploadLimits {
  maxFiles: number;
  maxTotalBytes: number;
  /** The `job` part's limit. */
  maxJobBytes: number;
}

export interface UploadedFile {
  name: string;
  size: number;
  /** Hex SHA-256 of the bytes. */
  sha256: string;
  contentType: string;
  /** Absolute path of the temp file holding the bytes. */
  path: string;
}

/** The form field that carries the job itself; every other part is an input file. */
const JOB_PART = 'job';

/**
 * Reads a multipart job submission: one `job` part (a field or a file) holding the JSON job, and input
 * files streamed to `tempDir` (created if missing, files mode 0o644). On any failure every file it
 * wrote is removed before it throws, and the rest of the body is read and dropped, so the client
 * still gets the answer (see `drain`).
 */
export async function readJobUpload(
  req: IncomingMessage,
  opts: { limits: UploadLimits; tempDir: string },
): Promise<{ job: unknown; files: UploadedFile[] }> {
  const { limits } = opts;
  const dir = resolve(opts.tempDir);
  let parser: busboy.Busboy;
  try {
    if (!/^multipart\/form-data\s*(;|$)/i.test(req.headers['content-type'] ?? '')) {
      throw new AppError({ code: 'unsupported_media_type', status: 415, detail: 'Send the upload as Content-Type: multipart/form-data.' });
    }
    parser = busboy({
      headers: req.headers,
      // Without it busboy strips `../` and `a/` from file names, and the name check below never sees them.
      preservePath: true,
      // Clients (curl, fetch, browsers) send non-ASCII file names as raw UTF-8; busboy's default is latin1.
      defParamCharset: 'utf8',
      limits: {
        // The inputs plus a `job` sent as a file; the part past that is refused on `filesLimit`.
        files: limits.maxFiles + 1,
        // One part more than a valid form can have, so a form of junk parts busboy skips is still refused.
        parts: limits.maxFiles + 2,
        // `job` and one more, so the extra field's name reaches the error message.
        fields: 2,
        // One byte more than allowed, so a part of exactly the limit is not marked truncated.
        fieldSize: limits.maxJobBytes + 1,
        fileSize: Math.max(limits.maxTotalBytes, limits.maxJobBytes) + 1,
      },
    });
    await mkdir(dir, { recursive: true });
  } catch (err) {
    await drain(req);
    throw classify(err);
  }

  return new Promise((resolvePromise, rejectPromise) => {
    const abort = new AbortController();
    /** Every temp file this call created, in part order, finished or not: what a failure removes. */
    const paths: string[] = [];
    const writes: Promise<UploadedFile>[] = [];
    const names = new Set<string>();
    let jobParts = 0;
    let job: { value: unknown } | undefined;
    let totalBytes = 0;
    /** Set once the promise is decided: a late error must not remove files already handed over. */
    let settled = false;

    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      const drained = drain(req);
      // Not now: this may run inside one of busboy's events, and busboy dereferences the part it is
      // parsing after emitting them ('limit' then `truncated = true`), which destroying it nulls.
      process.nextTick(() => {
        abort.abort();
        parser.destroy();
        // Removing a file before its write stream has closed could let the stream recreate it.
        const removed = Promise.allSettled(writes).then(() => removeFiles(paths));
        void Promise.all([drained, removed]).then(
          () => rejectPromise(err),
          () => rejectPromise(err),
        );
      });
    };

    const acceptJob = (text: string): void => {
      try {
        job = { value: JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text) };
      } catch {
        fail(new ValidationError('Invalid job: the `job` part is not valid JSON.', [{ field: JOB_PART, message: 'is not valid JSON' }]));
      }
    };

    const countJobPart = (): boolean => {
      if (++jobParts === 1) return true;
      fail(new ValidationError('Send exactly one `job` part; this form has two.', [{ field: JOB_PART, message: 'appears more than once' }]));
      return false;
    };

    const readJobFile = (stream: Readable): void => {
      const chunks: Buffer[] = [];
      let size = 0;
      stream.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limits.maxJobBytes) fail(jobTooLarge(limits));
        else chunks.push(chunk);
      });
      stream.on('end', () => {
        if (!settled) acceptJob(Buffer.concat(chunks).toString('utf8'));
      });
    };

    const writeInput = (stream: Readable, name: string): Promise<UploadedFile> => {
      const path = join(dir, randomUUID());
      paths.push(path);
      const hash = createHash('sha256');
      let size = 0;
      const out = createWriteStream(path, { flags: 'wx', mode: 0o644 });
      const closed = new Promise<void>((r) => out.once('close', () => r()));
      const written = pipeline(
        stream,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            totalBytes += chunk.length;
            if (totalBytes > limits.maxTotalBytes) throw inputsTooLarge(limits);
            size += chunk.length;
            hash.update(chunk);
            yield chunk;
          }
        },
        out,
        { signal: abort.signal },
      );
      return written
        // The process umask would otherwise decide: the sandbox reads inputs as another user.
        .then(() => chmod(path, 0o644))
        .finally(() => closed)
        .then(() => ({ name, size, sha256: hash.digest('hex'), contentType: contentTypeOf(name), path }));
    };

    parser.on('file', (name, stream, info) => {
      // A stream destroyed with an error needs a listener, or the process dies. What it says is not
      // news: busboy reports its own errors on the parser too, and a failed write rejects its pipeline
      // (whose for-await loop destroys this stream with a mere AbortError).
      stream.on('error', () => undefined);
      stream.on('limit', () => fail(name === JOB_PART ? jobTooLarge(limits) : inputsTooLarge(limits)));
      if (settled) {
        stream.resume();
        return;
      }
      if (name === JOB_PART) {
        if (countJobPart()) readJobFile(stream);
        else stream.resume();
        return;
      }
      // busboy makes any part typed application/octet-stream a file, with or without a filename.
      const filename = info.filename;
      const problem = filename === undefined ? unknownField(name) : fileProblem(filename, names, limits);
      if (filename === undefined || problem !== null) {
        stream.resume();
        fail(problem);
        return;
      }
      names.add(filename);
      const write = writeInput(stream, filename);
      writes.push(write);
      write.catch((err: unknown) => fail(classify(err)));
    });

    parser.on('field', (name, value, info) => {
      if (settled) return;
      if (name !== JOB_PART) {
        fail(unknownField(name));
        return;
      }
      if (!countJobPart()) return;
      if (info.valueTruncated) fail(jobTooLarge(limits));
      else acceptJob(value);
    });

    parser.on('filesLimit', () => fail(tooManyFiles(limits)));
    parser.on('partsLimit', () => fail(tooManyFiles(limits)));
    parser.on('fieldsLimit', () => fail(unknownField(undefined)));
    parser.on('error', (err) => fail(classify(err)));
    parser.on('finish', () => {
      // busboy is done with the body; the last writes to disk may not be.
      void Promise.all(writes).then((files) => {
        if (settled) return;
        if (job === undefined) {
          fail(new ValidationError('No `job` part: send the job as a form field named job.', [{ field: JOB_PART, message: 'is required' }]));
          return;
        }
        settled = true;
        resolvePromise({ job: job.value, files });
      }, () => undefined);
    });

    // A client that goes away mid-upload: `error` (ECONNRESET) comes only while someone listens, `close` always.
    req.on('error', () => fail(aborted()));
    req.on('close', () => {
      if (!req.complete) fail(aborted());
    });
    req.pipe(parser);
  });
}

/** Removes the temp files (ignores missing ones). */
export async function discardUpload(files: readonly UploadedFile[]): Promise<void> {
  await removeFiles(files.map((f) => f.path));
}

async function removeFiles(paths: readonly string[]): Promise<void> {
  await Promise.all(paths.map((path) => rm(path, { force: true })));
}

/**
 * Reads the rest of a refused body and drops it; resolves when the answer may go out. Closing a socket
 * with body bytes unread makes the kernel send a reset, which also discards the answer if the client
 * has not read it yet, as with clients that send the whole body before reading (Python's http.client,
 * requests). On a kept-alive connection Node keeps the socket open after answering, so the answer
 * goes out at once and clients that read early (curl, fetch) stop sending. When Node will close
 * it after answering (`Connection: close`, HTTP/1.0), the answer waits for the end of the body. The
 * drain is bounded by the server's `requestTimeout`.
 */
async function drain(req: IncomingMessage): Promise<void> {
  req.unpipe();
  if (req.destroyed) return;
  req.resume();
  if (!req.complete && closesAfterAnswer(req)) await finished(req).catch(() => undefined);
}

/** Node's rule for ending a connection once the response is sent (the request's side of it). */
function closesAfterAnswer(req: IncomingMessage): boolean {
  const tokens = (req.headers.connection ?? '').toLowerCase().split(',').map((t) => t.trim());
  if (tokens.includes('close')) return true;
  return req.httpVersionMajor === 1 && req.httpVersionMinor === 0 && !tokens.includes('keep-alive');
}

/** Why a file named `filename` cannot join the inputs already `seen`, or null. */
function fileProblem(filename: string, seen: ReadonlySet<string>, limits: UploadLimits): AppError | null {
  if (seen.size >= limits.maxFiles) return tooManyFiles(limits);
  const problem = inputNameProblem(filename);
  if (problem !== null) {
    return new ValidationError(`Invalid input file name ${quote(filename)}: it ${problem}.`, [{ field: 'files', message: `${quote(filename)} ${problem}` }]);
  }
  if (seen.has(filename)) {
    return new ValidationError(`Two input files are named ${quote(filename)}; each name must be unique.`, [
      { field: 'files', message: `${quote(filename)} appears more than once` },
    ]);
  }
  return null;
}

function unknownField(name: string | undefined): ValidationError {
  const what = name === undefined ? 'A form field' : `The form field ${quote(name)}`;
  return new ValidationError(
    `${what} is not part of a job upload: send the job as a field named job and each input as a file part with a filename.`,
    [{ field: name ?? '', message: 'is not a job or a file with a filename' }],
  );
}

function tooManyFiles(limits: UploadLimits): AppError {
  return new AppError({
    code: 'too_many_files',
    status: 413,
    detail: `A job takes at most ${limits.maxFiles} input files (JOB_INPUT_MAX_FILES); this upload has more.`,
  });
}

function inputsTooLarge(limits: UploadLimits): AppError {
  return new AppError({
    code: 'inputs_too_large',
    status: 413,
    detail: `The input files together exceed ${megabytes(limits.maxTotalBytes)} MB (${limits.maxTotalBytes} bytes), the limit JOB_INPUT_MAX_MB sets.`,
  });
}

function jobTooLarge(limits: UploadLimits): AppError {
  return new AppError({ code: 'job_too_large', status: 413, detail: `The \`job\` part is larger than ${limits.maxJobBytes} bytes (BODY_LIMIT_KB).` });
}

function aborted(): AppError {
  return new AppError({ code: 'request_aborted', status: 400, detail: 'The request was aborted by the client.' });
}

/**
 * What a failure means for the client. Ours are AppErrors already; the file system's (ENOSPC, EACCES)
 * carry a `syscall` and stay what they are, a server fault; anything else came from busboy.
 */
function classify(err: unknown): unknown {
  if (err instanceof AppError) return err;
  if (typeof (err as { syscall?: unknown } | null)?.syscall === 'string') return err;
  return multipartProblem(err);
}

/**
 * busboy's own errors as a 400. Its messages are fixed strings ("Unexpected end of form", "Malformed
 * part header", "Multipart: Boundary not found", …) that say what is wrong without echoing the body.
 */
function multipartProblem(err: unknown): AppError {
  const message = err instanceof Error ? err.message : '';
  const known = MULTIPART_ERRORS.find(([pattern]) => pattern.test(message));
  return new AppError({
    code: 'invalid_multipart',
    status: 400,
    detail: `The multipart/form-data body is malformed: ${known ? known[1] : 'it could not be parsed'}.`,
    cause: err,
  });
}

const MULTIPART_ERRORS: [RegExp, string][] = [
  [/Boundary not found/, 'the Content-Type has no boundary parameter'],
  [/Malformed content type/, 'the Content-Type header cannot be parsed'],
  [/Unexpected end of (form|file)/, 'it ends before its closing boundary (was the upload cut short?)'],
  [/Malformed part header/, 'a part has a malformed header'],
];

/** A client-chosen string for a message: JSON-quoted, with C1 controls and bidi overrides escaped too, cut short. */
function quote(value: string): string {
  const shown = value.length > 100 ? `${value.slice(0, 100)}…` : value;
  return JSON.stringify(shown).replace(/[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function megabytes(bytes: number): string {
  return String(Math.round((bytes / 2 ** 20) * 100) / 100);
}
