/**
 * Metrics and spans around the two things a job waits on: model calls and sandbox executions. Each
 * wraps the real part, so neither the providers nor the sandbox know of either.
 */
import { SpanKind } from '@opentelemetry/api';
import { inSpan } from '../../shared/src/tracing';
import type { ModelProvider } from './providers/model-provider';
import type { SandboxSession } from './sandbox/types';
import { modelCallDuration, modelLabel, modelTokens, sandboxExecutionDuration } from './worker-metrics';

/**
 * A provider whose calls are timed and counted (tokens by type), each in a span named after the
 * GenAI semantic conventions (`chat <model>`, gen_ai.* attributes): provider, model, token counts and
 * finish reason; never a message.
 */
export function instrumentProvider(provider: ModelProvider): ModelProvider {
  return {
    name: provider.name,
    complete: (request, signal) =>
      inSpan(
        `chat ${request.model}`,
        {
          kind: SpanKind.CLIENT,
          attributes: {
            'gen_ai.operation.name': 'chat',
            'gen_ai.system': provider.name,
            'gen_ai.provider.name': provider.name,
            'gen_ai.request.model': request.model,
            'gen_ai.request.max_tokens': request.maxOutputTokens,
          },
        },
        async (span) => {
          const started = performance.now();
          let outcome = 'error';
          let model = 'unanswered';
          try {
            const reply = await provider.complete(request, signal);
            outcome = 'ok';
            model = modelLabel.of(request.model);
            modelTokens.inc({ provider: provider.name, model, type: 'input' }, reply.usage.inputTokens);
            modelTokens.inc({ provider: provider.name, model, type: 'output' }, reply.usage.outputTokens);
            span.setAttributes({
              'gen_ai.usage.input_tokens': reply.usage.inputTokens,
              'gen_ai.usage.output_tokens': reply.usage.outputTokens,
              'gen_ai.response.finish_reasons': [reply.stopReason],
            });
            return reply;
          } catch (err) {
            if (signal.aborted) outcome = 'aborted';
            throw err;
          } finally {
            modelCallDuration.observe({ provider: provider.name, model, outcome }, (performance.now() - started) / 1000);
          }
        },
      ),
  };
}

/** A job's sandbox whose executions are timed by outcome, each in a span (runtime, exit code, time-out, reset; never code or output). */
export function instrumentSession(session: SandboxSession, runtime: string): SandboxSession {
  return {
    close: () => session.close(),
    run: (code, opts) =>
      inSpan('sandbox execute', { kind: SpanKind.INTERNAL, attributes: { 'maestro.sandbox.runtime': runtime } }, async (span) => {
        const started = performance.now();
        let outcome = 'failed';
        try {
          const result = await session.run(code, opts);
          outcome = result.exitCode === 0 ? 'ok' : result.exitCode === -1 ? 'killed' : 'error';
          span.setAttributes({
            'maestro.sandbox.exit_code': result.exitCode,
            'maestro.sandbox.timed_out': result.timedOut,
            'maestro.sandbox.reset': result.reset,
            'maestro.sandbox.artifacts': result.artifacts.length,
          });
          return result;
        } finally {
          sandboxExecutionDuration.observe({ runtime, outcome }, (performance.now() - started) / 1000);
        }
      }),
  };
}
