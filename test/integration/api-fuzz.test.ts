/**
 * Fuzzing the HTTP API as a separate process: a few thousand generated bad requests (wrong types,
 * oversized and deeply nested bodies, prototype keys, invalid UTF-8, odd content types and
 * encodings, path and query tricks, wrong methods, bad Idempotency-Key headers) against the real
 * `main.ts` on real Redis. Every answer must be a 4xx problem document; the process must stay up,
 * log no unhandled error, print no stack trace and keep its memory flat.
 *
 * The requests are generated from a seeded PRNG, so a failure reproduces run after run; the
 * failure message shows each offending request and what came back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Redis } from 'ioredis';
import { TEST_PREFIX } from '../support/docker';
import { startModelServer, type ModelServer } from '../support/model-server';
import { freePort } from '../support/ports';
import { stackEnv } from '../support/stack';
import { waitFor } from '../support/wait-for';

const SEED = 0x5eed_2026;
const TOTAL_REQUESTS = 2500;
const CONCURRENCY = 16;
/**
 * The whole generated set is sent twice. After the first pass the V8 heap, the JIT's code space and
 * the sockets' buffers have grown to their working size for this very mix of requests, so what the
 * second pass adds is noise (a GC cycle that has not run yet, allocator fragmentation). Retaining
 * anything per request would not fit: about a quarter of the requests carry 100 KB – 3 MB bodies,
 * so keeping even one body in twenty would add well over 40 MB, and 2,500 requests retaining 20 KB
 * each would too.
 */
const MAX_RSS_GROWTH_MB = 40;
const WARM_UP_ROUNDS = 2;
const MEASURED_ROUNDS = 2;
const BODY_LIMIT_KB = 256;

interface FuzzRequest {
  kind: string;
  method: string;
  path: string;
  headers: OutgoingHttpHeaders;
  body?: Buffer;
}

interface FuzzResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

// ---- deterministic generation ------------------------------------------------------------

/** mulberry32: a tiny seeded PRNG, so every run sends the same requests. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  constructor(private readonly next: () => number) {}
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)] as T;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      [items[i], items[j]] = [items[j] as T, items[i] as T];
    }
    return items;
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const JSON_TYPE = { 'content-type': 'application/json' };
/** An id shaped like a job id that no job has (ids start with their creation time; this one is 1970). */
const UNKNOWN_ID = '0000000000zzzzzzzzzzzzzzzz';

/** A valid job body, from a random subset of the optional fields. */
function validBody(g: Gen): Record<string, Json> {
  const body: Record<string, Json> = { task: 'fuzz task' };
  if (g.chance(0.5)) body.provider = g.pick(['openai', 'anthropic']);
  if (g.chance(0.3)) body.model = 'claude-test-1';
  if (g.chance(0.3)) body.system = 'be brief';
  if (g.chance(0.3)) body.tools = ['read_file'];
  if (g.chance(0.3)) body.maxSteps = 3;
  if (g.chance(0.3)) body.timeoutSeconds = 30;
  if (g.chance(0.3)) body.metadata = { team: 'fuzz' };
  return body;
}

const seventeenKeys = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v']));

/** For every field of the job body, values the API must refuse. `RAW:` values are spliced in as JSON text. */
const INVALID: Record<string, readonly (Json | `RAW:${string}`)[]> = {
  task: [null, true, 0, 1.5, [], {}, ['x'], '', '   ', '\n\t', 'x'.repeat(100_001), 'RAW:1e400'],
  provider: [null, true, 0, [], {}, '', 'OpenAI', 'openai ', 'gemini', ['openai'], 'anthropic\u0000'],
  model: [null, 0, [], {}, '', 'a'.repeat(201), 'gpt 4', 'm\u0000', '<script>', 'модель', 'a\nb'],
  system: [null, 0, true, [], {}, 'x'.repeat(50_001), ['be brief']],
  tools: [null, 'code_executor', 0, {}, [null], ['shell'], ['code_executor', 'code_executor'], [[]], ['CODE_EXECUTOR'], ['read_file', 'list_files', 'code_executor', 'read_file']],
  maxSteps: [null, '5', 0, -1, 1.5, 101, 1e9, true, [], {}, 'RAW:1e400', 'RAW:-0', 'RAW:-1e400', '1e3'],
  timeoutSeconds: [null, '60', 0, -5, 0.5, 3601, 1e12, true, [], 'RAW:1e400', 'RAW:9007199254740993'],
  metadata: [null, 'x', 0, [], ['a'], { a: 1 }, { a: null }, { a: { b: 'c' } }, { '': 'x' }, { ['k'.repeat(65)]: 'v' }, { a: 'v'.repeat(1025) }, seventeenKeys, { a: true }],
};
const FIELDS = Object.keys(INVALID);

