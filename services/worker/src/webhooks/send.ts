import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import type { ResolvedAddress } from '../../../shared/src/webhooks';

/** Bytes of a receiver's answer read at most; the rest is dropped with the connection. */
const RESPONSE_READ_CAP = 4096;

export interface SendOutcome {
  /** The receiver's status, when it answered. */
  statusCode: number | null;
  /** Null on a 2xx; else why the attempt failed, naming no address or URL (a deployment's stays hidden from callers). */
  error: string | null;
}

/**
 * POSTs one signed delivery to `url`, connecting to `address` only: the lookup the connection makes
 * answers with the address the SSRF guard judged, so nothing resolves the name a second time (DNS
 * rebinding). TLS still checks the certificate against the URL's host. A redirect is not followed (it
 * is a failure), the whole attempt has `timeoutMs`, and at most a few KiB of the answer are read.
 */
export function sendWebhook(
  url: URL,
  address: ResolvedAddress,
  headers: Record<string, string>,
  body: string,
  timeoutMs: number,
): Promise<SendOutcome> {
  const pinned: LookupFunction = (_host, options, callback) => {
    if ((options as { all?: boolean }).all) (callback as (err: null, addresses: ResolvedAddress[]) => void)(null, [address]);
    else callback(null, address.address, address.family);
  };
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve) => {
    let settled = false;
    const done = (outcome: SendOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const req = client.request(
      {
        protocol: url.protocol,
        hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
        port: url.port === '' ? undefined : Number(url.port),
        path: `${url.pathname}${url.search}`,
        method: 'POST',
        lookup: pinned,
        // A connection of its own: no pooled socket made for another address.
        agent: false,
        headers: {
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(body)),
          'user-agent': 'Maestro-Webhooks/1',
          ...headers,
        },
      },
      (res) => {
        const status = res.statusCode ?? 0;
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > RESPONSE_READ_CAP) {
            res.destroy();
            finish();
          }
        });
        const finish = (): void => {
          if (status >= 200 && status < 300) done({ statusCode: status, error: null });
          else if (status >= 300 && status < 400) done({ statusCode: status, error: `redirect (${status}) not followed` });
          else done({ statusCode: status, error: `HTTP ${status}` });
        };
        res.on('end', finish);
        res.on('error', finish);
        res.on('close', finish);
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      done({ statusCode: null, error: `timed out after ${timeoutMs} ms` });
    }, timeoutMs);
    req.on('error', (err: NodeJS.ErrnoException) => done({ statusCode: null, error: `could not connect or send (${err.code ?? 'error'})` }));
    req.end(body);
  });
}
