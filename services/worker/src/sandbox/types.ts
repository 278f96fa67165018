/** Shapes shared by the sandbox parts and the code_executor tool. */

export type SandboxRuntime = 'runc' | 'runsc';

export interface SandboxSettings {
  /** Image that holds python3 and the runner (sandbox-image/). */
  image: string;
  runtime: SandboxRuntime;
  /** Per-execution time limit; the container is killed past it. */
  timeoutMs: number;
  memoryMb: number;
  cpus: number;
  pids: number;
  /** Containers kept created, started and attached, waiting for a job. 0 disables the pool. */
  poolSize: number;
  /** Absolute host paths, bind-mounted read-only at the same paths. */
  allowedDirs: string[];
  /**
   * Mount points below the allowed dirs, bound again read-only at the same paths: the recursive bind
   * of an allowed dir brings them along writable on engines whose read-only is not recursive.
   */
  readOnlySubmounts: string[];
  /** Cap per stream (stdout, stderr) of what one execution returns. */
  outputLimitBytes: number;
  /**
   * Bytes of files one execution may hand back from the output dir, all files together (a whole
   * number >= 0); one file is capped at the smaller of this and 10 MiB (MAX_ARTIFACT_FILE_BYTES).
   */
  artifactBytesPerExecution: number;
  /** How many files one execution may hand back (a whole number >= 0). */
  artifactFilesPerExecution: number;
  /** Size of the /tmp tmpfs and of the output-dir tmpfs. */
  tmpSizeMb: number;
  /** Identifies this worker process on the labels of every container it creates. */
  workerId: string;
  /** Identifies the deployment (all workers sharing one Redis and prefix) on those labels. */
  deploymentId: string;
}

/** A file the code left in the output dir, handed back by the runner after an execution. */
export interface Artifact {
  /** Path relative to the output dir, `/`-separated, never absolute, never with `..`. */
  name: string;
  size: number;
  contentType: string;
  data: Buffer;
}

export interface ExecResult {
  /** Captured at the file-descriptor level (subprocesses included), capped at outputLimitBytes. */
  stdout: string;
  stderr: string;
  /** 0 on success, 1 when the cell raised, -1 when it was killed (timeout, cancel, crash). */
  exitCode: number;
  /** The formatted traceback when the cell raised. */
  error?: string;
  timedOut: boolean;
  truncated: { stdout: boolean; stderr: boolean };
  /** True when this execution ran in a fresh interpreter after an earlier one was lost (killed or crashed). */
  reset: boolean;
  /** New or changed files in the output dir after this execution. */
  artifacts: Artifact[];
  /**
   * Artifacts the runner saw but refused, with the reason: a refusal for the per-execution quota starts
   * with `quota` ("quota: over the 25 MiB this execution may save"); others name what the file is
   * ("symbolic link", "larger than the 10 MiB one file may be").
   */
  skippedArtifacts: { name: string; reason: string }[];
  /** Background processes the execution left running, stopped when it ended. */
  stoppedProcesses: number;
  durationMs: number;
}

export type OutputStream = 'stdout' | 'stderr';

/**
 * Takes a running execution's output as it comes, in order: only what the captured output keeps, so
 * a stream's texts together are at most outputLimitBytes and are the start of its captured text.
 * Called from the sandbox's read path: it must not throw nor wait.
 */
export type OnOutput = (stream: OutputStream, text: string) => void;

export interface RunOptions {
  timeoutMs: number;
  signal: AbortSignal;
  /** Gets the execution's output while it runs, all of it before `run` resolves. */
  onOutput?: OnOutput;
}

/** The sandbox of one job: a lazily acquired container, replaced after a kill, removed at close. */
export interface SandboxSession {
  run(code: string, opts: RunOptions): Promise<ExecResult>;
  /** Removes the job's container, whatever state it is in. Idempotent. */
  close(): Promise<void>;
}
