import type { Logger } from '../../../shared/src/logger';
import { SandboxError } from '../../../shared/src/errors';
import type { SandboxContainer } from './sandbox-container';

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;
/**
 * How long a take waits before it starts the refill. Creating and starting a container takes the
 * engine a few hundred milliseconds of CPU, and the taker's first cell, a few milliseconds, would
 * share the machine with it; so the refill steps aside for that long. Measured on 2 cores: about
 * 1 ms off a job's first call (npm run bench:sandbox).
 */
const REFILL_DELAY_MS = 50;

/**
 * Keeps `size` containers created, started, attached and ready (their runner has said so), so that
 * a job's first execution costs one round trip instead of a container start. `take()` hands one out
 * without calling the engine; each container leaves the pool exactly once, so none serves two jobs.
 */
export class SandboxPool {
  private readonly ready: SandboxContainer[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;
  private failures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private refillTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly opts: {
      size: number;
      /** Launches one pool container (labelled with an empty job). */
      launch: () => Promise<SandboxContainer>;
      logger: Logger;
    },
  ) {}

  /** Containers ready to hand out right now. */
  get available(): number {
    return this.ready.length;
  }

  /** Fills the pool and resolves when every slot has been tried once (failures are logged, not thrown). */
  async fill(): Promise<void> {
    this.refill();
    await Promise.all([...this.inFlight]);
  }

  /**
   * A ready container if one is waiting (no engine call on this path), else one from `launch`
   * (by default a pool launch); starts a refill either way, after REFILL_DELAY_MS when it handed
   * out a waiting one.
   */
  async take(launch: () => Promise<SandboxContainer> = this.opts.launch): Promise<SandboxContainer> {
    if (this.closed) throw new SandboxError('the sandbox pool is closed', { retryable: false });
    let container: SandboxContainer | undefined;
    while ((container = this.ready.shift())) {
      if (container.alive) break;
      // It died while waiting (engine restart, reaper): drop it and try the next.
      void container.remove().catch(() => undefined);
    }
    if (!container) {
      this.refill();
      return launch();
    }
    this.refillTimer ??= setTimeout(() => {
      this.refillTimer = undefined;
      this.refill();
    }, REFILL_DELAY_MS);
    this.refillTimer.unref();
    return container;
  }

  /** Removes every container still in the pool and stops refilling. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      clearTimeout(this.retryTimer);
      clearTimeout(this.refillTimer);
      await Promise.allSettled([...this.inFlight]);
      const left = this.ready.splice(0);
      await Promise.allSettled(left.map((c) => c.remove()));
    })();
    return this.closing;
  }

  private discard(container: SandboxContainer): void {
    const at = this.ready.indexOf(container);
    if (at === -1) return;
    this.ready.splice(at, 1);
    void container.remove().catch(() => undefined);
    this.refill();
  }

  private refill(): void {
    if (this.closed || this.retryTimer) return;
    while (this.ready.length + this.inFlight.size < this.opts.size) {
      const attempt: Promise<void> = this.opts
        .launch()
        .then(
          async (container) => {
            this.failures = 0;
            if (this.closed) {
              await container.remove();
              return;
            }
            this.ready.push(container);
            // One that dies while it waits (the reaper took it for its age, the engine restarted) is
            // replaced at once, so the pool stays warm without waiting for the next take.
            container.whenLost(() => this.discard(container));
          },
          (err: unknown) => {
            if (this.closed) return;
            this.failures += 1;
            this.opts.logger.warn({ event: 'sandbox.pool_launch_failed', failures: this.failures, err: (err as Error).message });
            this.scheduleRetry();
          },
        )
        .finally(() => this.inFlight.delete(attempt));
      this.inFlight.add(attempt);
    }
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer) return;
    // Back off so an engine that is down is not hammered with create calls.
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.failures - 1, 10));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.refill();
    }, delay);
    this.retryTimer.unref();
  }
}
