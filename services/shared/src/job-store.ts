import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { ArtifactStore } from './artifact-store';
import {
  TERMINAL_STATUSES,
  type InputInfo,
  type JobSpec,
  type JobStatus,
  type JobView,
  type Step,
  type StopReason,
  type Usage,
  type WebhookDelivery,
} from './job-schema';
import { newJobId } from './ids';
import {
  decodeRecord,
  encodeRecord,
  eventType,
  publicArtifacts,
  readRecordHeader,
  RECORD_FORMAT,
  summaryOf,
  type JobEvent,
  type RecordHeader,
  type StoredArtifact,
} from './job-record';
import { MAX_QUEUE_PRIORITY, queueKey } from './queue';

export type { JobEvent, StoredArtifact } from './job-record';

/**
 * How long a finished job's event stream stays in Redis after its record is on disk: event streams
 * blocked on it get the final event from Redis (XREAD wakes them once the script is done), and one
 * between two reads still finds the stream there. A reader later than this finds the record instead.
 */
const EVENTS_GRACE_MS = 10_000;
/** Times `finish` reads the job again when a step or artifact landed while it wrote the record. */
const FINISH_ATTEMPTS = 5;

// Transitions are Lua scripts so that "only if not already terminal" holds against every other
// writer (a cancelling API replica, a stalled-job takeover, a late worker).

/**
 * Creates a job, unless the request's Idempotency-Key already names one or the caller is at its cap;
 * all in one script, so the cap cannot be overrun by concurrent requests and a replay is never
 * refused by it.
 *
 * Fair order: the job's BullMQ priority (lower runs first, FIFO within a number) is start-time fair
 * queueing with unit cost. The clock is the highest priority a worker has started. A caller with no
 * active job starts at the clock, so it waits behind at most one job per busy caller; each further
 * job goes one after the caller's latest active one, so busy callers interleave. Never more than the
 * caller's active count past the clock: a caller that has been busy for hours, or cancelled its
 * backlog, builds up no debt. The clock restarts at 1 once it is high and the queue is idle, since
 * BullMQ caps priorities near 2^21; if it never idles, numbers saturate and the order degrades to FIFO.
 *
 * Input files count against the caller's storage quota here too, in the same script, so concurrent
 * uploads cannot overrun it together.
 *
 * KEYS: 1 job, 2 caller's job index, 3 job events, 4 caller's active jobs (score: priority),
 *       5 fair clock, 6-10 BullMQ wait, active, prioritized, delayed, paused, 11 stored files by job,
 *       12 caller's stored bytes, [13 idempotency key]
 * ARGV: 1 id, 2 active cap, 3 job key prefix, 4 BullMQ job key prefix,
 *       5 time prefix of ids old enough to be orphans, 6 max priority, 7 clock reset threshold,
 *       8 request fingerprint, 9 idempotency ttl s, 10 input bytes ('' for a job without inputs),
 *       11 caller's storage quota in bytes, 12 caller, 13.. job hash fields
 */
const CREATE = `
local idem = KEYS[13]
if idem then
  local v = redis.call('GET', idem)
  if v then
    local fp, id = string.match(v, '^(%S+) (%S+)$')
    if fp == ARGV[8] then return {'existing', id} end
    return {'conflict', id}
  end
end

local active = KEYS[4]
local n = redis.call('ZCARD', active)
if n >= tonumber(ARGV[2]) then
  -- Only at the cap: drop ids whose job ended or is gone, so a missed removal never locks the caller
  -- out. A large set is sampled; every stale id is met in time.
  local ids
  if n <= 1000 then ids = redis.call('ZRANGE', active, 0, -1) else ids = redis.call('ZRANDMEMBER', active, 1000) end
  for _, id in ipairs(ids) do
    local st = redis.call('HGET', ARGV[3] .. id, 'status')
    local ended = (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled'
    -- Not ended yet unknown to BullMQ long after creation: its API replica died between storing and
    -- enqueueing it, or BullMQ failed it and the verdict was never recorded. Ids start with their
    -- creation time, so comparing the first 10 characters compares times.
    local orphan = (not ended) and string.sub(id, 1, 10) < ARGV[5] and redis.call('EXISTS', ARGV[4] .. id) == 0
    if ended or orphan then redis.call('ZREM', active, id) end
  end
  n = redis.call('ZCARD', active)
  if n >= tonumber(ARGV[2]) then return {'full', n} end
end

local clock = tonumber(redis.call('GET', KEYS[5]) or '1')
if clock >= tonumber(ARGV[7]) and redis.call('LLEN', KEYS[6]) == 0 and redis.call('LLEN', KEYS[7]) == 0
    and redis.call('ZCARD', KEYS[8]) == 0 and redis.call('ZCARD', KEYS[9]) == 0 and redis.call('LLEN', KEYS[10]) == 0 then
  clock = 1
  redis.call('SET', KEYS[5], clock)
end
if ARGV[10] ~= '' then
  local stored = tonumber(redis.call('GET', KEYS[12]) or '0')
  if stored + tonumber(ARGV[10]) > tonumber(ARGV[11]) then return {'quota', stored} end
  redis.call('INCRBY', KEYS[12], ARGV[10])
  redis.call('HSET', KEYS[11], ARGV[1], ARGV[10] .. ' ' .. ARGV[12])
end
local priority = clock
if n > 0 then
  local latest = tonumber(redis.call('ZRANGE', active, -1, -1, 'WITHSCORES')[2])
  priority = math.max(clock, math.min(latest + 1, clock + n))
end
priority = math.min(priority, tonumber(ARGV[6]))

redis.call('HSET', KEYS[1], 'priority', priority, unpack(ARGV, 13))
if idem then redis.call('HSET', KEYS[1], 'idempotencyKey', idem) end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', active, priority, ARGV[1])
redis.call('XADD', KEYS[3], '*', 'type', 'status', 'data', '{"status":"queued"}')
if idem then redis.call('SET', idem, ARGV[8] .. ' ' .. ARGV[1], 'EX', ARGV[9]) end
return {'created', priority}
`;

