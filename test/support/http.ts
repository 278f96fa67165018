import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

/**
 * One request on a fresh connection to 127.0.0.1:port with exactly the headers given, for what fetch
 * will not do: set `Host`, or send from another local address (`localAddress`, e.g. 127.0.0.2). A
 * JSON body gets its content type; a JSON answer comes back parsed, any other as text.
 */
export function httpCall(
  port: number,
  opts: { method?: string; path: string; headers?: Record<string, string>; body?: unknown; localAddress?: string },
): Promise<HttpAnswer> {
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  const headers = payload === undefined ? (opts.headers ?? {}) : { 'content-type': 'application/json', ...opts.headers };
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path, headers, localAddress: opts.localAddress, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