/** The refused values of `field` that are plain JSON values (a `RAW:` string would be a valid task). */
const plainInvalid = (field: string): Json[] =>
  (INVALID[field] ?? []).filter((v): v is Json => !(typeof v === 'string' && v.startsWith('RAW:')));

/** JSON text of `body` with `field` set to `value` (a `RAW:` value goes in as written). */
function withField(body: Record<string, Json>, field: string, value: Json | `RAW:${string}`): string {
  if (typeof value === 'string' && value.startsWith('RAW:')) {
    const placeholder = '"__fuzz_raw__"';
    return JSON.stringify({ ...body, [field]: '__fuzz_raw__' }).replace(placeholder, value.slice(4));
  }
  return JSON.stringify({ ...body, [field]: value });
}

/** A body that fails validation: a valid one with one field (sometimes two) set to a refused value. */
function invalidBodyText(g: Gen): string {
  const field = g.pick(FIELDS);
  const base = validBody(g);
  if (g.chance(0.2)) {
    const other = g.pick(FIELDS.filter((f) => f !== field));
    base[other] = g.pick(plainInvalid(other));
  }
  return withField(base, field, g.pick(INVALID[field] ?? []));
}

function post(kind: string, body: Buffer | string, headers: OutgoingHttpHeaders = JSON_TYPE, path = '/v1/jobs'): FuzzRequest {
  return { kind, method: 'POST', path, headers, body: typeof body === 'string' ? Buffer.from(body, 'utf8') : body };
}

const nest = (depth: number, open: string, inner: string, close: string): string => open.repeat(depth) + inner + close.repeat(depth);

