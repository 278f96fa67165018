/** A minimal Server-Sent Events client over fetch, for tests that read a stream as a browser would. */
export interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

export interface SseRead {
  status: number;
  events: SseEvent[];
  comments: string[];
  /** True when the server closed the stream; false when we stopped reading. */
  ended: boolean;
}

/**
 * Reads `url` until the server ends the stream, `stop(events)` says enough, or `timeoutMs` passes
 * (then it throws). Stopping early drops the connection, like a client going away.
 */
export async function readSse(
  url: string,
  opts: { headers?: Record<string, string>; stop?: (events: SseEvent[]) => boolean; timeoutMs?: number } = {},
): Promise<SseRead> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`SSE read timed out: ${url}`)), opts.timeoutMs ?? 20_000);
  const events: SseEvent[] = [];
  const comments: string[] = [];
  try {
    const res = await fetch(url, { headers: { accept: 'text/event-stream', ...opts.headers }, signal: controller.signal });
    if (res.status !== 200 || !res.body) return { status: res.status, events, comments, ended: true };
    const decoder = new TextDecoder();
    let buffer = '';
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { status: res.status, events, comments, ended: true };
      buffer += decoder.decode(value, { stream: true });
      let sep: number;
      while ((sep = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, sep);
        buffer = buffer.slice(sep + 2);
        const event: SseEvent = { event: 'message', data: '' };
        let hasData = false;
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) comments.push(line.slice(1).trim());
          else if (line.startsWith('id: ')) event.id = line.slice(4);
          else if (line.startsWith('event: ')) event.event = line.slice(7);
          else if (line.startsWith('data: ')) {
            event.data += (hasData ? '\n' : '') + line.slice(6);
            hasData = true;
          }
        }
        if (hasData) events.push(event);
        if (opts.stop?.(events)) {
          controller.abort();
          return { status: res.status, events, comments, ended: false };
        }
      }
    }
  } finally {
    clearTimeout(timer);
  }
}
