import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { chown, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { JOB_ID_PATTERN } from './ids';

/** Where a stored file is: one of a job's inputs (by its name) or artifacts (by the id the store gave it). */
export type FileRef = { kind: 'input'; name: string } | { kind: 'artifact'; file: string };

export interface StoredBytes {
  /** The artifact's id in the store, for its metadata. */
  file: string;
  size: number;
  /** Hex SHA-256 of the bytes: the artifact's ETag, and what a client checks a download against. */
  sha256: string;
}

/**
 * The bytes of jobs' inputs and artifacts. Redis holds their metadata (name, size, type, digest);
 * the bytes live here, so no Redis key grows with them. A directory on one host today (a volume that
 * the API and the workers share); an object store would implement the same calls for deployments
 * on several hosts, keeping a local copy of a job's inputs for its sandbox to mount.
 */
export interface ArtifactStore {
  /** Stores an artifact's bytes under a new id, all or nothing: a reader never sees part of a file. */
  putArtifact(jobId: string, data: Buffer): Promise<StoredBytes>;
  /** Makes files already written to `uploadDir()` the job's inputs, under their names. */
  adoptInputs(jobId: string, files: readonly { name: string; path: string }[]): Promise<void>;
  /** Where uploads are written before their job exists (same volume, so adopting them is a rename). */
  uploadDir(): string;
  /** The directory holding a job's inputs, for its sandbox's read-only mount. */
  inputsDir(jobId: string): string;
  /** The bytes of a stored file, or of `range` of them (inclusive offsets), once the file is open. */
  open(jobId: string, ref: FileRef, range?: { start: number; end: number }): Promise<Readable>;
  /** Removes one artifact's bytes (replaced or refused). Missing is fine. */
  removeArtifact(jobId: string, file: string): Promise<void>;
  /** Removes everything of a job. Missing is fine. */
  removeJob(jobId: string): Promise<void>;
  /**
   * Stores a finished job's record (its whole history, as job-record.ts encodes it) under a new id,
   * all or nothing like an artifact: a reader finds the whole file or none.
   */
  putRecord(jobId: string, data: Buffer): Promise<string>;
  /** The bytes of a job's record; rejects with ENOENT when it is gone (the job was deleted meanwhile). */
  openRecord(jobId: string, record: string): Promise<Readable>;
  /** Removes a record that lost its race to become the job's (see JobStore.finish). Missing is fine. */
  removeRecord(jobId: string, record: string): Promise<void>;
  /** Every job that has something stored, with when it was last written to; for the orphan sweep. */
  jobs(): AsyncIterable<{ jobId: string; modifiedMs: number }>;
  /** Removes upload and temp files older than `olderThanMs` (a crashed request's leftovers). */
  removeStaleTemp(olderThanMs: number): Promise<number>;
}

const DIR_MODE = 0o755;
const FILE_MODE = 0o644;
const RECORD_SUFFIX = '.jsonl.gz';

/**
 * The directory store: `<root>/<prefix>/jobs/<job id>/inputs/<name>`, `.../artifacts/<id>` and a
 * finished job's `.../records/<id>.jsonl.gz`, with uploads and partly written files in
 * `<root>/<prefix>/tmp`. Directories are 0755 and files 0644: the sandbox user (another uid) reads
 * the inputs through its mount; nothing in a sandbox can write here. Every path is built from a job id (checked against its pattern), a store-made id, or an
 * input name already validated (inputNameProblem): never from a raw request path.
 *
 * Everything in the store belongs to the owner of `<root>/<prefix>`: a process running as root (an
 * API started by root beside a worker that dropped root) hands what it creates over to that owner,
 * or the other could not add to or remove it.
 */
export class DirectoryArtifactStore implements ArtifactStore {
  private readonly base: string;

  constructor(root: string, prefix: string) {
    this.base = join(root, prefix);
  }

  /** Creates the store's directories, so a missing or unwritable ARTIFACT_DIR stops start-up, not a job. */
  async init(): Promise<void> {
    await mkdir(join(this.base, 'jobs'), { recursive: true, mode: DIR_MODE });
    await mkdir(this.tmpDir(), { recursive: true, mode: DIR_MODE });
    const probe = join(this.tmpDir(), `probe-${randomUUID()}`);
    const handle = await open(probe, 'wx', FILE_MODE);
    await handle.close();
    await unlink(probe);
  }

  uploadDir(): string {
    return this.tmpDir();
  }

  inputsDir(jobId: string): string {
    return join(this.jobDir(jobId), 'inputs');
  }

  async putArtifact(jobId: string, data: Buffer): Promise<StoredBytes> {
    const file = randomUUID();
    await this.writeNew(jobId, 'artifacts', file, data);
    return { file, size: data.length, sha256: createHash('sha256').update(data).digest('hex') };
  }

  async putRecord(jobId: string, data: Buffer): Promise<string> {
    const record = randomUUID();
    await this.writeNew(jobId, 'records', `${record}${RECORD_SUFFIX}`, data);
    return record;
  }

  async openRecord(jobId: string, record: string): Promise<Readable> {
    const stream = createReadStream(this.recordPath(jobId, record));
    await once(stream, 'open');
    return stream;
  }

  async removeRecord(jobId: string, record: string): Promise<void> {
    await rm(this.recordPath(jobId, record), { force: true });
  }

  async adoptInputs(jobId: string, files: readonly { name: string; path: string }[]): Promise<void> {
    const dir = await this.makeJobDir(jobId, 'inputs');
    for (const f of files) {
      await this.handOver(f.path);
      await rename(f.path, join(dir, f.name));
    }
  }

  async open(jobId: string, ref: FileRef, range?: { start: number; end: number }): Promise<Readable> {
    const path =
      ref.kind === 'input' ? join(this.inputsDir(jobId), ref.name) : join(this.jobDir(jobId), 'artifacts', checkFileId(ref.file));
    const stream = createReadStream(path, range);
    await once(stream, 'open');
    return stream;
  }

  async removeArtifact(jobId: string, file: string): Promise<void> {
    await rm(join(this.jobDir(jobId), 'artifacts', checkFileId(file)), { force: true });
  }

  async removeJob(jobId: string): Promise<void> {
    await rm(this.jobDir(jobId), { recursive: true, force: true });
  }

  async *jobs(): AsyncIterable<{ jobId: string; modifiedMs: number }> {
    let names: string[];
    try {
      names = await readdir(join(this.base, 'jobs'));
    } catch {
      return;
    }
    for (const name of names) {
      if (!JOB_ID_PATTERN.test(name)) continue;
      const info = await stat(join(this.base, 'jobs', name)).catch(() => null);
      if (info) yield { jobId: name, modifiedMs: info.mtimeMs };
    }
  }

  async removeStaleTemp(olderThanMs: number): Promise<number> {
    const names = await readdir(this.tmpDir()).catch(() => [] as string[]);
    let removed = 0;
    for (const name of names) {
      const path = join(this.tmpDir(), name);
      const info = await stat(path).catch(() => null);
      if (info && Date.now() - info.mtimeMs > olderThanMs) {
        await rm(path, { force: true, recursive: true });
        removed += 1;
      }
    }
    return removed;
  }

  /** Writes `data` as `jobs/<id>/<part>/<name>`, visible only once whole. */
  private async writeNew(jobId: string, part: 'artifacts' | 'records', name: string, data: Buffer): Promise<void> {
    const dir = await this.makeJobDir(jobId, part);
    const temp = join(this.tmpDir(), `${jobId}-${name}`);
    const handle = await open(temp, 'wx', FILE_MODE);
    try {
      await this.handOver(temp);
      await handle.writeFile(data);
      // On disk before the rename makes it visible, so a crash never leaves a name with no bytes.
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(temp, join(dir, name));
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    // The new name on disk too before Redis names the file (a record replaces the job's history there).
    const dirHandle = await open(dir, 'r');
    try {
      await dirHandle.sync();
    } finally {
      await dirHandle.close();
    }
  }

  private recordPath(jobId: string, record: string): string {
    return join(this.jobDir(jobId), 'records', `${checkFileId(record)}${RECORD_SUFFIX}`);
  }

  /** `jobs/<id>/<part>`, made (and handed over) level by level, so that no level stays root's. */
  private async makeJobDir(jobId: string, part: 'inputs' | 'artifacts' | 'records'): Promise<string> {
    const jobDir = this.jobDir(jobId);
    for (const dir of [jobDir, join(jobDir, part)]) {
      const made = await mkdir(dir, { mode: DIR_MODE }).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw err;
          return false;
        },
      );
      if (made) await this.handOver(dir);
    }
    return join(jobDir, part);
  }

  /** Gives `path` to the store's owner when this process is root and the owner is not. */
  private async handOver(path: string): Promise<void> {
    if (process.getuid?.() !== 0) return;
    const { uid, gid } = await stat(this.base);
    if (uid !== 0) await chown(path, uid, gid);
  }

  private tmpDir(): string {
    return join(this.base, 'tmp');
  }

  private jobDir(jobId: string): string {
    if (!JOB_ID_PATTERN.test(jobId)) throw new Error('not a job id');
    return join(this.base, 'jobs', jobId);
  }
}

/** Artifact and record ids are the store's own UUIDs; anything else read back from Redis is refused, not joined into a path. */
function checkFileId(file: string): string {
  if (!/^[0-9a-f-]{36}$/.test(file)) throw new Error('not an artifact file id');
  return file;
}

/**
 * Makes the store's directories belong to `owner`: for a worker started as root, just before it
 * becomes `owner`, so that it can still write to a store that a root process created. Existing jobs'
 * directories are left as they are.
 */
export async function prepareArtifactDir(root: string, prefix: string, owner: { uid: number; gid: number }): Promise<void> {
  const base = join(root, prefix);
  for (const dir of [root, base, join(base, 'jobs'), join(base, 'tmp')]) {
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    if (dir !== root) await chown(dir, owner.uid, owner.gid);
  }
}
