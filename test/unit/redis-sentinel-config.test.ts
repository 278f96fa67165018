/**
 * Redis behind Sentinel, as configured: REDIS_SENTINELS parsed strictly and refused in one line
 * naming the variable, the options ioredis gets from it, and what the logs say when it fails.
 */
import { EventEmitter } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { loadApiConfig } from '../../services/api/src/api-config';
import { ConfigError, loadConfig, parseSentinelAddress } from '../../services/shared/src/config';
import { redisTargetOptions } from '../../services/shared/src/redis';
import { createRedisWatcher, isRedisConnectionError, redisEndpoint } from '../../services/shared/src/redis-watch';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'maestro-sentinel-config-'));
  await writeFile(join(dir, 'sentinel-password'), 'sentinel-secret\n');
  await writeFile(join(dir, 'password'), 'data-secret\n');
  await writeFile(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\n');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function problemsOf(load: () => unknown): string[] {
  try {
    load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message.split('\n');
  }
  throw new Error('expected a ConfigError');
}

describe('REDIS_SENTINELS', () => {
  test('takes host:port, a bare host (port 26379) and [IPv6]:port, and defaults the master to mymaster', () => {
    const config = loadConfig({ REDIS_SENTINELS: 'sentinel-1.internal:26380, 10.0.0.7 ,[fd00::7]:26379' });
    expect(config.REDIS_SENTINELS).toEqual([
      { host: 'sentinel-1.internal', port: 26380 },
      { host: '10.0.0.7', port: 26379 },
      { host: 'fd00::7', port: 26379 },
    ]);
    expect(config.REDIS_SENTINEL_MASTER).toBe('mymaster');
    expect(loadConfig({}).REDIS_SENTINELS).toEqual([]);
  });

  test.each(['redis://sentinel:26379', 'user@sentinel:26379', 'sentinel:', 'sentinel:0', 'sentinel:65536', '::1', '[nope]:26379', 'a..b:1', 'sentinel:26379/0'])(
    '%s is no sentinel address',
    (entry) => {
      expect(parseSentinelAddress(entry)).toBeNull();
    },
  );

  test('bad entries are one line naming the variable and their positions, never their text', () => {
    expect(problemsOf(() => loadConfig({ REDIS_SENTINELS: 'ok:26379,redis://secret-host:1,ok2,host:99999' }))).toEqual([
      'invalid REDIS_SENTINELS: entries 2 and 4 are not host:port (IPv6 in brackets; the port defaults to 26379)',
    ]);
  });

  test('a sentinel password file needs sentinels, and must be readable, reported with every other problem', () => {
    expect(problemsOf(() => loadApiConfig({ REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'sentinel-password'), REDIS_TLS_CA_FILE: join(dir, 'ca.pem') }))).toEqual([
      'invalid REDIS_TLS_CA_FILE: it needs a rediss:// REDIS_URL',
      'invalid REDIS_SENTINEL_PASSWORD_FILE: it needs REDIS_SENTINELS',
    ]);
    expect(problemsOf(() => loadApiConfig({ REDIS_SENTINELS: 'sentinel', REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'missing') }))).toEqual([
      'invalid REDIS_SENTINEL_PASSWORD_FILE: cannot read the file (ENOENT)',
    ]);
  });
});

describe('connecting through the sentinels', () => {
  test('ioredis gets the sentinels, the master name and both passwords, and gives up soon on a master that does not answer', () => {
    const { options } = redisTargetOptions(
      loadConfig({
        REDIS_URL: 'redis://ignored:6379/2',
        REDIS_PASSWORD_FILE: join(dir, 'password'),
        REDIS_SENTINELS: 's1:26379,s2:26379',
        REDIS_SENTINEL_MASTER: 'maestro',
        REDIS_SENTINEL_PASSWORD_FILE: join(dir, 'sentinel-password'),
      }),
    );
    expect(options).toEqual({
      password: 'data-secret',
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26379 },
      ],
      name: 'maestro',
      sentinelPassword: 'sentinel-secret',
      connectTimeout: 2000,
    });
  });

  test('rediss:// means TLS to the sentinels and to the master they name, with the same CA', () => {
    const { options } = redisTargetOptions(
      loadConfig({ REDIS_URL: 'rediss://:pw@ignored:6380', REDIS_TLS_CA_FILE: join(dir, 'ca.pem'), REDIS_SENTINELS: 's1:26379' }),
    );
    expect(options).toMatchObject({
      tls: { ca: '-----BEGIN CERTIFICATE-----\n' },
      enableTLSForSentinelMode: true,
      sentinelTLS: { ca: '-----BEGIN CERTIFICATE-----\n' },
    });
    expect(redisTargetOptions(loadConfig({ REDIS_URL: 'rediss://ignored', REDIS_SENTINELS: 's1' })).options).toMatchObject({
      enableTLSForSentinelMode: true,
      sentinelTLS: {},
    });
  });

  test('the logs name the master and the sentinels, not the ignored REDIS_URL host', () => {
    expect(redisEndpoint(loadConfig({ REDIS_URL: 'redis://ignored:6379', REDIS_SENTINELS: '10.0.0.1:26379,[fd00::1]:26380' }))).toBe(
      'master mymaster via sentinels 10.0.0.1:26379,[fd00::1]:26380',
    );
  });
});

test('sentinels refusing their password: one redis.down line pointing at REDIS_SENTINEL_PASSWORD_FILE, the password nowhere', () => {
  const lines: { event: string; redis: string; hint: string; msg: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as (typeof lines)[number]);
      done();
    },
  });
  const target = loadConfig({ REDIS_SENTINELS: 's1:26379' });
  const watcher = createRedisWatcher({ logger: pino({ level: 'info' }, sink), target });
  const connection = Object.assign(new EventEmitter(), { status: 'reconnecting', options: { sentinelPassword: 'sentinel-secret' } });
  watcher.watch(connection, 'main');
  // How ioredis reports a round in which every sentinel failed (SentinelConnector).
  const err = new Error('All sentinels are unreachable. Retrying from scratch after 10ms. Last error: WRONGPASS sentinel-secret is wrong');
  expect(isRedisConnectionError(err)).toBe(true);
  connection.emit('error', err);
  connection.emit('error', err);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatchObject({ event: 'redis.down', redis: 'master mymaster via sentinels s1:26379' });
  expect(lines[0]?.hint).toBe('The sentinels refused the credentials: check REDIS_SENTINEL_PASSWORD_FILE.');
  expect(JSON.stringify(lines)).not.toContain('sentinel-secret');
});
