import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type Dockerode from 'dockerode';

/**
 * Builds the sandbox image through the Docker Engine API: the one place that says how it is built,
 * used by `npm run sandbox:build` and by compose's `sandbox` service. Not by compose itself: compose
 * labels what it builds with its project, every sandbox container would inherit those labels (a
 * container cannot drop its image's labels), and compose would then show sandboxes as its own.
 */

/** The image's labels: Maestro's own and nothing else. */
export const IMAGE_LABEL = {
  role: 'maestro.role',
  /** A hash of the build context and build args: the same value means the same image, so no build. */
  context: 'maestro.sandbox-context',
} as const;
export const SANDBOX_IMAGE_ROLE = 'sandbox-image';

export interface SandboxBuildOptions {
  docker: Dockerode;
  /** The tag to build, SANDBOX_IMAGE. */
  image: string;
  /** The build context: sandbox-image/ (Dockerfile and runner.py). */
  contextDir: string;
  /** Replaces the Dockerfile's default base image when set (CI uses a local stand-in). */
  debianImage?: string;
  /** Build even when the image's context label says it is current. */
  force?: boolean;
  /** One line of build output, without its newline. */
  log?: (line: string) => void;
}

export interface SandboxBuildResult {
  /** false when the image was already built from this context. */
  built: boolean;
  /** The image id. */
  id: string;
  contextHash: string;
}

/** The context's files, relative and sorted: what the build sends and the hash covers. */
export async function contextFiles(contextDir: string): Promise<string[]> {
  const entries = await readdir(contextDir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(contextDir, path.join(e.parentPath ?? e.path, e.name)).split(path.sep).join('/'))
    .sort();
}

/** sha256 over every file's path and bytes and the build args: the `maestro.sandbox-context` label. */
export async function contextHash(contextDir: string, files: string[], buildArgs: Record<string, string>): Promise<string> {
  const hash = createHash('sha256');
  for (const file of files) {
    const bytes = await readFile(path.join(contextDir, file));
    hash.update(`file ${file} ${bytes.length}\n`).update(bytes).update('\n');
  }
  for (const key of Object.keys(buildArgs).sort()) hash.update(`arg ${key}=${buildArgs[key]}\n`);
  return hash.digest('hex');
}

/** One message of the engine's /build stream. */
interface BuildMessage {
  stream?: string;
  status?: string;
  error?: string;
  errorDetail?: { message?: string };
  aux?: { ID?: string };
}

/**
 * Reads the engine's build stream (one JSON message a line), hands each line of output to `log`, and
 * resolves with the built image's id or rejects with the engine's error.
 */
export function followBuild(stream: NodeJS.ReadableStream, log: (line: string) => void): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    let pending = '';
    let text = '';
    let error: string | undefined;
    let id: string | undefined;
    const emit = (chunk: string): void => {
      text += chunk;
      const lines = text.split(/\r?\n/);
      text = lines.pop() ?? '';
      for (const line of lines) log(line);
    };
    const handle = (raw: string): void => {
      if (raw.trim() === '') return;
      let message: BuildMessage;
      try {
        message = JSON.parse(raw) as BuildMessage;
      } catch {
        emit(`${raw}\n`);
        return;
      }
      if (message.stream !== undefined) emit(message.stream);
      else if (message.status !== undefined) emit(`${message.status}\n`);
      if (message.aux?.ID) id = message.aux.ID;
      if (message.error !== undefined || message.errorDetail !== undefined) error = message.error ?? message.errorDetail?.message ?? 'unknown error';
    };
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      handle(pending);
      if (text !== '') log(text);
      if (error !== undefined) reject(new Error(error.trim()));
      else resolve(id);
    };
    stream.on('data', (chunk: Buffer | string) => {
      const lines = (pending + chunk.toString()).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) handle(line);
    });
    stream.on('end', finish);
    stream.on('close', finish);
    stream.on('error', (err: Error) => {
      if (settled) return;
      settled = true;
      reject(err);
    });
  });
}

async function labelsOf(docker: Dockerode, image: string): Promise<Record<string, string> | undefined> {
  try {
    const info = await docker.getImage(image).inspect();
    return info.Config?.Labels ?? {};
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return undefined;
    throw err;
  }
}

/**
 * Builds `image` from `contextDir` unless an image of that name was already built from the same files
 * and build args. Throws, with the engine's message, when the build fails.
 */
export async function buildSandboxImage(opts: SandboxBuildOptions): Promise<SandboxBuildResult> {
  const { docker, image, contextDir } = opts;
  const log = opts.log ?? ((line: string) => console.log(line));
  const buildArgs: Record<string, string> = opts.debianImage ? { DEBIAN_IMAGE: opts.debianImage } : {};
  const files = await contextFiles(contextDir).catch((err: unknown) => {
    throw new Error(`cannot read the sandbox image's build context ${contextDir}: ${(err as Error).message}`);
  });
  if (!files.includes('Dockerfile')) throw new Error(`no Dockerfile in the sandbox image's build context ${contextDir}`);
  const hash = await contextHash(contextDir, files, buildArgs);

  const current = await labelsOf(docker, image);
  if (!opts.force && current?.[IMAGE_LABEL.context] === hash) {
    const { Id } = await docker.getImage(image).inspect();
    log(`${image} is up to date (${IMAGE_LABEL.context}=${hash.slice(0, 12)}), not rebuilt`);
    return { built: false, id: Id, contextHash: hash };
  }

  log(`building ${image} from ${contextDir}${opts.debianImage ? ` with DEBIAN_IMAGE=${opts.debianImage}` : ''}`);
  let stream: NodeJS.ReadableStream;
  try {
    stream = await docker.buildImage(
      { context: contextDir, src: files },
      {
        t: image,
        buildargs: buildArgs,
        labels: { [IMAGE_LABEL.role]: SANDBOX_IMAGE_ROLE, [IMAGE_LABEL.context]: hash },
        rm: true,
        forcerm: true,
      },
    );
  } catch (err) {
    throw new Error(`building ${image} failed: ${(err as Error).message}`);
  }
  try {
    await followBuild(stream, log);
  } catch (err) {
    throw new Error(`building ${image} failed: ${(err as Error).message}`);
  }
  // The stream's end is not proof of a tag: the image must now be there, carrying this context's hash.
  const built = await labelsOf(docker, image);
  if (built?.[IMAGE_LABEL.context] !== hash) throw new Error(`building ${image} failed: the engine reported no error, but the image is not tagged`);
  const { Id } = await docker.getImage(image).inspect();
  log(`built ${image} (${Id})`);
  return { built: true, id: Id, contextHash: hash };
}
