import { randomUUID } from 'node:crypto';
import type { RequestHandler } from 'express';
import type { Redis } from 'ioredis';
import { AppError, NotFoundError, ValidationError } from '../../../shared/src/errors';
import { eventType } from '../../../shared/src/job-record';
import { TERMINAL_STATUSES, type JobStatus } from '../../../shared/src/job-schema';
import type { JobEvent, JobStore } from '../../../shared/src/job-store';
import type { Logger } from '../../../shared/src/logger';
import type { RedisWatcher } from '../../../shared/src/redis-watch';
import { rateLimited } from '../api-metrics';
import { sendProblem } from '../problem';

const STREAM_ID = /^\d{1,20}-\d{1,20}$/;
/** Each open stream holds a Redis connection; past this many, new ones are refused with 503. */
const MAX_OPEN_STREAMS = 1000;

/**
 * Takes one of the caller's stream slots, counted across API replicas: a sorted set of open stream
 * ids scored by when each lapses. Lapsed entries (their replica died without closing them) are
 * dropped first, so a crash never locks a caller out for longer than one lease. Redis's clock, not
 * the replica's, so replicas with skewed clocks agree. Returns {1} or {0, ms until the soonest lapses}.
 */
const OPEN_STREAM = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {0, tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) - now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1}
`;

/**
 * Extends an open stream's lease. Re-added even if it had lapsed (a stalled event loop, say): the
 * stream is open, and an honest count may briefly exceed the cap rather than undercount it.
 */
const RENEW_STREAM = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

export interface JobEventsDeps {
  store: JobStore;
  redis: Redis;
  logger: Logger;
  /** The process's Redis watcher: each stream's connection reports its outages there, not per stream. */
  redisWatcher?: RedisWatcher;
  /** How long a quiet stream waits before sending a heartbeat comment. */
  heartbeatMs: number;
  jobIdParam(req: Parameters<RequestHandler>[0]): string;
  /** Deployment prefix of the Redis keys. */
  prefix: string;
  /** Streams one caller may hold open at once, across replicas (CALLER_MAX_EVENT_STREAMS). */
  maxStreamsPerCaller: number;
}

/**
 * `GET /v1/jobs/{id}/events`: Server-Sent Events from the job's Redis stream while it is live, and
 * from its record once it has finished: `status`, `step`, and `output` (what running code prints,
 * before its step). Each event carries its stream id (the record keeps them), so `Last-Event-ID`
 * resumes exactly after the last event a client saw; the stream ends after the terminal status event,
 * and a client arriving later still gets the whole history.
 */
export function jobEventsHandler(deps: JobEventsDeps): RequestHandler {
  const { store, redis, logger, maxStreamsPerCaller } = deps;
  // A lease outlives the longest quiet spell of a live stream (one heartbeat) with room to spare, and
  // is renewed once a third of it has passed, so a live stream never lapses.
  const leaseMs = 2 * deps.heartbeatMs + 5000;
  const renewEveryMs = Math.floor(leaseMs / 3);
  let openStreams = 0;
  return async (req, res) => {
    // Listened for before the first await: a client that leaves during the checks below must still
    // free the slot it took, and a stream must stop reading once its client is gone.
    let gone = false;
    const onGone: (() => void)[] = [];
    res.on('close', () => {
      gone = true;
      for (const undo of onGone.splice(0)) undo();
    });
    const whenGone = (undo: () => void): void => {
      if (gone) undo();
      else onGone.push(undo);
    };

    const id = deps.jobIdParam(req);
    const caller = res.locals.caller as string;
    const log = await store.eventLog(caller, id);
    if (!log) throw new NotFoundError('No such job.');
    const lastEventId = req.get('last-event-id');
    if (lastEventId !== undefined && !STREAM_ID.test(lastEventId)) {
      throw new ValidationError('Invalid Last-Event-ID: send an id received from this stream.', [
        { field: 'Last-Event-ID', message: 'must be an event id from this stream' },
      ]);
    }
    if (!log.live) {
      // Sent at once from the record and ended: it holds no Redis connection, so it takes no slot.
      openEventStream(res);
      writeEvents(res, log.events, lastEventId ?? '0-0');
      res.end();
      return;
    }

    if (openStreams >= MAX_OPEN_STREAMS) {
      throw new AppError({ code: 'too_many_streams', status: 503, detail: 'Too many open event streams; poll the job or retry later.' });
    }
    const slotsKey = `${deps.prefix}:caller:${encodeURIComponent(caller)}:streams`;
    const streamId = randomUUID();
    const [took, lapsesInMs] = (await redis.eval(OPEN_STREAM, 1, slotsKey, streamId, maxStreamsPerCaller, leaseMs)) as [number, number?];
    if (took !== 1) {
      rateLimited.inc({ limit: 'event_streams' });
      // The soonest a slot frees without the caller closing a stream: when the oldest lease would lapse.
      res.set('Retry-After', String(Math.max(1, Math.ceil((lapsesInMs ?? leaseMs) / 1000))));
      sendProblem(
        res,
        429,
        'too_many_streams',
        `You have ${maxStreamsPerCaller} event streams open, the most CALLER_MAX_EVENT_STREAMS allows; close one, or poll the job.`,
      );
      return;
    }
    openStreams += 1;
    whenGone(() => {
      openStreams -= 1;
      redis.zrem(slotsKey, streamId).catch((err: unknown) => {
        // The lease lapses on its own.
        logger.warn({ event: 'sse.release_failed', jobId: id, message: (err as Error).message }, 'event stream slot not released');
      });
    });
    if (gone) return;
    openEventStream(res);

    // XREAD BLOCK holds its connection, so each stream gets its own, closed when the client leaves.
    const conn = redis.duplicate({ maxRetriesPerRequest: null, enableAutoPipelining: false });
    // Unwatched before it is dropped: disconnected while waiting to reconnect, it never emits 'end'.
    let unwatch = (): void => undefined;
    if (deps.redisWatcher) unwatch = deps.redisWatcher.watch(conn, 'events');
    else conn.on('error', () => undefined);
    const drop = (): void => {
      unwatch();
      conn.disconnect();
    };
    whenGone(drop);
    let cursor = lastEventId ?? '0-0';
    let renewedAt = Date.now();
    try {
      while (!gone) {
        if (Date.now() - renewedAt >= renewEveryMs) {
          await redis.eval(RENEW_STREAM, 1, slotsKey, streamId, leaseMs);
          renewedAt = Date.now();
        }
        const reply = await conn.xread('COUNT', 100, 'BLOCK', deps.heartbeatMs, 'STREAMS', store.eventsKey(id), cursor);
        if (gone) break;
        if (reply === null) {
          // Quiet, or its stream is gone: a job that finished more than a grace ago (see job-store
          // EVENTS_GRACE_MS) while this stream was not waiting has the rest in its record.
          const now = await store.eventLog(caller, id);
          if (now === null) break; // deleted
          if (!now.live) {
            writeEvents(res, now.events, cursor);
            break;
          }
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
      if (!gone) logger.warn({ event: 'sse.failed', jobId: id, message: (err as Error).message }, 'event stream failed');
    } finally {
      drop();
      res.end();
    }
  };
}

function openEventStream(res: Parameters<RequestHandler>[1]): void {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache, no-transform',
    Connection: 'keep-alive',
    // Proxies such as nginx would otherwise buffer the stream.
    'X-Accel-Buffering': 'no',
  });
  res.write('retry: 2000\n\n');
}

/** A finished job's events after `cursor` (a stream id), in order. */
function writeEvents(res: Parameters<RequestHandler>[1], events: readonly JobEvent[], cursor: string): void {
  const [ms, seq] = streamIdParts(cursor);
  for (const event of events) {
    const [eventMs, eventSeq] = streamIdParts(event.id);
    if (eventMs > ms || (eventMs === ms && eventSeq > seq)) res.write(`id: ${event.id}\nevent: ${event.type}\ndata: ${event.data}\n\n`);
  }
}

function streamIdParts(id: string): [bigint, bigint] {
  const [ms, seq] = id.split('-');
  return [BigInt(ms ?? 0), BigInt(seq ?? 0)];
}

function parseEntries(reply: [string, [string, string[]][]][]): JobEvent[] {
  const out: JobEvent[] = [];
  for (const [, entries] of reply) {
    for (const [id, fields] of entries) {
      const f: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] as string] = fields[i + 1] as string;
      out.push({ id, type: eventType(f.type), data: f.data ?? 'null' });
    }
  }
  return out;
}

function isTerminal(data: string): boolean {
  const status = (JSON.parse(data) as { status?: JobStatus }).status;
  return status !== undefined && TERMINAL_STATUSES.includes(status);
}
