/** Files the code leaves in /output come back with the job and can be downloaded. */
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

let model: ModelServer;
let stack: Stack;
const script: Record<string, ScriptedReply[]> = {};

beforeAll(async () => {
  model = await startModelServer(scriptBySteps(script));
  stack = await startStack(model);
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

test('a job whose code saves a matplotlib chart returns it as a downloadable PNG', async () => {
  script['draw a chart'] = [
    codeCall(
      [
        'import matplotlib.pyplot as plt',
        'plt.plot([1, 2, 3], [1, 4, 9])',
        "plt.title('squares')",
        "plt.savefig('/output/chart.png')",
        "print('saved')",
      ].join('\n'),
    ),
    { text: 'Here is your chart.' },
  ];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'draw a chart' })).id);
  expect(job.status).toBe('succeeded');
  expect(job.artifacts).toEqual([{ name: 'chart.png', size: expect.any(Number), contentType: 'image/png', sha256: expect.stringMatching(/^[0-9a-f]{64}$/), step: 1 }]);
  const tool = job.steps.find((s) => s.type === 'tool');
  expect(tool?.output).toMatch(/chart\.png/);

  const res = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/chart.png`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('image/png');
  expect(res.headers.get('content-disposition')).toMatch(/^attachment/);
  const body = Buffer.from(await res.arrayBuffer());
  expect(body.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  expect(body.length).toBe(job.artifacts[0]?.size);
});

test('an artifact that does not exist is a 404 problem', async () => {
  script['no files'] = [{ text: 'nothing to save' }];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'no files' })).id);
  for (const path of ['chart.png', '..%2F..%2Fetc%2Fpasswd', 'a/b/c.txt']) {
    const res = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/${path}`);
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/problem\+json/);
  }
});

test('an artifact stored in Redis by an earlier release still downloads until its job expires', async () => {
  script['from before the upgrade'] = [{ text: 'done' }];
  const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'from before the upgrade' })).id);
  // What the earlier release wrote: metadata without a store id, and the bytes in a hash beside it.
  const key = `${stack.prefix}:job:${job.id}`;
  await stack.redis.hset(`${key}:artifacts`, 'old.txt', JSON.stringify({ name: 'old.txt', size: 11, contentType: 'text/plain', step: 1 }));
  await stack.redis.hset(`${key}:artifact-data`, 'old.txt', 'hello world');

  const whole = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/old.txt`);
  expect(whole.status).toBe(200);
  expect(await whole.text()).toBe('hello world');
  const part = await fetch(`${stack.api.url}/v1/jobs/${job.id}/artifacts/old.txt`, { headers: { range: 'bytes=6-' } });
  expect(part.status).toBe(206);
  expect(await part.text()).toBe('world');
  // Deleting the job takes the old bytes too.
  expect((await fetch(`${stack.api.url}/v1/jobs/${job.id}`, { method: 'DELETE' })).status).toBe(204);
  expect(await stack.redis.exists(`${key}:artifact-data`)).toBe(0);
});
