import OpenAI from 'openai';
import type {
  ChatCompletion,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageParam,
  ChatCompletionTool,
} from 'openai/resources/chat/completions';
import { ProviderError } from '../../../shared/src/errors';
import type { ChatMessage, ModelProvider, ModelReply, ModelRequest, ModelStopReason, ToolCall, ToolSpec } from './model-provider';
import { callAbortably, toProviderError } from './provider-errors';

export interface ProviderOptions {
  apiKey: string;
  baseURL?: string;
  /** Retries the SDK itself makes on 408/409/429/5xx and connection faults, with backoff. */
  maxRetries?: number;
  timeoutMs?: number;
}

const DEFAULT_BASE_URL = 'https://api.openai.com/v1';
const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;

/**
 * Chat Completions rather than the Responses API, because it is the dialect every
 * OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp) speaks.
 */
export class OpenAIProvider implements ModelProvider {
  readonly name = 'openai' as const;
  readonly #client: OpenAI;
  readonly #apiKey: string;

  constructor(opts: ProviderOptions) {
    this.#apiKey = opts.apiKey;
    // Every option the SDK would otherwise read from process.env is pinned: config is read once
    // in main.ts, and OPENAI_ORG_ID / OPENAI_CUSTOM_HEADERS / OPENAI_LOG=debug must not silently
    // add headers or dump request bodies to stdout.
    this.#client = new OpenAI({
      apiKey: opts.apiKey,
      baseURL: opts.baseURL ?? DEFAULT_BASE_URL,
      organization: null,
      project: null,
      webhookSecret: null,
      maxRetries: opts.maxRetries ?? 2,
      timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      logLevel: 'warn',
    });
  }

  async complete(request: ModelRequest, signal: AbortSignal): Promise<ModelReply> {
    const body: ChatCompletionCreateParamsNonStreaming = {
      model: request.model,
      messages: toMessages(request.system, request.messages),
      // max_completion_tokens, not max_tokens: OpenAI's reasoning models reject max_tokens, while
      // vLLM accepts both and Ollama (as of early 2026) ignores the unknown field and falls back
      // to its own num_predict. Ignoring the cap is a softer failure than rejecting the request.
      max_completion_tokens: request.maxOutputTokens,
      // OpenAI rejects an empty `tools` array, so a tool-less request omits the field.
      ...(request.tools.length > 0 ? { tools: request.tools.map(toTool) } : {}),
    };
    let completion: ChatCompletion;
    try {
      completion = await callAbortably(
        signal,
        () => new OpenAI.APIUserAbortError(),
        (callSignal) => this.#client.chat.completions.create(body, { signal: callSignal }),
      );
    } catch (err) {
      throw toProviderError(err, 'openai', [this.#apiKey]);
    }
    return toReply(completion);
  }
}

function toTool(spec: ToolSpec): ChatCompletionTool {
  return { type: 'function', function: { name: spec.name, description: spec.description, parameters: spec.inputSchema } };
}

function toMessages(system: string | undefined, messages: ChatMessage[]): ChatCompletionMessageParam[] {
  // `system` rather than `developer`: OpenAI maps one onto the other for its newer models, and
  // compatible servers only know `system`.
  const out: ChatCompletionMessageParam[] = system === undefined || system === '' ? [] : [{ role: 'system', content: system }];
  for (const m of messages) {
    switch (m.role) {
      case 'user':
        out.push({ role: 'user', content: m.content });
        break;
      case 'assistant':
        out.push(
          m.toolCalls.length === 0
            ? { role: 'assistant', content: m.content }
            : {
                role: 'assistant',
                // null rather than '' beside tool calls, which is what the API itself returns.
                content: m.content === '' ? null : m.content,
                tool_calls: m.toolCalls.map((call) => ({
                  id: call.id,
                  type: 'function' as const,
                  function: { name: call.name, arguments: call.arguments },
                })),
              },
        );
        break;
      case 'tool':
        // Chat Completions has no error flag for a tool message; the content itself must say so.
        for (const result of m.results) out.push({ role: 'tool', tool_call_id: result.callId, content: result.content });
        break;
    }
  }
  return out;
}

function toReply(completion: ChatCompletion): ModelReply {
  const choice = completion.choices[0];
  if (choice === undefined) {
    throw new ProviderError({ code: 'provider_bad_response', retryable: false, detail: 'OpenAI answered without a choice.' });
  }
  const toolCalls: ToolCall[] = [];
  for (const call of choice.message.tool_calls ?? []) {
    // Custom (free-text) tools are never offered, so only function calls can come back.
    if (call.type === 'function') toolCalls.push({ id: call.id, name: call.function.name, arguments: call.function.arguments });
  }
  return {
    text: choice.message.content ?? '',
    toolCalls,
    usage: { inputTokens: completion.usage?.prompt_tokens ?? 0, outputTokens: completion.usage?.completion_tokens ?? 0 },
    stopReason: stopReason(choice.finish_reason, toolCalls.length > 0),
  };
}

function stopReason(finish: string | null | undefined, hasToolCalls: boolean): ModelStopReason {
  if (finish === 'length') return 'max_tokens';
  // Some compatible servers (Ollama among them) report `stop` even when the reply calls tools.
  if (hasToolCalls) return 'tool_use';
  if (finish === 'stop') return 'end';
  return 'other';
}
