import { getEventListeners } from 'node:events';
import { ProviderError } from '../../services/shared/src/errors';
import { AnthropicProvider } from '../../services/worker/src/providers/anthropic-provider';
import { createProvider } from '../../services/worker/src/providers/index';
import type { ChatMessage, ModelProvider, ModelRequest, ProviderName, ToolSpec } from '../../services/worker/src/providers/model-provider';
import { OpenAIProvider, type ProviderOptions } from '../../services/worker/src/providers/openai-provider';
import { isSdkAbortError } from '../../services/worker/src/providers/provider-errors';
import { scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { waitFor } from '../support/wait-for';

/** A key no real provider would issue, so finding it anywhere it should not be is unambiguous. */
const MARKER_KEY = 'sk-MARKER-9c1e4f7a-do-not-leak';

const codeExecutor: ToolSpec = {
  name: 'code_executor',
  description: 'Runs Python 3 in the job sandbox.',
  inputSchema: { type: 'object', properties: { code: { type: 'string' } }, required: ['code'], additionalProperties: false },
};

function ask(task: string, extra: Partial<ModelRequest> = {}): ModelRequest {
  return { model: 'test-model', messages: [{ role: 'user', content: task }], tools: [codeExecutor], maxOutputTokens: 256, ...extra };
}

async function failure(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to fail');
}

async function providerFailure(promise: Promise<unknown>): Promise<ProviderError> {
  const err = await failure(promise);
  expect(err).toBeInstanceOf(ProviderError);
  return err as ProviderError;
}

const never = new AbortController().signal;

interface Case {
  name: ProviderName;
  make(server: ModelServer, opts?: Partial<ProviderOptions>): ModelProvider;
}

const cases: Case[] = [
  {
    name: 'openai',
    make: (server, opts) => new OpenAIProvider({ apiKey: MARKER_KEY, baseURL: server.openaiBaseUrl, maxRetries: 0, ...opts }),
  },
  {
    name: 'anthropic',
    make: (server, opts) => new AnthropicProvider({ apiKey: MARKER_KEY, baseURL: server.anthropicBaseUrl, maxRetries: 0, ...opts }),
  },
];

describe.each(cases)('the $name provider', ({ name, make }) => {
  let server: ModelServer;

  beforeEach(async () => {
    server = await startModelServer();
  });

  afterEach(async () => {
    await server.close();
  });

  it('returns the model text with its token usage', async () => {
    server.setScript(() => ({ text: 'Paris.', usage: { inputTokens: 42, outputTokens: 7 } }));

    const reply = await make(server).complete(ask('Capital of France?'), never);

    expect(reply).toEqual({ text: 'Paris.', toolCalls: [], usage: { inputTokens: 42, outputTokens: 7 }, stopReason: 'end' });
    expect(server.requests[0]).toMatchObject({ provider: name, model: 'test-model', task: 'Capital of France?', step: 0 });
  });

  it('round-trips tool calls: the follow-up carries the calls and their results, in order', async () => {
    server.setScript(
      scriptBySteps({
        'Compute 6*7': [
          {
            text: 'Let me run that.',
            toolCalls: [
              { name: 'code_executor', arguments: { code: 'print(6*7)' } },
              { name: 'code_executor', arguments: { code: 'raise SystemExit(1)' } },
            ],
          },
          { text: 'It is 42.' },
        ],
      }),
    );
    const provider = make(server);

    const first = await provider.complete(ask('Compute 6*7'), never);

    expect(first.stopReason).toBe('tool_use');
    expect(first.text).toBe('Let me run that.');
    expect(first.toolCalls.map((c) => [c.name, JSON.parse(c.arguments)])).toEqual([
      ['code_executor', { code: 'print(6*7)' }],
      ['code_executor', { code: 'raise SystemExit(1)' }],
    ]);
    const [ok, failed] = first.toolCalls;
    expect(ok?.id).toMatch(name === 'openai' ? /^call_/ : /^toolu_/);
    expect(ok?.id).not.toBe(failed?.id);
    expect(server.requests[0]?.toolNames).toEqual(['code_executor']);

    const messages: ChatMessage[] = [
      { role: 'user', content: 'Compute 6*7' },
      { role: 'assistant', content: first.text, toolCalls: first.toolCalls },
      {
        role: 'tool',
        results: [
          { callId: ok?.id ?? '', name: 'code_executor', content: '42\n', isError: false },
          { callId: failed?.id ?? '', name: 'code_executor', content: 'exit status 1', isError: true },
        ],
      },
    ];
    const second = await provider.complete(ask('Compute 6*7', { messages }), never);

    expect(second).toMatchObject({ text: 'It is 42.', toolCalls: [], stopReason: 'end' });
    expect(server.requests[1]).toMatchObject({
      step: 1,
      toolResults: [
        { name: 'code_executor', content: '42\n', isError: false },
        // Chat Completions has no wire field for a failed tool call.
        { name: 'code_executor', content: 'exit status 1', isError: name === 'anthropic' },
      ],
    });
  });

  it('accepts a user message that follows tool results (Anthropic needs the turns merged)', async () => {
    server.setScript(scriptBySteps({ Plot: [{ toolCalls: [{ name: 'code_executor', arguments: { code: 'plot()' } }] }, { text: 'Done.' }] }));
    const provider = make(server);
    const first = await provider.complete(ask('Plot'), never);
    const call = first.toolCalls[0];

    const second = await provider.complete(
      ask('Plot', {
        messages: [
          { role: 'user', content: 'Plot' },
          { role: 'assistant', content: first.text, toolCalls: first.toolCalls },
          { role: 'tool', results: [{ callId: call?.id ?? '', name: 'code_executor', content: '', isError: false }] },
          { role: 'user', content: 'You have one step left; answer now.' },
        ],
      }),
      never,
    );

    expect(second.text).toBe('Done.');
  });

  it('hands malformed tool arguments over raw, and can send them back in a form the API accepts', async () => {
    const malformed = '{"code": "print(1)';
    server.setScript(scriptBySteps({ Broken: [{ toolCalls: [{ name: 'code_executor', arguments: malformed }] }, { text: 'Sorry.' }] }));
    const provider = make(server);

    const first = await provider.complete(ask('Broken'), never);

    expect(first.toolCalls).toEqual([{ id: expect.any(String), name: 'code_executor', arguments: malformed }]);

    const call = first.toolCalls[0];
    const second = await provider.complete(
      ask('Broken', {
        messages: [
          { role: 'user', content: 'Broken' },
          { role: 'assistant', content: first.text, toolCalls: first.toolCalls },
          { role: 'tool', results: [{ callId: call?.id ?? '', name: 'code_executor', content: 'arguments are not valid JSON', isError: true }] },
        ],
      }),
      never,
    );
    expect(second.text).toBe('Sorry.');
  });

  it('sends the system prompt', async () => {
    await make(server).complete(ask('Hi', { system: 'You are terse.' }), never);

    expect(server.requests[0]?.system).toBe('You are terse.');
  });

  it('sends no tools field when the job enables no tools', async () => {
    await make(server).complete(ask('Hi', { tools: [] }), never);

    expect(server.requests[0]?.toolNames).toEqual([]);
    expect(server.requests[0]?.body).not.toHaveProperty('tools');
  });

  it('rejects promptly with the abort error when the signal aborts mid-request, and drops the connection', async () => {
    server.setScript(() => ({ hang: true, text: 'too late' }));
    const controller = new AbortController();
    const pending = failure(make(server).complete(ask('Hang'), controller.signal));
    await server.waitForRequests(1);

    const started = Date.now();
    controller.abort();
    const err = await pending;

    expect(Date.now() - started).toBeLessThan(1000);
    expect(isSdkAbortError(err)).toBe(true);
    await waitFor(() => server.clientDisconnects === 1, { timeoutMs: 2000, what: 'the server to see the client hang up' });
  });

  it("leaves no listener on the job's signal once a call has settled", async () => {
    const job = new AbortController();
    const provider = make(server);

    for (let i = 0; i < 3; i++) await provider.complete(ask('Hi'), job.signal);

    expect(getEventListeners(job.signal, 'abort')).toHaveLength(0);
  });

  it('rejects promptly when the signal aborts while the SDK is backing off before a retry', async () => {
    // openai-node would honour this Retry-After and sleep for 2 s without watching the signal.
    server.setScript(() => ({ status: 429, errorMessage: 'Slow down.', headers: { 'retry-after': '2' } }));
    const controller = new AbortController();
    const pending = failure(make(server, { maxRetries: 1 }).complete(ask('Busy'), controller.signal));
    await waitFor(() => server.answered === 1, { timeoutMs: 2000, what: 'the 429 to be sent' });
    // Not needed for correctness: it lets the SDK get from reading the 429 into its sleep, so the
    // abort lands in the backoff this test is about rather than in the request before it.
    await new Promise((resolve) => setTimeout(resolve, 100));

    const started = Date.now();
    controller.abort();
    const err = await pending;

    expect(Date.now() - started).toBeLessThan(1000);
    expect(isSdkAbortError(err)).toBe(true);
  });

  it('maps a 401 to a final provider_auth error', async () => {
    server.setScript(() => ({ status: 401, errorMessage: 'Invalid API key.' }));

    const err = await providerFailure(make(server).complete(ask('Hi'), never));

    expect(err).toMatchObject({ code: 'provider_auth', retryable: false });
    expect(err.detail).toContain('HTTP 401');
  });

  it('maps a 400 to a final provider_rejected error that quotes the reason', async () => {
    server.setScript(() => ({ status: 400, errorMessage: 'max_tokens is too large for this model' }));

    const err = await providerFailure(make(server).complete(ask('Hi'), never));

    expect(err).toMatchObject({ code: 'provider_rejected', retryable: false });
    expect(err.detail).toContain('max_tokens is too large for this model');
  });

  it('maps a 429 to a retryable provider_rate_limited error', async () => {
    server.setScript(() => ({ status: 429, errorMessage: 'Rate limit reached.' }));

    const err = await providerFailure(make(server).complete(ask('Hi'), never));

    expect(err).toMatchObject({ code: 'provider_rate_limited', retryable: true });
  });

  it('maps a 500 that outlives the SDK retry to a retryable provider_unavailable error', async () => {
    server.setScript(() => ({ status: 500, errorMessage: 'The server had an error.' }));

    const err = await providerFailure(make(server, { maxRetries: 1 }).complete(ask('Hi'), never));

    expect(err).toMatchObject({ code: 'provider_unavailable', retryable: true });
    expect(server.requests).toHaveLength(2);
  });

  it('maps a request that outlasts timeoutMs to a retryable provider_unavailable error', async () => {
    server.setScript(() => ({ delayMs: 5000, text: 'late' }));

    const err = await providerFailure(make(server, { timeoutMs: 200 }).complete(ask('Slow'), never));

    expect(err).toMatchObject({ code: 'provider_unavailable', retryable: true });
    await waitFor(() => server.clientDisconnects === 1, { timeoutMs: 2000, what: 'the server to see the client hang up' });
  });

  it('maps an unreachable server to a retryable provider_unavailable error', async () => {
    const provider = make(server);
    await server.close();

    const err = await providerFailure(provider.complete(ask('Hi'), never));

    expect(err).toMatchObject({ code: 'provider_unavailable', retryable: true });
  });

  it('sends the API key only in its auth header, and never puts it in an error', async () => {
    // Both messages echo the key, as OpenAI's own 401 body does with part of it.
    server.setScript(() => ({ status: 401, errorMessage: `Incorrect API key provided: ${MARKER_KEY}.` }));
    const auth = await providerFailure(make(server).complete(ask('Hi'), never));
    server.setScript(() => ({ status: 400, errorMessage: `Key ${MARKER_KEY} may not use model test-model.` }));
    const rejected = await providerFailure(make(server).complete(ask('Hi'), never));

    for (const err of [auth, rejected]) {
      expect(`${err.message} ${err.detail} ${err.stack ?? ''} ${JSON.stringify(err)}`).not.toContain(MARKER_KEY);
    }
    expect(rejected.detail).toContain('[redacted]');

    for (const req of server.requests) {
      const authHeader = name === 'openai' ? 'authorization' : 'x-api-key';
      expect(req.headers[authHeader]).toBe(name === 'openai' ? `Bearer ${MARKER_KEY}` : MARKER_KEY);
      const elsewhere = Object.entries(req.headers).filter(([header]) => header !== authHeader);
      expect(JSON.stringify(elsewhere)).not.toContain(MARKER_KEY);
      expect(JSON.stringify(req.body)).not.toContain(MARKER_KEY);
    }
  });
});

describe('createProvider', () => {
  let server: ModelServer;

  beforeAll(async () => {
    server = await startModelServer();
  });

  afterAll(async () => {
    await server.close();
  });

  it('refuses a provider without an API key, naming the variable to set', () => {
    expect(() => createProvider('anthropic', { anthropic: { baseURL: server.anthropicBaseUrl } })).toThrow(
      expect.objectContaining({
        code: 'provider_not_configured',
        retryable: false,
        detail: "No API key is configured for provider 'anthropic' (set ANTHROPIC_API_KEY in the worker's environment).",
      }),
    );
    expect(() => createProvider('openai', { openai: { apiKey: '' } })).toThrow(expect.objectContaining({ code: 'provider_not_configured' }));
  });

  it('lets a keyless OpenAI-compatible server (e.g. Ollama) be used through its base URL', async () => {
    const provider = createProvider('openai', { openai: { baseURL: server.openaiBaseUrl }, maxRetries: 0 });

    const reply = await provider.complete(ask('Hi'), never);

    expect(reply.text).toBe('ok');
    expect(server.requests.at(-1)?.headers.authorization).toBe('Bearer not-needed');
  });

  it('builds the provider named, talking to the configured endpoint', async () => {
    const provider = createProvider('anthropic', { anthropic: { apiKey: MARKER_KEY, baseURL: server.anthropicBaseUrl }, maxRetries: 0 });

    await provider.complete(ask('Hi'), never);

    expect(provider.name).toBe('anthropic');
    expect(server.requests.at(-1)?.provider).toBe('anthropic');
  });
});