/** Every category, each a generator of one bad request. Weighted by how often it appears in the list. */
const CATEGORIES = {
  wrongType(g) {
    return post('wrong type', invalidBodyText(g));
  },
  everyFieldWrong(g) {
    const body = Object.fromEntries(FIELDS.map((f) => [f, g.pick(plainInvalid(f))]));
    return post('every field wrong', JSON.stringify(body));
  },
  unknownField(g) {
    const key = g.pick(['priority', 'Task', 'task ', 'caller', 'id', 'status', 'steps', 'apiKey', '', '\u0000', 'toString', 'hasOwnProperty']);
    return post('unknown field', JSON.stringify({ ...validBody(g), [key]: g.pick([1, 'x', null, {}, []] as Json[]) }));
  },
  hugeString(g) {
    // Near and past each length limit, and past the body limit (up to a few MB).
    const choice = g.int(0, 6);
    if (choice === 0) return post('task just over its limit', JSON.stringify({ task: 'x'.repeat(100_001) }));
    if (choice === 1) return post('task at its limit, bad provider', JSON.stringify({ task: 'x'.repeat(99_999), provider: 'x'.repeat(g.int(1, 100_000)) }));
    if (choice === 2) return post('system just over its limit', JSON.stringify({ task: 't', system: 's'.repeat(50_001) }));
    if (choice === 3) return post('multibyte task over the body limit', JSON.stringify({ task: '€'.repeat(g.int(90_000, 100_000)) }));
    if (choice === 4) {
      const size = BODY_LIMIT_KB * 1024 - g.int(200, 2000);
      return post('body just under the body limit', `{"task":"t","maxSteps":"x","system":"${'y'.repeat(size - 40)}"}`);
    }
    if (choice === 5) return post('body just over the body limit', JSON.stringify({ task: 'x'.repeat(BODY_LIMIT_KB * 1024 + g.int(1, 100)) }));
    return post('multi-MB body', JSON.stringify({ task: 'x'.repeat(g.int(1, 3) * 1024 * 1024) }));
  },
  deepNesting(g) {
    const depth = g.pick([1000, 10_000, 10_000, 50_000, 100_000]);
    const shapes = [
      () => nest(depth, '[', '', ']'),
      () => '['.repeat(depth),
      () => nest(depth, '{"a":', '1', '}'),
      () => '{"a":'.repeat(depth),
      () => `{"task":${nest(depth, '[', '"t"', ']')}}`,
      () => `{"task":"t","metadata":${nest(depth, '{"a":', '"v"', '}')}}`,
      () => `{"task":"t","tools":${nest(depth, '[', '', ']')}}`,
      () => `{"task":"t","__proto__":${nest(depth, '{"__proto__":', '{}', '}')}}`,
    ];
    return post('deep nesting', g.pick(shapes)());
  },
  prototypeKeys(g) {
    const bodies = [
      '{"task":"t","__proto__":{"admin":true}}',
      '{"__proto__":{"task":"t"}}',
      '{"task":"t","constructor":{"prototype":{"polluted":"yes"}}}',
      '{"task":"t","prototype":1}',
      '{"task":"t","metadata":{"__proto__":{"polluted":"yes"}},"provider":"x"}',
      '{"task":"t","metadata":{"constructor":{"prototype":{"polluted":"yes"}}}}',
      '{"task":"t","metadata":{"__proto__":"x"},"maxSteps":"x"}',
      '{"task":"t","metadata":{"prototype":"x","constructor":"y"},"tools":"x"}',
      '{"task":"t","tools":{"__proto__":[]}}',
      '{"task":"t","metadata":{"__proto__":null,"a":1}}',
      '{"task":{"__proto__":"t"}}',
    ];
    return post('prototype keys', g.pick(bodies));
  },
  invalidUtf8(g) {
    const bad = g.pick([
      [0xff],
      [0xfe, 0xff],
      [0xc0, 0xaf], // overlong "/"
      [0xed, 0xa0, 0x80], // a UTF-16 surrogate encoded as UTF-8
      [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
      [0xe2, 0x82], // truncated sequence
      [0x80, 0x80, 0x80],
      [0x00], // a raw NUL inside a string: invalid JSON
    ]);
    const b = Buffer.from(bad);
    const s = (text: string): Buffer => Buffer.from(text, 'utf8');
    const bodies = [
      Buffer.concat([s('{"task":"'), b, s('","provider":"'), b, s('"}')]),
      Buffer.concat([s('{"task":"t","metadata":{"'), b, s('":1}}')]),
      Buffer.concat([s('{"'), b, s('":"t"}')]),
      Buffer.concat([s('{"task":'), b, s('}')]),
      Buffer.concat([b, s('{"task":"t"}')]),
      Buffer.concat([s('{"task":"t","model":"'), b, s('"}')]),
      s('{"task":"\\ud800","maxSteps":"lone surrogate"}'),
    ];
    return post('invalid UTF-8', g.pick(bodies));
  },
  contentType(g) {
    // Media types that are not JSON at all are refused whatever the body; JSON-ish ones get a bad body.
    const notJson = ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=xyz', 'application/json-patch+json', 'application/merge-patch+json', 'text/json', 'application/xml', 'application/octet-stream', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'application/json; charset="iso-8859-1"', 'application/jsonx', 'json', ''];
    const jsonish = ['application/json, text/plain', 'application/*', '*/*', 'application/json; charset', 'APPLICATION/JSON', 'application/json;;', 'application/json; charset=utf-8; charset=latin1'];
    if (g.chance(0.7)) {
      const type = g.pick(notJson);
      const body = g.chance(0.5) ? JSON.stringify(validBody(g)) : g.pick(['task=hello', '--xyz\r\nContent-Disposition: form-data; name="task"\r\n\r\nhello\r\n--xyz--\r\n', '[{"op":"add","path":"/task","value":"t"}]']);
      return post('content type', body, type === '' ? {} : { 'content-type': type });
    }
    return post('JSON-ish content type, bad body', invalidBodyText(g), { 'content-type': g.pick(jsonish) });
  },
  contentEncoding(g) {
    const valid = JSON.stringify(validBody(g));
    const cases: [string, Buffer][] = [
      ['gzip', Buffer.from('definitely not gzip')],
      ['deflate', Buffer.from('not deflate either')],
      ['br', Buffer.from(valid)],
      ['x-unknown', Buffer.from(valid)],
      ['gzip, gzip', gzipSync(valid)],
      // A gzip bomb: a few KB that inflate far past the body limit.
      ['gzip', gzipSync(Buffer.from(`{"task":"${'x'.repeat(8 * 1024 * 1024)}"}`))],
      ['gzip', gzipSync(invalidBodyText(g))],
    ];
    const [encoding, body] = g.pick(cases);
    return post('content encoding', body, { ...JSON_TYPE, 'content-encoding': encoding });
  },
  malformedJson(g) {
    const valid = JSON.stringify(validBody(g));
    const snippets = [
      '{', '}', '{"task":', '{"task":"t",}', "{'task':'t'}", '{"task":"t"}}', '{"task":"t"} {"task":"u"}', 'null', 'true', '"str"', '123',
      'NaN', '{"task":NaN}', '{"task":undefined}', '{task:"t"}', '{"task":"t\n"}', '{"task":"\\x41"}', '{"task":"t"', '[', ']',
      '{"task":"t",,"provider":"openai"}', '{"task" "t"}', '// comment\n{"task":"t"}', '\u0000',
    ];
    // A valid body cut short is never valid JSON: the object is not closed.
    const body = g.chance(0.5) ? g.pick(snippets) : valid.slice(0, g.int(1, valid.length - 1));
    return post('malformed JSON', body);
  },
  emptyBody(g) {
    const headers = g.pick<OutgoingHttpHeaders>([JSON_TYPE, {}, { ...JSON_TYPE, 'content-length': '0' }, { 'content-type': 'text/plain' }]);
    return { kind: 'empty body', method: 'POST', path: '/v1/jobs', headers, body: g.chance(0.5) ? Buffer.alloc(0) : undefined };
  },
  pathTricks(g) {
    const ids = [
      '..%2F..%2Fetc%2Fpasswd', '%2e%2e', '%2e%2e%2f%2e%2e%2fhealthz', '..', '.', '%00', 'abc%00def', `${UNKNOWN_ID}%00`,
      'a'.repeat(10_000), '%F0%9F%92%A9'.repeat(500), '%E2%98%83', `${UNKNOWN_ID}.`, `${UNKNOWN_ID}..`, `${UNKNOWN_ID};a=b`,
      ';a=b', `${UNKNOWN_ID.toUpperCase()}`, UNKNOWN_ID, `${UNKNOWN_ID}x`, UNKNOWN_ID.slice(1), '__proto__', 'constructor',
      'hasOwnProperty', 'toString', '%', '%zz', '%FF', '%C0%AF', 'x/../../healthz', '%2F', '*', '$', "'%20OR%201=1--", '%0d%0aSet-Cookie:%20x=1',
    ];
    const id = g.pick(ids);
    const [method, path] = g.pick<[string, string]>([
      ['GET', `/v1/jobs/${id}`],
      ['POST', `/v1/jobs/${id}/cancel`],
      ['GET', `/v1/jobs/${id}/events`],
      ['GET', `/v1/jobs/${id}/artifacts/x.txt`],
      ['GET', `/v1/jobs/${UNKNOWN_ID}/artifacts/${id}`],
      ['GET', `/v1/jobs/${UNKNOWN_ID}/artifacts/..%2F..%2F${id}`],
      ['GET', `/v1/jobs/${id}//`],
      ['GET', `/v1//jobs/${id}`],
      ['GET', `//v1/jobs/${id}`],
      ['GET', `/v1/jobs//${id}`],
      ['POST', `/v1/jobs//cancel`],
      ['GET', `/v1/jobs/${UNKNOWN_ID}/cancel`],
      ['GET', '/v1/jobs.json'],
      ['GET', '/v1/jobs;a=b'],
      ['GET', '/v1'],
      ['GET', '/v2/jobs'],
      ['GET', `/v1/jobs/${id}?limit=1`],
    ]);
    return { kind: 'path trick', method, path, headers: {} };
  },
  badQuery(g) {
    const params = [
      'limit=-1', 'limit=0', 'limit=1e9', 'limit=101', 'limit=1.5', 'limit=abc', 'limit=', 'limit=Infinity', 'limit=NaN', 'limit[]=1',
      'limit=1&limit=2', 'limit=%00', 'limit=9007199254740993', 'status=a&status=b', 'status=queued&status=running', 'status=QUEUED',
      'status=', 'status=%00', 'status[$ne]=x', 'status=queued%00', 'cursor=junk', `cursor=${'a'.repeat(10_000)}`, 'cursor=%FF',
      'cursor=../../x', 'cursor=', `cursor=${UNKNOWN_ID}&cursor=${UNKNOWN_ID}`, `cursor=${UNKNOWN_ID.toUpperCase()}`, 'cursor=%2B', 'cursor=-',
      'unknown=1', '__proto__=1', '__proto__[x]=1', 'constructor=x', 'toString=x', 'hasOwnProperty=x', 'a=%', 'limit=5&extra=1',
    ];
    return { kind: 'bad query', method: 'GET', path: `/v1/jobs?${g.pick(params)}`, headers: {} };
  },
  badMethod(g) {
    const method = g.pick(['PUT', 'DELETE', 'PATCH', 'TRACE', 'PROPFIND', 'LINK']);
    const path = g.pick(['/v1/jobs', `/v1/jobs/${UNKNOWN_ID}`, `/v1/jobs/${UNKNOWN_ID}/cancel`, '/v1', '/healthz/x']);
    const body = g.chance(0.5) ? Buffer.from(JSON.stringify(validBody(g))) : undefined;
    return { kind: 'bad method', method, path, headers: body ? JSON_TYPE : {}, body };
  },
  wrongMethodForRoute(g) {
    const [method, path] = g.pick<[string, string]>([
      ['POST', `/v1/jobs/${UNKNOWN_ID}`],
      ['GET', `/v1/jobs/${UNKNOWN_ID}/cancel`],
      ['POST', '/v1/jobs/cancel'],
      ['POST', '/healthz/x'],
      ['POST', `/v1/jobs/${UNKNOWN_ID}/events`],
    ]);
    return { kind: 'wrong method for route', method, path, headers: JSON_TYPE, body: Buffer.from('{}') };
  },
  idempotencyKey(g) {
    // Control characters cannot even be sent by node:http; the HTTP parser test below covers them.
    const key = g.pick(['', ' ', '\t', 'k'.repeat(10_000), 'k'.repeat(g.int(200, 4000)), 'ÿé\u00a0', '../../x', '*', 'a, b', '"quoted"', '%00', '\u007e'.repeat(300)]);
    const headers: OutgoingHttpHeaders = { ...JSON_TYPE, 'idempotency-key': g.chance(0.15) ? [key, 'second'] : key };
    return post('bad Idempotency-Key', g.chance(0.2) ? g.pick(['{', '[]', '']) : invalidBodyText(g), headers);
  },
  oddHeaders(g) {
    const headers: OutgoingHttpHeaders = { ...JSON_TYPE };
    for (let i = 0; i < g.int(1, 80); i++) headers[`x-fuzz-${i}`] = 'v'.repeat(g.int(0, 100));
    if (g.chance(0.5)) headers['accept'] = g.pick(['text/html', 'application/xml', '*/*;q=0', 'nothing']);
    if (g.chance(0.3)) headers['origin'] = 'https://evil.example';
    if (g.chance(0.3)) headers['x-forwarded-for'] = '1.2.3.4, 5.6.7.8';
    return post('odd headers', invalidBodyText(g), headers);
  },
} satisfies Record<string, (g: Gen) => FuzzRequest>;

const WEIGHTS: Record<keyof typeof CATEGORIES, number> = {
  wrongType: 14, everyFieldWrong: 3, unknownField: 4, hugeString: 8, deepNesting: 6, prototypeKeys: 6, invalidUtf8: 6, contentType: 8,
  contentEncoding: 3, malformedJson: 8, emptyBody: 3, pathTricks: 10, badQuery: 8, badMethod: 5, wrongMethodForRoute: 2, idempotencyKey: 8, oddHeaders: 2,
};

function generateRequests(seed: number, count: number): FuzzRequest[] {
  const g = new Gen(mulberry32(seed));
  const names = Object.keys(CATEGORIES) as (keyof typeof CATEGORIES)[];
  const out: FuzzRequest[] = [];
  // Every category at least a few times, then the rest by weight; shuffled so the warm-up batch is
  // a sample of the whole mix.
  for (const name of names) for (let i = 0; i < 5; i++) out.push(CATEGORIES[name](g));
  const bag = names.flatMap((name) => Array<keyof typeof CATEGORIES>(WEIGHTS[name]).fill(name));
  while (out.length < count) out.push(CATEGORIES[g.pick(bag)](g));
  return g.shuffle(out);
}

// ---- the API process --------------------------------------------------------------------


/** The API's resident memory right after a full garbage collection it was asked for (gc-on-signal.cjs). */
async function rssAfterGcMb(pid: number): Promise<number> {
  const seen = stderr.length;
  process.kill(pid, 'SIGUSR2');
  await waitFor(() => stderr.slice(seen).includes('maestro-test: gc done'), { timeoutMs: 10_000, what: 'the API to collect its garbage' });
  return rssMb(pid);
}

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(kb) / 1024;
}

