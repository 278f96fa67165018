import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type { Request, Response } from 'express';
import { NotFoundError } from '../../shared/src/errors';
import { sendProblem } from './problem';

/** What a download needs to know of a stored file: all of it is in Redis, none read from the file. */
export interface Downloadable {
  name: string;
  size: number;
  contentType: string;
  sha256: string;
}

/**
 * Serves a stored file (an artifact or an input) as a download: a strong ETag from its SHA-256, so
 * `If-None-Match` answers 304; one byte range (`Range: bytes=…`) answers 206, and a range past the end
 * 416. Several ranges, or a Range whose `If-Range` no longer matches, get the whole file, as RFC 9110
 * allows. The bytes were made by untrusted code: never rendered as a page of this origin.
 */
export async function sendDownload(
  req: Request,
  res: Response,
  file: Downloadable,
  open: (range?: { start: number; end: number }) => Promise<Readable>,
): Promise<void> {
  const etag = `"${file.sha256}"`;
  res.set({
    ETag: etag,
    'Accept-Ranges': 'bytes',
    'Content-Disposition': `attachment; filename*=UTF-8''${encodeURIComponent(file.name.split('/').pop() ?? 'file')}`,
    'Content-Security-Policy': "default-src 'none'; sandbox",
    'Cache-Control': 'private, no-cache',
  });
  if (matchesAny(req.get('if-none-match'), etag)) {
    res.status(304).end();
    return;
  }
  const ifRange = req.get('if-range');
  const range = ifRange === undefined || ifRange === etag ? parseRange(req.get('range'), file.size) : undefined;
  if (range === 'unsatisfiable') {
    res.set('Content-Range', `bytes */${file.size}`);
    sendProblem(res, 416, 'range_not_satisfiable', `The file is ${file.size} bytes long; ask for a range inside it.`);
    return;
  }
  let stream: Readable | undefined;
  if (req.method !== 'HEAD') {
    try {
      stream = await open(range);
    } catch {
      // Listed yet unreadable: removed by its job's deletion in the meantime.
      throw new NotFoundError('No such file.');
    }
  }
  res.status(range ? 206 : 200).set({
    'Content-Type': file.contentType,
    'Content-Length': String(range ? range.end - range.start + 1 : file.size),
    ...(range ? { 'Content-Range': `bytes ${range.start}-${range.end}/${file.size}` } : {}),
  });
  if (!stream) {
    res.end();
    return;
  }
  // A client that goes away mid-download ends the pipeline with an error; nothing to answer then.
  await pipeline(stream, res).catch(() => undefined);
}

/** Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 asks for it), or is `*`. */
function matchesAny(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  return header.split(',').some((tag) => {
    const t = tag.trim();
    return t === '*' || t.replace(/^W\//, '') === etag;
  });
}

/**
 * The one range a `Range` header asks for, with inclusive offsets; undefined for none (no header,
 * another unit, several ranges, or a syntax this does not know: all served whole); 'unsatisfiable' for
 * a range that starts past the end.
 */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  const [first, last] = [m[1] as string, m[2] as string];
  if (size === 0) return 'unsatisfiable';
  if (first === '') {
    // A suffix: the last N bytes.
    const n = Number(last);
    if (n === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}
