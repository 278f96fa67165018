import { z } from 'zod';
import type { Config } from '../../shared/src/config';
import { createJobRequestSchema, JOB_STATUSES, TOOL_NAMES } from '../../shared/src/job-schema';
import { listQuerySchema } from './routes/jobs';

/*
 * The OpenAPI 3.1 document. Request bodies and query parameters come from the very zod schemas that
 * validate them (OpenAPI 3.1 speaks JSON Schema 2020-12, which zod emits); responses are described
 * here in zod too, so one notation serves both.
 */

const usage = z.object({ inputTokens: z.number().int(), outputTokens: z.number().int() });
const modelStep = z.object({
  index: z.number().int(),
  type: z.literal('model'),
  startedAt: z.iso.datetime(),
  durationMs: z.number(),
  text: z.string(),
  toolCalls: z.array(z.object({ id: z.string(), name: z.string(), arguments: z.string().describe('raw JSON text as the model sent it') })),
  usage,
  stopReason: z.string(),
});
const toolStep = z
  .object({
    index: z.number().int(),
    type: z.literal('tool'),
    startedAt: z.iso.datetime(),
    durationMs: z.number(),
    callId: z.string(),
    name: z.string(),
    input: z.unknown().describe('the arguments, parsed when they were valid JSON'),
    output: z.string().describe('exactly the text the model was shown'),
    isError: z.boolean(),
    exitCode: z.number().int().optional(),
    timedOut: z.boolean().optional(),
    truncated: z.boolean().optional(),
  })
  .catchall(z.unknown());
const storedFile = {
  name: z.string(),
  size: z.number().int(),
  contentType: z.string().describe('from the name\'s extension; bytes are never sniffed'),
  sha256: z.string().describe('hex SHA-256 of the bytes; the download\'s ETag'),
};
const artifact = z.object({ ...storedFile, step: z.number().int().describe('index of the code_executor step that wrote it') });
const input = z.object(storedFile);
const jobSummary = z.object({
  id: z.string(),
  status: z.enum(JOB_STATUSES),
  task: z.string(),
  provider: z.string(),
  model: z.string(),
  system: z.string().optional(),
  tools: z.array(z.enum(TOOL_NAMES)),
  maxSteps: z.number().int(),
  timeoutSeconds: z.number().int(),
  metadata: z.record(z.string(), z.string()),
  createdAt: z.iso.datetime(),
  startedAt: z.iso.datetime().nullable(),
  finishedAt: z.iso.datetime().nullable(),
  attempts: z.number().int(),
  stopReason: z.enum(['completed', 'max_steps', 'timeout', 'cancelled', 'error']).nullable(),
  result: z.object({ output: z.string() }).nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  usage,
  inputs: z.array(input).describe('files given with the job, read-only at /input/<name> in its sandbox'),
  artifacts: z.array(artifact),
  webhook: z.object({ url: z.string() }).nullable().describe('the job\'s own webhook: where its end is POSTed, signed'),
  webhookDeliveries: z
    .array(
      z.object({
        attempt: z.number().int().describe('1 for the first'),
        at: z.iso.datetime(),
        target: z.enum(['job', 'deployment']).describe('the job\'s own webhook, or the deployment\'s WEBHOOK_URL (not shown)'),
        statusCode: z.number().int().nullable().describe('the receiver\'s answer; only 2xx is a delivery (a redirect is not followed)'),
        error: z.string().nullable(),
        durationMs: z.number().int(),
        willRetry: z.boolean(),
      }),
    )
    .describe('the webhook\'s delivery attempts, oldest first (the last 20); empty until the job has ended'),
});
const job = jobSummary.extend({ steps: z.array(z.discriminatedUnion('type', [modelStep, toolStep])) });
const jobList = z.object({ jobs: z.array(jobSummary), nextCursor: z.string().nullable() });
const problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  errorId: z.string().optional(),
});

const schema = (s: z.ZodType, io: 'input' | 'output' = 'output') => {
  const out = z.toJSONSchema(s, { target: 'draft-2020-12', io, unrepresentable: 'any' }) as Record<string, unknown>;
  delete out.$schema;
  return out;
};

