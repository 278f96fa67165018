import type { JobSpec, Step, ToolStep, Usage } from '../../shared/src/job-schema';
import type { JobStore, OutputChunk } from '../../shared/src/job-store';
import type { Logger } from '../../shared/src/logger';
import type { ChatMessage, ModelProvider, ToolResult } from './providers/model-provider';
import type { OutputStream, SandboxSession } from './sandbox/types';
import { runToolCall, toolSpecs } from './tools/registry';
import type { ArtifactSink, Tool } from './tools/tool';

/**
 * The conversation so far and where the job stands. Never stored as such: the recorded steps are the
 * checkpoint (each turn's steps are recorded in one script), and a retried job rebuilds this from
 * them (resumeFrom) instead of starting over.
 */
export interface Checkpoint {
  messages: ChatMessage[];
  nextStepIndex: number;
  modelCalls: number;
}

export interface AgentLoopDeps {
  provider: ModelProvider;
  tools: readonly Tool[];
  store: JobStore;
  sandbox: SandboxSession;
  artifacts: ArtifactSink;
  allowedDirs: string[];
  sandboxTimeoutMs: number;
  maxOutputTokens: number;
  logger: Logger;
  /** The store's attempt count when this run started: its writes are refused once a newer attempt has begun. */
  attempt?: number;
}

/** The model kept asking for tools until `maxSteps` model calls were spent. Final: never retried. */
export class MaxStepsError extends Error {
  override readonly name = 'MaxStepsError';
}

const RESET_NOTE =
  'Note: this job was resumed on another worker, so the Python interpreter was restarted and variables from earlier code_executor calls are gone.\n';

/**
 * Runs a job's conversation to its end: call the model, run the tools it asks for, repeat. Returns
 * the model's final text. Throws MaxStepsError, the signal's reason when aborted (cancel, deadline,
 * shutdown), or an infrastructure error.
 */
export async function runAgentLoop(
  jobId: string,
  spec: JobSpec,
  deadline: Date,
  signal: AbortSignal,
  deps: AgentLoopDeps,
): Promise<string> {
  const { provider, store, logger } = deps;
  const recorded = await store.recordedSteps(jobId);
  const cp = resumeFrom(spec, recorded);
  const resumed = recorded.length > 0;
  if (resumed) logger.info({ event: 'job.resumed', step: cp.nextStepIndex, modelCalls: cp.modelCalls }, 'resuming from checkpoint');
  let interpreterLost = resumed && usedCodeExecutor(cp.messages);
  const tools = deps.tools.filter((t) => spec.tools.includes(t.name as JobSpec['tools'][number]));
  const specs = toolSpecs(tools);

  for (;;) {
    signal.throwIfAborted();
    const last = cp.messages[cp.messages.length - 1];

    if (last?.role === 'assistant' && last.toolCalls.length > 0) {
      const steps: ToolStep[] = [];
      const results: ToolResult[] = [];
      for (const call of last.toolCalls) {
        signal.throwIfAborted();
        const startedAt = new Date();
        const stepIndex = cp.nextStepIndex + steps.length;
        const live = new OutputRelay((chunks) => store.appendOutput(jobId, stepIndex, chunks, { attempt: deps.attempt }), logger, stepIndex);
        const outcome = await runToolCall(tools, call, {
          jobId,
          signal,
          logger,
          sandbox: deps.sandbox,
          artifacts: deps.artifacts,
          allowedDirs: deps.allowedDirs,
          execTimeoutMs: Math.max(1, Math.min(deps.sandboxTimeoutMs, deadline.getTime() - Date.now())),
          stepIndex,
          onOutput: live.onOutput,
        });
        // The call's output events go before its step: the step is recorded after this.
        await live.settled();
        let output = outcome.output;
        if (call.name === 'code_executor' && interpreterLost && !outcome.detail?.reset) {
          output = RESET_NOTE + output;
          interpreterLost = false;
        }
        steps.push({
          ...outcome.detail,
          index: cp.nextStepIndex + steps.length,
          type: 'tool',
          startedAt: startedAt.toISOString(),
          durationMs: Date.now() - startedAt.getTime(),
          callId: call.id,
          name: call.name,
          input: parseOrRaw(call.arguments),
          output,
          isError: outcome.isError,
        });
        results.push({ callId: call.id, name: call.name, content: output, isError: outcome.isError });
      }
      cp.messages.push({ role: 'tool', results });
      cp.nextStepIndex += steps.length;
      await store.recordSteps(jobId, steps, { inputTokens: 0, outputTokens: 0 }, { attempt: deps.attempt });
      continue;
    }

    // A final answer already recorded before a crash: the job only needs finishing.
    if (last?.role === 'assistant') return last.content;

    if (cp.modelCalls >= spec.maxSteps) {
      throw new MaxStepsError(`The model was still calling tools after ${spec.maxSteps} model calls (maxSteps).`);
    }
    const startedAt = new Date();
    const reply = await provider.complete(
      {
        model: spec.model,
        ...(spec.system === undefined ? {} : { system: spec.system }),
        messages: cp.messages,
        tools: specs,
        maxOutputTokens: deps.maxOutputTokens,
      },
      signal,
    );
    const step: Step = {
      index: cp.nextStepIndex,
      type: 'model',
      startedAt: startedAt.toISOString(),
      durationMs: Date.now() - startedAt.getTime(),
      text: reply.text,
      toolCalls: reply.toolCalls,
      usage: reply.usage,
      stopReason: reply.stopReason,
    };
    cp.messages.push({ role: 'assistant', content: reply.text, toolCalls: reply.toolCalls });
    cp.modelCalls += 1;
    cp.nextStepIndex += 1;
    await store.recordSteps(jobId, [step], reply.usage satisfies Usage, { attempt: deps.attempt });
    logger.debug({ event: 'model.replied', step: step.index, toolCalls: reply.toolCalls.length, ms: step.durationMs }, 'model replied');
    if (reply.toolCalls.length === 0) return reply.text;
  }
}

