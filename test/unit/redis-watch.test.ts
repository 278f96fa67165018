import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import pino from 'pino';
import { createRedisWatcher, isRedisConnectionError, redisEndpoint, scrubRedisMessage, type WatchedConnection } from '../../services/shared/src/redis-watch';

/** A stand-in for an ioredis connection: its events and status, set by the test. */
class FakeConnection extends EventEmitter implements WatchedConnection {
  status = 'ready';
  constructor(public options: { password?: string } = {}) {
    super();
  }
  fail(message = 'connect ECONNREFUSED 127.0.0.1:6390', code = 'ECONNREFUSED'): void {
    this.status = 'reconnecting';
    this.emit('error', Object.assign(new Error(message), { code }));
  }
  back(): void {
    this.status = 'ready';
    this.emit('ready');
  }
}

interface Line {
  event: string;
  level: number;
  msg: string;
  [field: string]: unknown;
}

function logged(): { logger: pino.Logger; lines: Line[] } {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Line);
      done();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

const PASSWORD = 'hunter2-secret-pass';
const TARGET = `redis://default:${PASSWORD}@127.0.0.1:6390`;

beforeEach(() => {
  jest.useFakeTimers({ now: new Date('2026-01-01T00:00:00Z') });
});
afterEach(() => {
  jest.useRealTimers();
});

describe('a Redis outage', () => {
  test('is logged once when it starts, every 30 s while it lasts, and once when every connection is back', () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: TARGET });
    const [a, b] = [new FakeConnection(), new FakeConnection()];
    watcher.watch(a, 'main');
    watcher.watch(b, 'queue');

    // Ten reconnect failures a second for 65 s, from both connections.
    for (let t = 0; t < 650; t++) {
      (t % 2 ? a : b).fail();
      jest.advanceTimersByTime(100);
    }
    expect(watcher.down).toBe(true);
    a.back();
    // One connection answering is not yet the process's Redis back: the other still retries.
    expect(watcher.down).toBe(true);
    b.back();
    expect(watcher.down).toBe(false);

    expect(lines.map((l) => l.event)).toEqual(['redis.down', 'redis.still_down', 'redis.still_down', 'redis.up']);
    expect(lines[0]).toMatchObject({ level: 40, redis: '127.0.0.1:6390', message: 'connect ECONNREFUSED 127.0.0.1:6390' });
    expect(lines[0]?.hint).toContain('REDIS_URL');
    expect(lines[1]).toMatchObject({ downForMs: 30_000 });
    expect(lines[3]).toMatchObject({ level: 30, downForMs: 65_000 });
    expect(JSON.stringify(lines)).not.toContain(PASSWORD);
  });

  test('starts again after Redis came back', () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: TARGET });
    const conn = new FakeConnection();
    watcher.watch(conn);
    conn.fail();
    conn.back();
    conn.fail();
    conn.fail();
    expect(lines.map((l) => l.event)).toEqual(['redis.down', 'redis.up', 'redis.down']);
  });

  test('ends when the connections that lost Redis are dropped and another one answers', () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: TARGET });
    const [main, stream] = [new FakeConnection(), new FakeConnection()];
    watcher.watch(main);
    const unwatch = watcher.watch(stream, 'events');
    main.fail();
    stream.fail();
    main.back();
    expect(watcher.down).toBe(true);
    // Disconnected while waiting to reconnect: ioredis emits no 'end' then, so the route unwatches it.
    unwatch();
    expect(lines.map((l) => l.event)).toEqual(['redis.down', 'redis.up']);
    // A late error of the dropped connection is neither unhandled nor news.
    stream.emit('error', new Error('connect ECONNREFUSED 127.0.0.1:6390'));
    expect(lines).toHaveLength(2);
  });

  test("keeps the password of a connection's options (REDIS_PASSWORD_FILE) out of its lines", () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: 'redis://127.0.0.1:6390' });
    const conn = new FakeConnection({ password: 'from-the-file-0123' });
    watcher.watch(conn);
    conn.fail('ERR something echoed from-the-file-0123 back', 'ERR');
    expect(lines[0]?.message).toBe('ERR something echoed [redacted] back');
  });

  test('names the password variables when Redis refuses the credentials', () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: TARGET });
    const conn = new FakeConnection();
    watcher.watch(conn);
    conn.fail('WRONGPASS invalid username-password pair or user is disabled.', 'ERR');
    expect(lines[0]?.hint).toMatch(/REDIS_URL or REDIS_PASSWORD_FILE/);
  });

  test("takes BullMQ's relayed connection errors quietly, and hands others back", () => {
    const { logger, lines } = logged();
    const watcher = createRedisWatcher({ logger, target: TARGET });
    const conn = new FakeConnection();
    watcher.watch(conn);
    conn.fail();
    expect(watcher.absorb(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6390'), { code: 'ECONNREFUSED' }), 'worker')).toBe(true);
    expect(watcher.absorb(new Error('Connection is closed.'), 'worker')).toBe(true);
    expect(watcher.absorb(new Error('Missing lock for job 1. moveToFinished'), 'worker')).toBe(false);
    expect(lines.map((l) => l.event)).toEqual(['redis.down']);
  });
});

describe('redisEndpoint', () => {
  test.each([
    ['redis://127.0.0.1:6379', '127.0.0.1:6379'],
    ['redis://user:secret@redis.internal', 'redis.internal:6379'],
    ['rediss://:secret@[::1]:6380/2', '[::1]:6380'],
    ['/var/run/redis/redis.sock', '/var/run/redis/redis.sock'],
    ['not a url', '(an unparseable REDIS_URL)'],
  ])('%s → %s', (url, endpoint) => {
    expect(redisEndpoint(url)).toBe(endpoint);
  });
});

test('scrubRedisMessage blanks credentials in URLs and password pairs', () => {
  expect(scrubRedisMessage('cannot reach redis://u:p4ss@host:1 (password=abc123)', ['nothing'])).toBe(
    'cannot reach redis://[redacted]@host:1 (password=[redacted])',
  );
});

test('isRedisConnectionError', () => {
  expect(isRedisConnectionError(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe(true);
  expect(isRedisConnectionError(Object.assign(new Error('Reached the max retries per request limit (which is 1).'), { name: 'MaxRetriesPerRequestError' }))).toBe(true);
  expect(isRedisConnectionError(new Error('ERR unknown command'))).toBe(false);
  expect(isRedisConnectionError('ECONNREFUSED')).toBe(false);
});
