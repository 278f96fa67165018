/**
 * A deliberately small reader for the one-file tar archives the Engine's archive API returns.
 * The archive comes from a container running hostile code, so only a plain regular-file entry with
 * the expected name and a bounded size is accepted; links, directories, devices, odd names and
 * anything malformed are refused rather than interpreted.
 */

const BLOCK = 512;

export class TarError extends Error {
  override readonly name = 'TarError';
}

function field(header: Buffer, offset: number, length: number): string {
  const raw = header.subarray(offset, offset + length);
  const end = raw.indexOf(0);
  return raw.subarray(0, end === -1 ? raw.length : end).toString('utf8');
}

function octal(header: Buffer, offset: number, length: number): number {
  const first = header[offset];
  if (first !== undefined && (first & 0x80) !== 0) throw new TarError('base-256 sizes are not accepted');
  const text = field(header, offset, length).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarError('malformed numeric field');
  return parseInt(text, 8);
}

function checksumOk(header: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
  return sum === octal(header, 148, 8);
}

/** PAX records (`"<len> key=value\n"`); only `path` and `size` matter here. */
function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw new TarError('malformed pax record');
    const len = Number(data.subarray(pos, space).toString('ascii'));
    if (!Number.isInteger(len) || len <= space - pos || pos + len > data.length) throw new TarError('malformed pax record');
    const record = data.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq <= 0) throw new TarError('malformed pax record');
    out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  return out;
}

/**
 * Returns the content of the single regular file `expectedName` in `archive`.
 * Throws TarError for anything else: another name, a link or special entry, more than one entry,
 * a size over `maxBytes`, a truncated or corrupt archive.
 */
export function extractSingleFile(archive: Buffer, expectedName: string, maxBytes: number): Buffer {
  let pos = 0;
  let pax = new Map<string, string>();
  let found: Buffer | undefined;
  const maxMetaBytes = 64 * 1024;
  while (pos + BLOCK <= archive.length) {
    const header = archive.subarray(pos, pos + BLOCK);
    if (header.every((b) => b === 0)) break;
    if (!checksumOk(header)) throw new TarError('bad header checksum');
    const type = String.fromCharCode(header[156] ?? 0);
    const size = octal(header, 124, 12);
    const dataStart = pos + BLOCK;
    const next = dataStart + Math.ceil(size / BLOCK) * BLOCK;
    if (dataStart + size > archive.length) throw new TarError('truncated archive');
    const data = archive.subarray(dataStart, dataStart + size);
    if (type === 'x') {
      if (size > maxMetaBytes) throw new TarError('pax header too large');
      pax = parsePax(data);
    } else if (type === 'g') {
      if (size > maxMetaBytes) throw new TarError('pax header too large');
    } else if (type === '0' || type === '\0') {
      const prefix = field(header, 345, 155);
      const ustarName = prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100);
      const name = pax.get('path') ?? ustarName;
      const paxSize = pax.get('size');
      pax = new Map();
      if (paxSize !== undefined && Number(paxSize) !== size) throw new TarError('pax size does not match');
      if (name !== expectedName) throw new TarError('unexpected entry name');
      if (found) throw new TarError('more than one entry');
      if (size > maxBytes) throw new TarError('file too large');
      found = Buffer.from(data);
    } else {
      throw new TarError(`entry type ${JSON.stringify(type)} is not a regular file`);
    }
    pos = next;
  }
  if (!found) throw new TarError('no regular file in archive');
  return found;
}
