import type { RequestHandler } from 'express';
import type { Redis } from 'ioredis';
import { AppError, NotFoundError, ValidationError } from '../../../shared/src/errors';
import { TERMINAL_STATUSES, type JobStatus } from '../../../shared/src/job-schema';
import type { JobStore } from '../../../shared/src/job-store';
import type { Logger } from '../../../shared/src/logger';

const STREAM_ID = /^\d{1,20}-\d{1,20}$/;
/** Each open stream holds a Redis connection; past this many, new ones are refused with 503. */
const MAX_OPEN_STREAMS = 1000;

export interface JobEventsDeps {
  store: JobStore;
  redis: Redis;
  logger: Logger;
  /** How long a quiet stream waits before sending a heartbeat comment. */
  heartbeatMs: number;
  jobIdParam(req: Parameters<RequestHandler>[0]): string;
}

/**
 * `GET /v1/jobs/{id}/events`: Server-Sent Events from the job's Redis stream. Each event carries its
 * stream id, so `Last-Event-ID` resumes exactly after the last event a client saw; the stream ends
 * after the terminal status event, and a client arriving later still gets the whole history.
 */
export function jobEventsHandler(deps: JobEventsDeps): RequestHandler {
  const { store, redis, logger } = deps;
  let openStreams = 0;
  return async (req, res) => {
    const id = deps.jobIdParam(req);
    const caller = res.locals.caller as string;
    if (!(await store.getFor(caller, id))) throw new NotFoundError('No such job.');
    const lastEventId = req.get('last-event-id');
    if (lastEventId !== undefined && !STREAM_ID.test(lastEventId)) {
      throw new ValidationError('Invalid Last-Event-ID: send an id received from this stream.', [
        { field: 'Last-Event-ID', message: 'must be an event id from this stream' },
      ]);
    }

    if (openStreams >= MAX_OPEN_STREAMS) {
      throw new AppError({ code: 'too_many_streams', status: 503, detail: 'Too many open event streams; poll the job or retry later.' });
    }
    openStreams += 1;
    res.on('close', () => {
      openStreams -= 1;
    });
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      Connection: 'keep-alive',
      // Proxies such as nginx would otherwise buffer the stream.
      'X-Accel-Buffering': 'no',
    });
    res.write('retry: 2000\n\n');

    // XREAD BLOCK holds its connection, so each stream gets its own, closed when the client leaves.
    const conn = redis.duplicate({ maxRetriesPerRequest: null, enableAutoPipelining: false });
    conn.on('error', () => undefined);
    let open = true;
    req.on('close', () => {
      open = false;
      conn.disconnect();
    });
    let cursor = lastEventId ?? '0-0';
    try {
      while (open) {
        const reply = await conn.xread('COUNT', 100, 'BLOCK', deps.heartbeatMs, 'STREAMS', store.eventsKey(id), cursor);
        if (!open) break;
        if (reply === null) {
          res.write(': heartbeat\n\n');
          continue;
        }
        let ended = false;
        for (const event of parseEntries(reply)) {
          res.write(`id: ${event.id}\nevent: ${event.type}\ndata: ${event.data}\n\n`);
          cursor = event.id;
          if (event.type === 'status' && isTerminal(event.data)) ended = true;
        }
        if (ended) break;
      }
    } catch (err) {
      if (open) logger.warn({ event: 'sse.failed', jobId: id, message: (err as Error).message }, 'event stream failed');
    } finally {
      conn.disconnect();
      res.end();
    }
  };
}

function parseEntries(reply: [string, [string, string[]][]][]): { id: string; type: string; data: string }[] {
  const out: { id: string; type: string; data: string }[] = [];
  for (const [, entries] of reply) {
    for (const [id, fields] of entries) {
      const f: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] as string] = fields[i + 1] as string;
      out.push({ id, type: f.type === 'step' ? 'step' : 'status', data: f.data ?? 'null' });
    }
  }
  return out;
}

function isTerminal(data: string): boolean {
  const status = (JSON.parse(data) as { status?: JobStatus }).status;
  return status !== undefined && TERMINAL_STATUSES.includes(status);
}
