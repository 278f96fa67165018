import type { z } from 'zod';
import type { Logger } from '../../../shared/src/logger';
import type { Artifact, OnOutput, SandboxSession } from '../sandbox/types';

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
  /** The index the step recording this call will have: what its artifacts name as theirs. */
  stepIndex: number;
  /** Where code_executor keeps the files an execution hands back. */
  artifacts: ArtifactSink;
  /** Takes code_executor's output while the code runs (the job's `output` events); it must not throw nor wait. */
  onOutput?: OnOutput;
}

/** Keeps a job's artifacts: what it can of them, within the job's and its caller's quotas. */
export interface ArtifactSink {
  /** Saves an execution's files as artifacts of step `step`; says why each one it did not keep was refused. */
  save(artifacts: readonly Artifact[], step: number): Promise<{ saved: Artifact[]; skipped: { name: string; reason: string }[] }>;
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
