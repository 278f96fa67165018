import { createGunzip, gzip } from 'node:zlib';
import { promisify } from 'node:util';
import type { Readable } from 'node:stream';
import type { ArtifactInfo, JobView, Step } from './job-schema';

const gzipAsync = promisify(gzip);

/** The first line's `format`: a reader meeting another one refuses the file rather than guess. */
export const RECORD_FORMAT = 'maestro.job-record/1';

/**
 * One entry of a job's event stream, as SSE sends it: `data` is its JSON text. `output` is what a
 * running code_executor call printed (`{"step", "stream", "text"}`); only `step` entries are steps.
 */
export interface JobEvent {
  id: string;
  type: 'status' | 'step' | 'output';
  data: string;
}

/** An entry's `type` field as a JobEvent's type; anything else is a `status`, as it always was. */
export function eventType(raw: string | undefined): JobEvent['type'] {
  return raw === 'step' || raw === 'output' ? raw : 'status';
}

/** An artifact's metadata as the job store keeps it: what the API shows, plus where its bytes are. */
export interface StoredArtifact extends ArtifactInfo {
  /** Its id in the artifact store; absent for one stored in Redis by an earlier release. */
  file?: string;
}

/** The first line of a record: everything the job list shows, and what a download needs. */
export interface RecordHeader {
  format: typeof RECORD_FORMAT;
  caller: string;
  /**
   * The job as GET shows it, less its steps (they are the `step` events), its artifacts (below) and
   * its webhook deliveries (made after the record, kept in Redis beside its hash). Records from before
   * webhooks have no `webhook`.
   */
  job: Omit<JobView, 'steps' | 'artifacts' | 'webhookDeliveries'>;
  artifacts: StoredArtifact[];
}

/**
 * A finished job's record, as the artifact store keeps it: gzip of JSON Lines, the header first, then
 * every event of the job's stream in order (`{"id","type","data"}`, data as JSON). The list reads only
 * the first line; GET and an event-stream replay read it all.
 */
export async function encodeRecord(header: RecordHeader, events: readonly JobEvent[]): Promise<Buffer> {
  // Each event's data is already JSON text: spliced in as it is, not parsed and written again.
  const lines = [JSON.stringify(header), ...events.map((e) => `{"id":${JSON.stringify(e.id)},"type":"${e.type}","data":${e.data}}`)];
  return gzipAsync(`${lines.join('\n')}\n`);
}

/** The job, its artifacts with their store ids, and its events, from a whole record. */
export async function decodeRecord(stream: Readable): Promise<{ header: RecordHeader; view: JobView; events: JobEvent[] }> {
  const lines = (await gunzipText(stream)).split('\n').filter((l) => l.length > 0);
  const header = parseHeader(lines[0]);
  const events = lines.slice(1).map((line): JobEvent => {
    const e = JSON.parse(line) as { id: string; type: JobEvent['type']; data: unknown };
    return { id: e.id, type: e.type, data: JSON.stringify(e.data) };
  });
  const steps = events.filter((e) => e.type === 'step').map((e) => JSON.parse(e.data) as Step);
  return { header, view: viewOf(header, steps), events };
}

/** The first line only: a long job's steps are not decompressed to list it. */
export async function readRecordHeader(stream: Readable): Promise<RecordHeader> {
  const gunzip = gunzipOf(stream);
  let text = '';
  try {
    for await (const chunk of gunzip) {
      text += (chunk as Buffer).toString('utf8');
      const end = text.indexOf('\n');
      if (end >= 0) return parseHeader(text.slice(0, end));
    }
    return parseHeader(text);
  } finally {
    stream.destroy();
    gunzip.destroy();
  }
}

/** The job as the list shows it (no steps) from a record's header. */
export function summaryOf(header: RecordHeader): Omit<JobView, 'steps'> {
  return { ...header.job, webhook: webhookOf(header), artifacts: publicArtifacts(header.artifacts), webhookDeliveries: [] };
}

/** Artifacts as the API shows them, by name: where the bytes are is the store's business, not the client's. */
export function publicArtifacts(artifacts: readonly StoredArtifact[]): ArtifactInfo[] {
  return artifacts.map(({ file: _file, ...info }) => info).sort((a, b) => a.name.localeCompare(b.name));
}

function viewOf(header: RecordHeader, steps: Step[]): JobView {
  return { ...header.job, webhook: webhookOf(header), steps, artifacts: publicArtifacts(header.artifacts), webhookDeliveries: [] };
}

/** The job's own webhook; a record from before webhooks has none. */
function webhookOf(header: RecordHeader): JobView['webhook'] {
  return (header.job as Partial<RecordHeader['job']>).webhook ?? null;
}

function parseHeader(line: string | undefined): RecordHeader {
  const header = JSON.parse(line ?? 'null') as RecordHeader | null;
  if (header?.format !== RECORD_FORMAT) throw new Error(`not a job record of format ${RECORD_FORMAT}`);
  return header;
}

async function gunzipText(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of gunzipOf(stream)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** `stream` decompressed; a read error of the file surfaces there too (pipe alone would drop it). */
function gunzipOf(stream: Readable): Readable {
  const gunzip = createGunzip();
  stream.on('error', (err) => gunzip.destroy(err));
  return stream.pipe(gunzip);
}