function send(port: number, req: FuzzRequest): Promise<FuzzResponse> {
  return new Promise((resolve, reject) => {
    let response: FuzzResponse | undefined;
    // A fresh connection per request (`agent: false`). A pooling Agent, even without keep-alive, hands
    // a freed socket to the next queued request, and when the server closes that socket after its
    // answer the request fails with "socket hang up" on the client alone: noise, not a finding.
    const options = { host: '127.0.0.1', port, method: req.method, path: req.path, headers: req.headers, agent: false, timeout: 15_000 };
    const outgoing = httpRequest(options, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size <= 64 * 1024) chunks.push(chunk);
      });
      res.on('end', () => {
        response = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) };
        resolve(response);
      });
      res.on('error', reject);
    });
    outgoing.on('timeout', () => outgoing.destroy(new Error('no answer within 15 s')));
    // The server may answer (413, 415) and close before it has read a large body; the answer counts.
    outgoing.on('error', (err) => (response ? resolve(response) : reject(err)));
    outgoing.end(req.body);
  });
}

function describeRequest(req: FuzzRequest): string {
  const body = req.body === undefined ? '(none)' : `${JSON.stringify(req.body.subarray(0, 200).toString('latin1'))}${req.body.length > 200 ? '…' : ''} (${req.body.length} bytes)`;
  const path = req.path.length > 300 ? `${req.path.slice(0, 300)}… (${req.path.length} chars)` : req.path;
  const headers = JSON.stringify(req.headers, (_k, v: unknown) => (typeof v === 'string' && v.length > 200 ? `${v.slice(0, 200)}… (${v.length} chars)` : v));
  return `[${req.kind}] ${req.method} ${path}\n  headers: ${headers}\n  body: ${body}`;
}

