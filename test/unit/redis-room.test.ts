/** When the API refuses new jobs because Redis is nearly full: the sampling, the threshold, the logs. */
import type { Redis } from 'ioredis';
import pino from 'pino';
import { Writable } from 'node:stream';
import { RedisRoom } from '../../services/api/src/redis-room';

/** A Redis whose INFO memory reports `used` of `max` bytes, counting the calls. */
function fakeRedis(memory: { used: number; max: number; fail?: boolean }): { redis: Redis; calls: () => number } {
  let calls = 0;
  const redis = {
    info: async (section: string): Promise<string> => {
      calls += 1;
      if (memory.fail) throw new Error('Connection is closed.');
      expect(section).toBe('memory');
      return `# Memory\r\nused_memory:${memory.used}\r\nused_memory_human:x\r\nmaxmemory:${memory.max}\r\nmem_not_counted_for_evict:0\r\n`;
    },
  } as unknown as Redis;
  return { redis, calls: () => calls };
}

function room(redis: Redis, clock: { now: number }): { room: RedisRoom; events: () => string[] } {
  const lines: string[] = [];
  const logger = pino(
    { level: 'info' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString('utf8'));
        done();
      },
    }),
  );
  return {
    room: new RedisRoom({ redis, limitPercent: 90, logger, now: () => clock.now }),
    events: () => lines.map((l) => (JSON.parse(l) as { event: string }).event),
  };
}

test('past the limit new jobs are refused, and taken again two points below it; the log says so once each way', async () => {
  const memory = { used: 50, max: 100 };
  const clock = { now: 0 };
  const { redis } = fakeRedis(memory);
  const { room: r, events } = room(redis, clock);
  const at = async (used: number): Promise<boolean> => {
    memory.used = used;
    clock.now += 1000;
    return r.nearlyFull();
  };
  expect(await at(50)).toBe(false);
  expect(await at(90)).toBe(true);
  expect(await at(95)).toBe(true);
  expect(await at(88)).toBe(true); // not two points below yet: still refusing, no flapping
  expect(await at(87)).toBe(false);
  expect(await at(89)).toBe(false);
  expect(events()).toEqual(['redis.nearly_full', 'redis.room_again']);
});

test('Redis is asked at most once a second, however many requests ask', async () => {
  const clock = { now: 0 };
  const { redis, calls } = fakeRedis({ used: 95, max: 100 });
  const { room: r } = room(redis, clock);
  expect(await Promise.all([r.nearlyFull(), r.nearlyFull(), r.nearlyFull()])).toEqual([true, true, true]);
  clock.now += 999;
  expect(await r.nearlyFull()).toBe(true);
  expect(calls()).toBe(1);
  clock.now += 1;
  await r.nearlyFull();
  expect(calls()).toBe(2);
});

test('a Redis without maxmemory is never full, and one that cannot be asked keeps the last answer', async () => {
  const clock = { now: 0 };
  const unlimited = fakeRedis({ used: 10 ** 12, max: 0 });
  expect(await room(unlimited.redis, clock).room.nearlyFull()).toBe(false);

  const memory = { used: 99, max: 100, fail: false };
  const flaky = fakeRedis(memory);
  const { room: r, events } = room(flaky.redis, clock);
  expect(await r.nearlyFull()).toBe(true);
  memory.fail = true;
  clock.now += 1000;
  expect(await r.nearlyFull()).toBe(true);
  expect(events()).toEqual(['redis.nearly_full']);
});
