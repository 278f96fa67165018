import type { z } from 'zod';
import type { Logger } from '../../../shared/src/logger';
import type { SandboxSession } from '../sandbox/types';

export interface ToolContext {
  jobId: string;
  signal: AbortSignal;
  logger: Logger;
  /** The job's sandbox; only code_executor uses it. */
  sandbox: SandboxSession;
  /** Real paths of the directories the file tools may read. */
  allowedDirs: string[];
  /** Per-execution time limit for code_executor, already capped by the job's deadline. */
  execTimeoutMs: number;
}

/** What a tool returns: the text the model sees, plus structured detail recorded on the step. */
export interface ToolOutcome {
  output: string;
  isError: boolean;
  detail?: Record<string, unknown>;
}

/** A tool: its contract (name, description, input schema) and how to run it. */
export interface Tool<I = unknown> {
  name: string;
  description: string;
  input: z.ZodType<I>;
  run(input: I, ctx: ToolContext): Promise<ToolOutcome>;
}

/**
 * A tool's failure that the model should see and can recover from (bad path, file too big…),
 * as opposed to an infrastructure fault, which propagates and may retry the job.
 */
export class ToolInputError extends Error {
  override readonly name = 'ToolInputError';
}