const STACK_TRACE = /\n\s+at .+(:\d+:\d+|\(native\)|\(<anonymous>\))|node_modules|\/work\/|\.ts:\d+/;

/** What is wrong with an answer to a bad request, or null when it is a proper 4xx problem. */
function problemWith(res: FuzzResponse): string | null {
  if (res.status < 400 || res.status > 499) return `status ${res.status} is not 4xx`;
  const type = String(res.headers['content-type'] ?? '');
  if (!/^application\/problem\+json(;|$)/.test(type)) return `content-type ${JSON.stringify(type)} is not application/problem+json`;
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
  } catch {
    return 'body is not JSON';
  }
  for (const field of ['type', 'title', 'detail'] as const) {
    if (typeof body[field] !== 'string' || body[field] === '') return `problem.${field} is missing`;
  }
  if (body.status !== res.status) return `problem.status ${String(body.status)} differs from the HTTP status`;
  if (STACK_TRACE.test(res.body.toString('utf8'))) return 'body shows a stack trace or a host path';
  return null;
}

function describeResponse(res: FuzzResponse): string {
  return `  → ${res.status} ${String(res.headers['content-type'] ?? '(no content-type)')} ${res.body.subarray(0, 300).toString('utf8')}`;
}

/** Sends `requests` CONCURRENCY at a time; returns how many were answered, adding every bad answer to `failures`. */
async function runAll(port: number, requests: FuzzRequest[], failures: string[]): Promise<number> {
  let answered = 0;
  let next = 0;
  const workers = Array.from({ length: CONCURRENCY }, async () => {
    while (next < requests.length) {
      const req = requests[next++] as FuzzRequest;
      try {
        const res = await send(port, req);
        answered++;
        const wrong = problemWith(res);
        if (wrong) failures.push(`${wrong}\n${describeRequest(req)}\n${describeResponse(res)}`);
      } catch (err) {
        failures.push(`no answer: ${(err as Error).message}\n${describeRequest(req)}`);
      }
    }
  });
  await Promise.all(workers);
  return answered;
}

