import { PassThrough } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type Dockerode from 'dockerode';
import { SandboxError } from '../../../shared/src/errors';
import type { Logger } from '../../../shared/src/logger';
import { artifactLimits, buildContainerSpec, type ArtifactLimits, type SandboxContainerLabels, type SandboxContainerMounts } from './container-spec';
import { LineReader } from './line-reader';
import { CellAnswer, MAX_LINE_BYTES, parseLine, ProtocolViolation, type CellOutcome } from './runner-protocol';
import type { OnOutput, SandboxSettings } from './types';
import { sandboxKills } from '../worker-metrics';

const STDERR_TAIL_BYTES = 4096;
const DEFAULT_READY_TIMEOUT_MS = 30_000;

/** Why a container can no longer serve: its interpreter state is gone. */
export type LossReason = 'timeout' | 'cancelled' | 'crashed' | 'protocol' | 'removed';

/** Takes each protocol message of the answer awaited; returns the answer once complete, throws ProtocolViolation. */
type Accept<T> = (msg: Record<string, unknown>) => T | undefined;
type Waiter = { onMessage: (msg: Record<string, unknown>) => void; fail: (reason: LossReason, detail: string) => void };

function engineStatus(err: unknown): number | undefined {
  const status = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * One started container running the runner, attached over a hijacked stream. Serves one job at most;
 * after a kill or a crash it is dead and only `remove()` remains.
 */
export class SandboxContainer {
  private readonly reader: LineReader;
  private waiter: Waiter | undefined;
  private lost: LossReason | undefined;
  private lostDetail = '';
  /** Set when the engine reported the out-of-memory kill itself: nothing left to ask it. */
  private outOfMemoryReported = false;
  private stderrTail = '';
  private seq = 0;
  private removal: Promise<void> | undefined;
  private killing: Promise<void> | undefined;
  private onLost: (() => void) | undefined;
  private readonly artifactLimits: ArtifactLimits;

  private constructor(
    private readonly container: Dockerode.Container,
    private readonly stream: NodeJS.ReadWriteStream,
    private readonly docker: Dockerode,
    private readonly settings: SandboxSettings,
    private readonly logger: Logger,
  ) {
    this.artifactLimits = artifactLimits(settings);
    this.reader = new LineReader(
      MAX_LINE_BYTES,
      (line) => this.onLine(line),
      () => this.markLost('protocol', 'the sandbox wrote an oversized protocol line'),
    );
    const stderr = new PassThrough();
    stderr.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    });
    docker.modem.demuxStream(stream, this.reader, stderr);
    const onGone = (): void => this.markLost('crashed', 'the interpreter exited');
    stream.on('end', onGone);
    stream.on('close', onGone);
    stream.on('error', onGone);
  }

  get id(): string {
    return this.container.id;
  }

  /** False once the interpreter is gone (killed, crashed, removed). */
  get alive(): boolean {
    return this.lost === undefined;
  }

  /** Calls `listener` once when the interpreter is gone (at once if it is gone already). */
  whenLost(listener: () => void): void {
    if (this.lost) listener();
    else this.onLost = listener;
  }

  /**
   * Creates, attaches (before start, so no output is lost), starts and waits for the ready line.
   * `mounts` adds what only this container mounts (a job's inputs).
   */
  static async launch(opts: {
    docker: Dockerode;
    settings: SandboxSettings;
    labels: SandboxContainerLabels;
    mounts?: SandboxContainerMounts;
    logger: Logger;
    readyTimeoutMs?: number;
  }): Promise<SandboxContainer> {
    const { docker, settings, logger } = opts;
    let container: Dockerode.Container;
    try {
      container = await docker.createContainer(buildContainerSpec(settings, opts.labels, opts.mounts));
    } catch (err) {
      if (err instanceof SandboxError) throw err;
      const inputs = opts.mounts?.inputsHostDir;
      if (inputs !== undefined && engineStatus(err) === 400 && /bind source path does not exist/.test((err as Error).message)) {
        throw new SandboxError(`the job's inputs dir ${inputs} does not exist on the Docker host`, { retryable: false, cause: err });
      }
      throw new SandboxError('could not create a sandbox container', { cause: err });
    }
    let sandbox: SandboxContainer | undefined;
    try {
      const stream = await container.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true });
      sandbox = new SandboxContainer(container, stream, docker, settings, logger);
      const ready = sandbox.waitFor(opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS, undefined, (msg) => {
        if (msg.ready !== true) throw new ProtocolViolation('the sandbox runner did not report ready');
        return true;
      });
      await container.start();
      await ready;
      return sandbox;
    } catch (err) {
      logger.warn({ event: 'sandbox.start_failed', containerId: container.id, err: (err as Error).message, stderr: sandbox?.stderrTail });
      await (sandbox ? sandbox.remove() : container.remove({ force: true, v: true })).catch(() => undefined);
      if (err instanceof SandboxError) throw err;
      throw new SandboxError('could not start a sandbox container', { cause: err });
    }
  }

  /**
   * Runs one cell and receives the files it handed back. Resolves with the runner's answer, or with
   * exitCode -1 when the container had to be killed (timeout, broken protocol, crash). Rejects with
   * the signal's reason when aborted, at once: the kill and removal go on in the background.
   * `onOutput` gets the cell's output while it runs, all of it before this resolves.
   */
  async execute(code: string, opts: { timeoutMs: number; signal: AbortSignal; onOutput?: OnOutput }): Promise<CellOutcome> {
    opts.signal.throwIfAborted();
    if (this.lost) return this.lostOutcome(false);
    if (this.waiter) throw new SandboxError('the sandbox is already running a cell', { retryable: false });
    const id = ++this.seq;
    const answer = new CellAnswer(id, this.settings.outputLimitBytes, this.artifactLimits, opts.onOutput);
    const done = this.waitFor(opts.timeoutMs, opts.signal, (msg) => answer.accept(msg));
    this.stream.write(`${JSON.stringify({ id, code, limit: this.settings.outputLimitBytes })}\n`);
    try {
      return await done;
    } catch (err) {
      if (!(err instanceof LostError)) throw err;
      // Report only once the engine confirms the kill, so no code of this cell runs on afterwards.
      if (err.reason === 'timeout' || err.reason === 'protocol') await this.kill(err.reason);
      return this.lostOutcome(err.reason === 'timeout');
    }
  }

  /**
   * The engine reported an out-of-memory kill in this container. Under gVisor the kernel's OOM killer
   * may take one of gVisor's own processes rather than the interpreter, leaving a container that
   * neither answers nor exits: so the cell ends now, as out of memory, instead of at its time limit.
   */
  outOfMemory(): void {
    this.outOfMemoryReported = true;
    this.markLost('crashed', 'the interpreter was killed: out of memory');
    void this.kill('crashed').catch((err: unknown) => this.logger.error({ event: 'sandbox.kill_failed', err }));
  }

  /** Kills the container through the Engine API (closing the attach stream would not stop it). Idempotent. */
  kill(reason: LossReason): Promise<void> {
    this.markLost(reason, `the sandbox was killed (${reason})`);
    this.killing ??= (async () => {
      const started = performance.now();
      try {
        await this.container.kill({ signal: 'SIGKILL' });
      } catch (err) {
        // 404: already removed; 409: not running. Either way it no longer runs code.
        const status = engineStatus(err);
        if (status !== 404 && status !== 409) throw new SandboxError('could not kill a sandbox container', { cause: err });
      }
      sandboxKills.inc({ reason });
      this.logger.info({ event: 'sandbox.killed', reason, ms: Math.round(performance.now() - started), containerId: this.id });
    })();
    return this.killing;
  }

  /** Force-removes the container and its output volume, whatever its state. Idempotent. */
  remove(): Promise<void> {
    this.markLost('removed', 'the sandbox was removed');
    this.removal ??= (async () => {
      // A kill under way finishes first: a removal racing it was seen to stall the engine under gVisor.
      await this.killing?.catch(() => undefined);
      this.stream.removeAllListeners('data');
      (this.stream as NodeJS.ReadWriteStream & { destroy?: () => void }).destroy?.();
      try {
        await this.container.remove({ force: true, v: true });
      } catch (err) {
        const status = engineStatus(err);
        // 404: gone already; 409: another removal is in progress.
        if (status !== 404 && status !== 409) {
          this.removal = undefined;
          throw new SandboxError('could not remove a sandbox container', { cause: err });
        }
      }
      this.logger.debug({ event: 'sandbox.removed', containerId: this.id });
    })();
    return this.removal;
  }

  private waitFor<T>(timeoutMs: number, signal: AbortSignal | undefined, accept: Accept<T>): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        void this.kill('timeout').catch((err: unknown) => this.logger.error({ event: 'sandbox.kill_failed', err }));
        reject(new LostError('timeout'));
      }, timeoutMs);
      const onAbort = (): void => {
        cleanup();
        // A cancelled job must not wait for the engine: kill and remove in the background.
        void this.kill('cancelled')
          .then(() => this.remove())
          .catch((err: unknown) => this.logger.error({ event: 'sandbox.kill_failed', err }));
        reject(abortReason(signal as AbortSignal));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiter = undefined;
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiter = {
        onMessage: (msg) => {
          const value = accept(msg);
          if (value === undefined) return;
          cleanup();
          resolve(value);
        },
        fail: (reason, detail) => {
          cleanup();
          reject(new LostError(reason, detail));
        },
      };
    });
  }

  private onLine(line: string): void {
    if (this.lost) return;
    try {
      if (!this.waiter) throw new ProtocolViolation('the sandbox wrote while no cell was running');
      this.waiter.onMessage(parseLine(line));
    } catch (err) {
      this.markLost('protocol', err instanceof ProtocolViolation ? err.message : 'the sandbox broke the protocol');
    }
  }

  private markLost(reason: LossReason, detail: string): void {
    if (this.lost) return;
    this.lost = reason;
    this.lostDetail = detail;
    this.onLost?.();
    if (reason === 'protocol') {
      void this.kill('protocol').catch((err: unknown) => this.logger.error({ event: 'sandbox.kill_failed', err }));
    }
    this.waiter?.fail(reason, detail);
  }

  private async lostOutcome(timedOut: boolean): Promise<CellOutcome> {
    let detail = timedOut ? 'the execution timed out and the interpreter was killed' : this.lostDetail;
    // The engine, busy killing a fork bomb, can take seconds to answer an inspect: skip it when the oom
    // event already said why.
    if (this.lost === 'crashed' && !this.outOfMemoryReported) {
      // Only on this rare path is the engine asked why, to tell an out-of-memory kill apart.
      const state = await this.container.inspect().then(
        (info) => info.State,
        () => undefined,
      );
      if (state?.OOMKilled) detail = 'the interpreter was killed: out of memory';
      else if (state && !state.Running) detail = `the interpreter exited with status ${state.ExitCode}`;
      if (this.stderrTail.trim()) detail += `\n${this.stderrTail.trim()}`;
    }
    return {
      stdout: '',
      stderr: '',
      exitCode: -1,
      error: `${detail}; its state (variables, imports) is lost`,
      timedOut,
      truncated: { stdout: false, stderr: false },
      artifacts: [],
      skippedArtifacts: [],
      stoppedProcesses: 0,
    };
  }
}

/** Internal: the container stopped serving while a caller waited. */
class LostError extends Error {
  override readonly name = 'LostError';
  constructor(
    readonly reason: LossReason,
    detail: string = reason,
  ) {
    super(detail);
  }
}
