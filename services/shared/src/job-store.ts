import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  TERMINAL_STATUSES,
  type ArtifactInfo,
  type JobSpec,
  type JobStatus,
  type JobView,
  type Step,
  type StopReason,
  type Usage,
} from './job-schema';

const EVENTS_MAXLEN = 10_000;

// Transitions are Lua scripts so that "only if not already terminal" holds against every other
// writer (a cancelling API replica, a stalled-job takeover, a late worker).
const CREATE = `
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'data', '{"status":"queued"}')
return 1
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
return {1, redis.call('HGET', KEYS[1], 'deadlineMs'), attempts, redis.call('HGET', KEYS[1], 'spec')}
`;

const REQUEUE = `
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'data', ARGV[1])
return 1
`;

const FINISH = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finishedAt', ARGV[2], 'stopReason', ARGV[3], 'result', ARGV[4], 'error', ARGV[5])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'type', 'status', 'data', ARGV[6])
local ttl = tonumber(ARGV[7])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
`;

const REQUEST_CANCEL = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
return st
`;

const CLAIM_IDEMPOTENCY_KEY = `
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
  return {'new', ARGV[2]}
end
local fp, id = string.match(v, '^(%S+) (%S+)$')
if fp == ARGV[1] then return {'existing', id} end
return {'conflict', id}
`;

export type IdempotencyClaim = { outcome: 'new' | 'existing' | 'conflict'; jobId: string };

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

  /** Every key of a job, so that finishing can set one expiry on all of them. */
  private allKeys(id: string): string[] {
    return [this.key(id), this.key(id, 'events'), this.key(id, 'steps'), this.key(id, 'checkpoint'), this.key(id, 'artifacts')];
  }

  /** Records a new queued job and returns it as the API shows it. */
  async create(id: string, spec: JobSpec, createdAt: Date): Promise<JobView> {
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
    // One script rather than MULTI: a single command and reply on the hottest write path.
    await this.run(CREATE, [this.key(id), this.callerKey(spec.caller), this.key(id, 'events')], [id, EVENTS_MAXLEN, ...Object.entries(hash).flat()]);
    return toView(id, hash, [], []);
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

  /** The caller's jobs, newest first (ids sort by creation time). `cursor` is the last id of the previous page. */
  async list(
    caller: string,
    opts: { limit: number; cursor?: string; status?: JobStatus },
  ): Promise<{ jobs: JobView[]; nextCursor: string | null }> {
    const jobs: JobView[] = [];
    let from = opts.cursor ? `(${opts.cursor}` : '+';
    const batch = Math.max(opts.limit, 50);
    // With a status filter, scanning is bounded so that one request cannot walk an unbounded history.
    for (let scanned = 0; jobs.length < opts.limit && scanned < 2000; ) {
      const ids = await this.redis.zrange(this.callerKey(caller), from, '-', 'BYLEX', 'REV', 'LIMIT', 0, batch);
      if (ids.length === 0) return { jobs, nextCursor: null };
      scanned += ids.length;
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hgetall(this.key(id));
      const hashes = (await pipeline.exec()) ?? [];
      const gone: string[] = [];
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i] as string;
        const hash = hashes[i]?.[1] as Record<string, string> | undefined;
        from = `(${id}`;
        if (!hash?.spec) {
          gone.push(id); // expired after its retention time
          continue;
        }
        if (opts.status && hash.status !== opts.status) continue;
        jobs.push(toView(id, hash, [], []));
        if (jobs.length === opts.limit) break;
      }
      if (gone.length > 0) await this.redis.zrem(this.callerKey(caller), ...gone);
      if (ids.length < batch && jobs.length < opts.limit) return { jobs, nextCursor: null };
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
      [this.key(id), this.key(id, 'events')],
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
    const multi = this.redis.multi();
    for (const step of steps) {
      multi.rpush(this.key(id, 'steps'), JSON.stringify(step));
      multi.xadd(this.key(id, 'events'), 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'type', 'step', 'data', JSON.stringify(step));
    }
    multi.set(this.key(id, 'checkpoint'), JSON.stringify(checkpoint));
    if (usage.inputTokens) multi.hincrby(this.key(id), 'inputTokens', usage.inputTokens);
    if (usage.outputTokens) multi.hincrby(this.key(id), 'outputTokens', usage.outputTokens);
    await multi.exec();
  }

  /** How many steps are recorded: the index the next step will get. */
  async stepCount(id: string): Promise<number> {
    return this.redis.llen(this.key(id, 'steps'));
  }

  async checkpoint<T>(id: string): Promise<T | null> {
    const raw = await this.redis.get(this.key(id, 'checkpoint'));
    return raw === null ? null : (JSON.parse(raw) as T);
  }

  async addArtifact(id: string, info: ArtifactInfo, data: Buffer): Promise<void> {
    await this.redis
      .multi()
      .hset(this.key(id, 'artifacts'), info.name, JSON.stringify(info))
      .hset(this.key(id, 'artifact-data'), info.name, data)
      .exec();
  }

  async artifact(caller: string, id: string, name: string): Promise<{ info: ArtifactInfo; data: Buffer } | null> {
    const [[, owner], [, info], [, data]] = (await this.redis
      .multi()
      .hget(this.key(id), 'caller')
      .hget(this.key(id, 'artifacts'), name)
      .hgetBuffer(this.key(id, 'artifact-data'), name)
      .exec()) as [[null, string | null], [null, string | null], [null, Buffer | null]];
    if (owner !== caller || info === null || data === null) return null;
    return { info: JSON.parse(info) as ArtifactInfo, data };
  }

  /** Ends a job unless it has already ended; returns whether this call ended it. */
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
    const keys = [...this.allKeys(id), this.key(id, 'artifact-data')];
    const res = await this.run(FINISH, keys, [
      outcome.status,
      now.toISOString(),
      outcome.stopReason,
      outcome.result ? JSON.stringify(outcome.result) : '',
      outcome.error ? JSON.stringify(outcome.error) : '',
      JSON.stringify({ status: outcome.status, stopReason: outcome.stopReason, error: outcome.error ?? null }),
      this.retentionSeconds,
      EVENTS_MAXLEN,
    ]);
    return res === 1;
  }

  /**
   * Claims `key` for the caller's request with body fingerprint `fingerprint`. The first claim wins
   * atomically (so concurrent duplicates create one job); later claims learn its job id, or that the
   * key was used for another body.
   */
  async claimIdempotencyKey(caller: string, key: string, fingerprint: string, newJobId: string, ttlSeconds: number): Promise<IdempotencyClaim> {
    const [outcome, jobId] = (await this.run(CLAIM_IDEMPOTENCY_KEY, [this.idempotencyKey(caller, key)], [fingerprint, newJobId, ttlSeconds])) as [
      IdempotencyClaim['outcome'],
      string,
    ];
    return { outcome, jobId };
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
    artifacts: artifacts.map((a) => JSON.parse(a) as ArtifactInfo).sort((a, b) => a.name.localeCompare(b.name)),
  };
}
