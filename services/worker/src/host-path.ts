/**
 * The path, on the Docker host, of a directory the worker sees: what a sandbox's bind mount must name,
 * because the engine resolves a bind source on its own host, not in the worker's container.
 */
import os from 'node:os';
import path from 'node:path';
import type Dockerode from 'dockerode';

/** What hostPathFromInspect reads of a container's inspect result. */
export interface InspectedContainer {
  Id: string;
  Config?: { Hostname?: string } | null;
  Mounts?: readonly { Type?: string; Source?: string; Destination?: string }[] | null;
}

function engineStatus(err: unknown): number | undefined {
  const status = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

/** True when `inspected` is the container this process runs in, by its default hostname (a prefix of its id). */
export function isOwnContainer(inspected: InspectedContainer, hostname: string): boolean {
  return hostname !== '' && inspected.Config?.Hostname === hostname && inspected.Id.startsWith(hostname);
}

/**
 * Where `dir` lies on the Docker host, given the inspect result of the container the worker runs in
 * (undefined when it runs on the host itself, or `inspected` is some other container: then `dir` is
 * the host path). The mount whose destination is `dir` or its closest ancestor decides; one that is
 * not a bind or a volume (a tmpfs), or no mount at all, means the host cannot see `dir`: that throws.
 * Pure.
 */
export function hostPathFromInspect(inspected: InspectedContainer | undefined, hostname: string, dir: string): string {
  const wanted = path.posix.resolve(dir);
  if (!inspected || !isOwnContainer(inspected, hostname)) return wanted;
  let best: { Type?: string; Source?: string; Destination: string } | undefined;
  for (const mount of inspected.Mounts ?? []) {
    const dest = mount.Destination;
    if (typeof dest !== 'string' || !path.posix.isAbsolute(dest)) continue;
    const destination = path.posix.resolve(dest);
    const covers = destination === '/' || wanted === destination || wanted.startsWith(`${destination}/`);
    if (covers && (!best || destination.length > best.Destination.length)) best = { ...mount, Destination: destination };
  }
  const reachable = best && (best.Type === 'bind' || best.Type === 'volume') && typeof best.Source === 'string' && path.posix.isAbsolute(best.Source);
  if (!best || !reachable) {
    const found = best
      ? `${wanted} lies on a ${best.Type ?? 'unknown'} mount at ${best.Destination}, which the Docker host cannot reach`
      : `no mount of the container covers ${wanted}`;
    throw new Error(`ARTIFACT_DIR must be on a volume or bind mount of the worker's container (${hostname}) so sandboxes can mount job inputs: ${found}`);
  }
  const rest = path.posix.relative(best.Destination, wanted);
  return rest === '' ? path.posix.resolve(best.Source as string) : path.posix.join(best.Source as string, rest);
}

/**
 * The path on the Docker host of `dir` as this process sees it. Directly on the host that is `dir`;
 * in a container (docker compose) the container is found by its hostname, its container id by
 * default, and `dir` is mapped through its volumes and bind mounts (hostPathFromInspect). Throws when
 * the worker's container has no volume or bind mount covering `dir`, or when the engine fails.
 */
export async function hostPathOf(docker: Dockerode, dir: string, hostname: string = os.hostname()): Promise<string> {
  if (hostname === '') return path.posix.resolve(dir);
  let inspected: InspectedContainer | undefined;
  try {
    inspected = await docker.getContainer(hostname).inspect();
  } catch (err) {
    // No such container (404), or a hostname that is no valid container name (400): not in one of this engine's containers.
    const status = engineStatus(err);
    if (status !== 404 && status !== 400) throw err;
  }
  return hostPathFromInspect(inspected, hostname, dir);
}
