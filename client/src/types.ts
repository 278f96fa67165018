/*
 * The API's shapes as the client sees them. Written by hand (the client imports nothing from the
 * server), and held to the server's OpenAPI document by test/unit/client-openapi.test.ts: each
 * interface below has a list of its field names beside it (`JOB_FIELDS`, …), the compiler checks that
 * the list names exactly the interface's keys, and the test checks that it names exactly the
 * schema's properties. A field renamed or added on one side only fails one of the two.
 */

export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
/** The statuses a job never leaves. */
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];
export const isTerminal = (status: JobStatus): boolean => TERMINAL_STATUSES.includes(status);

export const TOOL_NAMES = ['code_executor', 'list_files', 'read_file'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];
export const PROVIDERS = ['openai', 'anthropic'] as const;
export type Provider = (typeof PROVIDERS)[number];
export const STOP_REASONS = ['completed', 'max_steps', 'timeout', 'cancelled', 'error'] as const;
export type StopReason = (typeof STOP_REASONS)[number];

/** Every key of `T`, each named: a key missing from the list, or not in `T`, is a compile error. */
function fieldsOf<T>() {
  return <const K extends readonly (keyof T)[]>(
    keys: K & ([Exclude<keyof T, K[number]>] extends [never] ? unknown : { missing: Exclude<keyof T, K[number]> }),
  ): K => keys;
}

/** The keys of `T` that are not optional. */
type RequiredKeys<T> = { [K in keyof T]-?: Partial<Pick<T, K>> extends Pick<T, K> ? never : K }[keyof T];

/** Every required key of `T`, each named (as `fieldsOf`, for the keys that are not optional). */
function requiredOf<T>() {
  return <const K extends readonly RequiredKeys<T>[]>(
    keys: K & ([Exclude<RequiredKeys<T>, K[number]>] extends [never] ? unknown : { missing: Exclude<RequiredKeys<T>, K[number]> }),
  ): K => keys;
}

/** The body of `POST /v1/jobs` (or the `job` part of a multipart one). */
export interface JobRequest {
  /** 1–100,000 characters. */
  task: string;
  provider?: Provider;
  model?: string;
  /** A system prompt. */
  system?: string;
  /** Default: all of them. */
  tools?: ToolName[];
  /** Model calls at most (default 20). */
  maxSteps?: number;
  /** The job's deadline from its first start (default 600). */
  timeoutSeconds?: number;
  /** Up to 16 string → string pairs, returned as given. */
  metadata?: Record<string, string>;
  /** Where the job's end is POSTed, signed (when the API has webhooks on). */
  webhook?: WebhookTarget;
}
export const JOB_REQUEST_FIELDS = fieldsOf<JobRequest>()([
  'task',
  'provider',
  'model',
  'system',
  'tools',
  'maxSteps',
  'timeoutSeconds',
  'metadata',
  'webhook',
]);

/** What a request must hold: exactly what the API requires. */
export const JOB_REQUEST_REQUIRED = requiredOf<JobRequest>()(['task']);

export interface WebhookTarget {
  url: string;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
}

/** A file given with the job: read-only at `/input/<name>` in its sandbox. */
export interface InputInfo {
  name: string;
  size: number;
  contentType: string;
  /** Hex SHA-256 of the bytes (the download's ETag). */
  sha256: string;
}
export const INPUT_FIELDS = fieldsOf<InputInfo>()(['name', 'size', 'contentType', 'sha256']);

/** A file the job's code wrote under `/output`. */
export interface ArtifactInfo extends InputInfo {
  /** Index of the code_executor step that wrote it. */
  step: number;
}
export const ARTIFACT_FIELDS = fieldsOf<ArtifactInfo>()(['name', 'size', 'contentType', 'sha256', 'step']);

export interface ToolCall {
  /** The provider's id (`call_…`, `toolu_…`). */
  id: string;
  name: string;
  /** Raw JSON text, as the model sent it. */
  arguments: string;
}

export interface ModelStep {
  index: number;
  type: 'model';
  startedAt: string;
  durationMs: number;
  text: string;
  toolCalls: ToolCall[];
  usage: Usage;
  stopReason: string;
}
export const MODEL_STEP_FIELDS = fieldsOf<ModelStep>()(['index', 'type', 'startedAt', 'durationMs', 'text', 'toolCalls', 'usage', 'stopReason']);

/** The fields of a tool step the API documents; a step may carry more (see `ToolStep`). */
export interface ToolStepFields {
  index: number;
  type: 'tool';
  startedAt: string;
  durationMs: number;
  /** The `id` of the tool call it answers. */
  callId: string;
  name: string;
  /** The arguments, parsed when they were valid JSON. */
  input: unknown;
  /** Exactly the text the model was shown. */
  output: string;
  isError: boolean;
  exitCode?: number;
  timedOut?: boolean;
  truncated?: boolean;
}
export const TOOL_STEP_FIELDS = fieldsOf<ToolStepFields>()([
  'index',
  'type',
  'startedAt',
  'durationMs',
  'callId',
  'name',
  'input',
  'output',
  'isError',
  'exitCode',
  'timedOut',
  'truncated',
]);
/** A tool step: the documented fields, and whatever details its tool adds (`reset`, `artifacts`, …). */
export type ToolStep = ToolStepFields & { [detail: string]: unknown };

