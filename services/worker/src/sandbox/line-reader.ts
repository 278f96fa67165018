import { Writable } from 'node:stream';

/**
 * Splits a byte stream into lines for the runner protocol. A line longer than `maxLineBytes` means
 * the other side is broken or hostile: `onOverflow` fires once and everything after is ignored, so
 * memory stays bounded whatever the container writes.
 */
export class LineReader extends Writable {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private failed = false;

  constructor(
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string) => void,
    private readonly onOverflow: () => void,
  ) {
    super();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    let rest = chunk;
    while (!this.failed) {
      const nl = rest.indexOf(0x0a);
      if (nl === -1) {
        this.pending.push(rest);
        this.pendingBytes += rest.length;
        if (this.pendingBytes > this.maxLineBytes) this.fail();
        break;
      }
      this.pending.push(rest.subarray(0, nl));
      this.pendingBytes += nl;
      if (this.pendingBytes > this.maxLineBytes) {
        this.fail();
        break;
      }
      const line = Buffer.concat(this.pending).toString('utf8');
      this.pending = [];
      this.pendingBytes = 0;
      rest = rest.subarray(nl + 1);
      this.onLine(line);
    }
    done();
  }

  private fail(): void {
    this.failed = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.onOverflow();
  }
}
