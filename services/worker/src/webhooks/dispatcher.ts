import { publicArtifacts, type RecordHeader } from '../../../shared/src/job-record';
import type { WebhookDelivery } from '../../../shared/src/job-schema';
import type { JobStore } from '../../../shared/src/job-store';
import type { Logger } from '../../../shared/src/logger';
import { resolveWebhookTarget, signWebhook, type Lookup } from '../../../shared/src/webhooks';
import { sendWebhook } from './send';

/** How often each worker looks for due deliveries. */
const POLL_MS = 250;
/** Deliveries one worker sends at once. */
const MAX_IN_FLIGHT = 8;
/** No retry waits longer than this, whatever the attempt. */
const MAX_RETRY_DELAY_MS = 6 * 3600_000;

export interface WebhookSettings {
  /** The secret's key bytes (WEBHOOK_SECRET, `whsec_<base64>`). */
  key: Buffer;
  /** WEBHOOK_URL: where jobs naming no webhook of their own go; none when unset. */
  deploymentUrl: string | undefined;
  allowPrivate: boolean;
  timeoutMs: number;
  maxAttempts: number;
  retryBaseMs: number;
  /** Stands in for the system resolver (tests). */
  lookup?: Lookup;
}

/** How long after failed attempt `attempt` (1-based) the next one is due: base × 4^(attempt-1), at most 6 h. */
export function retryDelayMs(attempt: number, baseMs: number): number {
  return Math.min(baseMs * 4 ** (attempt - 1), MAX_RETRY_DELAY_MS);
}

/** The body a finished job's webhook carries: its summary, no steps, no task, nothing of its owner. */
export function webhookBody(header: RecordHeader): string {
  const job = header.job;
  return JSON.stringify({
    type: `job.${job.status}`,
    timestamp: job.finishedAt,
    data: {
      id: job.id,
      status: job.status,
      stopReason: job.stopReason,
      error: job.error,
      result: job.result,
      usage: job.usage,
      provider: job.provider,
      model: job.model,
      attempts: job.attempts,
      createdAt: job.createdAt,
      startedAt: job.startedAt,
      finishedAt: job.finishedAt,
      metadata: job.metadata,
      artifacts: publicArtifacts(header.artifacts),
    },
  });
}

/**
 * Sends finished jobs' webhooks. Which are due is in Redis (the job store's `webhooks:due`, where the
 * script that records a job's end puts it), so every worker sends them and a delivery outlives the
 * worker that tried it: each attempt claims it for a lease, records its outcome on the job, and
 * schedules the next attempt or ends it. Delivery is at least once: a worker that dies after the
 * receiver answered and before recording it leaves the delivery to be sent again, with the same
 * `webhook-id`, for the receiver to recognise.
 */
export class WebhookDispatcher {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  /** The look under way, if any: close waits for it, since it may add attempts. */
  private ticking: Promise<void> | null = null;
  private closed = false;

  constructor(
    private readonly deps: { store: JobStore; logger: Logger; settings: WebhookSettings },
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), POLL_MS);
  }

  /** Stops claiming, and waits for the attempts under way (each has its timeout). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.ticking;
    await Promise.all(this.inFlight);
  }

  /** One look for due deliveries; each found is sent in the background. */
  tick(now = new Date()): Promise<void> {
    if (this.ticking || this.closed) return this.ticking ?? Promise.resolve();
    this.ticking = this.look(now).finally(() => {
      this.ticking = null;
    });
    return this.ticking;
  }

  private async look(now: Date): Promise<void> {
    try {
      const room = MAX_IN_FLIGHT - this.inFlight.size;
      if (room <= 0) return;
      const { timeoutMs } = this.deps.settings;
      // Long enough for a lookup and the attempt; a worker that dies with a claim leaves it due then.
      const claimed = await this.deps.store.claimWebhooks(now, 2 * timeoutMs + 10_000, room);
      for (const { id, attempts } of claimed) {
        const sending = this.deliver(id, attempts + 1).catch((err: unknown) => {
          this.deps.logger.warn({ event: 'webhook.error', jobId: id, message: (err as Error).message }, 'webhook delivery hit an error; it is retried when its claim lapses');
        });
        this.inFlight.add(sending);
        void sending.finally(() => this.inFlight.delete(sending));
      }
    } catch (err) {
      this.deps.logger.debug({ event: 'webhook.claim_failed', message: (err as Error).message }, 'could not claim webhook deliveries');
    }
  }

  private async deliver(id: string, attempt: number): Promise<void> {
    const { store, logger, settings } = this.deps;
    const header = await store.finishedRecord(id);
    const jobUrl = header?.job.webhook?.url;
    const url = jobUrl ?? settings.deploymentUrl;
    if (header === null || url === undefined || attempt > settings.maxAttempts) {
      // The job is gone, names no webhook in a deployment without one, or has had every attempt.
      await store.recordWebhookAttempt(id, null, null);
      return;
    }
    const target: WebhookDelivery['target'] = jobUrl === undefined ? 'deployment' : 'job';
    const started = new Date();
    const record = async (statusCode: number | null, error: string | null, retry: boolean): Promise<void> => {
      const willRetry = retry && attempt < settings.maxAttempts;
      const delivery: WebhookDelivery = {
        attempt,
        at: started.toISOString(),
        target,
        statusCode,
        error,
        durationMs: Date.now() - started.getTime(),
        willRetry,
      };
      const next = willRetry ? new Date(Date.now() + retryDelayMs(attempt, settings.retryBaseMs)) : null;
      await store.recordWebhookAttempt(id, delivery, next);
      logger.info({ event: 'webhook.attempt', jobId: id, target, attempt, statusCode, error, willRetry }, error === null ? 'webhook delivered' : 'webhook attempt failed');
    };

    // The deployment's own URL is the operator's, not a caller's: it may point at an internal receiver.
    const allowPrivate = settings.allowPrivate || target === 'deployment';
    const resolved = await resolveWebhookTarget(url, { allowPrivate, ...(settings.lookup ? { lookup: settings.lookup } : {}) });
    if (!resolved.ok) {
      await record(null, `not sent: ${resolved.reason}`, resolved.code === 'unresolvable');
      return;
    }
    const body = webhookBody(header);
    const headers = signWebhook(settings.key, `msg_${id}`, Math.floor(Date.now() / 1000), body);
    const outcome = await sendWebhook(resolved.url, resolved.address, headers, body, settings.timeoutMs);
    await record(outcome.statusCode, outcome.error, outcome.error !== null);
  }
}