export type Step = ModelStep | ToolStep;

export interface JobError {
  /** Why it failed: `max_steps`, `timeout`, `provider_auth`, `worker_lost`, … */
  code: string;
  message: string;
}

/** One attempt to deliver the job's webhook. */
export interface WebhookDelivery {
  /** 1 for the first. */
  attempt: number;
  /** When the attempt started. */
  at: string;
  /** `job` for the job's own webhook, `deployment` for the deployment's WEBHOOK_URL. */
  target: 'job' | 'deployment';
  /** The receiver's answer; only a 2xx is a delivery. */
  statusCode: number | null;
  error: string | null;
  durationMs: number;
  /** Whether another attempt follows. */
  willRetry: boolean;
}
export const WEBHOOK_DELIVERY_FIELDS = fieldsOf<WebhookDelivery>()(['attempt', 'at', 'target', 'statusCode', 'error', 'durationMs', 'willRetry']);

/** A job as `GET /v1/jobs` lists it: everything but its steps. */
export interface JobSummary {
  id: string;
  status: JobStatus;
  task: string;
  provider: string;
  model: string;
  system?: string;
  tools: ToolName[];
  maxSteps: number;
  timeoutSeconds: number;
  metadata: Record<string, string>;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  attempts: number;
  stopReason: StopReason | null;
  result: { output: string } | null;
  error: JobError | null;
  usage: Usage;
  inputs: InputInfo[];
  artifacts: ArtifactInfo[];
  /** The job's own webhook, or null (absent from an API without webhooks). */
  webhook?: WebhookTarget | null;
  /** The webhook's delivery attempts, oldest first; empty until the job has ended. */
  webhookDeliveries?: WebhookDelivery[];
}
export const JOB_SUMMARY_FIELDS = fieldsOf<JobSummary>()([
  'id',
  'status',
  'task',
  'provider',
  'model',
  'system',
  'tools',
  'maxSteps',
  'timeoutSeconds',
  'metadata',
  'createdAt',
  'startedAt',
  'finishedAt',
  'attempts',
  'stopReason',
  'result',
  'error',
  'usage',
  'inputs',
  'artifacts',
  'webhook',
  'webhookDeliveries',
]);

/** A job as `GET /v1/jobs/{id}` shows it. */
export interface Job extends JobSummary {
  steps: Step[];
}
export const JOB_FIELDS = fieldsOf<Job>()([...JOB_SUMMARY_FIELDS, 'steps']);
/** What the client counts on finding in every job: each must be required by the API's schema. */
export const JOB_REQUIRED = requiredOf<Job>()([
  'id',
  'status',
  'task',
  'provider',
  'model',
  'tools',
  'maxSteps',
  'timeoutSeconds',
  'metadata',
  'createdAt',
  'startedAt',
  'finishedAt',
  'attempts',
  'stopReason',
  'result',
  'error',
  'usage',
  'inputs',
  'artifacts',
  'steps',
]);

/** A page of `GET /v1/jobs`. */
export interface JobList {
  jobs: JobSummary[];
  /** Pass back as `cursor` for the next page; null on the last. */
  nextCursor: string | null;
}
export const JOB_LIST_FIELDS = fieldsOf<JobList>()(['jobs', 'nextCursor']);

export interface FieldError {
  field: string;
  message: string;
}

/** An RFC 9457 problem document, as every error answer carries. */
export interface Problem {
  /** `urn:maestro:problem:<code>`. */
  type: string;
  title: string;
  status: number;
  detail: string;
  errors?: FieldError[];
  /** For a 500: quote it when reporting the failure. */
  errorId?: string;
}
export const PROBLEM_FIELDS = fieldsOf<Problem>()(['type', 'title', 'status', 'detail', 'errors', 'errorId']);

/** The data of a `status` event. */
export interface StatusEventData {
  status: JobStatus;
  /** On the terminal status. */
  stopReason?: StopReason | null;
  error?: JobError | null;
  /** On a `queued` status that puts the job back in the queue for another attempt: why. */
  retry?: JobError;
}

/** The data of an `output` event: what running code printed since the previous one. */
export interface OutputEventData {
  /** The index the code_executor call's step will have. */
  step: number;
  stream: 'stdout' | 'stderr';
  text: string;
}

/** An event of `GET /v1/jobs/{id}/events`, with its id (what `Last-Event-ID` resumes after). */
export type JobEvent =
  | { id: string; type: 'status'; data: StatusEventData }
  | { id: string; type: 'step'; data: Step }
  | { id: string; type: 'output'; data: OutputEventData };
export const JOB_EVENT_TYPES = ['status', 'step', 'output'] as const satisfies readonly JobEvent['type'][];
