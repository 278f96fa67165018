import { ConnectionError, IntegrityError, MaestroError, RateLimitError, ServiceUnavailableError, errorFromResponse } from './errors';
import { ROUTES, fillPath, type Route } from './routes';
import { compareEventIds, readSse } from './sse';
import {
  JOB_EVENT_TYPES,
  isTerminal,
  type Job,
  type JobEvent,
  type JobList,
  type JobRequest,
  type JobStatus,
  type JobSummary,
  type OutputEventData,
  type StatusEventData,
  type Step,
} from './types';

/** What fetch takes as a body (named here: there is no DOM library in the build). */
type RequestBody = NonNullable<RequestInit['body']>;

/** The subset of `fetch` the client calls; pass your own to add a proxy, logging, retries, … */
export type FetchLike = (url: string, init: RequestInit) => Promise<Response>;

export interface MaestroClientOptions {
  /** Where the API listens, e.g. `http://127.0.0.1:3000` (without `/v1`). */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>` (AUTH_MODE=api-key). */
  apiKey?: string;
  /** Default: the global fetch. */
  fetch?: FetchLike;
  /** Extra headers on every request (a proxy's own authentication, say). */
  headers?: Record<string, string>;
}

/** A file to give a job: it appears read-only at `/input/<name>` in the job's sandbox. */
export interface InputFile {
  /** One plain file name: no `/` or `\`, no leading dot. */
  name: string;
  data: Uint8Array | Blob | string;
  /** Default: application/octet-stream (the API types inputs by their extension anyway). */
  contentType?: string;
}

export interface CreateJobOptions {
  files?: readonly InputFile[];
  /** The same key with the same body gets the first job back; with another body, a ConflictError. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface ListJobsOptions {
  status?: JobStatus;
  /** Jobs per page (1–100; the API's default is 20). The iterator goes on through every page. */
  limit?: number;
  signal?: AbortSignal;
}

export interface FollowOptions {
  /** Resume after this event id (it and everything before are not sent again). */
  lastEventId?: string;
  signal?: AbortSignal;
  /** Reconnections in a row, with no event received, before giving up (default 10). */
  maxReconnects?: number;
  /**
   * A connection on which nothing, not even a heartbeat, arrives for this long is dropped and made
   * again (default 60 s; the API sends a heartbeat every SSE_HEARTBEAT_MS while a job is quiet).
   */
  idleTimeoutMs?: number;
}

export interface RunOptions extends Omit<FollowOptions, 'lastEventId'> {
  files?: readonly InputFile[];
  /** Default: a random UUID, so that a submission retried after a lost answer makes one job. */
  idempotencyKey?: string;
  /** The job as submitted (status `queued`), before any event. */
  onSubmit?: (job: Job) => void | Promise<void>;
  /** Every status event: `queued`, `running`, a `queued` again before a retry, the terminal one. */
  onStatus?: (status: JobStatus, data: StatusEventData) => void | Promise<void>;
  /** Every step, as it is recorded. */
  onStep?: (step: Step) => void | Promise<void>;
  /** What a running code_executor call prints, as it prints it (before the call's step). */
  onOutput?: (output: OutputEventData) => void | Promise<void>;
  /** Every event, with its id, before the callbacks above. */
  onEvent?: (event: JobEvent) => void | Promise<void>;
}

export interface Download {
  bytes: Uint8Array;
  contentType: string;
  /** Hex SHA-256 of the bytes, checked against the ETag the API sent (when it sent one). */
  sha256: string;
}

const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_RECONNECTS = 10;
/** The delay before reconnection number `n` (1, 2, …): 250 ms doubling, at most 5 s. */
const backoffMs = (n: number): number => Math.min(5000, 250 * 2 ** (n - 1));
/** A submission that got no answer is sent again (with the same Idempotency-Key) this many times. */
const SUBMIT_RETRIES = 2;

/**
 * A client of the Maestro API (v1). Every method throws a MaestroError subclass for an error answer
 * (NotFoundError, RateLimitError, …) and a ConnectionError when no answer came.
 */
export class MaestroClient {
  private readonly baseUrl: string;
  private readonly apiKey: string | undefined;
  private readonly fetchImpl: FetchLike;
  private readonly headers: Record<string, string>;

  constructor(options: MaestroClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.apiKey = options.apiKey;
    this.fetchImpl = options.fetch ?? ((url, init) => fetch(url, init));
    this.headers = options.headers ?? {};
  }

  /**
   * Submits a job: as JSON, or as multipart/form-data (a `job` part and one part per file) when
   * `files` are given. Resolves with the job as created (or, for a repeated Idempotency-Key, the
   * job the first request created).
   */
  async createJob(request: JobRequest, options: CreateJobOptions = {}): Promise<Job> {
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers['Idempotency-Key'] = options.idempotencyKey;
    const files = options.files ?? [];
    // For a multipart body, fetch sets the Content-Type itself, with its boundary.
    if (files.length === 0) headers['Content-Type'] = 'application/json';
    // Made for each request, so a body is never sent twice.
    const body = (): RequestBody => {
      if (files.length === 0) return JSON.stringify(request);
      const form = new FormData();
      form.append('job', new Blob([JSON.stringify(request)], { type: 'application/json' }), 'job.json');
      for (const file of files) {
        const type = file.contentType ?? 'application/octet-stream';
        const blob = file.data instanceof Blob ? file.data : new Blob([file.data], { type });
        form.append('file', blob, file.name);
      }
      return form;
    };
    const res = await this.#send(ROUTES.createJob, {}, { headers, body, signal: options.signal });
    return (await res.json()) as Job;
  }

  /** A job with its steps. */
  async getJob(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    const res = await this.#send(ROUTES.getJob, { id }, { signal: options.signal });
    return (await res.json()) as Job;
  }

  /** One page of the caller's jobs, newest first. */
  async listJobsPage(options: ListJobsOptions & { cursor?: string } = {}): Promise<JobList> {
    const query: Record<string, string> = {};
    if (options.status !== undefined) query.status = options.status;
    if (options.limit !== undefined) query.limit = String(options.limit);
    if (options.cursor !== undefined) query.cursor = options.cursor;
    const res = await this.#send(ROUTES.listJobs, {}, { query, signal: options.signal });
    return (await res.json()) as JobList;
  }

  /** Every one of the caller's jobs, newest first (without their steps), page after page. */
  async *listJobs(options: ListJobsOptions = {}): AsyncGenerator<JobSummary, void, undefined> {
    let cursor: string | undefined;
    do {
      const page = await this.listJobsPage({ ...options, ...(cursor === undefined ? {} : { cursor }) });
      yield* page.jobs;
      cursor = page.nextCursor ?? undefined;
    } while (cursor !== undefined);
  }

  /** Cancels a queued or running job; a ConflictError when it already succeeded or failed. */
  async cancelJob(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    const res = await this.#send(ROUTES.cancelJob, { id }, { signal: options.signal });
    return (await res.json()) as Job;
  }

  /** Deletes a job and every file of it (cancelling it first if it is still queued or running). */
  async deleteJob(id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    const res = await this.#send(ROUTES.deleteJob, { id }, { signal: options.signal });
    await res.body?.cancel();
  }

  /** A file the job's code wrote under /output, checked against its ETag. */
  async downloadArtifact(id: string, name: string, options: { signal?: AbortSignal } = {}): Promise<Download> {
    return this.#download(ROUTES.downloadArtifact, id, name, options.signal);
  }

  /** A file given with the job, checked against its ETag. */
  async downloadInput(id: string, name: string, options: { signal?: AbortSignal } = {}): Promise<Download> {
    return this.#download(ROUTES.downloadInput, id, name, options.signal);
  }

  /**
   * The job's events, each exactly once and in order, until its terminal status: a dropped
   * connection is made again with Last-Event-ID (after a short backoff), and any event at or before
   * the last one seen is skipped should the server send it again.
   */
  async *followEvents(id: string, options: FollowOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    const { signal } = options;
    const maxReconnects = options.maxReconnects ?? DEFAULT_MAX_RECONNECTS;
    const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    let last = options.lastEventId;
    let failures = 0;
    for (;;) {
      signal?.throwIfAborted();
      // One connection: aborted by the caller's signal, or when it has been idle too long.
      const connection = new AbortController();
      const onAbort = (): void => {
        connection.abort(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort);
      let idle: ReturnType<typeof setTimeout> | undefined;
      const touch = (): void => {
        clearTimeout(idle);
        idle = setTimeout(() => {
          connection.abort(new ConnectionError({ status: 0, code: 'stream_idle', detail: `No event or heartbeat for ${String(idleTimeoutMs)} ms.` }));
        }, idleTimeoutMs);
      };
      let wait: number | undefined;
      let lastError: unknown;
      try {
        touch();
        const headers: Record<string, string> = { Accept: 'text/event-stream' };
        if (last !== undefined) headers['Last-Event-ID'] = last;
        const res = await this.#send(ROUTES.followEvents, { id }, { headers, signal: connection.signal });
        if (res.body === null) throw new ConnectionError({ status: 0, code: 'stream_empty', detail: 'The event stream had no body.' });
        for await (const message of readSse(res.body, touch)) {
          if (message.id === undefined) continue;
          if (last !== undefined && compareEventIds(message.id, last) <= 0) continue;
          last = message.id;
          failures = 0;
          const event = toJobEvent(message);
          if (event === undefined) continue; // a kind of event this client does not know
          yield event;
          if (event.type === 'status' && isTerminal(event.data.status)) return;
        }
        // Ended before the terminal status: the connection was cut (or a proxy timed it out).
        lastError = new ConnectionError({ status: 0, code: 'stream_ended', detail: 'The event stream ended before the job did.' });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (err instanceof RateLimitError || err instanceof ServiceUnavailableError) wait = err.retryAfter;
        else if (err instanceof MaestroError && !(err instanceof ConnectionError) && err.status < 500) throw err;
        lastError = connection.signal.aborted && connection.signal.reason instanceof ConnectionError ? connection.signal.reason : err;
      } finally {
        clearTimeout(idle);
        signal?.removeEventListener('abort', onAbort);
        connection.abort();
      }
      failures += 1;
      if (failures > maxReconnects) throw lastError;
      await sleep(wait === undefined ? backoffMs(failures) : Math.min(wait * 1000, 30_000), signal);
    }
  }

  /**
   * Submits a job (with an automatic Idempotency-Key), follows its events to the end, calling the
   * callbacks as they come, and resolves with the job as it ended, whatever its status. Aborting
   * `signal` stops following; it does not cancel the job (call cancelJob for that).
   */
  async run(task: string | JobRequest, options: RunOptions = {}): Promise<Job> {
    const request: JobRequest = typeof task === 'string' ? { task } : task;
    const idempotencyKey = options.idempotencyKey ?? globalThis.crypto.randomUUID();
    let job: Job | undefined;
    for (let attempt = 0; job === undefined; attempt++) {
      try {
        job = await this.createJob(request, { idempotencyKey, ...(options.files ? { files: options.files } : {}), ...(options.signal ? { signal: options.signal } : {}) });
      } catch (err) {
        // No answer: the job may or may not exist; the same key makes sending it again safe.
        if (!(err instanceof ConnectionError) || attempt >= SUBMIT_RETRIES) throw err;
        await sleep(backoffMs(attempt + 1), options.signal);
      }
    }
    await options.onSubmit?.(job);
    for await (const event of this.followEvents(job.id, options)) {
      await options.onEvent?.(event);
      if (event.type === 'status') await options.onStatus?.(event.data.status, event.data);
      else if (event.type === 'step') await options.onStep?.(event.data);
      else await options.onOutput?.(event.data);
    }
    return this.getJob(job.id, options.signal ? { signal: options.signal } : {});
  }

  async #download(route: Route, id: string, name: string, signal: AbortSignal | undefined): Promise<Download> {
    const res = await this.#send(route, { id, name }, { signal });
    const bytes = new Uint8Array(await res.arrayBuffer());
    const sha256 = await sha256Hex(bytes);
    const etag = res.headers.get('etag')?.replace(/^W\//, '').replace(/"/g, '');
    if (etag !== undefined && /^[0-9a-f]{64}$/i.test(etag) && etag.toLowerCase() !== sha256) {
      throw new IntegrityError({ status: 0, code: 'integrity_mismatch', detail: `${name}: the bytes hash to ${sha256}, not to the ETag ${etag}.` });
    }
    return { bytes, contentType: res.headers.get('content-type') ?? 'application/octet-stream', sha256 };
  }

  /** Sends one request of `route`; resolves with a 2xx answer, or throws its error. */
  async #send(
    route: Route,
    params: { id?: string; name?: string },
    init: { query?: Record<string, string>; headers?: Record<string, string>; body?: () => RequestBody; signal?: AbortSignal | undefined },
  ): Promise<Response> {
    const query = new URLSearchParams(init.query ?? {}).toString();
    const url = `${this.baseUrl}${fillPath(route, params)}${query ? `?${query}` : ''}`;
    const body = init.body?.();
    const headers: Record<string, string> = { Accept: 'application/json', ...this.headers, ...init.headers };
    if (this.apiKey !== undefined) headers.Authorization = `Bearer ${this.apiKey}`;
    let res: Response;
    try {
      res = await this.fetchImpl(url, { method: route.method, headers, ...(body === undefined ? {} : { body }), ...(init.signal ? { signal: init.signal } : {}) });
    } catch (err) {
      if (init.signal?.aborted) throw init.signal.reason;
      throw connectionError(this.baseUrl, err);
    }
    if (!res.ok) throw await errorFromResponse(res);
    return res;
  }
}

/** An event as the API sends it, typed; undefined for one the client does not know. */
function toJobEvent(message: { id?: string; event: string; data: string }): JobEvent | undefined {
  if (message.id === undefined || !(JOB_EVENT_TYPES as readonly string[]).includes(message.event)) return undefined;
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch {
    return undefined;
  }
  return { id: message.id, type: message.event, data } as JobEvent;
}

/** A fetch failure as a one-line ConnectionError: `ECONNREFUSED`, a DNS failure, a reset, … */
function connectionError(baseUrl: string, err: unknown): ConnectionError {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  const code = typeof cause?.code === 'string' ? cause.code : undefined;
  const reason = code ?? (typeof cause?.message === 'string' ? cause.message : err instanceof Error ? err.message : String(err));
  return new ConnectionError({
    status: 0,
    code: code === 'ECONNREFUSED' ? 'connection_refused' : 'connection_failed',
    detail: `cannot reach ${baseUrl} (${reason})`,
    cause: err,
  });
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
