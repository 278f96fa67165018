import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { ProviderError } from '../../../shared/src/errors';
import type { ProviderName } from './model-provider';

const LABEL: Record<ProviderName, string> = { openai: 'OpenAI', anthropic: 'Anthropic' };
const KEY_VARIABLE: Record<ProviderName, string> = { openai: 'OPENAI_API_KEY', anthropic: 'ANTHROPIC_API_KEY' };
const MAX_MESSAGE_CHARS = 300;

/** True for the error either SDK throws when the caller's AbortSignal fires. */
export function isSdkAbortError(err: unknown): boolean {
  return err instanceof OpenAI.APIUserAbortError || err instanceof Anthropic.APIUserAbortError;
}

/**
 * Translates whatever a provider call threw into what the agent loop should see: the SDK's abort
 * error untouched (the caller tells cancel from deadline by its own `signal`), a ProviderError
 * marked retryable or final for the SDKs' failures, and anything else (a bug) unchanged.
 *
 * Retryability is only a verdict here: both SDKs have already retried 429/5xx/connection faults
 * with backoff (`maxRetries`) before this runs, so a retryable error means "try the job later".
 *
 * `secrets` (the API key) are scrubbed from any provider message we quote: OpenAI's 401 body, for
 * one, echoes part of the key, and a compatible server may echo more.
 */
export function toProviderError(err: unknown, provider: ProviderName, secrets: readonly string[] = []): unknown {
  if (isSdkAbortError(err) || err instanceof ProviderError) return err;
  const name = LABEL[provider];

  // Connection errors (timeouts included) subclass APIError with no status, so test them first.
  if (err instanceof OpenAI.APIConnectionError || err instanceof Anthropic.APIConnectionError) {
    const timedOut = err instanceof OpenAI.APIConnectionTimeoutError || err instanceof Anthropic.APIConnectionTimeoutError;
    return new ProviderError({
      code: 'provider_unavailable',
      retryable: true,
      detail: timedOut ? `${name} did not answer in time.` : `Could not connect to ${name}.`,
    });
  }

  if (err instanceof OpenAI.APIError || err instanceof Anthropic.APIError) {
    const status = typeof err.status === 'number' ? err.status : undefined;
    const quoted = quote(providerMessage(err.error), secrets);
    const requestId = typeof err.requestID === 'string' ? ` (request id ${err.requestID.slice(0, 100)})` : '';
    const suffix = `${quoted === undefined ? '' : `: ${quoted}`}${requestId}`;

    if (status === 401 || status === 403) {
      // The provider's own text is not quoted: OpenAI's 401 message contains part of the key.
      return new ProviderError({
        code: 'provider_auth',
        retryable: false,
        detail: `${name} refused the API key (HTTP ${status}); check ${KEY_VARIABLE[provider]} in the worker's environment.${requestId}`,
      });
    }
    if (status === 429) {
      return new ProviderError({ code: 'provider_rate_limited', retryable: true, detail: `${name} rate-limited the request (HTTP 429)${suffix}` });
    }
    // 408 and 409 are the other statuses both SDKs treat as transient (request and lock timeouts).
    if (status === undefined || status >= 500 || status === 408 || status === 409) {
      return new ProviderError({
        code: 'provider_unavailable',
        retryable: true,
        detail: `${name} failed to answer (${status === undefined ? 'no status' : `HTTP ${status}`})${suffix}`,
      });
    }
    return new ProviderError({ code: 'provider_rejected', retryable: false, detail: `${name} rejected the request (HTTP ${status})${suffix}` });
  }

  // Refused by the SDK before anything was sent (e.g. a non-streaming request it deems too long).
  if (err instanceof OpenAI.OpenAIError || err instanceof Anthropic.AnthropicError) {
    const quoted = quote(err.message, secrets);
    return new ProviderError({
      code: 'provider_rejected',
      retryable: false,
      detail: `The ${name} client refused the request${quoted === undefined ? '.' : `: ${quoted}`}`,
    });
  }
  return err;
}

/**
 * Runs one SDK call under `signal`, and rejects with `abortError()` the moment it aborts.
 *
 * The SDK gets a per-call child signal, not the job's: openai-node adds an abort listener to the
 * signal it is given and never removes it (openai/openai-node#1811), so handing it the job's
 * long-lived signal would leak one listener, and the request it pins, per model call.
 * The race is there because openai-node (6.x) sleeps between retries without watching the
 * signal, honouring a Retry-After of up to a minute; a cancel must not wait that out. (The
 * Anthropic SDK's sleep does wake on abort; going through the same path keeps both alike.) The
 * abandoned call notices its aborted signal before its next attempt, and its rejection is
 * absorbed here.
 */
export function callAbortably<T>(signal: AbortSignal, abortError: () => Error, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const child = new AbortController();
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      child.abort(signal.reason);
      reject(abortError());
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    // Deferred a tick so that even a synchronous throw from `call` reaches `finally` below.
    Promise.resolve()
      .then(() => call(child.signal))
      .then(resolve, reject)
      .finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** The message inside either provider's error body: OpenAI `{error: {message}}` is unwrapped by its SDK, Anthropic's is not. */
function providerMessage(body: unknown): string | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const record = body as Record<string, unknown>;
  if (typeof record.message === 'string') return record.message;
  return providerMessage(record.error);
}

/** Shortest run of a secret's characters that counts as a leak of it. */
const SECRET_RUN = 6;
// Masked keys (`sk-abcd****wxyz`), key-shaped tokens and long opaque runs: a provider or a compatible
// server may echo a key whole, masked or in part, and it need not be ours to be worth hiding.
const CREDENTIAL_LIKE = /\*{3,}|^["'(]?(sk|pk|rk|key|sess|tok)[-_][\w-]{6,}|[\w-]{24,}/i;

/**
 * A provider message made safe to record: every whitespace-separated token that contains six or
 * more consecutive characters of a secret, or looks like a credential, becomes `[redacted]`.
 */
function quote(message: string | undefined, secrets: readonly string[]): string | undefined {
  if (message === undefined) return undefined;
  const runs = new Set<string>();
  for (const secret of secrets) {
    for (let i = 0; i + SECRET_RUN <= secret.length; i++) runs.add(secret.slice(i, i + SECRET_RUN));
  }
  const leaks = (token: string): boolean => {
    if (CREDENTIAL_LIKE.test(token)) return true;
    for (let i = 0; i + SECRET_RUN <= token.length; i++) if (runs.has(token.slice(i, i + SECRET_RUN))) return true;
    return false;
  };
  const safe = message
    .split(/\s+/)
    .filter((token) => token.length > 0)
    .map((token) => (leaks(token) ? '[redacted]' : token))
    .join(' ');
  if (safe.length === 0) return undefined;
  return safe.length > MAX_MESSAGE_CHARS ? `${safe.slice(0, MAX_MESSAGE_CHARS)}…` : safe;
}
