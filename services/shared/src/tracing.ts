/**
 * OpenTelemetry traces, exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT is set. Without
 * it the SDK and the exporter are never loaded (they are imported on demand below) and every span
 * made through `inSpan` is the API's no-op span: nothing is recorded or sent.
 *
 * One trace per job: the API's span for POST /v1/jobs is its root; the W3C `traceparent` rides in
 * the queued job's data to the worker, whose spans (an attempt, each model call, each sandbox
 * execution) descend from it. Attributes name kinds, sizes and ids, never a task, code, output or key.
 */
import { context, propagation, SpanStatusCode, trace, type Attributes, type Context, type Span, type SpanKind, type Tracer } from '@opentelemetry/api';
import type { Config } from './config';
import type { Logger } from './logger';

/** Asked for at each use, not kept: a tracer kept from before a restart of tracing (tests do that) would stay tied to the old provider. */
const tracer = (): Tracer => trace.getTracer('maestro');

interface Running {
  users: number;
  shutdown(): Promise<void>;
}

let running: Promise<Running | undefined> | undefined;

export interface Tracing {
  /** Sends what is buffered and, once the process's last user closes, stops. */
  close(): Promise<void>;
}

/**
 * Starts exporting, once per process (an API and a worker in one process share it; the first one's
 * service name counts). Spans are batched and sent in the background; an unreachable collector
 * loses spans, never slows a request.
 */
export async function startTracing(
  config: Pick<Config, 'OTEL_EXPORTER_OTLP_ENDPOINT' | 'OTEL_SERVICE_NAME'>,
  service: string,
  logger: Logger,
): Promise<Tracing> {
  const endpoint = config.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (endpoint === undefined) return { close: () => Promise.resolve() };
  running ??= Promise.resolve()
    .then(() => load(endpoint, config.OTEL_SERVICE_NAME ?? service, logger))
    .catch((err: unknown) => {
      logger.warn({ event: 'tracing.unavailable', message: (err as Error).message }, 'tracing could not start; going on without it');
      running = undefined;
      return undefined;
    });
  const started = await running;
  if (!started) return { close: () => Promise.resolve() };
  started.users += 1;
  let closed = false;
  return {
    close: async () => {
      if (closed) return;
      closed = true;
      started.users -= 1;
      if (started.users === 0) {
        running = undefined;
        await started.shutdown();
      }
    },
  };
}

/* eslint-disable @typescript-eslint/no-require-imports -- loaded here only, on demand (see load) */
const sdk = {
  trace: () => require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace'),
  exporter: () => require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http'),
  context: () => require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks'),
  core: () => require('@opentelemetry/core') as typeof import('@opentelemetry/core'),
  resources: () => require('@opentelemetry/resources') as typeof import('@opentelemetry/resources'),
};
/* eslint-enable @typescript-eslint/no-require-imports */

/**
 * The SDK, required on demand rather than imported at the top, so a process without an endpoint
 * never loads it; `require`, not `import()`, so it is loaded as the rest of the build is (CommonJS),
 * under tsx and jest as in dist/.
 */
function load(endpoint: string, serviceName: string, logger: Logger): Running {
  const { BatchSpanProcessor, TracerProvider } = sdk.trace();
  const { OTLPTraceExporter } = sdk.exporter();
  const { AsyncLocalStorageContextManager } = sdk.context();
  const { W3CTraceContextPropagator } = sdk.core();
  const { resourceFromAttributes } = sdk.resources();
  const url = `${endpoint.replace(/\/+$/, '')}/v1/traces`;
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': serviceName }),
    // Sent each second: soon enough to follow a job as it runs, few enough requests to cost nothing.
    spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url }), scheduledDelayMillis: 1000 })],
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  logger.info({ event: 'tracing.started', endpoint: url, service: serviceName }, `sending traces to ${url}`);
  return {
    users: 0,
    shutdown: async () => {
      await provider.shutdown().catch((err: unknown) => logger.warn({ event: 'tracing.flush_failed', message: (err as Error).message }, 'could not send the last spans'));
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}

/** Whether spans are being recorded and sent: code that would make spans for every request asks first. */
export function tracingOn(): boolean {
  return running !== undefined;
}

/** A span that the caller ends (one that outlives a function call, such as an HTTP request's). */
export function startSpan(name: string, opts: { kind?: SpanKind; attributes?: Attributes }): Span {
  return tracer().startSpan(name, opts);
}

/** Runs `fn` with `span` as the active span, so the spans `fn` makes are its children. */
export function withSpan<T>(span: Span, fn: () => T): T {
  return context.with(trace.setSpan(context.active(), span), fn);
}

/**
 * Runs `fn` in a new span, child of `parent` (the active context by default): the span ends when
 * `fn` settles, marked as an error (with the error's class as `error.type`, never its message, which
 * may quote the model or the code) when it throws.
 */
export async function inSpan<T>(
  name: string,
  opts: {
    kind?: SpanKind;
    attributes?: Attributes;
    parent?: Context;
    /** An error that is how `fn` reports something other than a failure (BullMQ's DelayedError). */
    notAFailure?: (err: unknown) => boolean;
  },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  return tracer().startActiveSpan(name, { kind: opts.kind, attributes: opts.attributes }, opts.parent ?? context.active(), async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      if (opts.notAFailure?.(err) !== true) {
        span.setAttribute('error.type', err instanceof Error ? err.name : 'unknown');
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
      throw err;
    } finally {
      span.end();
    }
  });
}

/** The active span's context as a W3C `traceparent`, to cross the queue in a job's data; undefined when not tracing. */
export function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** The context a `traceparent` from a job's data names (the active one when there is none). */
export function contextFrom(traceparent: string | undefined): Context {
  if (traceparent === undefined) return context.active();
  return propagation.extract(context.active(), { traceparent });
}
