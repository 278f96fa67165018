/**
 * An OTLP/HTTP trace receiver for tests: an HTTP server on a free loopback port that takes what an
 * exporter sends to `<endpoint>/v1/traces` and keeps every span, flattened, for the test to look at.
 *
 * It takes ExportTraceServiceRequest as `application/json` (OTLP/JSON: ids in hex, enums as numbers,
 * 64-bit integers as numbers or strings), what Maestro's exporter sends; a body may be gzipped
 * (`Content-Encoding: gzip`). Each accepted export is answered 200 with an empty
 * ExportTraceServiceResponse; anything else (protobuf included) is refused and counted.
 *
 * Every request counts in `requests`, whatever its path or body, so a test can assert that nothing
 * was sent at all.
 *
 * Checked against @opentelemetry/exporter-trace-otlp-http. That exporter loads `http` with a dynamic
 * import(), which jest's module sandbox refuses ("A dynamic import callback was invoked without
 * --experimental-vm-modules"): an exporter inside the jest process sends nothing; one in a child
 * process (a spawned service) is unaffected.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { waitFor } from './wait-for';

/** An attribute's value: AnyValue made plain (arrays and key-value lists nested, bytes as a Buffer). */
export type AttributeValue = string | number | boolean | null | Buffer | AttributeValue[] | { [key: string]: AttributeValue };
export type Attributes = Record<string, AttributeValue>;

export interface ReceivedSpan {
  /** 32 hex digits. */
  traceId: string;
  /** 16 hex digits. */
  spanId: string;
  /** 16 hex digits; absent on a root span. */
  parentSpanId?: string;
  name: string;
  /**
   * OTLP's SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer (one more
   * than @opentelemetry/api's SpanKind, which has no "unspecified").
   */
  kind: number;
  kindName: 'unspecified' | 'internal' | 'server' | 'client' | 'producer' | 'consumer' | 'unknown';
  attributes: Attributes;
  /** The resource's attributes (service.name and the like). */
  resource: Attributes;
  /** The instrumentation scope. */
  scope: { name: string; version?: string };
  /** code: 0 unset, 1 ok, 2 error. */
  status: { code: number; message?: string };
  /** Nanoseconds since the epoch, as decimal strings (they exceed 2^53). */
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  durationMs: number;
  events: { name: string; timeUnixNano: string; attributes: Attributes }[];
}

export interface OtlpReceiver {
  /** http://127.0.0.1:PORT — OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces). */
  endpoint: string;
  /** http://127.0.0.1:PORT/v1/traces — OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. */
  tracesUrl: string;
  /** Every span received so far, in arrival order. */
  spans(): ReceivedSpan[];
  /**
   * Resolves with every span received once `predicate` holds for them; throws after `timeoutMs`
   * (default 10 s) naming the spans seen.
   */
  waitForSpans(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  /** Requests of any kind received, accepted or not. */
  readonly requests: number;
  /** Requests answered with an error (bad path, method, type or body), with why. */
  readonly rejected: { status: number; reason: string }[];
  /** Forgets the spans and resets the counters. */
  clear(): void;
  close(): Promise<void>;
}

const BODY_LIMIT = 32 * 1024 * 1024;
const KIND_NAMES = ['unspecified', 'internal', 'server', 'client', 'producer', 'consumer'] as const;

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const received: ReceivedSpan[] = [];
  let requests = 0;
  let rejected: { status: number; reason: string }[] = [];

  const reject = (res: ServerResponse, status: number, reason: string): void => {
    rejected.push({ status, reason });
    res.writeHead(status, { 'content-type': 'text/plain' }).end(`${reason}\n`);
  };

