import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  TERMINAL_STATUSES,
  type ArtifactInfo,
  type InputInfo,
  type JobSpec,
  type JobStatus,
  type JobView,
  type Step,
  type StopReason,
  type Usage,
} from './job-schema';
import { newJobId } from './ids';
import { MAX_QUEUE_PRIORITY, queueKey } from './queue';

const EVENTS_MAXLEN = 10_000;

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
 * ARGV: 1 id, 2 events maxlen, 3 active cap, 4 job key prefix, 5 BullMQ job key prefix,
 *       6 time prefix of ids old enough to be orphans, 7 max priority, 8 clock reset threshold,
 *       9 request fingerprint, 10 idempotency ttl s, 11 input bytes ('' for a job without inputs),
 *       12 caller's storage quota in bytes, 13 caller, 14.. job hash fields
 */
const CREATE = `
local idem = KEYS[13]
if idem then
  local v = redis.call('GET', idem)
  if v then
    local fp, id = string.match(v, '^(%S+) (%S+)$')
    if fp == ARGV[9] then return {'existing', id} end
    return {'conflict', id}
  end
end

local active = KEYS[4]
local n = redis.call('ZCARD', active)
if n >= tonumber(ARGV[3]) then
  -- Only at the cap: drop ids whose job ended or is gone, so a missed removal never locks the caller
  -- out. A large set is sampled; every stale id is met in time.
  local ids
  if n <= 1000 then ids = redis.call('ZRANGE', active, 0, -1) else ids = redis.call('ZRANDMEMBER', active, 1000) end
  for _, id in ipairs(ids) do
    local st = redis.call('HGET', ARGV[4] .. id, 'status')
    local ended = (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled'
    -- Not ended yet unknown to BullMQ long after creation: its API replica died between storing and
    -- enqueueing it, or BullMQ failed it and the verdict was never recorded. Ids start with their
    -- creation time, so comparing the first 10 characters compares times.
    local orphan = (not ended) and string.sub(id, 1, 10) < ARGV[6] and redis.call('EXISTS', ARGV[5] .. id) == 0
    if ended or orphan then redis.call('ZREM', active, id) end
  end
  n = redis.call('ZCARD', active)
  if n >= tonumber(ARGV[3]) then return {'full', n} end
end

local clock = tonumber(redis.call('GET', KEYS[5]) or '1')
if clock >= tonumber(ARGV[8]) and redis.call('LLEN', KEYS[6]) == 0 and redis.call('LLEN', KEYS[7]) == 0
    and redis.call('ZCARD', KEYS[8]) == 0 and redis.call('ZCARD', KEYS[9]) == 0 and redis.call('LLEN', KEYS[10]) == 0 then
  clock = 1
  redis.call('SET', KEYS[5], clock)
end
if ARGV[11] ~= '' then
  local stored = tonumber(redis.call('GET', KEYS[12]) or '0')
  if stored + tonumber(ARGV[11]) > tonumber(ARGV[12]) then return {'quota', stored} end
  redis.call('INCRBY', KEYS[12], ARGV[11])
  redis.call('HSET', KEYS[11], ARGV[1], ARGV[11] .. ' ' .. ARGV[13])
end
local priority = clock
if n > 0 then
  local latest = tonumber(redis.call('ZRANGE', active, -1, -1, 'WITHSCORES')[2])
  priority = math.max(clock, math.min(latest + 1, clock + n))
end
priority = math.min(priority, tonumber(ARGV[7]))

redis.call('HSET', KEYS[1], 'priority', priority, unpack(ARGV, 14))
if idem then redis.call('HSET', KEYS[1], 'idempotencyKey', idem) end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', active, priority, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'data', '{"status":"queued"}')
if idem then redis.call('SET', idem, ARGV[9] .. ' ' .. ARGV[1], 'EX', ARGV[10]) end
return {'created', priority}
`;

const MARK_RUNNING = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {0} end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return {2} end
redis.call('HSET', KEYS[1], 'status', 'running')
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'startedAt') then
  local deadline = tonumber(ARGV[1]) + tonumber(redis.call('HGET', KEYS[1], 'timeoutSeconds')) * 1000
  redis.call('HSET', KEYS[1], 'startedAt', ARGV[2], 'deadlineMs', tostring(deadline))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'data', ARGV[3])
