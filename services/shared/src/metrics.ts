/**
 * Prometheus metrics: one registry per process, shared by the API's and the worker's metrics (each
 * defines its own, see api-metrics.ts and worker-metrics.ts), served by `startMetricsServer` on a
 * port of its own. No label ever holds a caller, a job id, a path or a key: labels are fixed sets
 * (status, route template, runtime, …) or, for model names, bounded by `BoundedLabel`.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { Logger } from './logger';

export const registry = new Registry();

let processMetrics = false;

/** Node's own metrics (process_*, nodejs_*: CPU, memory, event-loop lag, GC), collected once per process. */
export function collectProcessMetrics(): void {
  if (processMetrics) return;
  processMetrics = true;
  collectDefaultMetrics({ register: registry });
}

/**
 * A label whose values come from outside (a model name a job asked for) yet must not mint series
 * without end: the first `max` distinct values are kept, later ones read `other`.
 */
export class BoundedLabel {
  private readonly seen = new Set<string>();

  constructor(private readonly max: number) {}

  of(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.max || value.length > 100) return 'other';
    this.seen.add(value);
    return value;
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Serves `GET /metrics` (and whatever `routes` adds, such as the worker's /healthz) on `host:port`,
 * apart from the API's port: Prometheus scrapes it without credentials, so it is never published
 * beyond the network the operator puts it on (docker-compose.yml publishes it nowhere).
 */
export async function startMetricsServer(opts: {
  host: string;
  port: number;
  logger: Logger;
  service: string;
  routes?: Record<string, () => { status: number; body: unknown }>;
}): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
        (err: unknown) => {
          opts.logger.warn({ event: 'metrics.failed', message: (err as Error).message }, 'could not collect metrics');
          res.writeHead(500, { 'Content-Type': 'text/plain' }).end('could not collect metrics\n');
        },
      );
      return;
    }
    const route = path === undefined ? undefined : opts.routes?.[path];
    if (route) {
      const { status, body } = route();
      res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err: unknown) => {
    throw new Error(`cannot serve metrics on ${opts.host}:${opts.port} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  });
  const { address, port } = server.address() as AddressInfo;
  opts.logger.info({ event: 'metrics.listening', address, port }, `${opts.service} metrics on ${address}:${port}/metrics`);
  let closing: Promise<void> | undefined;
  return {
    port,
    close: () =>
      (closing ??= (async () => {
        server.close();
        server.closeAllConnections();
        await once(server, 'close').catch(() => undefined);
      })()),
  };
}
