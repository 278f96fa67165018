/**
 * A scripted model server for tests. It speaks just enough of OpenAI Chat Completions
 * (`POST /v1/chat/completions`) and Anthropic Messages (`POST /v1/messages`) for the real SDKs to
 * talk to it over loopback, so provider code is exercised through the SDKs' own serialisation,
 * retries and abort handling rather than through mocks.
 *
 * It is stricter than it needs to be on purpose: a request that the real API would reject (a tool
 * call left unanswered, un-merged Anthropic turns, a missing `max_tokens`, …) gets a 400 in the
 * provider's error shape, so a provider bug fails a test here instead of in production.
 *
 * Non-streaming JSON only.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ScriptedRequest {
  provider: 'openai' | 'anthropic';
  model: string;
  system?: string;
  /** Text of the first user message; scripts usually key on it. */
  task: string;
  /** Number of assistant turns already in the conversation. */
  step: number;
  /**
   * The tool results of the latest turn, in order. OpenAI's wire format has no error flag on a
   * tool message, so `isError` is always false there.
   */
  toolResults: { name?: string; content: string; isError: boolean }[];
  toolNames: string[];
  /** Raw JSON body. */
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}

export interface ScriptedToolCall {
  name: string;
  /**
   * A string is sent verbatim (OpenAI) so tests can send malformed JSON. Anthropic's `input` is an
   * object on the real API; here a string is JSON-parsed and, if it is not an object, sent as-is
   * as a non-object `input` value (the SDK passes it through) so malformed input still reaches
   * the provider code.
   */
  arguments: string | Record<string, unknown>;
}

export interface ScriptedReply {
  text?: string;
  toolCalls?: ScriptedToolCall[];
  /** Defaults to 10 in / 5 out, so usage accounting is visible in every test. */
  usage?: { inputTokens: number; outputTokens: number };
  /** Answer after this long, unless the client disconnects first. */
  delayMs?: number;
  /** Never answer until the client disconnects or `releaseHanging()` is called. */
  hang?: boolean;
  status?: number;
  /** With `status` ≥ 400: the message inside the provider's error body. */
  errorMessage?: string;
  /** Extra response headers, e.g. `retry-after` to steer the SDK's backoff. */
  headers?: Record<string, string>;
}

export type Script = (req: ScriptedRequest) => ScriptedReply | Promise<ScriptedReply>;

export interface ModelServer {
  origin: string;
  /** For the OpenAI SDK, whose paths are relative to `/v1`. */
  openaiBaseUrl: string;
  /** For the Anthropic SDK, whose paths start with `/v1`. */
  anthropicBaseUrl: string;
  /** Every well-formed request, in arrival order (recorded before the script answers). */
  requests: ScriptedRequest[];
  /** How many answers (replies or errors) were fully handed to the socket. */
  readonly answered: number;
  /** How many delayed or hanging answers were cut short because the client went away. */
  readonly clientDisconnects: number;
  setScript(script: Script): void;
  waitForRequests(n: number, timeoutMs?: number): Promise<void>;
  releaseHanging(): void;
  close(): Promise<void>;
}

type Provider = ScriptedRequest['provider'];

const DEFAULT_USAGE = { inputTokens: 10, outputTokens: 5 };
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
const TOOL_USE_ID = /^[a-zA-Z0-9_-]+$/;

/** A request the real API would refuse; answered with 400 in the provider's error shape. */
class WireError extends Error {}

const defaultScript: Script = () => ({ text: 'ok' });

/**
 * A Script answering by task and step: `map[task][step]`, the last entry repeating once the
 * conversation outgrows the list. An unknown task is a test bug, so it fails loudly (the server
 * answers 400 with the reason, which surfaces as a provider_rejected error in the test).
 */
/** A reply whose model runs `source` with code_executor (`extra` adds e.g. a delay). */
export function codeCall(source: string, extra: Omit<ScriptedReply, 'toolCalls'> = {}): ScriptedReply {
  return { ...extra, toolCalls: [{ name: 'code_executor', arguments: { code: source } }] };
}

/**
 * Replies by task, step by step (the last one repeats). A task is found whole or by its first line:
 * a job with input files has their list after its task.
 */
