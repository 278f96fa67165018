import { z } from 'zod';
import { WEBHOOK_URL_MAX_CHARS, webhookUrlShapeProblem } from './webhooks';

export const TOOL_NAMES = ['code_executor', 'list_files', 'read_file'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];
export const PROVIDERS = ['openai', 'anthropic'] as const;
export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];
export type StopReason = 'completed' | 'max_steps' | 'timeout' | 'cancelled' | 'error';

export const LIMITS = {
  taskChars: 100_000,
  systemChars: 50_000,
  metadataKeys: 16,
  metadataKeyChars: 64,
  metadataValueChars: 1024,
} as const;

/** The body of `POST /v1/jobs`. Limits that operators tune come in as arguments. */
export function createJobRequestSchema(limits: { maxSteps: number; maxTimeoutSeconds: number }) {
  return z.strictObject({
    task: z.string().trim().min(1, 'must not be empty').max(LIMITS.taskChars),
    provider: z.enum(PROVIDERS).optional(),
    model: z
      .string()
      .min(1)
      .max(200)
      .regex(/^[\w.:/@-]+$/, 'may contain only letters, digits and . _ : / @ -')
      .optional(),
    system: z.string().max(LIMITS.systemChars).optional(),
    tools: z
      .array(z.enum(TOOL_NAMES))
      .max(TOOL_NAMES.length)
      .refine((t) => new Set(t).size === t.length, 'must not repeat a tool')
      .optional(),
    maxSteps: z.number().int().min(1).max(limits.maxSteps).default(Math.min(20, limits.maxSteps)),
    timeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(limits.maxTimeoutSeconds)
      .default(Math.min(600, limits.maxTimeoutSeconds)),
    metadata: z
      .record(
        z.string().min(1).max(LIMITS.metadataKeyChars),
        z.string().max(LIMITS.metadataValueChars),
      )
      .refine((m) => Object.keys(m).length <= LIMITS.metadataKeys, `at most ${LIMITS.metadataKeys} keys`)
      .optional(),
    /** Where the job's end is POSTed, signed (README, "Webhooks"); where it may point is checked by the API too. */
    webhook: z
      .strictObject({
        url: z
          .string()
          .max(WEBHOOK_URL_MAX_CHARS)
          .superRefine((url, ctx) => {
            const problem = webhookUrlShapeProblem(url);
            if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
          }),
      })
      .describe('where the job\'s end is POSTed, signed (Standard Webhooks): a public http(s) URL; needs WEBHOOKS_ENABLED')
      .optional(),
  });
}

export type JobRequest = z.output<ReturnType<typeof createJobRequestSchema>>;

/** What the worker needs to run a job: the request with every default resolved, and its owner. */
export interface JobSpec {
  task: string;
  provider: (typeof PROVIDERS)[number];
  model: string;
  system?: string;
  tools: ToolName[];
  maxSteps: number;
  timeoutSeconds: number;
  metadata: Record<string, string>;
  /** Files given with the job, read-only at /input/<name> in its sandbox. */
  inputs: InputInfo[];
  /** Where the job's end is POSTed, besides nothing: the deployment's WEBHOOK_URL gets jobs that name none. */
  webhook?: { url: string };
  caller: string;
}

/** A file given with the job (multipart POST), stored in the artifact store. */
export interface InputInfo {
  name: string;
  size: number;
  contentType: string;
  /** Hex SHA-256 of the bytes. */
  sha256: string;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
}

/** What every step has: its place in the job and its timing. */
interface StepBase {
  index: number;
  startedAt: string;
  durationMs: number;
}

export interface ModelStep extends StepBase {
  type: 'model';
  text: string;
  toolCalls: { id: string; name: string; arguments: string }[];
  usage: Usage;
  stopReason: string;
}

export interface ToolStep extends StepBase {
  type: 'tool';
  callId: string;
  name: string;
  /** The arguments as parsed JSON when they parsed, else the raw text. */
  input: unknown;
  output: string;
  isError: boolean;
  [detail: string]: unknown;
}

export type Step = ModelStep | ToolStep;

export interface ArtifactInfo {
  name: string;
  size: number;
  contentType: string;
  /** Hex SHA-256 of the bytes: the download's ETag, and what a client checks it against. */
  sha256: string;
  /** Index of the tool step (the code_executor call) that produced it. */
  step: number;
}

/** One attempt to deliver a finished job's webhook. */
export interface WebhookDelivery {
  /** 1 for the first attempt. */
  attempt: number;
  /** When the attempt started. */
  at: string;
  /** `job` for the job's own webhook, `deployment` for the deployment's WEBHOOK_URL (not shown). */
  target: 'job' | 'deployment';
  /** The receiver's HTTP status, when it answered; 2xx is success, anything else (a redirect too) a failure. */
  statusCode: number | null;
  /** Why the attempt failed, when it did. */
  error: string | null;
  durationMs: number;
  /** Whether another attempt follows (a failure with attempts left). */
  willRetry: boolean;
}

/** A job as the API shows it: its request as resolved (the owner is not shown), then its state. */
export interface JobView extends Omit<JobSpec, 'caller' | 'webhook'> {
  /** The job's own webhook, or null. */
  webhook: { url: string } | null;
  /** Its webhook's delivery attempts, oldest first (the last 20); empty until the job has ended. */
  webhookDeliveries: WebhookDelivery[];
  id: string;
  status: JobStatus;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  attempts: number;
  stopReason: StopReason | null;
  result: { output: string } | null;
  error: { code: string; message: string } | null;
  usage: Usage;
  steps: Step[];
  artifacts: ArtifactInfo[];
}
