/**
 * What a step costs Redis does not grow with the job: step 200 of a long job writes about as many
 * bytes as step 10 did. Each step is sent once and appended once; nothing that grows with the job (a
 * conversation, a step list) is rewritten after each step. Measured on a Redis of the test's own,
 * where the job is the only thing being written: INFO's total_net_input_bytes, read each time the
 * model is asked for its next turn.
 */
import { startModelServer, type ModelServer } from '../support/model-server';
import { startRedisContainer, type RedisContainer } from '../support/redis-container';
import { startStack, submitJob, waitForJobEnd, type Stack } from '../support/stack';

const TURNS = 105; // each a model step and a tool step: steps 0 to 210
let redis: RedisContainer;
let model: ModelServer;
let stack: Stack;
/** total_net_input_bytes of the Redis when the model was asked for turn `n` (after steps 0 … 2n-1 were recorded). */
const inputBytesAtTurn: number[] = [];

beforeAll(async () => {
  redis = await startRedisContainer();
  model = await startModelServer(async (req) => {
    const info = await stack.redis.info('stats');
    inputBytesAtTurn[req.step] = Number(/^total_net_input_bytes:(\d+)/m.exec(info)?.[1]);
    if (req.step >= TURNS) return { text: 'listed enough' };
    // A tool that answers at once (an error: no allowed dirs), so the turns are all alike.
    return { text: `turn ${req.step}`, toolCalls: [{ name: 'list_files', arguments: { path: '/srv/nowhere' } }] };
  });
  stack = await startStack(model, { env: { REDIS_URL: redis.url, JOB_MAX_STEPS_LIMIT: String(TURNS + 5), SANDBOX_POOL_SIZE: '0' } });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
  await redis?.close();
});

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

test('the Redis bytes written for step 200 of a long job are within 1.5 times those for step 10', async () => {
  const job = await submitJob(stack, { task: 'list a lot', tools: ['list_files'], maxSteps: TURNS + 1 });
  const ended = await waitForJobEnd(stack, job.id, 60_000);
  expect(ended.status).toBe('succeeded');
  expect(ended.steps.map((s) => s.index)).toEqual([...Array(2 * TURNS + 1).keys()]);

  // Turn n records steps 2n and 2n+1; a few turns around each, so that a stray write of the worker
  // (a lock renewal, a heartbeat) landing in one of them does not decide the outcome.
  const bytesOfTurn = (n: number): number => (inputBytesAtTurn[n + 1] as number) - (inputBytesAtTurn[n] as number);
  const around = (step: number): number => median([-4, -3, -2, -1, 0, 1, 2, 3, 4].map((d) => bytesOfTurn(Math.floor(step / 2) + d)));
  const early = around(10);
  const late = around(200);
  console.log(`Redis bytes written per turn (a model step and a tool step): around step 10 ${early}, around step 200 ${late}`);
  expect(early).toBeGreaterThan(0);
  expect(late).toBeLessThanOrEqual(1.5 * early);
}, 120_000);