// Every change to what a job's record holds bumps its `version`, so that `finish` knows whether the
// record it wrote is still the whole job (see ARCHIVE).
const MARK_RUNNING = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {0} end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return {2} end
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HINCRBY', KEYS[1], 'version', 1)
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'startedAt') then
  local deadline = tonumber(ARGV[1]) + tonumber(redis.call('HGET', KEYS[1], 'timeoutSeconds')) * 1000
  redis.call('HSET', KEYS[1], 'startedAt', ARGV[2], 'deadlineMs', tostring(deadline))
end
redis.call('XADD', KEYS[2], '*', 'type', 'status', 'data', ARGV[3])
-- The fair clock follows the highest priority started (see CREATE); jobs from before fair order have none.
local priority = tonumber(redis.call('HGET', KEYS[1], 'priority'))
if priority and priority > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], priority) end
return {1, redis.call('HGET', KEYS[1], 'deadlineMs'), attempts, redis.call('HGET', KEYS[1], 'spec'), tonumber(redis.call('HGET', KEYS[1], 'handBacks') or '0')}
`;

const REQUEUE = `
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HINCRBY', KEYS[1], 'version', 1)
-- A hand-back on shutdown: counted apart, so that it does not spend one of the job's attempts.
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'handBacks', 1) end
redis.call('XADD', KEYS[2], '*', 'type', 'status', 'data', ARGV[1])
return 1
`;

/**
 * Ends a job whose record `finish` has just written to the artifact store, if nothing changed since
 * it read the job (its `version`): the verdict, the final status event, and the job's history giving
 * way to a small hash that names the record. One script, so a reader sees the job whole in Redis or
 * whole on disk, never between. The event stream stays EVENTS_GRACE_MS for readers blocked on it.
 * Every finished job has a directory (its record at least), so every one is removed by the retention
 * sweep (remove, removeJob), which also frees its files' bytes in its caller's quota; the hash's own
 * expiry comes a day later, as a backstop should no sweep run.
 * With webhooks on, the same script queues the job's webhook delivery (see webhooks.ts in the
 * worker), so that no verdict is recorded without its delivery queued, whoever records it and
 * whatever becomes of that process right after.
 * KEYS: 1 job, 2 job events, 3 caller's active jobs, 4 retention schedule, 5 webhooks due,
 *       6.. the job's keys the record replaces
 * ARGV: 1 id, 2 version read, 3 final event id, 4 final event data, 5 events grace ms,
 *       6 removal time ms, 7 hash expiry s, 8 webhook due time ms ('' for none), 9.. the finished job's hash fields
 */
const ARCHIVE = `
local st = redis.call('HGET', KEYS[1], 'status')
local ended = (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled'
if (not ended) and (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[2] then return 2 end
-- Off the active set whatever the outcome: an ended job that is still listed was missed before.
redis.call('ZREM', KEYS[3], ARGV[1])
if not st then return -1 end
if ended then return 0 end
redis.call('XADD', KEYS[2], ARGV[3], 'type', 'status', 'data', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[1], unpack(KEYS, 6))
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[5], ARGV[8], ARGV[1]) end
return 1
`;

/**
 * Records an artifact's metadata once its bytes are stored, within the job's quota (all attempts
 * together: the tally lives on the job, not on the attempt) and its caller's. A file of the same name
 * replaces the earlier one and counts once. Refused for a job that ended or was deleted: nothing is
 * added to a job after its verdict.
 * KEYS: 1 job, 2 job's artifacts, 3 stored files by job, 4 caller's stored bytes
 * ARGV: 1 name, 2 metadata JSON, 3 size, 4 job's byte quota, 5 job's file quota, 6 caller's quota, 7 id, 8 caller
 */
const SAVE_ARTIFACT = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'finished'} end
local size = tonumber(ARGV[3])
local old = redis.call('HGET', KEYS[2], ARGV[1])
local oldSize, oldFile = 0, ''
if old then
  local info = cjson.decode(old)
  oldSize, oldFile = info.size, info.file
end
if (not old) and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[5]) then return {'job_files'} end
local jobBytes = tonumber(redis.call('HGET', KEYS[1], 'artifactBytes') or '0')
if jobBytes - oldSize + size > tonumber(ARGV[4]) then return {'job_bytes'} end
local stored = tonumber(redis.call('GET', KEYS[4]) or '0')
local delta = size - oldSize
if delta > 0 and stored + delta > tonumber(ARGV[6]) then return {'caller_bytes'} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HINCRBY', KEYS[1], 'artifactBytes', delta)
redis.call('INCRBY', KEYS[4], delta)
local entry = redis.call('HGET', KEYS[3], ARGV[7])
local jobStored = delta
if entry then jobStored = jobStored + tonumber(string.match(entry, '^(%d+)')) end
redis.call('HSET', KEYS[3], ARGV[7], jobStored .. ' ' .. ARGV[8])
return {'saved', oldFile}
`;

/**
 * Removes a job's record (deleted by its owner, or past its retention) and gives its stored bytes
 * back to its caller's quota. Returns 1 when there was something to remove.
 * KEYS: 1 stored files by job, 2 retention schedule, 3 caller's job index, 4 caller's active jobs,
 *       5 caller's stored bytes, 6 webhooks due, 7 job, 8.. the job's other keys
 * ARGV: 1 id
 */
const REMOVE = `
local found = redis.call('ZREM', KEYS[2], ARGV[1])
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  redis.call('DECRBY', KEYS[5], string.match(entry, '^(%d+)'))
  redis.call('HDEL', KEYS[1], ARGV[1])
  found = 1
end
local idem = redis.call('HGET', KEYS[7], 'idempotencyKey')
if idem then redis.call('DEL', idem) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
-- A webhook still being retried stops with its job.
redis.call('ZREM', KEYS[6], ARGV[1])
found = found + redis.call('DEL', unpack(KEYS, 7))
if found > 0 then return 1 end
return 0
`;

/**
 * Appends steps to the job's event stream, the one place a step is written: GET and the event
 * stream read it there, and a resumed job rebuilds its conversation from it (the checkpoint). So the
 * work per step stays the same however long the job grows. Only while the job exists and has not
 * ended: a worker still running a job its owner deleted must not bring its keys back, nor one that
 * lost a race add to a finished job.
 * KEYS: 1 job, 2 events
 * ARGV: 1 input tokens, 2 output tokens, 3.. steps
 */
const RECORD_STEPS = `
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
-- Fenced: a worker whose attempt was taken over (its lock lapsed) must not write beside the new one.
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[3] then return -2 end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'type', 'step', 'data', ARGV[i])
end
if ARGV[1] ~= '0' then redis.call('HINCRBY', KEYS[1], 'inputTokens', ARGV[1]) end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'outputTokens', ARGV[2]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
`;

/**
 * Appends what a running code_executor call printed, as `output` entries, with the same guards as
 * RECORD_STEPS: nothing for a deleted or ended job, nothing from a superseded attempt. Not a step:
 * the checkpoint and every count of steps skip these. Bumps `version`, since the record holds them.
 * KEYS: 1 job, 2 events
 * ARGV: 1 attempt ('' for none), 2.. entries' data
 */
const APPEND_OUTPUT = `
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return -2 end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'type', 'output', 'data', ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
`;

/**
 * Claims the webhook deliveries that are due: each is pushed a lease ahead, so a worker that dies
 * with it leaves it due again when the lease ends, and no other worker takes it meanwhile. Returns
 * each id with the attempts it has recorded.
 * KEYS: 1 webhooks due
 * ARGV: 1 now ms, 2 lease end ms, 3 most to claim, 4 job key prefix
 */
const CLAIM_WEBHOOKS = `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('LLEN', ARGV[4] .. id .. ':webhook-deliveries')
end
return out
`;

/**
 * Records one delivery attempt on its job and schedules the next (or ends the delivery), unless the
 * job is gone (deleted, or past its retention): then the delivery ends with it.
 * KEYS: 1 job, 2 job's deliveries, 3 webhooks due
 * ARGV: 1 id, 2 attempt JSON, 3 next attempt ms ('' when none follows), 4 attempts kept
 */
const RECORD_WEBHOOK = `
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[3] == '' then redis.call('ZREM', KEYS[3], ARGV[1]) else redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
return 1
`;

const REQUEST_CANCEL = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
return st
`;

/**
 * A write of an attempt that a newer one has replaced (its worker's BullMQ lock lapsed and another
 * worker took the job over): the old attempt must stop, leaving the job to the new one.
 */
export class AttemptSuperseded extends Error {
  override readonly name = 'AttemptSuperseded';
  constructor(jobId: string) {
    super(`job ${jobId} was taken over by a newer attempt`);
  }
}

/** A piece of a running code_executor call's output: an `output` event is one, with its step's index. */
export interface OutputChunk {
  stream: 'stdout' | 'stderr';
  text: string;
}

/** What `create` did: made the job, found the Idempotency-Key's job, or refused. */
export type CreateOutcome =
  | { outcome: 'created'; job: JobView; priority: number }
  /** The key names this job, made by an earlier request with the same body. */
  | { outcome: 'existing'; jobId: string }
  /** The key was used with another body. */
  | { outcome: 'conflict'; jobId: string }
  /** The caller already has `active` queued or running jobs, its cap. */
  | { outcome: 'full'; active: number }
  /** The job's inputs would take the caller's stored bytes past its quota; `stored` is what it holds. */
  | { outcome: 'quota'; stored: number };

/** What became of an artifact offered to `saveArtifact`. */
export type SaveArtifactOutcome =
  /** Recorded; `replaced` is the store id of the same-named file it replaced, to remove. */
  | { outcome: 'saved'; replaced?: string }
  /** Refused: the job ended or was deleted meanwhile, or a quota would be passed. */
  | { outcome: 'gone' | 'finished' | 'job_files' | 'job_bytes' | 'caller_bytes' };

/** Delivery attempts kept per job, the latest. */
const WEBHOOK_ATTEMPTS_KEPT = 20;

/** A finished job is removed this long after its retention ends, should no sweep run. */
const BACKSTOP_EXPIRY_S = 24 * 3600;

/** Past this the fair clock restarts at the next idle moment: BullMQ's priorities stop just below 2^21. */
const CLOCK_RESET_AT = 1_000_000;
/** A queued job BullMQ does not know this long after creation was never enqueued: see CREATE. */
const ORPHAN_AFTER_MS = 60_000;

export type MarkRunningResult =
  /** `attempts` counts every start; `handBacks` those of them that a shutting-down worker gave back. */
  | { outcome: 'started'; spec: JobSpec; deadline: Date; attempts: number; handBacks: number }
  | { outcome: 'missing' | 'finished' | 'cancel-requested' };

/**
 * The durable record of every job; BullMQ only carries the job id, and this store is what the API
 * reads. A live job is in Redis: its hash (spec, status, counters), its event stream (status changes
 * and every step, written once; the checkpoint a resumed job rebuilds its conversation from; and what
 * running code printed) and its artifacts' metadata. A finished job is a record in the artifact
 * store (see job-record.ts) and a small hash in Redis naming it, so Redis holds live work, not history.
 */
export class JobStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly retentionSeconds: number,
    /** Where finished jobs' records are kept: the artifact store, beside their files. */
    private readonly files: Pick<ArtifactStore, 'putRecord' | 'openRecord' | 'removeRecord' | 'removeJob'>,
  ) {}

  private readonly shas = new Map<string, string>();

  /**
   * Whether each job this store ends is queued for its webhook (WEBHOOKS_ENABLED), in the script that
   * records its end. Every process that ends jobs (the API too: a cancel before the start) sets it alike.
   */
  queueWebhooks = false;

  /** Told of each job this store ends, once its end is recorded (the worker counts them in its metrics). */
  onFinished: ((job: Pick<JobView, 'status' | 'stopReason' | 'provider' | 'createdAt' | 'finishedAt'>) => void) | undefined;

  /** Which jobs have files in the artifact store: `<bytes> <caller>` by job id. */
  private filesKey(): string {
    return `${this.prefix}:stored-files`;
  }

  /** Finished jobs (each has its record in the artifact store), scored by when the retention sweep removes them. */
  private retentionKey(): string {
    return `${this.prefix}:retention`;
  }

  /** The bytes a caller has in the artifact store (inputs and artifacts of all its jobs): its quota's tally. */
  private storedBytesKey(caller: string): string {
    return `${this.prefix}:caller:${encodeURIComponent(caller)}:stored-bytes`;
  }

  /** Runs a Lua script by its SHA (sent in full only the first time, or after a SCRIPT FLUSH). */
  private async run(script: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    let sha = this.shas.get(script);
    if (sha === undefined) {
      sha = createHash('sha1').update(script).digest('hex');
      this.shas.set(script, sha);
    }
    try {
      return await this.redis.evalsha(sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return this.redis.eval(script, keys.length, ...keys, ...args);
    }
  }

  private key(id: string, part?: string): string {
    return part ? `${this.prefix}:job:${id}:${part}` : `${this.prefix}:job:${id}`;
  }

  private callerKey(caller: string): string {
    // Not under `${prefix}:jobs:`, which is BullMQ's (the queue is named `jobs`): a caller named
    // `wait` must not land on the queue's own keys.
    return `${this.prefix}:caller:${encodeURIComponent(caller)}:jobs`;
  }

  /** The caller's queued and running jobs, scored by their queue priority: its cap and its place in the fair order. */
  private activeKey(caller: string): string {
    return `${this.prefix}:caller:${encodeURIComponent(caller)}:active`;
  }

  /** The fair-order clock: the highest queue priority a worker has started (see CREATE). */
  private clockKey(): string {
    return `${this.prefix}:fair-clock`;
  }

  /** Every key of a job, for removing it. */
  private allKeys(id: string): string[] {
    return [this.key(id), this.key(id, 'events'), ...this.historyKeys(id), this.key(id, 'artifact-data'), this.key(id, 'webhook-deliveries')];
  }

  /** Finished jobs whose webhook is yet to be delivered, scored by when their next attempt is due (or a claim's lease ends). */
  private webhooksDueKey(): string {
    return `${this.prefix}:webhooks:due`;
  }

  /**
   * A live job's keys that its record replaces when it finishes (the events go after a grace).
   * `steps` and `checkpoint` are an earlier release's copies of what the event stream holds; its
   * finished jobs keep them, and `artifact-data` (artifact bytes from before the artifact store),
   * until they expire.
   */
  private historyKeys(id: string): string[] {
    return [this.key(id, 'artifacts'), this.key(id, 'steps'), this.key(id, 'checkpoint')];
  }

  /**
   * Records a new queued job and places it in its caller's fair order, unless `idempotency` names a
   * key already used (its job is returned instead, whatever the cap) or the caller already has
   * `maxActive` queued or running jobs. One script, so neither check can be raced.
   */
  async create(
    id: string,
    spec: JobSpec,
    createdAt: Date,
    opts: {
      maxActive: number;
      idempotency?: { key: string; fingerprint: string; ttlSeconds: number };
      /** The caller's storage quota, which the job's inputs (spec.inputs) count against. */
      storageQuotaBytes?: number;
    },
  ): Promise<CreateOutcome> {
    const hash = {
      spec: JSON.stringify(spec),
      caller: spec.caller,
      status: 'queued',
      createdAt: createdAt.toISOString(),
      timeoutSeconds: String(spec.timeoutSeconds),
      attempts: '0',
      inputTokens: '0',
      outputTokens: '0',
    };
    const keys = [
      this.key(id),
      this.callerKey(spec.caller),
      this.key(id, 'events'),
      this.activeKey(spec.caller),
      this.clockKey(),
      ...['wait', 'active', 'prioritized', 'delayed', 'paused'].map((part) => queueKey(this.prefix, part)),
      this.filesKey(),
      this.storedBytesKey(spec.caller),
    ];
    const inputBytes = spec.inputs.length > 0 ? spec.inputs.reduce((sum, f) => sum + f.size, 0) : '';
    if (opts.idempotency) keys.push(this.idempotencyKey(spec.caller, opts.idempotency.key));
    // One script rather than MULTI: a single command and reply on the hottest write path.
    const [outcome, value] = (await this.run(CREATE, keys, [
      id,
      opts.maxActive,
      this.key(''),
      queueKey(this.prefix, ''),
      newJobId(createdAt.getTime() - ORPHAN_AFTER_MS).slice(0, 10),
      MAX_QUEUE_PRIORITY,
      CLOCK_RESET_AT,
      opts.idempotency?.fingerprint ?? '',
      opts.idempotency?.ttlSeconds ?? 0,
      inputBytes,
      opts.storageQuotaBytes ?? Number.MAX_SAFE_INTEGER,
      spec.caller,
      ...Object.entries(hash).flat(),
    ])) as [CreateOutcome['outcome'], string | number];
    switch (outcome) {
      case 'created':
        return { outcome, priority: Number(value), job: { ...summaryFromHash(id, hash, []), steps: [] } };
      case 'full':
        return { outcome, active: Number(value) };
      case 'quota':
        return { outcome, stored: Number(value) };
      default:
        return { outcome, jobId: String(value) };
    }
  }

  /** The caller a job belongs to, or null when there is no such job. */
  async owner(id: string): Promise<string | null> {
    return this.redis.hget(this.key(id), 'caller');
  }

  async status(id: string): Promise<JobStatus | null> {
    return (await this.redis.hget(this.key(id), 'status')) as JobStatus | null;
  }

  async isFinished(id: string): Promise<boolean> {
    const status = await this.status(id);
    return status === null || TERMINAL_STATUSES.includes(status);
  }

  /** A live job whole, in one transaction: its hash, its event stream and its artifacts' metadata. */
  private async snapshot(
    id: string,
  ): Promise<{ hash: Record<string, string>; entries: [string, string[]][]; artifacts: string[]; deliveries: string[] }> {
    const [[, hash], [, entries], [, artifacts], [, deliveries]] = (await this.redis
      .multi()
      .hgetall(this.key(id))
      .xrange(this.key(id, 'events'), '-', '+')
      .hvals(this.key(id, 'artifacts'))
      .lrange(this.key(id, 'webhook-deliveries'), 0, -1)
      .exec()) as [[null, Record<string, string>], [null, [string, string[]][]], [null, string[]], [null, string[]]];
    return { hash, entries, artifacts, deliveries };
  }

  /** The job as its owner sees it, or null when it does not exist or belongs to someone else. */
  async getFor(caller: string, id: string): Promise<JobView | null> {
    // One transaction: a job that finishes meanwhile is read whole from Redis or whole from its record.
    const { hash, entries, artifacts, deliveries } = await this.snapshot(id);
    if (hash.caller !== caller) return null;
    if (hash.record !== undefined) {
      const view = (await this.readRecord(id, hash.record))?.view;
      return view ? { ...view, webhookDeliveries: deliveriesOf(deliveries) } : null;
    }
    if (!hash.spec) return null;
    return { ...summaryFromHash(id, hash, artifacts), steps: stepsOf(entries) };
  }

  /**
   * The caller's jobs, newest first (ids sort by creation time). `cursor` is the last id of the
   * previous page. `nextCursor` is null on the last page: a full page looks one job further, so a
   * caller with exactly `limit` jobs left gets them and null, never a cursor to an empty page.
   */
  async list(
    caller: string,
    opts: { limit: number; cursor?: string; status?: JobStatus },
  ): Promise<{ jobs: JobSummary[]; nextCursor: string | null }> {
    const page = await this.scan(caller, opts);
    // A finished job's fields are in its record: the first line of each, read side by side.
    const jobs = await Promise.all(
      page.found.map(async ({ id, hash, artifacts, deliveries }) => {
        if (hash.record === undefined) return summaryFromHash(id, hash, artifacts);
        const header = await this.readHeader(id, hash.record);
        return header && { ...summaryOf(header), webhookDeliveries: deliveriesOf(deliveries) };
      }),
    );
    // A job deleted between the scan and its record's read is left out, as if deleted before.
    return { jobs: jobs.filter((j): j is JobSummary => j !== null), nextCursor: page.nextCursor };
  }

  /** The hashes (and live jobs' artifacts) of one page of `list`. */
  private async scan(
    caller: string,
    opts: { limit: number; cursor?: string; status?: JobStatus },
  ): Promise<{ found: { id: string; hash: Record<string, string>; artifacts: string[]; deliveries: string[] }[]; nextCursor: string | null }> {
    const found: { id: string; hash: Record<string, string>; artifacts: string[]; deliveries: string[] }[] = [];
    let from = opts.cursor ? `(${opts.cursor}` : '+';
    const batch = Math.max(opts.limit + 1, 50);
    // With a status filter, scanning is bounded so that one request cannot walk an unbounded history;
    // when the bound stops it, the cursor is the last id scanned, so the next page goes on from there.
    for (let scanned = 0; scanned < 2000; ) {
      const ids = await this.redis.zrange(this.callerKey(caller), from, '-', 'BYLEX', 'REV', 'LIMIT', 0, batch);
      if (ids.length === 0) return { found, nextCursor: null };
      scanned += ids.length;
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hgetall(this.key(id)).hvals(this.key(id, 'artifacts')).lrange(this.key(id, 'webhook-deliveries'), 0, -1);
      const replies = (await pipeline.exec()) ?? [];
      const gone: string[] = [];
      let more = false;
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i] as string;
        const hash = replies[3 * i]?.[1] as Record<string, string> | undefined;
        if (!hash?.spec && hash?.record === undefined) {
          gone.push(id); // expired after its retention time
        } else if (!opts.status || hash.status === opts.status) {
          if (found.length === opts.limit) {
            more = true; // the look-ahead: a job past this page exists
            break;
          }
          found.push({
            id,
            hash,
            artifacts: (replies[3 * i + 1]?.[1] as string[] | undefined) ?? [],
            deliveries: (replies[3 * i + 2]?.[1] as string[] | undefined) ?? [],
          });
        }
        from = `(${id}`;
      }
      if (gone.length > 0) await this.redis.zrem(this.callerKey(caller), ...gone);
      if (more) return { found, nextCursor: (found.at(-1) as { id: string }).id };
      if (ids.length < batch) return { found, nextCursor: null };
    }
    return { found, nextCursor: from.slice(1) };
  }

  /**
   * Moves a job to running (once per attempt), fixes its deadline on the first attempt, and returns
   * its spec — one round trip before the work starts.
   */
  async markRunning(id: string, now: Date): Promise<MarkRunningResult> {
    const res = (await this.run(
      MARK_RUNNING,
      [this.key(id), this.key(id, 'events'), this.clockKey()],
      [now.getTime(), now.toISOString(), JSON.stringify({ status: 'running' })],
    )) as [number, string?, number?, string?, number?];
    if (res[0] === -1) return { outcome: 'missing' };
    if (res[0] === 0) return { outcome: 'finished' };
    if (res[0] === 2) return { outcome: 'cancel-requested' };
    return {
      outcome: 'started',
      deadline: new Date(Number(res[1])),
      attempts: Number(res[2]),
      handBacks: Number(res[4] ?? 0),
      spec: JSON.parse(String(res[3])) as JobSpec,
    };
  }

  /** A running job goes back to queued while it waits for a retry, or for another worker after a hand-back. */
  async requeue(id: string, reason: { code: string; message: string }, opts: { handBack?: boolean; attempt?: number } = {}): Promise<void> {
    await this.run(
      REQUEUE,
      [this.key(id), this.key(id, 'events')],
      [JSON.stringify({ status: 'queued', retry: reason }), opts.handBack ? '1' : '0', opts.attempt ?? ''],
    );
  }

  /**
   * Records the steps of one turn (a model reply, or the tool calls it asked for) in one script: they
   * are the checkpoint too, so a job resumed after a crash never repeats a recorded step nor misses one.
   * Each step is sent once and appended once, whatever the job's length.
   */
  async recordSteps(id: string, steps: Step[], usage: Usage, opts: { attempt?: number } = {}): Promise<void> {
    const res = await this.run(
      RECORD_STEPS,
      [this.key(id), this.key(id, 'events')],
      [usage.inputTokens, usage.outputTokens, opts.attempt ?? '', ...steps.map((step) => JSON.stringify(step))],
    );
    if (res === -2) throw new AttemptSuperseded(id);
  }

  /**
   * Appends live output of the tool call whose step will have index `step`, one `output` event per
   * chunk, in order, in one script. Throws AttemptSuperseded as recordSteps does; writes nothing for
   * a job that was deleted or has ended.
   */
  async appendOutput(id: string, step: number, chunks: readonly OutputChunk[], opts: { attempt?: number } = {}): Promise<void> {
    if (chunks.length === 0) return;
    const res = await this.run(
      APPEND_OUTPUT,
      [this.key(id), this.key(id, 'events')],
      [opts.attempt ?? '', ...chunks.map(({ stream, text }) => JSON.stringify({ step, stream, text }))],
    );
    if (res === -2) throw new AttemptSuperseded(id);
  }

  /** The steps a job has recorded, in order: what a resumed job rebuilds its conversation from. */
  async recordedSteps(id: string): Promise<Step[]> {
    return stepsOf(await this.redis.xrange(this.key(id, 'events'), '-', '+'));
  }

  /**
   * Records an artifact whose bytes are already in the artifact store, unless a quota or the job's
   * end refuses it (then the caller removes the bytes).
   */
  async saveArtifact(
    id: string,
    caller: string,
    artifact: StoredArtifact,
    quota: { jobBytes: number; jobFiles: number; callerBytes: number },
  ): Promise<SaveArtifactOutcome> {
    const [outcome, replaced] = (await this.run(
      SAVE_ARTIFACT,
      [this.key(id), this.key(id, 'artifacts'), this.filesKey(), this.storedBytesKey(caller)],
      [artifact.name, JSON.stringify(artifact), artifact.size, quota.jobBytes, quota.jobFiles, quota.callerBytes, id, caller],
    )) as [SaveArtifactOutcome['outcome'], string?];
    if (outcome === 'saved') return replaced ? { outcome, replaced } : { outcome };
    return { outcome };
  }

  /** An artifact's metadata, for its owner only. */
  async artifact(caller: string, id: string, name: string): Promise<StoredArtifact | null> {
    const [[, owner], [, record], [, info]] = (await this.redis
      .multi()
      .hget(this.key(id), 'caller')
      .hget(this.key(id), 'record')
      .hget(this.key(id, 'artifacts'), name)
      .exec()) as [[null, string | null], [null, string | null], [null, string | null]];
    if (owner !== caller) return null;
    // In Redis while the job runs, or for a job an earlier release finished; else in its record.
    if (info !== null) return JSON.parse(info) as StoredArtifact;
    if (record === null) return null;
    return (await this.readHeader(id, record))?.artifacts.find((a) => a.name === name) ?? null;
  }

  /** The bytes of an artifact stored in Redis by a release before the artifact store (its metadata has no `file`). */
  async legacyArtifactBytes(id: string, name: string): Promise<Buffer | null> {
    return this.redis.hgetBuffer(this.key(id, 'artifact-data'), name);
  }

  /** An input file's metadata, for its owner only. */
  async input(caller: string, id: string, name: string): Promise<InputInfo | null> {
    const [owner, spec, record] = await this.redis.hmget(this.key(id), 'caller', 'spec', 'record');
    if (owner !== caller) return null;
    const inputs = spec ? (JSON.parse(spec) as JobSpec).inputs : record ? (await this.readHeader(id, record))?.job.inputs : undefined;
    return inputs?.find((f) => f.name === name) ?? null;
  }

  /** Bytes the caller holds in the artifact store, as its quota counts them. */
  async storedBytes(caller: string): Promise<number> {
    return Number((await this.redis.get(this.storedBytesKey(caller))) ?? 0);
  }

  /** The owner of a job's stored files, or null when it has none: kept beside the record, which may expire first. */
  async storedFilesOwner(id: string): Promise<string | null> {
    const entry = await this.redis.hget(this.filesKey(), id);
    return entry === null ? null : (/^\d+ (.*)$/s.exec(entry)?.[1] ?? null);
  }

  /**
   * Removes a job's record (the caller deleted it, or its retention ended): its keys, its place in
   * its caller's index, active set and stored-bytes tally. Its files are the caller's to remove
   * (from the artifact store). Returns whether there was anything to remove.
   */
  async remove(id: string): Promise<boolean> {
    // The owner never changes, so reading it first races nothing; the record may have expired already.
    const caller = (await this.redis.hget(this.key(id), 'caller')) ?? (await this.storedFilesOwner(id));
    const callerKeys =
      caller === null
        ? [this.key(id, 'none'), this.key(id, 'none'), this.key(id, 'none')]
        : [this.callerKey(caller), this.activeKey(caller), this.storedBytesKey(caller)];
    const res = await this.run(REMOVE, [this.filesKey(), this.retentionKey(), ...callerKeys, this.webhooksDueKey(), ...this.allKeys(id)], [id]);
    return res === 1;
  }

  /** Jobs whose retention ended by `now`: for the retention sweep, which removes their keys and directories. */
  async dueForRemoval(now: Date, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.retentionKey(), '-inf', now.getTime(), 'LIMIT', 0, limit);
  }

  /**
   * Ends a job unless it has already ended, and frees its place among its caller's active jobs;
   * returns whether this call ended it. The job's whole record goes to the artifact store first, then
   * one script (ARCHIVE) records the verdict and trims Redis to a small hash naming that record. A
   * crash between the two leaves the job live in Redis, whole, and an unnamed file the job's
   * directory loses with it; the job's next attempt finishes it. Each call writes a record of its
   * own, so of two racing finishers only the one whose script wins is named, and the other removes
   * its file.
   */
  async finish(
    id: string,
    outcome: {
      status: 'succeeded' | 'failed' | 'cancelled';
      stopReason: StopReason;
      result?: { output: string };
      error?: { code: string; message: string };
    },
    now = new Date(),
    /** The attempt (the store's `attempts` when it started) this verdict is of; a newer one wins. */
    fence: { attempt?: number } = {},
  ): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      const { hash, entries, artifacts } = await this.snapshot(id);
      const caller = hash.caller;
      if (caller === undefined) return false;
      if (!hash.spec || TERMINAL_STATUSES.includes(hash.status as JobStatus)) {
        // Ended already; off the active set all the same, should its removal have been missed.
        await this.redis.zrem(this.activeKey(caller), id);
        return false;
      }
      // Taken over by a newer attempt: its verdict is that attempt's to record. (MARK_RUNNING moves
      // `version`, so the script below refuses a takeover that lands after this read.)
      if (fence.attempt !== undefined && hash.attempts !== String(fence.attempt)) return false;
      const events = entries.map(([eventId, fields]) => eventOf(eventId, fields));
      const final: JobEvent = {
        id: nextEventId(events.at(-1)?.id, now),
        type: 'status',
        data: JSON.stringify({ status: outcome.status, stopReason: outcome.stopReason, error: outcome.error ?? null }),
      };
      const ended: Record<string, string> = {
        ...hash,
        status: outcome.status,
        finishedAt: now.toISOString(),
        stopReason: outcome.stopReason,
        result: outcome.result ? JSON.stringify(outcome.result) : '',
        error: outcome.error ? JSON.stringify(outcome.error) : '',
      };
      const header: RecordHeader = {
        format: RECORD_FORMAT,
        caller,
        job: jobFromHash(id, ended),
        artifacts: artifacts.map((a) => JSON.parse(a) as StoredArtifact),
      };
      const record = await this.files.putRecord(id, await encodeRecord(header, [...events, final]));
      const res = await this.run(
        ARCHIVE,
        [this.key(id), this.key(id, 'events'), this.activeKey(caller), this.retentionKey(), this.webhooksDueKey(), ...this.historyKeys(id)],
        [
          id,
          hash.version ?? '0',
          final.id,
          final.data,
          EVENTS_GRACE_MS,
          now.getTime() + this.retentionSeconds * 1000,
          this.retentionSeconds + BACKSTOP_EXPIRY_S,
          this.queueWebhooks ? now.getTime() : '',
          ...Object.entries(finishedHash(ended, record)).flat(),
        ],
      );
      if (res === 1) {
        this.onFinished?.(header.job);
        return true;
      }
      if (res === -1) {
        // Deleted meanwhile: the directory the record made belongs to no job.
        await this.files.removeJob(id);
        return false;
      }
      await this.files.removeRecord(id, record);
      if (res === 0) return false;
      // A step or an artifact landed (another worker took the job over): read it again.
      if (attempt === FINISH_ATTEMPTS) throw new Error(`job ${id} kept changing while it was being finished`);
    }
  }

  /** Webhook deliveries due by `now`, claimed for `leaseMs` (see CLAIM_WEBHOOKS), with the attempts each has made. */
  async claimWebhooks(now: Date, leaseMs: number, limit: number): Promise<{ id: string; attempts: number }[]> {
    const flat = (await this.run(CLAIM_WEBHOOKS, [this.webhooksDueKey()], [now.getTime(), now.getTime() + leaseMs, limit, this.key('')])) as (
      | string
      | number
    )[];
    const claimed: { id: string; attempts: number }[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) claimed.push({ id: String(flat[i]), attempts: Number(flat[i + 1]) });
    return claimed;
  }

  /** The finished job a webhook delivery is about, as its record holds it; null when it is gone. */
  async finishedRecord(id: string): Promise<RecordHeader | null> {
    const record = await this.redis.hget(this.key(id), 'record');
    return record === null ? null : this.readHeader(id, record);
  }

  /**
   * Records a delivery attempt on its job (the last WEBHOOK_ATTEMPTS_KEPT are kept) and when the next
   * is due, null when none follows. Returns false when the job is gone, which ends its delivery.
   */
  async recordWebhookAttempt(id: string, delivery: WebhookDelivery | null, next: Date | null): Promise<boolean> {
    if (delivery === null) {
      // Nothing was tried (no URL to send to): the delivery just ends.
      await this.redis.zrem(this.webhooksDueKey(), id);
      return true;
    }
    const res = await this.run(
      RECORD_WEBHOOK,
      [this.key(id), this.key(id, 'webhook-deliveries'), this.webhooksDueKey()],
      [id, JSON.stringify(delivery), next === null ? '' : next.getTime(), WEBHOOK_ATTEMPTS_KEPT],
    );
    return res === 1;
  }

  /**
   * Where a job's events are, for its owner: in its Redis stream (`eventsKey`) while it is live, or
   * the finished job's recorded ones; null when there is no such job.
   */
  async eventLog(caller: string, id: string): Promise<{ live: true } | { live: false; events: JobEvent[] } | null> {
    const [owner, status, record] = await this.redis.hmget(this.key(id), 'caller', 'status', 'record');
    if (owner !== caller || !status) return null;
    if (!record) return { live: true };
    const read = await this.readRecord(id, record);
    return read && { live: false, events: read.events };
  }

  /** A finished job's record, or null when it is gone (the job was deleted after its hash was read). */
  private async readRecord(id: string, record: string): Promise<Awaited<ReturnType<typeof decodeRecord>> | null> {
    return this.whileExists(async () => decodeRecord(await this.files.openRecord(id, record)));
  }

  private async readHeader(id: string, record: string): Promise<RecordHeader | null> {
    return this.whileExists(async () => readRecordHeader(await this.files.openRecord(id, record)));
  }

  private async whileExists<T>(read: () => Promise<T>): Promise<T | null> {
    try {
      return await read();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Frees a claim whose job could not be created, so a retry of the request can succeed. */
  async releaseIdempotencyKey(caller: string, key: string): Promise<void> {
    await this.redis.del(this.idempotencyKey(caller, key));
  }

  private idempotencyKey(caller: string, key: string): string {
    // Hashed: the client's key may be long or odd, and the caller part must not collide with it.
    return `${this.prefix}:idem:${createHash('sha256').update(caller).update('\0').update(key).digest('hex')}`;
  }

  /** Marks a cancel request; returns the status the job had, or null when there is no such job. */
  async requestCancel(id: string): Promise<JobStatus | null> {
    return (await this.run(REQUEST_CANCEL, [this.key(id)], [])) as JobStatus | null;
  }

  eventsKey(id: string): string {
    return this.key(id, 'events');
  }

  /**
   * Which of these jobs their owners asked to stop, cancelled or deleted (gone), in one round trip:
   * a worker polls its running jobs with it, so a cancel whose message it missed (a reconnect) still
   * reaches it.
   */
  async cancelRequested(ids: readonly string[]): Promise<string[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hmget(this.key(id), 'status', 'cancelRequested');
    const replies = (await pipeline.exec()) ?? [];
    return ids.filter((_id, i) => {
      const [status, flag] = (replies[i]?.[1] ?? []) as (string | null)[];
      return status === null || flag === '1';
    });
  }

  /**
   * Counts an error of a job that is no AppError (a bug, most likely) and returns how many the job
   * has hit, this one included: counted on the job, so all its attempts together are bounded. 0 for a
   * job that ended or is gone, whose hash must not change or come back.
   */
  async countUnknownError(id: string): Promise<number> {
    const script = `
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
return redis.call('HINCRBY', KEYS[1], 'unknownErrors', 1)
`;
    return Number(await this.run(script, [this.key(id)], []));
  }
}

/** A job as the list shows it: everything but its steps. */
export type JobSummary = Omit<JobView, 'steps'>;

function parseJson<T>(raw: string | undefined): T | null {
  return raw ? (JSON.parse(raw) as T) : null;
}

/** What Redis keeps of a finished job: enough to own, filter and expire it, and where its record is. */
function finishedHash(ended: Record<string, string>, record: string): Record<string, string> {
  const kept: Record<string, string> = { record };
  for (const field of FINISHED_FIELDS) {
    const value = ended[field];
    if (value !== undefined && value !== '') kept[field] = value;
  }
  return kept;
}

const FINISHED_FIELDS = [
  'caller',
  'status',
  'createdAt',
  'startedAt',
  'finishedAt',
  'stopReason',
  'error',
  'inputTokens',
  'outputTokens',
  // REMOVE frees the key with the job.
  'idempotencyKey',
] as const;

/** A finished job's delivery attempts as kept in Redis (JSON, oldest first); one that does not parse is left out. */
function deliveriesOf(raw: readonly string[]): WebhookDelivery[] {
  return raw.flatMap((entry) => {
    try {
      return [JSON.parse(entry) as WebhookDelivery];
    } catch {
      return [];
    }
  });
}

function eventOf(id: string, fields: string[]): JobEvent {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] as string] = fields[i + 1] as string;
  return { id, type: eventType(f.type), data: f.data ?? 'null' };
}

function stepsOf(entries: [string, string[]][]): Step[] {
  return entries.map(([id, fields]) => eventOf(id, fields)).filter((e) => e.type === 'step').map((e) => JSON.parse(e.data) as Step);
}

/**
 * The stream id the final event gets, chosen before the script that adds it so the record can hold
 * it: after the last one, at `now` when the clock allows. ARCHIVE adds it only if nothing was added since.
 */
function nextEventId(last: string | undefined, now: Date): string {
  const [ms, seq] = (last ?? '0-0').split('-').map((part) => BigInt(part)) as [bigint, bigint];
  const at = BigInt(now.getTime());
  return at > ms ? `${at}-0` : `${ms}-${seq + 1n}`;
}

function summaryFromHash(id: string, hash: Record<string, string>, artifacts: string[]): JobSummary {
  return { ...jobFromHash(id, hash), artifacts: publicArtifacts(artifacts.map((a) => JSON.parse(a) as StoredArtifact)), webhookDeliveries: [] };
}

function jobFromHash(id: string, hash: Record<string, string>): RecordHeader['job'] {
  const spec = JSON.parse(hash.spec as string) as JobSpec;
  return {
    id,
    status: hash.status as JobStatus,
    task: spec.task,
    provider: spec.provider,
    model: spec.model,
    ...(spec.system === undefined ? {} : { system: spec.system }),
    tools: spec.tools,
    maxSteps: spec.maxSteps,
    timeoutSeconds: spec.timeoutSeconds,
    metadata: spec.metadata,
    webhook: spec.webhook ?? null,
    createdAt: hash.createdAt as string,
    startedAt: hash.startedAt ?? null,
    finishedAt: hash.finishedAt ?? null,
    attempts: Number(hash.attempts ?? 0),
    stopReason: (hash.stopReason || null) as StopReason | null,
    result: parseJson(hash.result),
    error: parseJson(hash.error),
    usage: { inputTokens: Number(hash.inputTokens ?? 0), outputTokens: Number(hash.outputTokens ?? 0) },
    inputs: spec.inputs ?? [],
  };
}
