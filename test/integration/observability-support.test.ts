/**
 * The observability test tools themselves: the throwaway Prometheus scrapes a server on this host's
 * loopback and answers PromQL, and the OTLP receiver takes an export from the real OTLP/HTTP
 * exporter Maestro uses and flattens it.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startOtlpReceiver, type OtlpReceiver } from '../support/otlp-receiver';
import { startPrometheus, type PrometheusInstance } from '../support/prometheus';

describe('Prometheus test container', () => {
  let server: Server;
  let prometheus: PrometheusInstance | undefined;
  let served = 3;

  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(`# HELP demo_total A counter for the test.\n# TYPE demo_total counter\ndemo_total ${served}\ndemo_gauge{kind="a"} 1.5\n`);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const { port } = server.address() as AddressInfo;
    // The first run builds the image (about 15 s here; longer on a slow mirror).
    prometheus = await startPrometheus({ targets: [{ job: 'demo', target: `127.0.0.1:${port}` }], scrapeIntervalMs: 500 });
  }, 300_000);

  afterAll(async () => {
    await prometheus?.close();
    await new Promise((ok) => server.close(ok));
  });

  test('scrapes a server on the host loopback and answers instant queries', async () => {
    const p = prometheus as PrometheusInstance;
    await p.waitForTargetsUp();
    const [sample, ...rest] = await p.waitForQuery('demo_total', (s) => s.length > 0);
    expect(rest).toEqual([]);
    expect(sample?.value).toBe(3);
    expect(sample?.metric).toEqual({ __name__: 'demo_total', job: 'demo', instance: expect.stringMatching(/^127\.0\.0\.1:\d+$/) as unknown });
    expect((await p.query('demo_gauge{kind="a"} * 2'))[0]?.value).toBe(3);
    expect(await p.query('scalar(up{job="demo"})')).toEqual([{ metric: {}, value: 1, timestamp: expect.any(Number) as unknown }]);

    served = 7;
    await p.waitForQuery('demo_total', (s) => s[0]?.value === 7);
    await expect(p.query('demo_total{')).rejects.toThrow(/bad_data/);
  });

  test("every expression of docs/grafana-dashboard.json is PromQL this Prometheus accepts", async () => {
    const p = prometheus as PrometheusInstance;
    const text = readFileSync(join(__dirname, '..', '..', 'docs', 'grafana-dashboard.json'), 'utf8');
    const exprs = [...text.matchAll(/"(?:expr|definition)": "((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1] ?? ''}"`) as string);
    expect(exprs.length).toBeGreaterThan(20);
    // Grafana's variables as Grafana would fill them in.
    const filled = exprs
      .filter((e) => !e.startsWith('label_values('))
      .map((e) => e.replaceAll('$__rate_interval', '1m').replaceAll('$__range', '1h').replaceAll('$job', '.*'));
    const refused: string[] = [];
    for (const e of filled) await p.query(e).catch((err: unknown) => refused.push(`${e}: ${(err as Error).message}`));
    expect(refused).toEqual([]);
  });
});

describe('OTLP receiver', () => {
  let receiver: OtlpReceiver;

  beforeEach(async () => {
    receiver = await startOtlpReceiver();
  });
  afterEach(() => receiver.close());

  /** The two spans every export below sends, flattened. */
  const expectTheTwoSpans = async (): Promise<void> => {
    const spans = await receiver.waitForSpans((s) => s.length >= 2, 5000);
    const parent = spans.find((s) => s.name === 'job.run');
    const child = spans.find((s) => s.name === 'model.call');
    expect(parent).toMatchObject({
      kindName: 'internal',
      attributes: { 'job.id': 'j-1', 'job.steps': 3, 'job.ok': true, 'job.cost': 0.25, 'job.tools': ['a', 'b'] },
      resource: { 'service.name': 'maestro-worker-test' },
      scope: { name: 'maestro-test' },
    });
    expect(parent?.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(parent?.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(parent?.parentSpanId).toBeUndefined();
    expect(child).toMatchObject({ traceId: parent?.traceId, parentSpanId: parent?.spanId, kindName: 'client', status: { code: 2, message: 'boom' } });
    expect(child?.durationMs).toBeGreaterThanOrEqual(0);
    expect(receiver.requests).toBeGreaterThanOrEqual(1);
    expect(receiver.rejected).toEqual([]);
  };

  test('takes an OTLP/JSON export from the real exporter and flattens its spans', async () => {
    await exportWithRealExporter(receiver.tracesUrl);
    await expectTheTwoSpans();
  });

  test('refuses an OTLP/protobuf export, which Maestro never sends', async () => {
    const res = await fetch(receiver.tracesUrl, { method: 'POST', headers: { 'content-type': 'application/x-protobuf' }, body: Buffer.from([0x0a, 0x00]) });
    expect(res.status).toBe(415);
    expect(receiver.spans()).toEqual([]);
  });

  test('counts every request, and refuses what is not a trace export', async () => {
    expect(receiver.requests).toBe(0);
    expect((await fetch(`${receiver.endpoint}/v1/metrics`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })).status).toBe(404);
    expect((await fetch(receiver.tracesUrl)).status).toBe(405);
    expect((await fetch(receiver.tracesUrl, { method: 'POST', body: 'x', headers: { 'content-type': 'text/plain' } })).status).toBe(415);
    expect((await fetch(receiver.tracesUrl, { method: 'POST', body: '{', headers: { 'content-type': 'application/json' } })).status).toBe(400);
    expect(receiver.requests).toBe(4);
    expect(receiver.rejected.map((r) => r.status)).toEqual([404, 405, 415, 400]);
    expect(receiver.spans()).toEqual([]);
  });
});

/**
 * A Node program that sends the two spans with the real OTLP/HTTP exporter and SDK, run in a process
 * of its own: the exporter loads `http` with a dynamic import(), which jest's module sandbox refuses.
 */
const EXPORT_SCRIPT = `
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
const { TracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const api = require('@opentelemetry/api');
(async () => {
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'maestro-worker-test' }),
    spanProcessors: [new SimpleSpanProcessor({ exporter: new OTLPTraceExporter({ url: process.argv[1] }) })],
  });
  const tracer = provider.getTracer('maestro-test');
  const parent = tracer.startSpan('job.run', {
    kind: api.SpanKind.INTERNAL,
    attributes: { 'job.id': 'j-1', 'job.steps': 3, 'job.ok': true, 'job.cost': 0.25, 'job.tools': ['a', 'b'] },
  });
  const child = tracer.startSpan('model.call', { kind: api.SpanKind.CLIENT }, api.trace.setSpan(api.context.active(), parent));
  child.setStatus({ code: api.SpanStatusCode.ERROR, message: 'boom' });
  child.end();
  parent.end();
  await provider.forceFlush();
  await provider.shutdown();
})().catch((err) => { console.error(err); process.exit(1); });
`;

/** Sends the two spans with the real exporter, from a child process. */
async function exportWithRealExporter(url: string): Promise<void> {
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', EXPORT_SCRIPT, url], { cwd: join(__dirname, '..', '..'), stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stderr: err }));
  });
  if (code !== 0) throw new Error(`the exporter script failed (${code}): ${stderr}`);
}
