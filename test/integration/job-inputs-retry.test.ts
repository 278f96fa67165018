/** A job's input files stay with it when its worker dies: the retry on another worker reads them again. */
import { codeCall, startModelServer, type ModelServer, type ScriptedReply } from '../support/model-server';
import { getJob, startStack, waitForJobEnd, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';
import { spawnWorkerProcess, type WorkerProcess } from '../support/worker-process';

const TASK = 'count the rows of my file';
const CSV = 'id\n1\n2\n3\n';
const READ = codeCall("print('rows', len(open('/input/rows.csv').read().splitlines()) - 1)");

let model: ModelServer;
let stack: Stack | undefined;
let worker: WorkerProcess | undefined;
/** The second model turn: held until the first worker is dead, then answered by the second. */
let secondTurn: ScriptedReply = { hang: true };

beforeAll(async () => {
  model = await startModelServer((req) => {
    if (!req.task.startsWith(TASK)) throw new Error(`unexpected task ${JSON.stringify(req.task)}`);
    return [READ, secondTurn, { text: 'three rows' }][Math.min(req.step, 2)] as ScriptedReply;
  });
});
afterAll(async () => {
  worker?.child.kill('SIGKILL');
  await worker?.exited;
  await stack?.close();
  await model?.close();
});

test('a job with input files whose worker is SIGKILLed resumes elsewhere and still finds them at /input', async () => {
  stack = await startStack(model, { workers: 0, env: { WORKER_LOCK_MS: '2000', JOB_ATTEMPTS: '3' } });
  worker = spawnWorkerProcess(stack);
  const form = new FormData();
  form.append('job', JSON.stringify({ task: TASK }));
  form.append('file', new Blob([CSV]), 'rows.csv');
  const res = await fetch(`${stack.api.url}/v1/jobs`, { method: 'POST', body: form });
  expect(res.status).toBe(202);
  const id = ((await res.json()) as { id: string }).id;

  // The first cell has read the file; the worker is waiting on the model's second turn.
  await waitFor(async () => (await getJob(stack as Stack, id)).steps.length >= 2, { timeoutMs: 30_000, what: 'the first cell to run' });
  worker.child.kill('SIGKILL');
  await worker.exited;
  secondTurn = READ;
  await stack.startWorker();

  const job = await waitForJobEnd(stack, id, 60_000);
  expect(job).toMatchObject({ status: 'succeeded', attempts: 2, result: { output: 'three rows' } });
  const outputs = job.steps.filter((s) => s.type === 'tool').map((s) => s.output);
  expect(outputs).toHaveLength(2);
  for (const output of outputs) expect(output).toContain('rows 3');
  expect(job.inputs.map((f) => [f.name, f.size])).toEqual([['rows.csv', CSV.length]]);
}, 120_000);
