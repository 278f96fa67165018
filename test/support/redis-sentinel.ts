/**
 * Redis behind Sentinel in miniature: a master, a replica and three sentinels, each a container of
 * REDIS_IMAGE on a Docker network of their own, all labelled for this test run. The data nodes ask
 * for a password, and so do the sentinels (another one).
 *
 * The sentinels are Redis's own sentinel mode, `redis-server <conf> --sentinel`: Debian's
 * redis-sentinel package starts the same binary under another name, and REDIS_IMAGE (the official
 * image or the Debian stand-in) has it without a package of its own. Every address a sentinel hands
 * out is a container's address on the network, which this machine reaches directly: no port is
 * published and no address needs announcing.
 */
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import { Redis } from 'ioredis';
import { docker, TEST_LABEL, testRun } from './docker';
import { waitFor } from './wait-for';

export interface SentinelTopology {
  /** REDIS_SENTINELS: `ip:26379` of each sentinel. */
  sentinels: string;
  masterName: string;
  /** The data nodes' password (`requirepass`, and `masterauth` for the replica). */
  password: string;
  /** The sentinels' own password. */
  sentinelPassword: string;
  /** `ip:port` the sentinels give for the master right now (asked of the first that answers). */
  masterAddress(): Promise<string>;
  /** SIGKILLs the container of the current master, as a crash would; resolves with the address it had. */
  killMaster(): Promise<string>;
  /** Removes every container and the network, whatever state they are in. Idempotent. */
  close(): Promise<void>;
}

const SENTINEL_PORT = 26379;

export async function startSentinelTopology(
  opts: {
    masterName?: string;
    /** How long the sentinels wait before they hold a silent master for down. */
    downAfterMs?: number;
  } = {},
): Promise<SentinelTopology> {
  const image = process.env.REDIS_IMAGE ?? 'redis:7';
  const masterName = opts.masterName ?? 'mymaster';
  const password = randomBytes(16).toString('hex');
  const sentinelPassword = randomBytes(16).toString('hex');
  const run = testRun();
  const network = await docker.createNetwork({
    Name: `maestro-test-${run}-sentinel-${randomBytes(4).toString('hex')}`,
    Labels: { [TEST_LABEL]: run },
    CheckDuplicate: true,
  });
  const networkName = (await network.inspect()).Name as string;
  const containers: Docker.Container[] = [];
  /** Container address → container, for killMaster. */
  const byAddress = new Map<string, Docker.Container>();
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await Promise.all(containers.map((c) => c.remove({ force: true, v: true }).catch(() => undefined)));
      await network.remove().catch(() => undefined);
    })());

  const start = async (role: string, cmd: string[], env: string[] = []): Promise<string> => {
    const container = await docker.createContainer({
      Image: image,
      Cmd: cmd,
      Env: env,
      Labels: { [TEST_LABEL]: run, 'maestro.role': `test-redis-${role}` },
      HostConfig: { NetworkMode: networkName },
    });
    containers.push(container);
    await container.start();
    const ip = (await container.inspect()).NetworkSettings.Networks[networkName]?.IPAddress;
    if (!ip) throw new Error(`the ${role} container has no address on ${networkName}`);
    byAddress.set(ip, container);
    return ip;
  };

  try {
    const dataNode = ['redis-server', '--save', '', '--appendonly', 'no', '--requirepass', password, '--masterauth', password];
    const masterIp = await start('master', dataNode);
    await waitFor(() => ask({ host: masterIp, port: 6379, password }, (r) => r.ping()), { timeoutMs: 20_000, what: 'the master to answer' });
    const replicaIp = await start('replica', [...dataNode, '--replicaof', masterIp, '6379']);
    await waitFor(
      async () => /master_link_status:up/.test(await ask({ host: replicaIp, port: 6379, password }, (r) => r.info('replication'))),
      { timeoutMs: 20_000, what: 'the replica to sync with the master' },
    );

    // Sentinel rewrites its configuration file as it learns the topology: it must be a file it can write.
    const conf = [
      `port ${SENTINEL_PORT}`,
      `sentinel monitor ${masterName} ${masterIp} 6379 2`,
      `sentinel auth-pass ${masterName} ${password}`,
      `sentinel down-after-milliseconds ${masterName} ${opts.downAfterMs ?? 1000}`,
      // Also how long a failover whose election split waits before the next: 2 x this.
      `sentinel failover-timeout ${masterName} 3000`,
      `requirepass ${sentinelPassword}`,
      // What a sentinel uses to talk to the others, which ask for the same password.
      `sentinel sentinel-pass ${sentinelPassword}`,
    ].join('\n');
    const sentinelIps: string[] = [];
    for (let i = 0; i < 3; i++) {
      sentinelIps.push(
        await start('sentinel', ['sh', '-c', 'printf "%s\\n" "$SENTINEL_CONF" > /tmp/sentinel.conf && exec redis-server /tmp/sentinel.conf --sentinel'], [
          `SENTINEL_CONF=${conf}`,
        ]),
      );
    }
    // Ready for a failover: every sentinel sees the replica, and enough of the others to authorise one.
    for (const host of sentinelIps) {
      const sentinel = { host, port: SENTINEL_PORT, password: sentinelPassword };
      await waitFor(
        async () => {
          const replicas = (await ask(sentinel, (r) => r.call('SENTINEL', 'REPLICAS', masterName))) as string[][];
          const quorum = String(await ask(sentinel, (r) => r.call('SENTINEL', 'CKQUORUM', masterName)));
          return replicas.length === 1 && quorum.startsWith('OK 3 usable');
        },
        { timeoutMs: 30_000, intervalMs: 250, what: `sentinel ${host} to know the replica and the other sentinels` },
      );
    }

    const masterAddress = (): Promise<string> =>
      waitFor(
        async () => {
          for (const host of sentinelIps) {
            const reply = await ask({ host, port: SENTINEL_PORT, password: sentinelPassword }, (r) => r.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName)).catch(
              () => null,
            );
            if (Array.isArray(reply) && reply.length === 2) return `${String(reply[0])}:${String(reply[1])}`;
          }
          return undefined;
        },
        { what: 'a sentinel to name the master' },
      );

    return {
      sentinels: sentinelIps.map((ip) => `${ip}:${SENTINEL_PORT}`).join(','),
      masterName,
      password,
      sentinelPassword,
      masterAddress,
      async killMaster() {
        const address = await masterAddress();
        const container = byAddress.get(address.split(':')[0] as string);
        if (!container) throw new Error(`the sentinels name a master (${address}) that is none of this topology's containers`);
        await container.kill();
        return address;
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Runs `fn` on a fresh connection that does not retry, and always closes it. */
async function ask<T>(target: { host: string; port: number; password: string }, fn: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis({ ...target, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
  // A node still starting refuses or resets connections: the caller polls.
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}
