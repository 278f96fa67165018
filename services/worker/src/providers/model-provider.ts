/**
 * The one interface the agent loop knows. Each provider file owns its SDK's wire format and
 * translates to and from these shapes; no SDK type crosses this boundary.
 */

/** A tool call as the model made it. `arguments` is the raw JSON text, possibly malformed. */
export interface ToolCall {
  id: string;
  name: string;
  arguments: string;
}

/** What a tool answered to one call, as the model will be shown it. */
export interface ToolResult {
  callId: string;
  name: string;
  content: string;
  isError: boolean;
}

export type ChatMessage =
  | { role: 'user'; content: string }
  | { role: 'assistant'; content: string; toolCalls: ToolCall[] }
  | { role: 'tool'; results: ToolResult[] };

export interface ToolSpec {
  name: string;
  description: string;
  /** JSON Schema (draft 2020-12 subset) of the tool's input object. */
  inputSchema: Record<string, unknown>;
}

export interface ModelRequest {
  model: string;
  system?: string;
  messages: ChatMessage[];
  tools: ToolSpec[];
  maxOutputTokens: number;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
}

export type ModelStopReason = 'end' | 'tool_use' | 'max_tokens' | 'other';

export interface ModelReply {
  text: string;
  toolCalls: ToolCall[];
  usage: Usage;
  stopReason: ModelStopReason;
}

export type ProviderName = 'openai' | 'anthropic';

export interface ModelProvider {
  readonly name: ProviderName;
  /**
   * One model call. Rejects with a ProviderError (retryable for 429/5xx/connection faults that
   * outlived the SDK's own retries) or, when `signal` aborts, with the SDK's abort error.
   */
  complete(request: ModelRequest, signal: AbortSignal): Promise<ModelReply>;
}
