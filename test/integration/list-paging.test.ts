/**
 * Paging through a caller's jobs: the last page says so (`nextCursor: null`) even when it is full,
 * so a client never makes a call that returns an empty page. The real API on real Redis (no worker:
 * jobs stay queued); each caller has its own key, so it sees exactly the jobs it made.
 */
import { startModelServer, type ModelServer } from '../support/model-server';
import { request, startStack, type AnyJson, type Stack } from '../support/stack';

const KEYS = {
  three: `three-${'3c'.repeat(16)}`,
  four: `four-${'4d'.repeat(16)}`,
  filter: `filter-${'5e'.repeat(16)}`,
};

let model: ModelServer;
let stack: Stack;
beforeAll(async () => {
  model = await startModelServer();
  stack = await startStack(model, {
    workers: 0,
    env: { AUTH_MODE: 'api-key', API_KEYS: Object.entries(KEYS).map(([name, key]) => `${name}:${key}`).join(',') },
  });
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

const auth = (key: string) => ({ authorization: `Bearer ${key}` });

/** Submits `n` jobs as the key's caller; their ids, oldest first. */
async function submit(key: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const res = await request(stack, 'POST', '/v1/jobs', { task: `job ${i}` }, auth(key));
    expect(res.status).toBe(202);
    ids.push(res.body.id as string);
  }
  return ids;
}

async function page(key: string, query: string): Promise<{ ids: string[]; nextCursor: string | null }> {
  const res = await request(stack, 'GET', `/v1/jobs?${query}`, undefined, auth(key));
  expect(res.status).toBe(200);
  return { ids: (res.body.jobs as AnyJson[]).map((j) => j.id as string), nextCursor: res.body.nextCursor as string | null };
}

test('a caller with exactly `limit` jobs gets them on one page with nextCursor null', async () => {
  const ids = await submit(KEYS.three, 3);
  expect(await page(KEYS.three, 'limit=3')).toEqual({ ids: [...ids].reverse(), nextCursor: null });
  // A smaller limit that divides the rest evenly: the second page is full and still the last.
  const first = await page(KEYS.three, 'limit=2');
  expect(first.ids).toEqual([ids[2], ids[1]]);
  expect(first.nextCursor).toBe(ids[1]);
  expect(await page(KEYS.three, `limit=2&cursor=${first.nextCursor}`)).toEqual({ ids: [ids[0]], nextCursor: null });
  expect(await page(KEYS.three, `limit=1&cursor=${ids[1]}`)).toEqual({ ids: [ids[0]], nextCursor: null });
});

test('with `limit` + 1 jobs the first page has a cursor and the second holds the one left, with nextCursor null', async () => {
  const ids = await submit(KEYS.four, 4);
  const first = await page(KEYS.four, 'limit=3');
  expect(first).toEqual({ ids: [ids[3], ids[2], ids[1]], nextCursor: ids[1] });
  expect(await page(KEYS.four, `limit=3&cursor=${first.nextCursor}`)).toEqual({ ids: [ids[0]], nextCursor: null });
});

test('with a status filter, the look-ahead skips jobs of other statuses', async () => {
  const ids = await submit(KEYS.filter, 5);
  // Oldest and newest cancelled: three queued jobs in the middle.
  for (const id of [ids[0], ids[4]]) expect((await request(stack, 'POST', `/v1/jobs/${id}/cancel`, undefined, auth(KEYS.filter))).status).toBe(202);
  expect(await page(KEYS.filter, 'status=queued&limit=3')).toEqual({ ids: [ids[3], ids[2], ids[1]], nextCursor: null });
  const first = await page(KEYS.filter, 'status=queued&limit=2');
  expect(first).toEqual({ ids: [ids[3], ids[2]], nextCursor: ids[2] });
  expect(await page(KEYS.filter, `status=queued&limit=2&cursor=${first.nextCursor}`)).toEqual({ ids: [ids[1]], nextCursor: null });
  expect(await page(KEYS.filter, 'status=cancelled&limit=2')).toEqual({ ids: [ids[4], ids[0]], nextCursor: null });
  expect(await page(KEYS.filter, 'status=cancelled&limit=1')).toEqual({ ids: [ids[4]], nextCursor: ids[4] });
});
