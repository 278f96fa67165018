import { ProviderError } from '../../../shared/src/errors';
import { AnthropicProvider } from './anthropic-provider';
import type { ModelProvider, ProviderName } from './model-provider';
import { OpenAIProvider } from './openai-provider';

export type { ProviderOptions } from './openai-provider';
export { isSdkAbortError } from './provider-errors';

export interface ProviderEndpoint {
  apiKey?: string;
  baseURL?: string;
}

export interface ProvidersConfig {
  openai?: ProviderEndpoint;
  anthropic?: ProviderEndpoint;
  maxRetries?: number;
  timeoutMs?: number;
}

const KEY_VARIABLE: Record<ProviderName, string> = { openai: 'OPENAI_API_KEY', anthropic: 'ANTHROPIC_API_KEY' };

/**
 * Local OpenAI-compatible servers (Ollama, vLLM, llama.cpp) usually ignore the key, but the SDK
 * refuses to build a client without one, so a custom base URL with no key gets this stand-in.
 * It goes only to that operator-chosen server, never to api.openai.com.
 */
const PLACEHOLDER_OPENAI_KEY = 'not-needed';

/** The key a provider's client is built with: its own, the keyless stand-in, or none (not configured). */
function apiKeyOf(name: ProviderName, cfg: ProvidersConfig): string | undefined {
  const endpoint = cfg[name] ?? {};
  const given = endpoint.apiKey === undefined || endpoint.apiKey === '' ? undefined : endpoint.apiKey;
  // Anthropic has no keyless compatible servers worth supporting, so only OpenAI gets the stand-in.
  return given ?? (name === 'openai' && endpoint.baseURL !== undefined ? PLACEHOLDER_OPENAI_KEY : undefined);
}

/**
 * The providers a job could use, by the same rule createProvider applies: OpenAI with OPENAI_API_KEY
 * or an OPENAI_BASE_URL (a keyless compatible server), Anthropic with ANTHROPIC_API_KEY.
 */
export function configuredProviders(cfg: ProvidersConfig): ProviderName[] {
  return (['openai', 'anthropic'] as const).filter((name) => apiKeyOf(name, cfg) !== undefined);
}

/** Builds the provider a job asks for, or fails with `provider_not_configured` when it has no key. */
export function createProvider(name: ProviderName, cfg: ProvidersConfig): ModelProvider {
  const endpoint = cfg[name] ?? {};
  const apiKey = apiKeyOf(name, cfg);
  if (apiKey === undefined) {
    throw new ProviderError({
      code: 'provider_not_configured',
      retryable: false,
      detail: `No API key is configured for provider '${name}' (set ${KEY_VARIABLE[name]} in the worker's environment).`,
    });
  }
  const opts = { apiKey, baseURL: endpoint.baseURL, maxRetries: cfg.maxRetries, timeoutMs: cfg.timeoutMs };
  return name === 'openai' ? new OpenAIProvider(opts) : new AnthropicProvider(opts);
}