/**
 * Carries one tool call's live output to the job's event stream. It is handed text on the sandbox's
 * read path, so it never waits there: appends are chained, one at a time in arrival order, each
 * taking everything that came meanwhile (consecutive text of one stream merged), so a chatty cell
 * costs a write per round trip at most, not one per line. A failed append loses that output only:
 * the step still records all of it, so the job goes on (and the failure is logged once).
 */
class OutputRelay {
  private pending: OutputChunk[] = [];
  private chain: Promise<void> = Promise.resolve();
  private queued = false;
  private warned = false;

  constructor(
    private readonly write: (chunks: OutputChunk[]) => Promise<void>,
    private readonly logger: Logger,
    private readonly step: number,
  ) {}

  readonly onOutput = (stream: OutputStream, text: string): void => {
    const last = this.pending.at(-1);
    if (last?.stream === stream) last.text += text;
    else this.pending.push({ stream, text });
    if (this.queued) return;
    this.queued = true;
    this.chain = this.chain.then(() => this.flush());
  };

  /** Resolves once everything handed in so far is written, or its write failed. */
  settled(): Promise<void> {
    return this.chain;
  }

  private async flush(): Promise<void> {
    this.queued = false;
    const chunks = this.pending.splice(0);
    try {
      await this.write(chunks);
    } catch (err) {
      if (this.warned) return;
      this.warned = true;
      this.logger.warn({ event: 'job.output_failed', step: this.step, err: (err as Error).message }, 'live output not recorded');
    }
  }
}

/**
 * The conversation as the model saw it after `steps`: each model step is its reply, and the tool
 * steps after it, together, the results it was given. Every field of a message is in its step, so
 * nothing else is stored (a field a message gains must go into its step too); a turn whose tools ran
 * but were not recorded is run again.
 */
export function resumeFrom(spec: Pick<JobSpec, 'task' | 'inputs'>, steps: readonly Step[]): Checkpoint {
  const messages: ChatMessage[] = [{ role: 'user', content: firstMessage(spec) }];
  let modelCalls = 0;
  for (const step of steps) {
    if (step.type === 'model') {
      messages.push({ role: 'assistant', content: step.text, toolCalls: step.toolCalls });
      modelCalls += 1;
      continue;
    }
    const result: ToolResult = { callId: step.callId, name: step.name, content: step.output, isError: step.isError };
    const last = messages[messages.length - 1];
    if (last?.role === 'tool') last.results.push(result);
    else messages.push({ role: 'tool', results: [result] });
  }
  return { messages, nextStepIndex: (steps.at(-1)?.index ?? -1) + 1, modelCalls };
}

/**
 * The task, and the job's input files when it has some: the model cannot list /input (the file tools
 * read only the allowed dirs), so it is told what is there.
 */
export function firstMessage(spec: Pick<JobSpec, 'task' | 'inputs'>): string {
  const inputs = spec.inputs ?? [];
  if (inputs.length === 0) return spec.task;
  const lines = inputs.map((f) => `- /input/${f.name} (${f.size} bytes, ${f.contentType})`);
  return `${spec.task}\n\nFiles given with this task, read-only in the code_executor sandbox:\n${lines.join('\n')}`;
}

function usedCodeExecutor(messages: ChatMessage[]): boolean {
  return messages.some((m) => m.role === 'assistant' && m.toolCalls.some((c) => c.name === 'code_executor'));
}

function parseOrRaw(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}
