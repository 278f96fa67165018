import { containersWith, docker, TEST_LABEL, testPrefix, testRun } from './docker';

export default async function globalTeardown(): Promise<void> {
  const id = process.env.MAESTRO_TEST_REDIS_CONTAINER;
  if (id) await docker.getContainer(id).remove({ force: true, v: true }).catch(() => undefined);
  // Anything a test labelled and failed to remove goes too: a test run leaves nothing behind.
  const left = await docker.listContainers({ all: true, filters: { label: [`${TEST_LABEL}=${testRun()}`] } });
  // Sandboxes made by this run's workers carry its prefix (see test/support/stack.ts).
  const ours = (await containersWith({ 'maestro.role': 'sandbox' })).filter((c) => c.Labels['maestro.worker']?.startsWith(testPrefix()));
  for (const c of [...left, ...ours]) await docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined);
  // Tests remove their own containers; anything found here is a leak worth seeing in the output.
  const leaked = [...left, ...ours].filter((c) => c.Id !== id);
  if (leaked.length > 0) console.warn(`global-teardown: removed ${leaked.length} container(s) a test left behind`);
}
