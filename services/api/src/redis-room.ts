import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/src/logger';
import { withTimeout } from '../../shared/src/time';

/** Redis is sampled at most this often, however many requests ask. */
const SAMPLE_EVERY_MS = 1000;
/** A sample that takes longer than this is given up: the state stays as it was. */
const SAMPLE_TIMEOUT_MS = 1000;
/**
 * Once refusing, submissions are taken again only when Redis is more than this many points below the
 * limit, so that a Redis hovering at the limit does not flip (and log) with every sample.
 */
const HYSTERESIS_PERCENT = 2;

/**
 * Whether Redis is too full to take new jobs. Its maxmemory with `noeviction` makes every write fail
 * once it is reached, running jobs' steps and verdicts included: past `limitPercent` of it, the API
 * stops adding jobs, so that what is left serves the running ones until they finish and their
 * history leaves Redis. Samples INFO memory lazily, at most once a second; logs once when it starts
 * refusing and once when it stops.
 */
export class RedisRoom {
  private full = false;
  private sampledAt = Number.NEGATIVE_INFINITY;
  private sampling: Promise<void> | null = null;

  constructor(
    private readonly opts: {
      redis: Redis;
      /** REDIS_NEARLY_FULL_PERCENT. */
      limitPercent: number;
      logger: Logger;
      now?: () => number;
    },
  ) {}

  /** True while new jobs are refused. A Redis without maxmemory, or one that cannot be sampled, is never full. */
  async nearlyFull(): Promise<boolean> {
    if (this.now() - this.sampledAt >= SAMPLE_EVERY_MS) {
      this.sampling ??= this.sample().finally(() => {
        this.sampling = null;
      });
      await this.sampling;
    }
    return this.full;
  }

  private async sample(): Promise<void> {
    let info: string;
    try {
      info = await withTimeout(this.opts.redis.info('memory'), SAMPLE_TIMEOUT_MS);
    } catch {
      // Unreachable or slow: the request's own Redis calls say so (503), /readyz too.
      return;
    } finally {
      this.sampledAt = this.now();
    }
    const field = (name: string): number => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? 0);
    const maxBytes = field('maxmemory');
    if (maxBytes === 0) {
      this.set(false, { usedBytes: field('used_memory'), maxBytes });
      return;
    }
    // What Redis itself weighs against maxmemory: replication and AOF buffers do not count.
    const usedBytes = field('used_memory') - field('mem_not_counted_for_evict');
    const percent = (usedBytes / maxBytes) * 100;
    const limit = this.full ? this.opts.limitPercent - HYSTERESIS_PERCENT : this.opts.limitPercent;
    this.set(percent >= limit, { usedBytes, maxBytes });
  }

  private set(full: boolean, memory: { usedBytes: number; maxBytes: number }): void {
    if (full === this.full) return;
    this.full = full;
    const fields = {
      ...memory,
      percent: memory.maxBytes === 0 ? null : Math.round((memory.usedBytes / memory.maxBytes) * 1000) / 10,
      limitPercent: this.opts.limitPercent,
    };
    if (full) {
      this.opts.logger.warn(
        { event: 'redis.nearly_full', ...fields },
        'Redis is nearly full (REDIS_NEARLY_FULL_PERCENT of its maxmemory): new jobs get 503 until it has room; running jobs and reads go on',
      );
    } else {
      this.opts.logger.info({ event: 'redis.room_again', ...fields }, 'Redis has room again: new jobs are accepted');
    }
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }
}