export function scriptBySteps(map: Record<string, ScriptedReply[]>): Script {
  return (req) => {
    const firstLine = req.task.split('\n')[0] as string;
    const key = Object.hasOwn(map, req.task) ? req.task : Object.hasOwn(map, firstLine) ? firstLine : undefined;
    const replies = key === undefined ? undefined : map[key];
    if (replies === undefined || replies.length === 0) {
      throw new Error(`no scripted replies for task ${JSON.stringify(req.task)}`);
    }
    return replies[Math.min(req.step, replies.length - 1)] as ScriptedReply;
  };
}

export async function startModelServer(script: Script = defaultScript): Promise<ModelServer> {
  let current = script;
  let seq = 0;
  let disconnects = 0;
  let answered = 0;
  const requests: ScriptedRequest[] = [];
  const waiters = new Set<() => void>();
  const hanging = new Set<() => void>();

  const nextId = (prefix: string): string => `${prefix}${(++seq).toString(36).padStart(8, '0')}`;

  /** Resolves true when it is time to answer, false when the client went away first. */
  const wait = (res: ServerResponse, reply: ScriptedReply): Promise<boolean> =>
    new Promise((resolve) => {
      if (res.destroyed) {
        resolve(false);
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      const finish = (answer: boolean): void => {
        clearTimeout(timer);
        res.off('close', onClose);
        hanging.delete(onRelease);
        if (!answer) disconnects++;
        resolve(answer);
      };
      const onClose = (): void => finish(false);
      const onRelease = (): void => finish(true);
      res.on('close', onClose);
      if (reply.hang === true) hanging.add(onRelease);
      else timer = setTimeout(() => finish(true), reply.delayMs ?? 0);
    });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const provider: Provider | undefined =
      req.url === '/v1/chat/completions' ? 'openai' : req.url === '/v1/messages' ? 'anthropic' : undefined;
    if (req.method !== 'POST' || provider === undefined) {
      sendError(res, provider ?? 'openai', 404, `model-server: no route for ${req.method ?? '?'} ${req.url ?? '?'}`);
      return;
    }
    let scripted: ScriptedRequest;
    try {
      const body = JSON.parse(await readBody(req)) as unknown;
      scripted = provider === 'openai' ? parseOpenAI(body, req) : parseAnthropic(body, req);
    } catch (err) {
      sendError(res, provider, 400, `model-server: ${(err as Error).message}`);
      return;
    }
    requests.push(scripted);
    for (const wake of [...waiters]) wake();

    let reply: ScriptedReply;
    try {
      reply = await current(scripted);
    } catch (err) {
      sendError(res, provider, 400, `model-server script failed: ${(err as Error).message}`);
      return;
    }
    if ((reply.delayMs !== undefined || reply.hang === true) && !(await wait(res, reply))) return;
    if (res.destroyed) return;

    const status = reply.status ?? 200;
    if (status >= 400) {
      sendError(res, provider, status, reply.errorMessage ?? `scripted error ${status}`, reply.headers);
      return;
    }
    const body = provider === 'openai' ? openAIReply(scripted, reply, nextId) : anthropicReply(scripted, reply, nextId);
    sendJson(res, status, body, reply.headers);
  };

  const server: Server = createServer((req, res) => {
    res.on('finish', () => answered++);
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent && !res.destroyed) sendError(res, 'openai', 500, `model-server crashed: ${String(err)}`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const origin = `http://127.0.0.1:${port}`;

  let closing: Promise<void> | undefined;
  return {
    origin,
    openaiBaseUrl: `${origin}/v1`,
    anthropicBaseUrl: origin,
    requests,
    get answered() {
      return answered;
    },
    get clientDisconnects() {
      return disconnects;
    },
    setScript(next) {
      current = next;
    },
    waitForRequests(n, timeoutMs = 5000) {
      if (requests.length >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (requests.length < n) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`model-server: ${requests.length} of ${n} requests arrived within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    releaseHanging() {
      for (const release of [...hanging]) release();
    },
    close() {
      // The SDKs keep connections alive, and server.close() alone would wait for them to idle out.
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new WireError('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.destroyed) return;
  res.writeHead(status, { ...headers, 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const ERROR_TYPES: Record<Provider, Record<number, string>> = {
  openai: { 400: 'invalid_request_error', 401: 'invalid_request_error', 403: 'invalid_request_error', 404: 'invalid_request_error', 429: 'rate_limit_exceeded' },
  anthropic: { 400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 429: 'rate_limit_error', 529: 'overloaded_error' },
};

function sendError(res: ServerResponse, provider: Provider, status: number, message: string, headers?: Record<string, string>): void {
  const type = ERROR_TYPES[provider][status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
  const body =
    provider === 'openai'
      ? { error: { message, type, param: null, code: null } }
      : { type: 'error', error: { type, message } };
  sendJson(res, status, body, headers);
}

// ---- request parsing and validation ---------------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new WireError(message);
}

function requireModel(body: Record<string, unknown>): string {
  check(typeof body.model === 'string' && body.model.length > 0, 'model: a non-empty string is required');
  check(body.stream !== true, 'stream: streaming is not supported by the model server');
  return body.model;
}

function checkSchema(schema: unknown, where: string): void {
  check(isObject(schema) && schema.type === 'object', `${where}: a JSON schema object with type "object" is required`);
}

function textOf(content: unknown, where: string): string {
  if (typeof content === 'string') return content;
  check(Array.isArray(content), `${where}: content must be a string or an array of parts`);
  return content
    .filter((part): part is { type: 'text'; text: string } => isObject(part) && part.type === 'text' && typeof part.text === 'string')
    .map((part) => part.text)
    .join('\n');
}

function parseOpenAI(raw: unknown, req: IncomingMessage): ScriptedRequest {
  check(isObject(raw), 'body must be a JSON object');
  const model = requireModel(raw);
  const auth = req.headers.authorization;
  check(typeof auth === 'string' && auth.startsWith('Bearer '), 'Authorization: Bearer token is required');
  for (const key of ['max_tokens', 'max_completion_tokens'] as const) {
    const v = raw[key];
    check(v === undefined || (Number.isInteger(v) && (v as number) > 0), `${key}: a positive integer is required`);
  }

  const toolNames: string[] = [];
  if (raw.tools !== undefined) {
    check(Array.isArray(raw.tools) && raw.tools.length > 0, 'tools: a non-empty array is required when present');
    raw.tools.forEach((tool: unknown, i) => {
      const fn = isObject(tool) ? tool.function : undefined;
      check(isObject(tool) && tool.type === 'function' && isObject(fn), `tools[${i}]: {type: "function", function} is required`);
      check(typeof fn.name === 'string' && TOOL_NAME.test(fn.name), `tools[${i}].function.name is invalid`);
      checkSchema(fn.parameters, `tools[${i}].function.parameters`);
      toolNames.push(fn.name);
    });
  }

  const messages = raw.messages;
  check(Array.isArray(messages) && messages.length > 0, 'messages: a non-empty array is required');
  const system: string[] = [];
  let task: string | undefined;
  let step = 0;
  let pending = new Map<string, string>(); // tool_call_id → function name, of the latest assistant turn
  let latestResults: ScriptedRequest['toolResults'] = [];
  messages.forEach((m: unknown, i) => {
    const where = `messages[${i}]`;
    check(isObject(m), `${where}: an object is required`);
    if (m.role !== 'tool') {
      check(
        pending.size === 0,
        `${where}: an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id' (missing: ${[...pending.keys()].join(', ')})`,
      );
    }
    switch (m.role) {
      case 'system':
      case 'developer':
        system.push(textOf(m.content, where));
        break;
      case 'user':
        task ??= textOf(m.content, where);
        latestResults = [];
        break;
      case 'assistant': {
        step++;
        latestResults = [];
        const calls = m.tool_calls;
        check(calls === undefined || (Array.isArray(calls) && calls.length > 0), `${where}.tool_calls: must be a non-empty array when present`);
        check(
          typeof m.content === 'string' || (m.content == null && calls !== undefined),
          `${where}: content is required unless tool_calls is given`,
        );
        pending = new Map();
        (calls ?? []).forEach((call: unknown, j) => {
          const fn = isObject(call) ? call.function : undefined;
          check(
            isObject(call) && call.type === 'function' && typeof call.id === 'string' && call.id.length > 0 && isObject(fn),
            `${where}.tool_calls[${j}]: {id, type: "function", function} is required`,
          );
          check(typeof fn.name === 'string' && typeof fn.arguments === 'string', `${where}.tool_calls[${j}].function: name and arguments (a string) are required`);
          pending.set(call.id, fn.name);
        });
        break;
      }
      case 'tool': {
        check(typeof m.tool_call_id === 'string', `${where}.tool_call_id is required`);
        const name = pending.get(m.tool_call_id);
        check(name !== undefined, `${where}: messages with role 'tool' must be a response to a preceding message with 'tool_calls'`);
        pending.delete(m.tool_call_id);
        check(typeof m.content === 'string' || Array.isArray(m.content), `${where}.content is required`);
        latestResults.push({ name, content: textOf(m.content, where), isError: false });
        break;
      }
      default:
        throw new WireError(`${where}.role: unknown role ${JSON.stringify(m.role)}`);
    }
  });
  check(pending.size === 0, `tool_call_ids did not have response messages: ${[...pending.keys()].join(', ')}`);
  check(task !== undefined, 'messages: at least one user message is required');

  return {
    provider: 'openai',
    model,
    ...(system.length > 0 ? { system: system.join('\n') } : {}),
    task,
    step,
    toolResults: latestResults,
    toolNames,
    body: raw,
    headers: req.headers,
  };
}

function parseAnthropic(raw: unknown, req: IncomingMessage): ScriptedRequest {
  check(isObject(raw), 'body must be a JSON object');
  const model = requireModel(raw);
  check(typeof req.headers['x-api-key'] === 'string', 'x-api-key header is required');
  check(typeof req.headers['anthropic-version'] === 'string', 'anthropic-version header is required');
  check(Number.isInteger(raw.max_tokens) && (raw.max_tokens as number) > 0, 'max_tokens: a positive integer is required');

  let system: string | undefined;
  if (raw.system !== undefined) {
    system = textOf(raw.system, 'system');
  }

  const toolNames: string[] = [];
  if (raw.tools !== undefined) {
    check(Array.isArray(raw.tools), 'tools: an array is required');
    raw.tools.forEach((tool: unknown, i) => {
      check(isObject(tool) && typeof tool.name === 'string' && TOOL_NAME.test(tool.name), `tools.${i}.name is invalid`);
      checkSchema(tool.input_schema, `tools.${i}.input_schema`);
      toolNames.push(tool.name);
    });
  }

  const messages = raw.messages;
  check(Array.isArray(messages) && messages.length > 0, 'messages: a non-empty array is required');
  let task: string | undefined;
  let step = 0;
  let expected = new Map<string, string>(); // tool_use id → name, of the preceding assistant turn
  let latestResults: ScriptedRequest['toolResults'] = [];
  messages.forEach((m: unknown, i) => {
    const where = `messages.${i}`;
    check(isObject(m), `${where}: an object is required`);
    // The real API merges consecutive same-role turns silently; demanding alternation here
    // catches a provider that forgot to merge (and would then split tool results from their calls).
    check(m.role === (i % 2 === 0 ? 'user' : 'assistant'), `${where}.role: roles must alternate, starting with "user"`);
    const blocks: unknown[] = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : (m.content as unknown[]);
    check(Array.isArray(blocks) && blocks.length > 0, `${where}.content: a string or a non-empty array of blocks is required`);

    if (m.role === 'assistant') {
      step++;
      expected = new Map();
      blocks.forEach((b, j) => {
        check(isObject(b), `${where}.content.${j}: an object is required`);
        if (b.type === 'text') {
          check(typeof b.text === 'string' && b.text.length > 0, `${where}.content.${j}: text content blocks must be non-empty`);
        } else if (b.type === 'tool_use') {
          check(typeof b.id === 'string' && TOOL_USE_ID.test(b.id), `${where}.content.${j}.id is invalid`);
          check(typeof b.name === 'string' && b.name.length > 0, `${where}.content.${j}.name is required`);
          check(isObject(b.input), `${where}.content.${j}.input: Input should be a valid dictionary`);
          expected.set(b.id, b.name);
        } else {
          throw new WireError(`${where}.content.${j}.type: unexpected block type ${JSON.stringify(b.type)}`);
        }
      });
      return;
    }

    latestResults = [];
    let seenOther = false;
    const answered = new Set<string>();
    blocks.forEach((b, j) => {
      check(isObject(b), `${where}.content.${j}: an object is required`);
      if (b.type === 'tool_result') {
        check(!seenOther, `${where}: tool_result blocks must come before any other content in a user turn`);
        check(typeof b.tool_use_id === 'string', `${where}.content.${j}.tool_use_id is required`);
        const name = expected.get(b.tool_use_id);
        check(name !== undefined, `${where}: unexpected tool_use_id found in tool_result blocks: ${b.tool_use_id}`);
        check(b.is_error === undefined || typeof b.is_error === 'boolean', `${where}.content.${j}.is_error must be a boolean`);
        answered.add(b.tool_use_id);
        latestResults.push({ name, content: b.content === undefined ? '' : textOf(b.content, where), isError: b.is_error === true });
      } else if (b.type === 'text') {
        check(typeof b.text === 'string' && b.text.length > 0, `${where}.content.${j}: text content blocks must be non-empty`);
        seenOther = true;
        task ??= b.text;
      } else {
        throw new WireError(`${where}.content.${j}.type: unexpected block type ${JSON.stringify(b.type)}`);
      }
    });
    const missing = [...expected.keys()].filter((id) => !answered.has(id));
    check(missing.length === 0, `${where}: tool_use ids were found without tool_result blocks immediately after: ${missing.join(', ')}`);
    expected = new Map();
  });
  check(messages.length % 2 === 1, 'messages: the conversation must end with a user turn');
  check(task !== undefined, 'messages: the first user turn must contain text');

  return {
    provider: 'anthropic',
    model,
    ...(system !== undefined ? { system } : {}),
    task,
    step,
    toolResults: latestResults,
    toolNames,
    body: raw,
    headers: req.headers,
  };
}

// ---- replies ---------------------------------------------------------------------------------

function openAIReply(req: ScriptedRequest, reply: ScriptedReply, nextId: (prefix: string) => string): unknown {
  const usage = reply.usage ?? DEFAULT_USAGE;
  const calls = (reply.toolCalls ?? []).map((call) => ({
    id: nextId('call_'),
    type: 'function',
    function: { name: call.name, arguments: typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments) },
  }));
  return {
    id: nextId('chatcmpl-'),
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: req.model,
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: reply.text ?? null,
          refusal: null,
          ...(calls.length > 0 ? { tool_calls: calls } : {}),
        },
        logprobs: null,
        finish_reason: calls.length > 0 ? 'tool_calls' : 'stop',
      },
    ],
    usage: {
      prompt_tokens: usage.inputTokens,
      completion_tokens: usage.outputTokens,
      total_tokens: usage.inputTokens + usage.outputTokens,
    },
  };
}

function anthropicInput(args: ScriptedToolCall['arguments']): unknown {
  if (typeof args !== 'string') return args;
  try {
    const parsed: unknown = JSON.parse(args);
    return isObject(parsed) ? parsed : args;
  } catch {
    return args;
  }
}

function anthropicReply(req: ScriptedRequest, reply: ScriptedReply, nextId: (prefix: string) => string): unknown {
  const usage = reply.usage ?? DEFAULT_USAGE;
  const toolUses = (reply.toolCalls ?? []).map((call) => ({
    type: 'tool_use',
    id: nextId('toolu_'),
    name: call.name,
    input: anthropicInput(call.arguments),
  }));
  const text = reply.text === undefined || reply.text === '' ? [] : [{ type: 'text', text: reply.text, citations: null }];
  return {
    id: nextId('msg_'),
    type: 'message',
    role: 'assistant',
    model: req.model,
    content: [...text, ...toolUses],
    stop_reason: toolUses.length > 0 ? 'tool_use' : 'end_turn',
    stop_sequence: null,
    usage: {
      input_tokens: usage.inputTokens,
      output_tokens: usage.outputTokens,
      cache_creation_input_tokens: null,
      cache_read_input_tokens: null,
    },
  };
}