-- The fair clock follows the highest priority started (see CREATE); jobs from before fair order have none.
local priority = tonumber(redis.call('HGET', KEYS[1], 'priority'))
if priority and priority > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], priority) end
return {1, redis.call('HGET', KEYS[1], 'deadlineMs'), attempts, redis.call('HGET', KEYS[1], 'spec')}
`;

const REQUEUE = `
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'data', ARGV[1])
return 1
`;

// A job with stored files is removed by the retention sweep (removeJob), which frees its bytes on
// disk and in its caller's quota; its keys' own expiry comes later, as a backstop should no sweep run.
// KEYS: 1 caller's active jobs, 2 stored files by job, 3 retention schedule, 4 job, 5 job events,
//       6.. the job's other keys (all get the retention expiry).
// ARGV: 1 status, 2 finishedAt, 3 stopReason, 4 result, 5 error, 6 status event, 7 retention s,
//       8 events maxlen, 9 id, 10 removal time ms, 11 backstop s
const FINISH = `
-- Off the active set whatever the outcome: an ended job that is still listed was missed before.
redis.call('ZREM', KEYS[1], ARGV[9])
local st = redis.call('HGET', KEYS[4], 'status')
if not st then return -1 end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
redis.call('HSET', KEYS[4], 'status', ARGV[1], 'finishedAt', ARGV[2], 'stopReason', ARGV[3], 'result', ARGV[4], 'error', ARGV[5])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'type', 'status', 'data', ARGV[6])
local ttl = tonumber(ARGV[7])
if redis.call('HEXISTS', KEYS[2], ARGV[9]) == 1 then
  redis.call('ZADD', KEYS[3], ARGV[10], ARGV[9])
  ttl = ttl + tonumber(ARGV[11])
end
for i = 4, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
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
 *       5 caller's stored bytes, 6 job, 7.. the job's other keys
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
local idem = redis.call('HGET', KEYS[6], 'idempotencyKey')
if idem then redis.call('DEL', idem) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
found = found + redis.call('DEL', unpack(KEYS, 6))
if found > 0 then return 1 end
return 0
`;

/**
 * Appends steps and the checkpoint after them, only while the job exists: a worker still running a
 * job its owner deleted must not bring its keys back.
 * KEYS: 1 job, 2 steps, 3 events, 4 checkpoint
 * ARGV: 1 checkpoint, 2 input tokens, 3 output tokens, 4 events maxlen, 5.. steps
 */
const RECORD_STEPS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 5, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'step', 'data', ARGV[i])
end
redis.call('SET', KEYS[4], ARGV[1])
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'inputTokens', ARGV[2]) end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'outputTokens', ARGV[3]) end
return 1
`;

