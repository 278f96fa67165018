/**
 * The worker's side of the runner protocol (sandbox-image/runner.py): one JSON line per message over
 * the container's attached stdout. Everything read here is hostile — the model's code runs in the
 * runner's own process and can write anything — so each message is checked field by field and kept
 * within fixed bounds; a message a real runner would never send is a protocol violation.
 */
import { contentTypeOf } from '../../../shared/src/content-type';
import type { ArtifactLimits } from './container-spec';
import type { Artifact, ExecResult, OnOutput, OutputStream } from './types';

const MIB = 1024 * 1024;
/** Longest protocol line: a data line holds 1 MiB of base64; the result line two capped streams. */
export const MAX_LINE_BYTES = 4 * MIB;
const MAX_SKIPPED = 50;
const MAX_NAME_BYTES = 255;
const MAX_REASON_CHARS = 200;

/** What one cell came to, as the runner tells it, with the bytes of the files it handed back. */
export type CellOutcome = Pick<
  ExecResult,
  'stdout' | 'stderr' | 'exitCode' | 'error' | 'timedOut' | 'truncated' | 'artifacts' | 'skippedArtifacts' | 'stoppedProcesses'
>;

/** The runner sent something a real runner never would. */
export class ProtocolViolation extends Error {
  override readonly name = 'ProtocolViolation';
}

/** A clean relative `/`-separated name, checked again on this side because the runner is not trusted. */
export function isCleanName(name: string): boolean {
  if (name === '' || Buffer.byteLength(name) > MAX_NAME_BYTES) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || c === 0x5c) return false;
  }
  return name.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** Parses one protocol line into an object, or throws ProtocolViolation. */
export function parseLine(line: string): Record<string, unknown> {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    throw new ProtocolViolation('the sandbox wrote something that is not a protocol message');
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    throw new ProtocolViolation('the sandbox wrote something that is not a protocol message');
  }
  return msg as Record<string, unknown>;
}

function capped(value: unknown, max: number): { text: string; cut: boolean } {
  const text = typeof value === 'string' ? value : '';
  return text.length > max ? { text: text.slice(0, max), cut: true } : { text, cut: false };
}

/**
 * Assembles the answer to request `id`: output lines while the cell runs, then the result line, then
 * the listed files' bytes, concatenated in list order over data lines. `accept` takes each message
 * and returns the outcome once complete.
 */
export class CellAnswer {
  private outcome: CellOutcome | undefined;
  private listed: { name: string; size: number }[] = [];
  private readonly chunks: Buffer[] = [];
  private received = 0;
  private expected = 0;
  /** What the output lines brought so far, per stream, in UTF-16 code units (a string's length). */
  private readonly live: Record<OutputStream, number> = { stdout: 0, stderr: 0 };

  /**
   * `limits`: the ones the runner was started with (its argv); a real runner never exceeds them.
   * `onOutput` gets each output line's text, once checked, in the order the lines came.
   */
  constructor(
    private readonly id: number,
    private readonly outputLimitBytes: number,
    private readonly limits: ArtifactLimits,
    private readonly onOutput?: OnOutput,
  ) {}

  accept(msg: Record<string, unknown>): CellOutcome | undefined {
    if (msg.id !== this.id) throw new ProtocolViolation('the sandbox answered out of turn');
    if (Object.hasOwn(msg, 'stream')) {
      this.output(msg);
      return undefined;
    }
    if (!this.outcome) {
      this.outcome = this.result(msg);
    } else {
      if (typeof msg.data !== 'string') throw new ProtocolViolation('the sandbox sent a malformed data line');
      const bytes = Buffer.from(msg.data, 'base64');
      if (bytes.length === 0 || this.received + bytes.length > this.expected) {
        throw new ProtocolViolation('the sandbox sent more file bytes than it listed');
      }
      this.chunks.push(bytes);
      this.received += bytes.length;
    }
    return this.received === this.expected ? this.complete(this.outcome) : undefined;
  }

