/** The OpenAPI document is valid 3.1 and describes every route the app serves. */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import pino from 'pino';
import { createApp } from '../../services/api/src/app';
import { loadConfig } from '../../services/shared/src/config';
import { startModelServer, type ModelServer } from '../support/model-server';
import { request, startStack, type Stack } from '../support/stack';

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

interface Layer {
  route?: { path: string; methods: Record<string, boolean> };
  handle?: { stack?: Layer[] };
  rawPath?: string;
}

/** Every (method, path) the Express app routes, in OpenAPI's path notation. */
function routesOf(stackLayers: Layer[], prefix = ''): string[] {
  const out: string[] = [];
  for (const layer of stackLayers) {
    if (layer.route) {
      const path = (prefix + (layer.route.path === '/' && prefix ? '' : layer.route.path)).replace(/[:*](\w+)/g, '{$1}');
      for (const method of Object.keys(layer.route.methods)) out.push(`${method.toUpperCase()} ${path}`);
    } else if (layer.handle?.stack && typeof layer.rawPath === 'string') {
      out.push(...routesOf(layer.handle.stack, prefix + layer.rawPath));
    }
  }
  return out;
}

test('/openapi.json is a valid OpenAPI 3.1 document', async () => {
  const res = await request(stack, 'GET', '/openapi.json');
  expect(res.status).toBe(200);
  expect(res.body.openapi).toBe('3.1.0');
  // The validator is an ES module, which jest's CommonJS runtime cannot load: it runs in plain node.
  const check = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "import { Validator } from '@seriousme/openapi-schema-validator'; let s=''; for await (const c of process.stdin) s+=c; const r = await new Validator().validate(JSON.parse(s)); console.log(JSON.stringify(r));",
    ],
    { input: JSON.stringify(res.body), cwd: join(__dirname, '..', '..'), encoding: 'utf8' },
  );
  expect(check.stderr).toBe('');
  const result = JSON.parse(check.stdout) as { valid: boolean; errors?: unknown };
  expect(result.errors ?? []).toEqual([]);
  expect(result.valid).toBe(true);
});

test('every route of the app appears in the document', async () => {
  const doc = (await request(stack, 'GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
  const documented = new Set(Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)));
  const app = createApp({
    config: loadConfig({}),
    store: {} as never,
    files: {} as never,
    queue: {} as never,
    redis: {} as never,
    logger: pino({ level: 'silent' }),
  });
  const routes = routesOf((app as unknown as { router: { stack: Layer[] } }).router.stack);
  expect(routes.length).toBeGreaterThanOrEqual(10);
  expect(routes.filter((r) => !documented.has(r))).toEqual([]);
  expect([...documented].filter((r) => !routes.includes(r))).toEqual([]);
});

test('the request schema in the document is the one that validates requests', async () => {
  const doc = (await request(stack, 'GET', '/openapi.json')).body;
  const schema = doc.components.schemas.JobRequest;
  expect(schema.required).toEqual(['task']);
  expect(schema.additionalProperties).toBe(false);
  expect(schema.properties.task.maxLength).toBe(100_000);
  expect(schema.properties.tools.items.enum).toEqual(['code_executor', 'list_files', 'read_file']);
});

test('/docs is a readable page listing the routes', async () => {
  const res = await fetch(`${stack.api.url}/docs`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/text\/html/);
  const html = await res.text();
  expect(html).toContain('POST /v1/jobs');
  expect(html).toContain('GET /v1/jobs/{id}/events');
  expect(html).not.toContain('<script');
});