const problemResponse = (description: string) => ({
  description,
  content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
});
const jobId = { name: 'id', in: 'path', required: true, schema: { type: 'string', pattern: '^[0-9a-hjkmnp-tv-z]{26}$' } };
/** What every /v1 operation may answer before it runs: the host check, authentication and the limits. */
const common = {
  '400': problemResponse('Invalid request; a missing or malformed Host header is one (`host_not_allowed`).'),
  '401': problemResponse('Not authenticated (api-key and proxy modes).'),
  '421': problemResponse('The Host header names a host this API does not answer to (`host_not_allowed`; see ALLOWED_HOSTS).'),
  '429': problemResponse(
    'Rate limit exceeded, or too many failed authentications from this address (`too_many_auth_failures`); see Retry-After.',
  ),
  '503': problemResponse('Redis is unreachable.'),
};
/** The download of a stored file (an artifact or an input), with its conditional and range requests. */
const download = (what: string) => ({
  parameters: [
    { name: 'Range', in: 'header', required: false, description: 'One byte range, `bytes=start-end`, `bytes=start-` or `bytes=-suffix`; several ranges get the whole file.', schema: { type: 'string' } },
    { name: 'If-None-Match', in: 'header', required: false, description: 'The ETag of a copy you hold: 304 when it is still this file.', schema: { type: 'string' } },
    { name: 'If-Range', in: 'header', required: false, description: 'With Range: the range only if the ETag still matches, else the whole file.', schema: { type: 'string' } },
  ],
  responses: {
    '200': {
      description: `The ${what}, as an attachment, with its content type, its ETag (the quoted SHA-256) and Accept-Ranges.`,
      headers: { ETag: { schema: { type: 'string' } } },
      content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } },
    },
    '206': {
      description: 'The bytes of the requested range, with Content-Range.',
      headers: { 'Content-Range': { schema: { type: 'string' } } },
      content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } },
    },
    '304': { description: 'If-None-Match names this file\'s ETag: your copy is current.' },
    '404': problemResponse(`No such job or ${what}.`),
    '416': problemResponse('The range starts past the end of the file; Content-Range gives its length.'),
    ...common,
  },
});

/** With AUTH_MODE=none, what a state-changing request from a foreign browser origin gets. */
const foreignOrigin = { '403': problemResponse('With AUTH_MODE=none: the Origin is neither this API nor in CORS_ORIGINS (`origin_not_allowed`).') };