// ---- the test ---------------------------------------------------------------------------

let model: ModelServer;
let child: ChildProcess;
let port: number;
let redis: Redis;
let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
const prefix = `${TEST_PREFIX}fuzz-${process.pid}-${Date.now().toString(36)}`;
let stdout = '';
let stderr = '';

async function keysMatching(pattern: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [nextCursor, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = nextCursor;
    found.push(...keys);
  } while (cursor !== '0');
  return found;
}

beforeAll(async () => {
  model = await startModelServer();
  redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  port = await freePort();
  const env: Record<string, string> = {
    ...stackEnv(model, prefix),
    PORT: String(port),
    RATE_LIMIT_PER_MINUTE: '0',
    LOG_LEVEL: 'warn',
    PATH: process.env.PATH ?? '/usr/bin:/bin',
  };
  // The API never needs a provider key (docs/architecture.md: only the worker holds them).
  delete env.OPENAI_API_KEY;
  delete env.ANTHROPIC_API_KEY;
  // With a hook to collect its garbage on request, so memory is compared after full collections.
  const gcHook = join(__dirname, '..', 'fixtures', 'gc-on-signal.cjs');
  child = spawn(process.execPath, ['--expose-gc', '--require', gcHook, '--import', 'tsx', join('services', 'api', 'src', 'main.ts')], {
    cwd: join(__dirname, '..', '..'),
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  child.on('exit', (code, signal) => (exit = { code, signal }));
  await waitFor(
    async () => {
      if (exit) throw new Error(`the API exited at start-up (${JSON.stringify(exit)}): ${stderr}`);
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      return res.status === 200;
    },
    { timeoutMs: 20_000, what: 'the API process to serve /healthz' },
  );
}, 30_000);

afterAll(async () => {
  if (child && !exit) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await waitFor(() => exit !== undefined, { timeoutMs: 5_000, what: 'the API to stop' }).catch(() => child.kill('SIGKILL'));
    await exited;
  }
  if (redis) {
    const keys = await keysMatching(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  }
  await model?.close();
});

test('thousands of generated bad requests all get 4xx problem documents, and the API stays up with flat memory', async () => {
  const requests = generateRequests(SEED, TOTAL_REQUESTS);
  const pid = child.pid as number;
  const failures: string[] = [];
  const started = Date.now();

  // Two rounds to warm up: V8 grows its heaps lazily and collects when it likes, so the first
  // rounds' growth says little. A leak keeps growing through the two measured rounds after them.
  let answered = 0;
  for (let round = 0; round < WARM_UP_ROUNDS; round++) answered += await runAll(port, requests, failures);
  const rssAfterWarmUp = await rssAfterGcMb(pid);
  for (let round = 0; round < MEASURED_ROUNDS; round++) answered += await runAll(port, requests, failures);
  const rssAtEnd = await rssAfterGcMb(pid);
  const elapsedMs = Date.now() - started;

  const sent = (WARM_UP_ROUNDS + MEASURED_ROUNDS) * requests.length;
  const shown = failures.slice(0, 15).join('\n\n');
  expect(`${failures.length} of ${sent} requests failed${failures.length > 0 ? `:\n\n${shown}` : ''}`).toBe(`0 of ${sent} requests failed`);
  expect(answered).toBeGreaterThanOrEqual(sent);
  expect(elapsedMs).toBeLessThan(150_000);

  // Still the same process, still serving.
  expect(exit).toBeUndefined();
  const health = await fetch(`http://127.0.0.1:${port}/healthz`);
  expect(health.status).toBe(200);

  expect(rssAtEnd - rssAfterWarmUp).toBeLessThan(MAX_RSS_GROWTH_MB);

  // None of the bad requests made a job.
  expect(await keysMatching(`${prefix}:job:*`)).toEqual([]);
}, 200_000);

// zod 4's z.record skips a `__proto__` key without validating its value; the API refuses such keys
// anywhere in a body before the schema runs, so the caller's data never silently vanishes.
test('a __proto__ key inside metadata is refused with 400 rather than silently dropped', async () => {
  const res = await send(port, post('metadata __proto__', '{"task":"t","metadata":{"__proto__":{"polluted":"yes"}}}'));
  expect(res.status).toBe(400);
});

/** Sends bytes on a fresh socket and returns everything the server wrote before closing. */
function sendRaw(bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.end(bytes));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
  });
}