  /** Handles one request; answers an error with what was wrong, a success with an empty response. */
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    requests++;
    const problem = await accept(req, res);
    if (problem) reject(res, problem.status, problem.reason);
  };

  const accept = async (req: IncomingMessage, res: ServerResponse): Promise<{ status: number; reason: string } | undefined> => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/v1/traces') return { status: 404, reason: `no such path ${req.url ?? ''}` };
    if (req.method !== 'POST') return { status: 405, reason: `method ${req.method ?? ''} not allowed` };
    let body: Buffer;
    try {
      body = await readBody(req);
    } catch (err) {
      return { status: 413, reason: (err as Error).message };
    }
    const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
    if (encoding === 'gzip') {
      try {
        body = gunzipSync(body);
      } catch (err) {
        return { status: 400, reason: `bad gzip body: ${(err as Error).message}` };
      }
    } else if (encoding !== 'identity') {
      return { status: 415, reason: `content-encoding ${encoding} not supported` };
    }
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
    if (type !== 'application/json') return { status: 415, reason: `content-type ${type} not supported (application/json only)` };
    let spans: ReceivedSpan[];
    try {
      spans = flattenJson(JSON.parse(body.toString('utf8')));
    } catch (err) {
      return { status: 400, reason: `malformed ExportTraceServiceRequest (${type}): ${(err as Error).message}` };
    }
    for (const span of spans) span.kindName = KIND_NAMES[span.kind] ?? 'unknown';
    received.push(...spans);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    return undefined;
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) reject(res, 500, (err as Error).message);
      else res.destroy();
    });
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => ok());
  });
  const { port } = server.address() as AddressInfo;
  const endpoint = `http://127.0.0.1:${port}`;
  let closing: Promise<void> | undefined;

  return {
    endpoint,
    tracesUrl: `${endpoint}/v1/traces`,
    spans: () => [...received],
    async waitForSpans(predicate, timeoutMs = 10_000) {
      try {
        return await waitFor(() => (predicate([...received]) ? [...received] : undefined), { timeoutMs, intervalMs: 25, what: 'spans' });
      } catch (err) {
        const names = received.map((s) => s.name).join(', ');
        throw new Error(`${(err as Error).message}; ${received.length} span(s) received in ${requests} request(s): ${names || 'none'}`);
      }
    },
    get requests() {
      return requests;
    },
    get rejected() {
      return [...rejected];
    },
    clear() {
      received.length = 0;
      requests = 0;
      rejected = [];
    },
    close: () =>
      (closing ??= new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      })),
  };
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > BODY_LIMIT) {
        reject(new Error(`body over ${BODY_LIMIT} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// ---- OTLP/JSON ----

interface JsonAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: number | string;
  doubleValue?: number | string;
  arrayValue?: { values?: JsonAnyValue[] };
  kvlistValue?: { values?: JsonKeyValue[] };
  bytesValue?: string;
}
interface JsonKeyValue {
  key: string;
  value?: JsonAnyValue;
}
interface JsonSpan {
  traceId?: string;
  spanId?: string;
  parentSpanId?: string;
  name?: string;
  kind?: number | string;
  startTimeUnixNano?: number | string | { low: number; high: number };
  endTimeUnixNano?: number | string | { low: number; high: number };
  attributes?: JsonKeyValue[];
  events?: { name?: string; timeUnixNano?: number | string | { low: number; high: number }; attributes?: JsonKeyValue[] }[];
  status?: { code?: number | string; message?: string };
}
interface JsonRequest {
  resourceSpans?: {
    resource?: { attributes?: JsonKeyValue[] };
    scopeSpans?: { scope?: { name?: string; version?: string }; spans?: JsonSpan[] }[];
  }[];
}

const SPAN_KINDS = ['SPAN_KIND_UNSPECIFIED', 'SPAN_KIND_INTERNAL', 'SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT', 'SPAN_KIND_PRODUCER', 'SPAN_KIND_CONSUMER'];
const STATUS_CODES = ['STATUS_CODE_UNSET', 'STATUS_CODE_OK', 'STATUS_CODE_ERROR'];

function flattenJson(body: unknown): ReceivedSpan[] {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error('the body is not a JSON object');
  const request = body as JsonRequest;
  const out: ReceivedSpan[] = [];
  for (const rs of request.resourceSpans ?? []) {
    const resource = jsonAttributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      const scope = { name: ss.scope?.name ?? '', ...(ss.scope?.version ? { version: ss.scope.version } : {}) };
      for (const span of ss.spans ?? []) {
        const parent = jsonId(span.parentSpanId);
        const start = jsonNanos(span.startTimeUnixNano);
        const end = jsonNanos(span.endTimeUnixNano);
        out.push({
          traceId: jsonId(span.traceId),
          spanId: jsonId(span.spanId),
          ...(parent ? { parentSpanId: parent } : {}),
          name: span.name ?? '',
          kind: jsonEnum(span.kind, SPAN_KINDS),
          kindName: 'unknown',
          attributes: jsonAttributes(span.attributes),
          resource,
          scope,
          status: {
            code: jsonEnum(span.status?.code, STATUS_CODES),
            ...(span.status?.message ? { message: span.status.message } : {}),
          },
          startTimeUnixNano: start.toString(),
          endTimeUnixNano: end.toString(),
          durationMs: Number(end - start) / 1e6,
          events: (span.events ?? []).map((e) => ({ name: e.name ?? '', timeUnixNano: jsonNanos(e.timeUnixNano).toString(), attributes: jsonAttributes(e.attributes) })),
        });
      }
    }
  }
  return out;
}

/** OTLP/JSON ids are hex; some encoders send base64 (protobuf's JSON mapping of bytes): both become hex. */
function jsonId(id: string | undefined): string {
  if (!id) return '';
  if (/^[0-9a-fA-F]+$/.test(id) && (id.length === 32 || id.length === 16)) return id.toLowerCase();
  return Buffer.from(id, 'base64').toString('hex');
}

function jsonNanos(value: number | string | { low: number; high: number } | undefined): bigint {
  if (value === undefined) return 0n;
  if (typeof value === 'object') return (BigInt(value.high >>> 0) << 32n) | BigInt(value.low >>> 0);
  return BigInt(typeof value === 'number' ? Math.round(value) : value);
}

function jsonEnum(value: number | string | undefined, names: string[]): number {
  if (value === undefined) return 0;
  if (typeof value === 'number') return value;
  const i = names.indexOf(value);
  return i >= 0 ? i : Number(value);
}

function jsonAttributes(list: JsonKeyValue[] | undefined): Attributes {
  const out: Attributes = {};
  for (const kv of list ?? []) out[kv.key] = jsonValue(kv.value);
  return out;
}

function jsonValue(v: JsonAnyValue | undefined): AttributeValue {
  if (!v) return null;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return plainInt(BigInt(v.intValue));
  if (v.doubleValue !== undefined) return Number(v.doubleValue);
  if (v.arrayValue !== undefined) return (v.arrayValue.values ?? []).map(jsonValue);
  if (v.kvlistValue !== undefined) return jsonAttributes(v.kvlistValue.values);
  if (v.bytesValue !== undefined) return Buffer.from(v.bytesValue, 'base64');
  return null;
}

/** A 64-bit integer as a number when it is exact, else as its decimal string. */
function plainInt(n: bigint): number | string {
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
}