export function buildOpenApi(config: Config): Record<string, unknown> {
  const request = createJobRequestSchema({ maxSteps: config.JOB_MAX_STEPS_LIMIT, maxTimeoutSeconds: config.JOB_MAX_TIMEOUT_SECONDS });
  const query = schema(listQuerySchema, 'input') as { properties: Record<string, Record<string, unknown>> };
  const security = config.AUTH_MODE === 'api-key' ? [{ bearer: [] }] : [];
  return {
    openapi: '3.1.0',
    info: {
      title: 'Maestro',
      version: '1',
      description: 'Runs LLM agent jobs: submit a task, poll the job or stream its events until it ends.',
    },
    components: {
      schemas: {
        JobRequest: schema(request, 'input'),
        Job: schema(job),
        JobList: schema(jobList),
        Problem: schema(problem),
      },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    },
    security,
    paths: {
      '/healthz': { get: { summary: 'Liveness', security: [], responses: { '200': { description: 'The process is up.' } } } },
      '/readyz': {
        get: {
          summary: 'Readiness',
          security: [],
          responses: {
            '200': {
              description:
                'Redis answers. While Redis is past REDIS_NEARLY_FULL_PERCENT of its maxmemory the body adds `"submissions": "refused"` and `"reason": "redis_nearly_full"`: still ready, since reads go on.',
            },
            '503': problemResponse('Redis is unreachable.'),
          },
        },
      },
      '/openapi.json': { get: { summary: 'This document', security: [], responses: { '200': { description: 'OpenAPI 3.1 JSON.' } } } },
      '/docs': { get: { summary: 'Human-readable API docs', security: [], responses: { '200': { description: 'HTML.' } } } },
      // The MCP server (mcp.ts): JSON-RPC over Streamable HTTP, which OpenAPI can only point at.
      '/mcp': {
        post: {
          summary: 'MCP server (Streamable HTTP, stateless)',
          description:
            'The job API as Model Context Protocol tools (run_job, get_job, list_jobs, cancel_job) for MCP clients; one JSON-RPC message (or batch) per POST, answered as JSON or an event stream. Same authentication, rate limit and ownership as /v1.',
          requestBody: { required: true, content: { 'application/json': { schema: { type: 'object' } } } },
          responses: {
            ...common,
            '200': { description: 'The JSON-RPC answer, as application/json or text/event-stream.' },
            '202': { description: 'A notification or response was accepted.' },
          },
        },
        get: { summary: 'No standalone event stream: the server keeps no sessions', responses: { ...common, '405': problemResponse('Use POST.') } },
        delete: { summary: 'No session to end: the server keeps no sessions', responses: { ...common, '405': problemResponse('Use POST.') } },
      },
      '/v1/jobs': {
        post: {
          summary: 'Submit a job',
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              description: 'Same key and body from the same caller returns the first job (200); same key, other body: 409.',
              schema: { type: 'string', minLength: 1, maxLength: 255 },
            },
          ],
          description:
            'Send the job as JSON, or as `multipart/form-data` to give it input files: a `job` part holding the same JSON, then up to JOB_INPUT_MAX_FILES file parts (JOB_INPUT_MAX_MB in all). Each file appears read-only at `/input/<filename>` in the job\'s sandbox and is listed in the job\'s `inputs`. A file name is one plain path component (no `/`, `\\`, control characters or leading dot, at most 255 bytes); a bad one is refused, never rewritten. Input files count against the caller\'s ARTIFACT_QUOTA_MB_PER_CALLER.',
          requestBody: {
            required: true,
            content: {
              'application/json': { schema: { $ref: '#/components/schemas/JobRequest' } },
              'multipart/form-data': {
                schema: {
                  type: 'object',
                  required: ['job'],
                  properties: {
                    job: { $ref: '#/components/schemas/JobRequest' },
                    files: { type: 'array', items: { type: 'string', contentMediaType: 'application/octet-stream' }, description: 'Any number of file parts, under any field name; each is named by its filename.' },
                  },
                },
                encoding: { job: { contentType: 'application/json' } },
              },
            },
          },
          responses: {
            '202': { description: 'Queued.', headers: { Location: { schema: { type: 'string' } } }, content: { 'application/json': { schema: { $ref: '#/components/schemas/Job' } } } },
            '200': { description: 'The job an earlier request with this Idempotency-Key created.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Job' } } } },
            ...common,
            ...foreignOrigin,
            '400': problemResponse(
              'Invalid request (`errors` names each field): a bad job, a bad file name, no `job` part, a truncated multipart body; a `webhook.url` that may not be used (`webhook_url_not_allowed`: not public http(s)), or any `webhook` while webhooks are off (`webhooks_disabled`).',
            ),
            '409': problemResponse('Idempotency-Key reused with another body, or its job has expired.'),
            '413': problemResponse(
              'Body too large: the JSON over BODY_LIMIT_KB, more than JOB_INPUT_MAX_FILES files (`too_many_files`), files over JOB_INPUT_MAX_MB (`inputs_too_large`), or files that would pass the caller\'s storage quota (`storage_quota_exceeded`).',
            ),
            '415': problemResponse('Neither application/json nor multipart/form-data.'),
            '429': problemResponse(
              'The caller has CALLER_MAX_ACTIVE_JOBS jobs queued or running (`too_many_active_jobs`), the rate limit is exceeded, or too many authentications failed; see Retry-After.',
            ),
            '503': problemResponse(
              'Redis or the queue is unavailable, or Redis is past REDIS_NEARLY_FULL_PERCENT of its maxmemory (`redis_nearly_full`: reads go on; see Retry-After).',
            ),
          },
        },
        get: {
          summary: "List the caller's jobs, newest first",
          parameters: Object.entries(query.properties).map(([name, s]) => ({ name, in: 'query', required: false, schema: s })),
          responses: {
            '200': { description: 'A page of jobs (without steps).', content: { 'application/json': { schema: { $ref: '#/components/schemas/JobList' } } } },
            ...common,
            '400': problemResponse('Invalid query, or a missing or malformed Host header.'),
          },
        },
      },
      '/v1/jobs/{id}': {
        get: {
          summary: 'Get a job with its steps',
          parameters: [jobId],
          responses: {
            '200': { description: 'The job.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Job' } } } },
            '404': problemResponse("No such job (or another caller's)."),
            ...common,
          },
        },
        delete: {
          summary: 'Delete a job and everything it stored',
          description:
            'Cancels the job if it is queued or running, then removes its record, steps, events, checkpoint, input files and artifacts, and gives their bytes back to the caller\'s quota. A second DELETE is 404.',
          parameters: [jobId],
          responses: {
            '204': { description: 'Deleted.' },
            '404': problemResponse("No such job (or another caller's)."),
            ...common,
            ...foreignOrigin,
          },
        },
      },
      '/v1/jobs/{id}/cancel': {
        post: {
          summary: 'Cancel a job',
          description: 'A queued job is cancelled at once, a running one within a second; cancelled jobs are not retried.',
          parameters: [jobId],
          responses: {
            '202': { description: 'Cancellation under way or done.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Job' } } } },
            '404': problemResponse('No such job.'),
            '409': problemResponse('The job already succeeded or failed.'),
            ...common,
            ...foreignOrigin,
          },
        },
      },
      '/v1/jobs/{id}/events': {
        get: {
          summary: "Stream the job's events (Server-Sent Events)",
          description:
            'Events `status`, `step` and `output`, each with an id; send `Last-Event-ID` to resume after it. An `output` event is what a running `code_executor` call printed, `{"step", "stream": "stdout" | "stderr", "text"}`: sent at least every 100 ms while the code prints, in order, all before the event of that step (`step` is its index), and only what the step keeps (each stream at most the per-stream output limit). Heartbeat comments keep the connection open; the stream ends after the terminal status.',
          parameters: [jobId, { name: 'Last-Event-ID', in: 'header', required: false, schema: { type: 'string', pattern: '^\\d+-\\d+$' } }],
          responses: {
            '200': { description: 'An event stream.', content: { 'text/event-stream': { schema: { type: 'string' } } } },
            '404': problemResponse('No such job.'),
            ...common,
            '400': problemResponse('Malformed Last-Event-ID, or a missing or malformed Host header.'),
            '429': problemResponse(
              'The caller has CALLER_MAX_EVENT_STREAMS streams open (`too_many_streams`), the rate limit is exceeded, or too many authentications failed; see Retry-After.',
            ),
            '503': problemResponse('Redis is unreachable, or this API process has too many streams open.'),
          },
        },
      },
      '/v1/jobs/{id}/artifacts/{name}': {
        get: {
          summary: 'Download a file the job produced',
          ...download('artifact'),
          parameters: [
            jobId,
            { name: 'name', in: 'path', required: true, description: 'As listed in the job\'s `artifacts` (it may hold `/`).', schema: { type: 'string' } },
            ...download('artifact').parameters,
          ],
        },
      },
      '/v1/jobs/{id}/inputs/{name}': {
        get: {
          summary: 'Download a file given with the job',
          ...download('input file'),
          parameters: [
            jobId,
            { name: 'name', in: 'path', required: true, description: 'As listed in the job\'s `inputs`.', schema: { type: 'string' } },
            ...download('input file').parameters,
          ],
        },
      },
    },
  };
}

