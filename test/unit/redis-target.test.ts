import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../services/shared/src/config';
import { redisTargetOptions } from '../../services/shared/src/redis';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'maestro-redis-target-'));
  await writeFile(join(dir, 'password'), 'from-the-file\n');
  await writeFile(join(dir, 'empty'), '\n');
  await writeFile(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\n');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const target = (env: Record<string, string>) => redisTargetOptions(loadConfig(env));

describe('connecting to Redis from the config', () => {
  test('a password file completes a URL without one, trimmed of its newline', () => {
    expect(target({ REDIS_URL: 'redis://redis:6379', REDIS_PASSWORD_FILE: join(dir, 'password') })).toEqual({
      url: 'redis://redis:6379',
      options: { password: 'from-the-file' },
    });
  });

  test("the URL's own password wins over the file", () => {
    expect(target({ REDIS_URL: 'redis://:in-url@redis:6379', REDIS_PASSWORD_FILE: join(dir, 'password') }).options).toEqual({});
  });

  test('a CA file gives TLS its trust anchor, for rediss:// only', () => {
    expect(target({ REDIS_URL: 'rediss://redis:6380', REDIS_TLS_CA_FILE: join(dir, 'ca.pem') }).options).toEqual({
      tls: { ca: '-----BEGIN CERTIFICATE-----\n' },
    });
    expect(() => target({ REDIS_URL: 'redis://redis:6379', REDIS_TLS_CA_FILE: join(dir, 'ca.pem') })).toThrow(
      'invalid REDIS_TLS_CA_FILE: it needs a rediss:// REDIS_URL',
    );
  });

  test('a missing or empty file is one line naming the variable, and never its content', () => {
    expect(() => target({ REDIS_PASSWORD_FILE: join(dir, 'missing') })).toThrow('invalid REDIS_PASSWORD_FILE: cannot read the file (ENOENT)');
    expect(() => target({ REDIS_PASSWORD_FILE: join(dir, 'empty') })).toThrow('invalid REDIS_PASSWORD_FILE: the file is empty');
    expect(() => loadConfig({ REDIS_PASSWORD_FILE: 'relative/path' })).toThrow('invalid REDIS_PASSWORD_FILE: must be an absolute path');
  });
});