const REQUEST_CANCEL = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
return st
`;

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

/** An artifact's metadata as stored: what the API shows, plus where its bytes are. */
export interface StoredArtifact extends ArtifactInfo {
  /** Its id in the artifact store; absent for one stored in Redis by an earlier release. */
  file?: string;
}

/** A finished job with stored files is removed this long after its retention ends, should no sweep run first. */
const BACKSTOP_EXPIRY_S = 24 * 3600;

/** Past this the fair clock restarts at the next idle moment: BullMQ's priorities stop just below 2^21. */
const CLOCK_RESET_AT = 1_000_000;
/** A queued job BullMQ does not know this long after creation was never enqueued: see CREATE. */
const ORPHAN_AFTER_MS = 60_000;

export type MarkRunningResult =
  | { outcome: 'started'; spec: JobSpec; deadline: Date; attempts: number }
  | { outcome: 'missing' | 'finished' | 'cancel-requested' };

/**
 * The durable record of every job: its spec, status, steps, checkpoint and event stream, in Redis.
 * BullMQ only carries the job id; this store is what the API reads.
 */
export class JobStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly retentionSeconds: number,
  ) {}

  private readonly shas = new Map<string, string>();

  /** Which jobs have files in the artifact store: `<bytes> <caller>` by job id. */
  private filesKey(): string {
    return `${this.prefix}:stored-files`;
  }

  /** Finished jobs with stored files, scored by when the retention sweep removes them. */
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

  /**
   * Every key of a job, so that finishing can set one expiry on all of them. `artifact-data` held
   * artifact bytes before the artifact store: jobs from then keep it until they expire.
   */
  private allKeys(id: string): string[] {
    return [
      this.key(id),
      this.key(id, 'events'),
      this.key(id, 'steps'),
      this.key(id, 'checkpoint'),
      this.key(id, 'artifacts'),
      this.key(id, 'artifact-data'),
    ];
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
      EVENTS_MAXLEN,
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
        return { outcome, priority: Number(value), job: toView(id, hash, [], []) };
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

  /** The job as its owner sees it, or null when it does not exist or belongs to someone else. */
  async getFor(caller: string, id: string): Promise<JobView | null> {
    const [[, hash], [, steps], [, artifacts]] = (await this.redis
      .multi()
      .hgetall(this.key(id))
      .lrange(this.key(id, 'steps'), 0, -1)
      .hvals(this.key(id, 'artifacts'))
      .exec()) as [[null, Record<string, string>], [null, string[]], [null, string[]]];
    if (!hash.spec || hash.caller !== caller) return null;
    return toView(id, hash, steps, artifacts);
  }

  /**
   * The caller's jobs, newest first (ids sort by creation time). `cursor` is the last id of the
   * previous page. `nextCursor` is null on the last page: a full page looks one job further, so a
   * caller with exactly `limit` jobs left gets them and null, never a cursor to an empty page.
   */
  async list(
    caller: string,
    opts: { limit: number; cursor?: string; status?: JobStatus },
  ): Promise<{ jobs: JobView[]; nextCursor: string | null }> {
    const jobs: JobView[] = [];
    let from = opts.cursor ? `(${opts.cursor}` : '+';
    const batch = Math.max(opts.limit + 1, 50);
    // With a status filter, scanning is bounded so that one request cannot walk an unbounded history;
    // when the bound stops it, the cursor is the last id scanned, so the next page goes on from there.
    for (let scanned = 0; scanned < 2000; ) {
      const ids = await this.redis.zrange(this.callerKey(caller), from, '-', 'BYLEX', 'REV', 'LIMIT', 0, batch);
      if (ids.length === 0) return { jobs, nextCursor: null };
      scanned += ids.length;
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hgetall(this.key(id));
      const hashes = (await pipeline.exec()) ?? [];
      const gone: string[] = [];
      let more = false;
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i] as string;
        const hash = hashes[i]?.[1] as Record<string, string> | undefined;
        if (!hash?.spec) {
          gone.push(id); // expired after its retention time
        } else if (!opts.status || hash.status === opts.status) {
          if (jobs.length === opts.limit) {
            more = true; // the look-ahead: a job past this page exists
            break;
          }
          jobs.push(toView(id, hash, [], []));
        }
        from = `(${id}`;
      }
      if (gone.length > 0) await this.redis.zrem(this.callerKey(caller), ...gone);
      if (more) return { jobs, nextCursor: (jobs.at(-1) as JobView).id };
      if (ids.length < batch) return { jobs, nextCursor: null };
    }
    return { jobs, nextCursor: from.slice(1) };
  }

  /**
   * Moves a job to running (once per attempt), fixes its deadline on the first attempt, and returns
   * its spec — one round trip before the work starts.
   */
  async markRunning(id: string, now: Date): Promise<MarkRunningResult> {
    const res = (await this.run(
      MARK_RUNNING,
      [this.key(id), this.key(id, 'events'), this.clockKey()],
      [now.getTime(), now.toISOString(), JSON.stringify({ status: 'running' }), EVENTS_MAXLEN],
    )) as [number, string?, number?, string?];
    if (res[0] === -1) return { outcome: 'missing' };
    if (res[0] === 0) return { outcome: 'finished' };
    if (res[0] === 2) return { outcome: 'cancel-requested' };
    return { outcome: 'started', deadline: new Date(Number(res[1])), attempts: Number(res[2]), spec: JSON.parse(String(res[3])) as JobSpec };
  }

  /** A running job goes back to queued while it waits for a retry. */
  async requeue(id: string, reason: { code: string; message: string }): Promise<void> {
    await this.run(REQUEUE, [this.key(id), this.key(id, 'events')], [JSON.stringify({ status: 'queued', retry: reason }), EVENTS_MAXLEN]);
  }

  /**
   * Records steps and the checkpoint that follows them in one transaction, so a job resumed after a
   * crash never repeats a recorded step nor misses one.
   */
  async recordSteps(id: string, steps: Step[], checkpoint: unknown, usage: Usage): Promise<void> {
    await this.run(
      RECORD_STEPS,
      [this.key(id), this.key(id, 'steps'), this.key(id, 'events'), this.key(id, 'checkpoint')],
      [JSON.stringify(checkpoint), usage.inputTokens, usage.outputTokens, EVENTS_MAXLEN, ...steps.map((step) => JSON.stringify(step))],
    );
  }

  async checkpoint<T>(id: string): Promise<T | null> {
    const raw = await this.redis.get(this.key(id, 'checkpoint'));
    return raw === null ? null : (JSON.parse(raw) as T);
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
    const [[, owner], [, info]] = (await this.redis
      .multi()
      .hget(this.key(id), 'caller')
      .hget(this.key(id, 'artifacts'), name)
      .exec()) as [[null, string | null], [null, string | null]];
    if (owner !== caller || info === null) return null;
    return JSON.parse(info) as StoredArtifact;
  }

  /** The bytes of an artifact stored in Redis by a release before the artifact store (its metadata has no `file`). */
  async legacyArtifactBytes(id: string, name: string): Promise<Buffer | null> {
    return this.redis.hgetBuffer(this.key(id, 'artifact-data'), name);
  }

  /** An input file's metadata, for its owner only. */
  async input(caller: string, id: string, name: string): Promise<InputInfo | null> {
    const [owner, spec] = await this.redis.hmget(this.key(id), 'caller', 'spec');
    if (owner !== caller || !spec) return null;
    return (JSON.parse(spec) as JobSpec).inputs?.find((f) => f.name === name) ?? null;
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
    const res = await this.run(REMOVE, [this.filesKey(), this.retentionKey(), ...callerKeys, ...this.allKeys(id)], [id]);
    return res === 1;
  }

  /** Jobs whose retention ended by `now` and that still have stored files: for the retention sweep. */
  async dueForRemoval(now: Date, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.retentionKey(), '-inf', now.getTime(), 'LIMIT', 0, limit);
  }

  /** Ends a job unless it has already ended, and frees its place among its caller's active jobs; returns whether this call ended it. */
  async finish(
    id: string,
    outcome: {
      status: 'succeeded' | 'failed' | 'cancelled';
      stopReason: StopReason;
      result?: { output: string };
      error?: { code: string; message: string };
    },
    now = new Date(),
  ): Promise<boolean> {
    // The caller names the active set; it never changes, so reading it first races nothing.
    const caller = await this.redis.hget(this.key(id), 'caller');
    if (caller === null) return false;
    const keys = [this.activeKey(caller), this.filesKey(), this.retentionKey(), ...this.allKeys(id)];
    const res = await this.run(FINISH, keys, [
      outcome.status,
      now.toISOString(),
      outcome.stopReason,
      outcome.result ? JSON.stringify(outcome.result) : '',
      outcome.error ? JSON.stringify(outcome.error) : '',
      JSON.stringify({ status: outcome.status, stopReason: outcome.stopReason, error: outcome.error ?? null }),
      this.retentionSeconds,
      EVENTS_MAXLEN,
      id,
      now.getTime() + this.retentionSeconds * 1000,
      BACKSTOP_EXPIRY_S,
    ]);
    return res === 1;
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
}

function parseJson<T>(raw: string | undefined): T | null {
  return raw ? (JSON.parse(raw) as T) : null;
}

function toView(id: string, hash: Record<string, string>, steps: string[], artifacts: string[]): JobView {
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
    createdAt: hash.createdAt as string,
    startedAt: hash.startedAt ?? null,
    finishedAt: hash.finishedAt ?? null,
    attempts: Number(hash.attempts ?? 0),
    stopReason: (hash.stopReason || null) as StopReason | null,
    result: parseJson(hash.result),
    error: parseJson(hash.error),
    usage: { inputTokens: Number(hash.inputTokens ?? 0), outputTokens: Number(hash.outputTokens ?? 0) },
    steps: steps.map((s) => JSON.parse(s) as Step),
    inputs: spec.inputs ?? [],
    // Where the bytes are is the store's business, not the client's.
    artifacts: artifacts
      .map((a) => (({ file: _file, ...info }: StoredArtifact): ArtifactInfo => info)(JSON.parse(a) as StoredArtifact))
      .sort((a, b) => a.name.localeCompare(b.name)),
  };
}
