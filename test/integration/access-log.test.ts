/**
 * The access log names each request by its route's template (`/v1/jobs/:id`), whatever router
 * matched it and whether its handler answered or threw; a request no route matched is logged as
 * `(unmatched)`, without its raw path. The real API on real Redis (no worker).
 */
import { startModelServer, type ModelServer } from '../support/model-server';
import { request, startStack, submitJob, type Stack } from '../support/stack';
import { waitFor } from '../support/wait-for';

let model: ModelServer;
let stack: Stack;
beforeAll(async () => {
  model = await startModelServer();
  stack = await startStack(model, { workers: 0 });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

interface AccessLine {
  event: string;
  method: string;
  route: string;
  path?: string;
  status: number;
}
const accessLines = (): AccessLine[] =>
  stack.logs
    .flatMap((l) => l.split('\n'))
    .filter((l) => l.includes('"http.request"'))
    .map((l) => JSON.parse(l) as AccessLine)
    .filter((l) => l.event === 'http.request');

/** The access-log line of the one request made by `send`, which the test makes unique by its path or method. */
async function lineOf(send: () => Promise<unknown>, match: (l: AccessLine) => boolean): Promise<AccessLine> {
  const before = accessLines().filter(match).length;
  await send();
  const lines = await waitFor(() => {
    const found = accessLines().filter(match);
    return found.length > before ? found : undefined;
  }, { what: 'the access-log line' });
  expect(lines).toHaveLength(before + 1);
  return lines.at(-1) as AccessLine;
}

test('POST /v1/jobs is logged with route /v1/jobs and GET of a job with /v1/jobs/:id, each with its full path', async () => {
  let id = '';
  const created = await lineOf(
    async () => {
      id = (await submitJob(stack, { task: 'logged' })).id;
    },
    (l) => l.method === 'POST' && l.status === 202,
  );
  expect(created).toMatchObject({ method: 'POST', route: '/v1/jobs', path: '/v1/jobs', status: 202 });

  const got = await lineOf(() => request(stack, 'GET', `/v1/jobs/${id}`), (l) => l.path === `/v1/jobs/${id}`);
  expect(got).toMatchObject({ method: 'GET', route: '/v1/jobs/:id', status: 200 });

  const listed = await lineOf(() => request(stack, 'GET', '/v1/jobs?limit=1'), (l) => l.method === 'GET' && l.route === '/v1/jobs');
  expect(listed).toMatchObject({ path: '/v1/jobs', status: 200 });

  const cancelled = await lineOf(() => request(stack, 'POST', `/v1/jobs/${id}/cancel`), (l) => l.path === `/v1/jobs/${id}/cancel`);
  expect(cancelled).toMatchObject({ method: 'POST', route: '/v1/jobs/:id/cancel', status: 202 });

  // The job is cancelled, so its stream ends after the history and the request finishes.
  const events = await lineOf(() => request(stack, 'GET', `/v1/jobs/${id}/events`), (l) => l.path === `/v1/jobs/${id}/events`);
  expect(events).toMatchObject({ method: 'GET', route: '/v1/jobs/:id/events', status: 200 });
});

test("a route whose handler throws keeps its template: the error handler's unwinding does not lose the routers' prefixes", async () => {
  const unknown = '01jzzzzzzzzzzzzzzzzzzzzzzz';
  const missing = await lineOf(() => request(stack, 'GET', `/v1/jobs/${unknown}`), (l) => l.path === `/v1/jobs/${unknown}`);
  expect(missing).toMatchObject({ method: 'GET', route: '/v1/jobs/:id', status: 404 });

  const artifact = await lineOf(
    () => request(stack, 'GET', `/v1/jobs/${unknown}/artifacts/charts/a.png`),
    (l) => l.path === `/v1/jobs/${unknown}/artifacts/charts/a.png`,
  );
  expect(artifact).toMatchObject({ route: '/v1/jobs/:id/artifacts/*name', status: 404 });

  const health = await lineOf(() => request(stack, 'GET', '/healthz'), (l) => l.route === '/healthz');
  expect(health).toMatchObject({ path: '/healthz', status: 200 });
});

test('a request no route matched is logged as (unmatched), without its raw path', async () => {
  const junk = `/wp-admin/${'x'.repeat(50)}-secret-looking-token`;
  const line = await lineOf(() => request(stack, 'GET', junk), (l) => l.route === '(unmatched)' && l.status === 404);
  expect(line.path).toBeUndefined();
  expect(stack.logs.join('')).not.toContain('secret-looking-token');

  // Refused before any route ran (invalid JSON, by the body parser of /v1): also unmatched.
  const refused = await lineOf(
    () => request(stack, 'POST', '/v1/jobs', '{"task": "unterminated'),
    (l) => l.method === 'POST' && l.status === 400,
  );
  expect(refused.route).toBe('(unmatched)');
  expect(refused.path).toBeUndefined();
});
