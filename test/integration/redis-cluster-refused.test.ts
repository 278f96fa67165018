/**
 * A Redis Cluster node as REDIS_URL: Maestro's keys and BullMQ's are not hash-tagged, so most of what
 * both do would fail with CROSSSLOT. The API and the worker refuse it at start-up, each with one line
 * saying why and what to use instead, run from their real entry points.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { TEST_PREFIX } from '../support/docker';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { runServiceProcess } from '../support/service-process';

const REFUSAL =
  "REDIS_URL is a Redis Cluster node, which Maestro does not support: Maestro's keys and BullMQ's are not hash-tagged, so their multi-key scripts would fail with CROSSSLOT; use a standalone Redis, with Sentinel (REDIS_SENTINELS) for failover";

let redis: RedisContainer | undefined;
let dir: string | undefined;

beforeAll(async () => {
  // A node with cluster mode on and no slots assigned: INFO answers, every key command would not.
  redis = await startRedisContainer({ args: ['--cluster-enabled', 'yes', '--cluster-config-file', '/tmp/nodes.conf'], role: 'test-redis-cluster' });
  // The worker writes here as uid 1000 once it has dropped root.
  dir = await mkdtemp('/var/tmp/maestro-cluster-');
  await chmod(dir, 0o777);
});

afterAll(async () => {
  await redis?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The variables a service needs to get as far as Redis, against the cluster node. */
function envFor(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    REDIS_URL: (redis as RedisContainer).url,
    MAESTRO_PREFIX: `${TEST_PREFIX}cluster-${randomBytes(3).toString('hex')}`,
    ARTIFACT_DIR: dir,
    ALLOWED_DIRS: '',
    PORT: '0',
    LOG_LEVEL: 'info',
  };
}

test.each(['api', 'worker'] as const)('the %s refuses a Redis Cluster node at start-up with one line naming REDIS_URL and why', async (service) => {
  const { code, stdout, stderr } = await runServiceProcess(service, envFor());
  expect(code).toBe(1);
  expect(stdout).toBe('');
  expect(stderr).toBe(`maestro ${service}: ${REFUSAL}\n`);
});
