/**
 * An attempt that was taken over (its worker's lock lapsed in a Redis outage or a stall, and another
 * worker started the job again) can no longer write: not a step, not a requeue, not a verdict. Found
 * by the chaos test, where two live workers once recorded the same step of a job.
 */
import { newJobId } from '../../services/shared/src/ids';
import type { JobSpec, Step } from '../../services/shared/src/job-schema';
import { AttemptSuperseded, JobStore } from '../../services/shared/src/job-store';
import { useStoreFixture } from '../support/store-fixture';

const fixture = useStoreFixture('fence');
const { prefix } = fixture;
let store: JobStore;

beforeAll(() => {
  store = new JobStore(fixture.redis, prefix, 3600, fixture.files);
});

const spec: JobSpec = { task: 't', provider: 'openai', model: 'm', tools: [], maxSteps: 5, timeoutSeconds: 60, metadata: {}, inputs: [], caller: 'fence' };
const step = (index: number, text: string): Step => ({
  index,
  type: 'model',
  startedAt: new Date().toISOString(),
  durationMs: 1,
  text,
  toolCalls: [],
  usage: { inputTokens: 1, outputTokens: 1 },
  stopReason: 'end',
});

test('once a newer attempt has started, the older one can record no step, requeue nor verdict', async () => {
  const id = newJobId();
  expect((await store.create(id, spec, new Date(), { maxActive: 10 })).outcome).toBe('created');
  const first = await store.markRunning(id, new Date());
  expect(first).toMatchObject({ outcome: 'started', attempts: 1 });
  await store.recordSteps(id, [step(0, 'by the first attempt')], { inputTokens: 1, outputTokens: 1 }, { attempt: 1 });

  // The first worker's lock lapses; another worker takes the job over.
  expect(await store.markRunning(id, new Date())).toMatchObject({ outcome: 'started', attempts: 2 });

  await expect(store.recordSteps(id, [step(1, 'late, by the first attempt')], { inputTokens: 1, outputTokens: 1 }, { attempt: 1 })).rejects.toBeInstanceOf(
    AttemptSuperseded,
  );
  await store.requeue(id, { code: 'x', message: 'late requeue' }, { attempt: 1 });
  expect(await store.status(id)).toBe('running');
  expect(await store.finish(id, { status: 'failed', stopReason: 'error', error: { code: 'late', message: 'late verdict' } }, new Date(), { attempt: 1 })).toBe(false);
  expect(await store.status(id)).toBe('running');

  // The new attempt writes on, and its verdict stands.
  await store.recordSteps(id, [step(1, 'by the second attempt')], { inputTokens: 1, outputTokens: 1 }, { attempt: 2 });
  expect(await store.finish(id, { status: 'succeeded', stopReason: 'completed', result: { output: 'ok' } }, new Date(), { attempt: 2 })).toBe(true);
  const job = await store.getFor('fence', id);
  expect(job?.status).toBe('succeeded');
  expect(job?.steps.map((s) => [s.index, s.type === 'model' ? s.text : ''])).toEqual([
    [0, 'by the first attempt'],
    [1, 'by the second attempt'],
  ]);
});
