import { createLogger } from '../../services/shared/src/logger';
import { buildContainerSpec, LABEL, type SandboxContainerLabels } from '../../services/worker/src/sandbox/container-spec';
import { Reaper } from '../../services/worker/src/sandbox/reaper';
import type { SandboxSettings } from '../../services/worker/src/sandbox/types';
import { containersWith, docker, sandboxImage, TEST_PREFIX } from '../support/docker';

const run = `${process.pid}-${Date.now()}`;
const liveWorker = `${TEST_PREFIX}reaper-live-${run}`;
const deadWorker = `${TEST_PREFIX}reaper-dead-${run}`;
const finishedJob = `reaper-finished-${run}`;
const runningJob = `reaper-running-${run}`;

function settingsFor(workerId: string): SandboxSettings {
  return {
    image: sandboxImage(), runtime: 'runc', timeoutMs: 30_000, memoryMb: 256, cpus: 1, pids: 64, poolSize: 0,
    allowedDirs: [], outputLimitBytes: 65_536, tmpSizeMb: 16, workerId,
  };
}

/** A labelled sandbox container, created but never started: the reaper must see stopped ones too. */
async function sandboxOf(workerId: string, labels: SandboxContainerLabels): Promise<string> {
  const container = await docker.createContainer(buildContainerSpec(settingsFor(workerId), labels));
  return container.id;
}

async function exists(id: string): Promise<boolean> {
  return docker.getContainer(id).inspect().then(() => true, () => false);
}

describe('the reaper', () => {
  const reaper = new Reaper({
    docker,
    logger: createLogger({ level: 'silent', service: 'reaper-test' }),
    // Other suites run beside this one: every worker but this test's dead one counts as alive, so
    // their containers are never this sweep's business.
    isWorkerAlive: async (id) => id !== deadWorker,
    isJobFinished: async (id) => id === finishedJob,
  });

  afterAll(async () => {
    for (const workerId of [liveWorker, deadWorker]) {
      const left = await containersWith({ [LABEL.worker]: workerId });
      await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
    }
  });

  it('removes the output volume a container left behind when it was removed without its volumes', async () => {
    const id = await sandboxOf(deadWorker, { jobId: '', created: new Date() });
    const volume = (await docker.getContainer(id).inspect()).Mounts.find((m) => m.Destination === '/output')?.Name;
    expect(volume).toBeTruthy();
    await docker.getContainer(id).remove({ force: true });

    await reaper.sweep();

    expect(await docker.getVolume(volume as string).inspect().then(() => true, () => false)).toBe(false);
  });

  it('removes the containers of a dead worker, a finished job or a past deadline, and keeps live work', async () => {
    const now = new Date();
    const soon = new Date(now.getTime() + 10 * 60_000);
    const ofDeadWorker = await sandboxOf(deadWorker, { jobId: runningJob, created: now, deadline: soon });
    const poolOfDeadWorker = await sandboxOf(deadWorker, { jobId: '', created: now });
    const ofFinishedJob = await sandboxOf(liveWorker, { jobId: finishedJob, created: now, deadline: soon });
    const pastDeadline = await sandboxOf(liveWorker, { jobId: runningJob, created: now, deadline: new Date(now.getTime() - 1000) });
    const live = await sandboxOf(liveWorker, { jobId: runningJob, created: now, deadline: soon });
    const livePool = await sandboxOf(liveWorker, { jobId: '', created: now });
    const notOurs = await docker.createContainer({
      Image: sandboxImage(),
      Labels: { [LABEL.worker]: deadWorker, [LABEL.role]: 'something-else' },
    });

    try {
      const removed = await reaper.sweep();

      expect(removed).toBeGreaterThanOrEqual(4);
      for (const id of [ofDeadWorker, poolOfDeadWorker, ofFinishedJob, pastDeadline]) expect(await exists(id)).toBe(false);
      for (const id of [live, livePool, notOurs.id]) expect(await exists(id)).toBe(true);
    } finally {
      await notOurs.remove({ force: true, v: true });
    }
  });

  it("leaves another deployment's containers alone, even when their worker looks dead to this one", async () => {
    const scoped = new Reaper({
      docker,
      logger: createLogger({ level: 'silent', service: 'reaper-test' }),
      isWorkerAlive: async () => false,
      isJobFinished: async () => true,
      owns: (id) => id === liveWorker,
    });
    const theirs = await sandboxOf(deadWorker, { jobId: runningJob, created: new Date() });
    const ours = await sandboxOf(liveWorker, { jobId: runningJob, created: new Date() });
    await scoped.sweep();
    expect(await exists(theirs)).toBe(true);
    expect(await exists(ours)).toBe(false);
  });
});
