import Anthropic from '@anthropic-ai/sdk';
import type { ChatMessage, ModelProvider, ModelReply, ModelRequest, ModelStopReason, ToolCall, ToolSpec } from './model-provider';
import type { ProviderOptions } from './openai-provider';
import { callAbortably, toProviderError } from './provider-errors';

const DEFAULT_BASE_URL = 'https://api.anthropic.com';
// Always passed explicitly: without a timeout the SDK refuses any non-streaming request whose
// max_tokens suggests it could run past ten minutes (roughly max_tokens > 21,333).
const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;

type Block = Anthropic.ContentBlockParam;
type Turn = { role: 'user' | 'assistant'; content: Block[] };

export class AnthropicProvider implements ModelProvider {
  readonly name = 'anthropic' as const;
  readonly #client: Anthropic;
  readonly #apiKey: string;

  constructor(opts: ProviderOptions) {
    this.#apiKey = opts.apiKey;
    // Every option the SDK would otherwise read from process.env is pinned: config is read once
    // in main.ts, and ANTHROPIC_AUTH_TOKEN would add a second credential (a Bearer header) to
    // every request, ANTHROPIC_CUSTOM_HEADERS arbitrary headers, ANTHROPIC_LOG=debug request dumps.
    this.#client = new Anthropic({
      apiKey: opts.apiKey,
      authToken: null,
      webhookKey: null,
      baseURL: opts.baseURL ?? DEFAULT_BASE_URL,
      maxRetries: opts.maxRetries ?? 2,
      timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      logLevel: 'warn',
    });
  }

  async complete(request: ModelRequest, signal: AbortSignal): Promise<ModelReply> {
    const body: Anthropic.MessageCreateParamsNonStreaming = {
      model: request.model,
      max_tokens: request.maxOutputTokens,
      messages: toTurns(request.messages),
      ...(request.system === undefined || request.system === '' ? {} : { system: request.system }),
      ...(request.tools.length > 0 ? { tools: request.tools.map(toTool) } : {}),
    };
    let message: Anthropic.Message;
    try {
      message = await callAbortably(
        signal,
        () => new Anthropic.APIUserAbortError(),
        (callSignal) => this.#client.messages.create(body, { signal: callSignal }),
      );
    } catch (err) {
      throw toProviderError(err, 'anthropic', [this.#apiKey]);
    }
    return toReply(message);
  }
}

function toTool(spec: ToolSpec): Anthropic.Tool {
  // Our tools take an input object by contract; the SDK's type insists on saying so.
  return { name: spec.name, description: spec.description, input_schema: { ...spec.inputSchema, type: 'object' } };
}

/**
 * Our conversation as Anthropic turns. The API wants user/assistant turns, with each turn's
 * tool_use answered by tool_result blocks at the head of the very next user turn; our `tool`
 * message becomes such a user turn, and anything it sits next to on the user side is merged in.
 */
function toTurns(messages: ChatMessage[]): Anthropic.MessageParam[] {
  const turns: Turn[] = [];
  const add = (role: Turn['role'], content: Block[]): void => {
    // An assistant turn with neither text nor tool calls has nothing the API would accept
    // (empty text blocks are refused), and dropping it loses nothing the model said.
    if (content.length === 0) return;
    const last = turns.at(-1);
    if (last?.role === role) last.content.push(...content);
    else turns.push({ role, content });
  };
  for (const m of messages) {
    switch (m.role) {
      case 'user':
        add('user', textBlocks(m.content));
        break;
      case 'assistant':
        add('assistant', [
          ...textBlocks(m.content),
          ...m.toolCalls.map((call): Block => ({ type: 'tool_use', id: call.id, name: call.name, input: toInput(call.arguments) })),
        ]);
        break;
      case 'tool':
        add(
          'user',
          m.results.map(
            (result): Block => ({
              type: 'tool_result',
              tool_use_id: result.callId,
              // The API refuses empty text blocks, and content is optional, so an empty output is omitted.
              ...(result.content === '' ? {} : { content: result.content }),
              is_error: result.isError,
            }),
          ),
        );
        break;
    }
  }
  for (const turn of turns) {
    // Tool results must lead their user turn; Array.prototype.sort is stable, so order is kept.
    if (turn.role === 'user') turn.content.sort((a, b) => Number(b.type === 'tool_result') - Number(a.type === 'tool_result'));
  }
  return turns;
}

function textBlocks(text: string): Block[] {
  return text === '' ? [] : [{ type: 'text', text }];
}

/**
 * The `input` to send back for one of the model's own tool calls. The API insists on an object;
 * arguments that were not a JSON object (possible only from a compatible server, since Anthropic
 * itself always sends an object) go back as `{}`, and the tool result the agent loop recorded for
 * that call already tells the model its arguments were unusable.
 */
function toInput(args: string): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(args);
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // fall through: malformed JSON is answered like any non-object
  }
  return {};
}

function toReply(message: Anthropic.Message): ModelReply {
  let text = '';
  const toolCalls: ToolCall[] = [];
  for (const block of message.content) {
    // Thinking and server-tool blocks are never requested, so text and tool_use are all there is.
    if (block.type === 'text') {
      text += block.text;
    } else if (block.type === 'tool_use') {
      // A string input only comes from a non-conforming server; it stays raw so the agent loop
      // reports malformed arguments instead of running the tool on a re-encoded string.
      const args = typeof block.input === 'string' ? block.input : JSON.stringify(block.input ?? {});
      toolCalls.push({ id: block.id, name: block.name, arguments: args });
    }
  }
  const usage = message.usage;
  return {
    text,
    toolCalls,
    // Anthropic counts cached prompt tokens apart from input_tokens; summed, the figure means what
    // OpenAI's prompt_tokens means.
    usage: {
      inputTokens: (usage.input_tokens ?? 0) + (usage.cache_creation_input_tokens ?? 0) + (usage.cache_read_input_tokens ?? 0),
      outputTokens: usage.output_tokens ?? 0,
    },
    stopReason: stopReason(message.stop_reason),
  };
}

function stopReason(reason: Anthropic.StopReason | null): ModelStopReason {
  switch (reason) {
    case 'end_turn':
    case 'stop_sequence':
      return 'end';
    case 'tool_use':
      return 'tool_use';
    case 'max_tokens':
      return 'max_tokens';
    default:
      return 'other';
  }
}