/** Requests Node's own HTTP parser refuses before the app sees them: control characters, oversized heads, smuggling. */
const UNPARSEABLE: [string, string][] = [
  ['a control character in Idempotency-Key', 'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\x01b\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'],
  ['DEL in Idempotency-Key', 'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nIdempotency-Key: \x7f\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'],
  ['a bare CR in Idempotency-Key', 'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\rb\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'],
  ['a 20,000-character path', `GET /v1/jobs/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`],
  ['raw non-ASCII bytes in the path', 'GET /v1/jobs/\xe9\xff HTTP/1.1\r\nHost: x\r\n\r\n'],
  ['an unknown method', 'FROB /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n'],
  ['both Content-Length and Transfer-Encoding', 'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
  ['a bad chunk size', 'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n'],
  ['a header line without a colon', 'GET /v1/jobs HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n'],
];

test.each(UNPARSEABLE)('a request with %s is refused with a 4xx and the API keeps serving', async (_name, raw) => {
  const answer = await sendRaw(Buffer.from(raw, 'latin1'));
  expect(answer).toMatch(/^HTTP\/1\.1 4\d\d /);
  expect(exit).toBeUndefined();
  expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
});

// Node's parser refuses these before Express sees them; the API's clientError handler still answers
// with a problem document.
test.each(UNPARSEABLE)('a request with %s is answered with a problem document', async (_name, raw) => {
  const answer = await sendRaw(Buffer.from(raw, 'latin1'));
  expect(answer).toMatch(/^HTTP\/1\.1 4\d\d [^]*\r\ncontent-type: application\/problem\+json/i);
});

test('the API process printed no stack trace and logged no unhandled error', () => {
  expect(stderr).not.toMatch(/\n\s+at |Error:/);
  // pino writes to stdout; level 50 and above are errors (request.crashed and the like).
  const errors = stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .filter((line) => {
      try {
        return (JSON.parse(line) as { level?: number }).level !== undefined && (JSON.parse(line) as { level: number }).level >= 50;
      } catch {
        return true; // anything that is not a log line is unexpected too
      }
    });
  expect(errors).toEqual([]);
});
