import { docker, TEST_LABEL, TEST_PREFIX } from './docker';

export default async function globalTeardown(): Promise<void> {
  const id = process.env.MAESTRO_TEST_REDIS_CONTAINER;
  if (id) await docker.getContainer(id).remove({ force: true, v: true }).catch(() => undefined);
  // Anything a test labelled and failed to remove goes too: a test run leaves nothing behind.
  const left = await docker.listContainers({ all: true, filters: { label: [TEST_LABEL] } });
  // Sandboxes made by the suite's workers carry their test prefix (see test/support/stack.ts).
  const sandboxes = await docker.listContainers({ all: true, filters: { label: ['maestro.role=sandbox'] } });
  const ours = sandboxes.filter((c) => c.Labels['maestro.worker']?.startsWith(TEST_PREFIX));
  for (const c of [...left, ...ours]) await docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined);
}
