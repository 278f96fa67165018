import { scriptBySteps, startModelServer, type ModelServer, type ScriptedRequest } from '../support/model-server';

function request(task: string, step: number): ScriptedRequest {
  return { provider: 'openai', model: 'm', task, step, toolResults: [], toolNames: [], body: {}, headers: {} };
}

describe('scriptBySteps', () => {
  const script = scriptBySteps({ Plot: [{ text: 'first' }, { text: 'then' }] });

  it('answers each step of a task with its own entry, repeating the last one', async () => {
    expect(await script(request('Plot', 0))).toEqual({ text: 'first' });
    expect(await script(request('Plot', 1))).toEqual({ text: 'then' });
    expect(await script(request('Plot', 7))).toEqual({ text: 'then' });
  });

  it('fails loudly for a task it has no replies for, including inherited object keys', () => {
    expect(() => script(request('Draw', 0))).toThrow('no scripted replies for task "Draw"');
    expect(() => script(request('constructor', 0))).toThrow('no scripted replies');
    expect(() => scriptBySteps({ Empty: [] })(request('Empty', 0))).toThrow('no scripted replies');
  });
});

/** The server's validation is what lets provider tests catch wire-format bugs, so it is tested too. */
describe('the model server', () => {
  let server: ModelServer;

  beforeEach(async () => {
    server = await startModelServer();
  });

  afterEach(async () => {
    await server.close();
  });

  const anthropic = (body: unknown): Promise<Response> =>
    fetch(`${server.anthropicBaseUrl}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify(body),
    });
  const openai = (body: unknown): Promise<Response> =>
    fetch(`${server.openaiBaseUrl}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
      body: JSON.stringify(body),
    });
  const toolUse = { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'code_executor', input: {} }] };

  it('answers an Anthropic request with consecutive user turns with a 400 in Anthropic’s error shape', async () => {
    const res = await anthropic({
      model: 'm',
      max_tokens: 10,
      messages: [
        { role: 'user', content: 'Plot' },
        toolUse,
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'done' }] },
        { role: 'user', content: 'Answer now.' },
      ],
    });

    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', message: expect.stringContaining('alternate') } });
    expect(server.requests).toHaveLength(0);
  });

  it('refuses an Anthropic tool_use left without its tool_result, and one without max_tokens', async () => {
    const unanswered = await anthropic({
      model: 'm',
      max_tokens: 10,
      messages: [{ role: 'user', content: 'Plot' }, toolUse, { role: 'user', content: 'Go on.' }],
    });
    const noMax = await anthropic({ model: 'm', messages: [{ role: 'user', content: 'Plot' }] });

    expect(unanswered.status).toBe(400);
    expect(noMax.status).toBe(400);
  });

  it('refuses an OpenAI assistant tool call that no tool message answers', async () => {
    const res = await openai({
      model: 'm',
      messages: [
        { role: 'user', content: 'Plot' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
        { role: 'user', content: 'Go on.' },
      ],
    });

    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { type: 'invalid_request_error', message: expect.stringContaining('call_1') } });
  });

  it('records a well-formed request before answering it', async () => {
    const res = await openai({ model: 'm', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }] });

    expect(res.status).toBe(200);
    expect(server.requests).toEqual([expect.objectContaining({ provider: 'openai', system: 'Be brief.', task: 'Hi', step: 0 })]);
  });
});