const escape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * A description's markup as HTML: escaped first, so nothing in the text becomes markup of its own;
 * then `code` spans become <code> (their text taken literally) and **bold** spans <strong>, neither
 * across lines.
 */
export const renderInline = (s: string): string =>
  escape(s).replace(/`([^`\n]+)`|\*\*([^*\n]+)\*\*/g, (_span, code: string | undefined, bold: string | undefined) =>
    code !== undefined ? `<code>${code}</code>` : `<strong>${(bold as string).replace(/`([^`]+)`/g, '<code>$1</code>')}</strong>`,
  );

/** A plain HTML rendering of the document: no scripts, so the strict default CSP holds. */
export function renderDocsPage(doc: Record<string, unknown>): string {
  const paths = doc.paths as Record<string, Record<string, { summary?: string; description?: string; parameters?: { name: string; in: string }[]; responses: Record<string, { description: string }> }>>;
  const sections = Object.entries(paths)
    .flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => {
        const params = (op.parameters ?? []).map((p) => `<code>${escape(p.name)}</code> (${escape(p.in)})`).join(', ');
        const responses = Object.entries(op.responses)
          .map(([code, r]) => `<li><code>${escape(code)}</code> ${renderInline(r.description)}</li>`)
          .join('');
        return `<section><h2><code>${method.toUpperCase()} ${escape(path)}</code></h2><p>${renderInline(op.summary ?? '')}</p>${
          op.description ? `<p>${renderInline(op.description)}</p>` : ''
        }${params ? `<p>Parameters: ${params}</p>` : ''}<ul>${responses}</ul></section>`;
      }),
    )
    .join('\n');
  const request = JSON.stringify((doc.components as { schemas: Record<string, unknown> }).schemas.JobRequest, null, 2);
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Maestro API</title></head><body>
<h1>Maestro API v1</h1><p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). Errors are <code>application/problem+json</code>.</p>
${sections}
<h2>Job request schema</h2><pre>${escape(request)}</pre></body></html>`;
}
