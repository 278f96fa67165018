/** The pieces of the metrics code that need no Redis: the bounded label, job-id times and the metrics listener. */
import { once } from 'node:events';
import { createServer } from 'node:net';
import pino from 'pino';
import { newJobId, timeOfJobId } from '../../services/shared/src/ids';
import { BoundedLabel, registry, startMetricsServer, type MetricsServer } from '../../services/shared/src/metrics';

const logger = pino({ level: 'silent' });

describe('BoundedLabel', () => {
  test('keeps the first values it sees and reads later ones as `other`', () => {
    const label = new BoundedLabel(2);
    expect(label.of('gpt-5.4-mini')).toBe('gpt-5.4-mini');
    expect(label.of('claude-sonnet-4-6')).toBe('claude-sonnet-4-6');
    expect(label.of('made-up-model-1')).toBe('other');
    // Values already kept stay theirs.
    expect(label.of('gpt-5.4-mini')).toBe('gpt-5.4-mini');
  });

  test('an over-long value is never kept', () => {
    const label = new BoundedLabel(10);
    expect(label.of('x'.repeat(101))).toBe('other');
    expect(label.of('ok')).toBe('ok');
  });
});

test('a job id carries its creation time to the millisecond', () => {
  const at = Date.parse('2026-12-03T17:00:00.123Z');
  expect(timeOfJobId(newJobId(at))).toBe(at);
  expect(timeOfJobId(newJobId())).toBeGreaterThan(Date.now() - 1000);
});

describe('the metrics listener', () => {
  let server: MetricsServer;
  let healthy = true;
  beforeAll(async () => {
    server = await startMetricsServer({
      host: '127.0.0.1',
      port: 0,
      logger,
      service: 'test',
      routes: { '/healthz': () => (healthy ? { status: 200, body: { status: 'ok' } } : { status: 503, body: { status: 'unhealthy' } }) },
    });
  });
  afterAll(() => server.close());
  const url = (path: string): string => `http://127.0.0.1:${server.port}${path}`;

  test('serves the registry in Prometheus text format', async () => {
    const res = await fetch(url('/metrics'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(registry.contentType);
    expect(await res.text()).toBe(await registry.metrics());
  });

  test('serves the extra routes it was given, and nothing else', async () => {
    expect((await fetch(url('/healthz'))).status).toBe(200);
    healthy = false;
    const res = await fetch(url('/healthz'));
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'unhealthy' });
    expect((await fetch(url('/v1/jobs'))).status).toBe(404);
    expect((await fetch(url('/metrics'), { method: 'POST' })).status).toBe(405);
  });

  test('a port already taken stops it with a message naming the port', async () => {
    const taken = createServer().listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const port = (taken.address() as { port: number }).port;
    try {
      await expect(startMetricsServer({ host: '127.0.0.1', port, logger, service: 'test' })).rejects.toThrow(`cannot serve metrics on 127.0.0.1:${port} (EADDRINUSE)`);
    } finally {
      taken.close();
    }
  });
});
