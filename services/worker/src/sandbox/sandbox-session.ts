import { performance } from 'node:perf_hooks';
import { SandboxError } from '../../../shared/src/errors';
import type { Logger } from '../../../shared/src/logger';
import type { SandboxContainer } from './sandbox-container';
import type { ExecResult, OnOutput, RunOptions, SandboxSession } from './types';

/**
 * The sandbox of one job. The container is acquired on the first run and kept, so the interpreter's
 * state carries over; once it is lost (timeout, cancel, crash) it is removed and the next run gets a
 * fresh one and says so with `reset: true`.
 */
export class JobSandboxSession implements SandboxSession {
  private container: SandboxContainer | undefined;
  private lostOne = false;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly removals: Promise<void>[] = [];
  // Runs are serialised: one interpreter answers one cell at a time.
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly opts: {
      /** A container for the job; it is this session's to release once it resolves, whatever happened meanwhile. */
      acquire: () => Promise<SandboxContainer>;
      release: (container: SandboxContainer) => Promise<void>;
      logger: Logger;
    },
  ) {}

  run(code: string, opts: RunOptions): Promise<ExecResult> {
    const result = this.queue.then(() => this.runNow(code, opts));
    this.queue = result.catch(() => undefined);
    return result;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      const container = this.container;
      this.container = undefined;
      if (container) await this.opts.release(container);
      await Promise.all(this.removals);
    })();
    return this.closing;
  }

  private async runNow(code: string, opts: RunOptions): Promise<ExecResult> {
    opts.signal.throwIfAborted();
    if (this.closed) throw new SandboxError('the sandbox session is closed', { retryable: false });
    const started = performance.now();
    let reset = false;
    if (!this.container) {
      const container = await this.acquire(opts.signal);
      if (this.closed) {
        await this.remove(container);
        throw new SandboxError('the sandbox session is closed', { retryable: false });
      }
      this.container = container;
      reset = this.lostOne;
      this.lostOne = false;
    }
    const container = this.container;
    let outcome;
    try {
      outcome = await container.execute(code, { ...opts, onOutput: opts.onOutput && this.guarded(opts.onOutput) });
    } catch (err) {
      this.drop(container);
      throw err;
    }
    if (!container.alive) this.drop(container);
    const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
    this.opts.logger.debug({ event: 'sandbox.executed', ms: durationMs, exitCode: outcome.exitCode, timedOut: outcome.timedOut, reset });
    return {
      ...outcome,
      reset,
      durationMs,
    };
  }

  /**
   * The listener runs on the container's read path, where a throw would count as the sandbox breaking
   * the protocol and kill the container: a listener's fault is logged instead (once per run).
   */
  private guarded(onOutput: OnOutput): OnOutput {
    let failed = false;
    return (stream, text) => {
      if (failed) return;
      try {
        onOutput(stream, text);
      } catch (err) {
        failed = true;
        this.opts.logger.warn({ event: 'sandbox.output_listener_failed', err: (err as Error).message });
      }
    };
  }

  private drop(container: SandboxContainer): void {
    if (this.container !== container) return;
    this.container = undefined;
    this.lostOne = true;
    void this.remove(container);
  }

  /**
   * A container, unless the signal aborts first: the run stops waiting then, while the launch goes
   * on and its container, once there, is removed as one of this session's (so close() waits for it).
   */
  private acquire(signal: AbortSignal): Promise<SandboxContainer> {
    const pending = this.opts.acquire();
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.removals.push(pending.then((container) => this.remove(container), () => undefined));
        reject(signal.reason ?? new DOMException('This operation was aborted', 'AbortError'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      pending.then(
        (container) => {
          signal.removeEventListener('abort', onAbort);
          if (!signal.aborted) resolve(container);
        },
        (err: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      );
    });
  }

  /** Removes a container in the background; the next run need not wait for it, but close() does. */
  private remove(container: SandboxContainer): Promise<void> {
    const removal = this.opts
      .release(container)
      .catch((err: unknown) => this.opts.logger.warn({ event: 'sandbox.remove_failed', err: (err as Error).message }));
    this.removals.push(removal);
    return removal;
  }
}
