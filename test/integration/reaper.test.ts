/** The reaper's rules, against real (created, never started) containers on the engine. */
import { createLogger } from '../../services/shared/src/logger';
import { buildContainerSpec, LABEL, type SandboxContainerLabels } from '../../services/worker/src/sandbox/container-spec';
import { Reaper, type SandboxAssignment } from '../../services/worker/src/sandbox/reaper';
import type { SandboxSettings } from '../../services/worker/src/sandbox/types';
import { containersWith, docker, sandboxImage, TEST_LABEL, TEST_PREFIX, testRun, testSandboxSettings } from '../support/docker';

const run = `${process.pid}-${Date.now()}`;
const deployment = `${TEST_PREFIX}reaper-${run}`;
const otherDeployment = `${TEST_PREFIX}reaper-other-${run}`;
const liveWorker = `${TEST_PREFIX}reaper-live-${run}`;
const deadWorker = `${TEST_PREFIX}reaper-dead-${run}`;
const finishedJob = `reaper-finished-${run}`;
const runningJob = `reaper-running-${run}`;
const MAX_AGE_MS = 60 * 60_000;

function settingsFor(workerId: string, deploymentId = deployment): SandboxSettings {
  return testSandboxSettings({ runtime: 'runc', workerId, deploymentId });
}

/** A labelled sandbox container, created but never started: the reaper must see stopped ones too. */
async function sandboxOf(workerId: string, labels: SandboxContainerLabels, deploymentId?: string): Promise<string> {
  const container = await docker.createContainer(buildContainerSpec(settingsFor(workerId, deploymentId), labels));
  return container.id;
}

async function exists(id: string): Promise<boolean> {
  return docker.getContainer(id).inspect().then(() => true, () => false);
}

function reaperWith(assignments: Map<string, SandboxAssignment>, deploymentId = deployment): Reaper {
  return new Reaper({
    docker,
    logger: createLogger({ level: 'silent', service: 'reaper-test' }),
    deploymentId,
    maxAgeMs: MAX_AGE_MS,
    isWorkerAlive: async (id) => id !== deadWorker,
    isJobFinished: async (id) => id === finishedJob,
    assignmentOf: async (id) => assignments.get(id),
  });
}

afterAll(async () => {
  for (const workerId of [liveWorker, deadWorker]) {
    const left = await containersWith({ [LABEL.worker]: workerId });
    await Promise.allSettled(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
  }
});

test('removes the containers of a dead worker, a finished job, a past deadline or too great an age, and keeps live work', async () => {
  const now = new Date();
  const soon = new Date(now.getTime() + 10 * 60_000);
  const ofDeadWorker = await sandboxOf(deadWorker, { jobId: runningJob, created: now, deadline: soon });
  const poolOfDeadWorker = await sandboxOf(deadWorker, { jobId: '', created: now });
  const ofFinishedJob = await sandboxOf(liveWorker, { jobId: finishedJob, created: now, deadline: soon });
  const pastDeadline = await sandboxOf(liveWorker, { jobId: runningJob, created: now, deadline: new Date(now.getTime() - 1000) });
  const tooOld = await sandboxOf(liveWorker, { jobId: '', created: new Date(now.getTime() - MAX_AGE_MS - 1000) });
  const live = await sandboxOf(liveWorker, { jobId: runningJob, created: now, deadline: soon });
  const livePool = await sandboxOf(liveWorker, { jobId: '', created: now });
  const notOurs = await docker.createContainer({
    Image: sandboxImage(),
    Labels: { [TEST_LABEL]: testRun(), [LABEL.worker]: deadWorker, [LABEL.deployment]: deployment, [LABEL.role]: 'something-else' },
  });

  try {
    const removed = await reaperWith(new Map()).sweep();

    expect(removed).toBe(5);
    for (const id of [ofDeadWorker, poolOfDeadWorker, ofFinishedJob, pastDeadline, tooOld]) expect(await exists(id)).toBe(false);
    for (const id of [live, livePool, notOurs.id]) expect(await exists(id)).toBe(true);
  } finally {
    await notOurs.remove({ force: true, v: true });
  }
});

test('finds the job of a container taken from the pool by its assignment, since its labels still say none', async () => {
  const now = new Date();
  const soon = new Date(now.getTime() + 10 * 60_000);
  const ofFinishedJob = await sandboxOf(liveWorker, { jobId: '', created: now });
  const pastDeadline = await sandboxOf(liveWorker, { jobId: '', created: now });
  const ofRunningJob = await sandboxOf(liveWorker, { jobId: '', created: now });
  const assignments = new Map<string, SandboxAssignment>([
    [ofFinishedJob, { jobId: finishedJob, deadline: soon }],
    [pastDeadline, { jobId: runningJob, deadline: new Date(now.getTime() - 1000) }],
    [ofRunningJob, { jobId: runningJob, deadline: soon }],
  ]);

  expect(await reaperWith(assignments).sweep()).toBe(2);

  expect(await exists(ofFinishedJob)).toBe(false);
  expect(await exists(pastDeadline)).toBe(false);
  expect(await exists(ofRunningJob)).toBe(true);
});

test("leaves another deployment's containers alone, and any without a deployment, even when their worker looks dead and their job ended here", async () => {
  const theirs = await sandboxOf(deadWorker, { jobId: finishedJob, created: new Date(0) }, otherDeployment);
  const ours = await sandboxOf(deadWorker, { jobId: runningJob, created: new Date() });
  // As a version before deployment ids labelled its sandboxes: nothing says whose it is.
  const spec = buildContainerSpec(settingsFor(deadWorker), { jobId: finishedJob, created: new Date(0) });
  delete spec.Labels?.[LABEL.deployment];
  const unowned = (await docker.createContainer(spec)).id;

  await reaperWith(new Map()).sweep();

  expect(await exists(theirs)).toBe(true);
  expect(await exists(unowned)).toBe(true);
  expect(await exists(ours)).toBe(false);
});