  /**
   * An output line: only before the result, of a known stream, within the cap. The runner sends only
   * bytes its capture keeps (at most the cap per stream) decoded from UTF-8, and no character takes
   * more UTF-16 code units than it had bytes: so more than the cap in code units is a lie.
   */
  private output(msg: Record<string, unknown>): void {
    if (this.outcome) throw new ProtocolViolation('the sandbox sent output after its result');
    const { stream, text } = msg;
    if (stream !== 'stdout' && stream !== 'stderr') throw new ProtocolViolation('the sandbox sent output of an unknown stream');
    if (typeof text !== 'string') throw new ProtocolViolation('the sandbox sent a malformed output line');
    const total = this.live[stream] + text.length;
    if (total > this.outputLimitBytes) throw new ProtocolViolation('the sandbox sent more output than its cap');
    this.live[stream] = total;
    if (text !== '') this.onOutput?.(stream, text);
  }

  private result(msg: Record<string, unknown>): CellOutcome {
    const cap = this.outputLimitBytes;
    const stdout = capped(msg.stdout, cap);
    const stderr = capped(msg.stderr, cap);
    const error = typeof msg.error === 'string' ? capped(msg.error, cap).text : undefined;
    const truncated = (msg.truncated ?? {}) as Record<string, unknown>;
    const exitCode = typeof msg.exitCode === 'number' && Number.isInteger(msg.exitCode) ? msg.exitCode : 1;
    const stopped = msg.stopped;
    this.listed = this.fileList(msg.files);
    this.expected = this.listed.reduce((sum, f) => sum + f.size, 0);
    const skippedArtifacts: CellOutcome['skippedArtifacts'] = [];
    for (const s of Array.isArray(msg.skipped) ? (msg.skipped as unknown[]).slice(0, MAX_SKIPPED) : []) {
      const { name, reason } = (s ?? {}) as Record<string, unknown>;
      skippedArtifacts.push({ name: typeof name === 'string' && isCleanName(name) ? name : '', reason: capped(reason, MAX_REASON_CHARS).text });
    }
    return {
      stdout: stdout.text,
      stderr: stderr.text,
      exitCode,
      ...(error === undefined ? {} : { error }),
      timedOut: false,
      truncated: { stdout: truncated.stdout === true || stdout.cut, stderr: truncated.stderr === true || stderr.cut },
      artifacts: [],
      skippedArtifacts,
      stoppedProcesses: typeof stopped === 'number' && Number.isInteger(stopped) && stopped > 0 ? Math.min(stopped, 1_000_000) : 0,
    };
  }

  /** The listing must be what a real runner sends: it decides how many bytes are read next. */
  private fileList(files: unknown): { name: string; size: number }[] {
    if (files === undefined) return [];
    if (!Array.isArray(files) || files.length > this.limits.files) throw new ProtocolViolation('the sandbox listed too many files');
    let total = 0;
    const listed = (files as unknown[]).map((f) => {
      const { name, size } = (f ?? {}) as Record<string, unknown>;
      if (typeof size !== 'number' || !Number.isInteger(size) || size < 0 || size > this.limits.fileBytes) {
        throw new ProtocolViolation('the sandbox listed a file of an impossible size');
      }
      total += size;
      return { name: typeof name === 'string' && isCleanName(name) ? name : '', size };
    });
    if (total > this.limits.totalBytes) throw new ProtocolViolation('the sandbox listed more bytes than allowed');
    return listed;
  }

  private complete(outcome: CellOutcome): CellOutcome {
    const data = Buffer.concat(this.chunks);
    let offset = 0;
    const artifacts: Artifact[] = [];
    for (const { name, size } of this.listed) {
      const bytes = data.subarray(offset, offset + size);
      offset += size;
      if (name === '') outcome.skippedArtifacts.push({ name: '', reason: 'file name is not a clean relative path' });
      else artifacts.push({ name, size, contentType: contentTypeOf(name), data: bytes });
    }
    return { ...outcome, artifacts };
  }
}
