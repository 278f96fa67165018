/*
 * A Server-Sent Events parser over a fetch body, as the HTML standard describes the format: lines end
 * in CRLF, LF or CR; a blank line dispatches the event; `:` starts a comment; an event whose stream
 * ends before its blank line is dropped (it may be cut short). No dependency, no EventSource: the
 * client needs its own headers (Authorization, Last-Event-ID) and its own reconnection.
 */

export interface SseMessage {
  /** The event's own `id:`, when it has one. */
  id?: string;
  /** `event:`, or `message` when absent. */
  event: string;
  data: string;
  /** `retry:`, the reconnection delay the server asks for, in ms. */
  retry?: number;
}

/**
 * The messages of an event stream, as they complete. `onActivity` is called on every chunk received
 * (comments and heartbeats too), so a caller can tell a quiet stream from a dead one. Leaving the
 * loop early cancels the body, which closes the connection.
 */
export async function* readSse(body: ReadableStream<Uint8Array>, onActivity: () => void = () => undefined): AsyncGenerator<SseMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let message: { id?: string; event?: string; data: string[]; retry?: number } = { data: [] };
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        return; // whatever is pending was cut short: dropped
      }
      onActivity();
      buffer += decoder.decode(value, { stream: true });
      let start = 0;
      for (;;) {
        const lf = buffer.indexOf('\n', start);
        const cr = buffer.indexOf('\r', start);
        let end: number;
        let next: number;
        if (cr >= 0 && (lf < 0 || cr < lf)) {
          // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
          if (cr === buffer.length - 1) break;
          end = cr;
          next = buffer[cr + 1] === '\n' ? cr + 2 : cr + 1;
        } else if (lf >= 0) {
          end = lf;
          next = lf + 1;
        } else {
          break;
        }
        const line = buffer.slice(start, end);
        start = next;
        if (line === '') {
          if (message.data.length > 0) {
            yield {
              ...(message.id === undefined ? {} : { id: message.id }),
              event: message.event ?? 'message',
              data: message.data.join('\n'),
              ...(message.retry === undefined ? {} : { retry: message.retry }),
            };
          }
          message = { data: [] };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') message.data.push(value);
        else if (field === 'event') message.event = value;
        else if (field === 'id' && !value.includes('\0')) message.id = value;
        else if (field === 'retry' && /^\d+$/.test(value)) message.retry = Number(value);
      }
      buffer = buffer.slice(start);
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

/** Orders two event ids (`<ms>-<seq>`, Redis stream ids): negative, zero or positive. */
export function compareEventIds(a: string, b: string): number {
  const [am = '0', as = '0'] = a.split('-');
  const [bm = '0', bs = '0'] = b.split('-');
  const byMs = compareDigits(am, bm);
  return byMs !== 0 ? byMs : compareDigits(as, bs);
}

/** Compares two non-negative integers written in decimal, of any length. */
function compareDigits(a: string, b: string): number {
  const x = a.replace(/^0+(?=\d)/, '');
  const y = b.replace(/^0+(?=\d)/, '');
  if (x.length !== y.length) return x.length - y.length;
  return x < y ? -1 : x > y ? 1 : 0;
}
