import { statSync } from 'node:fs';

/** The image's `node` user, which the worker runs as once it has dropped root. */
export const WORKER_UID = 1000;
export const WORKER_GID = 1000;

const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

/** What the worker needs of `process` to change who it is; a parameter so tests can watch it. */
export interface IdentityCalls {
  getuid(): number;
  setgroups(groups: number[]): void;
  setgid(id: number): void;
  setuid(id: number): void;
}

export interface DroppedRoot {
  uid: number;
  gid: number;
  /** The group that owns the Docker socket, now the worker's only supplementary group. */
  socketGid: number | undefined;
}

/**
 * Started as root (as compose starts it, so nobody has to look up the socket's group id), the worker
 * becomes uid/gid 1000 with the Docker socket's group as its only supplementary group, before it
 * reads a file, opens a connection or talks to Docker. Started as anyone else, it changes nothing
 * and returns undefined. The socket's group is read from the socket itself: the path in a
 * unix:// DOCKER_HOST, or Docker's default path.
 *
 * Order matters: supplementary groups and the gid can only be changed while still root, so setuid
 * comes last; with it the kernel clears every capability, so there is no way back.
 */
export function dropRoot(
  dockerHost: string | undefined,
  calls: IdentityCalls = process as unknown as IdentityCalls,
  statGid: (path: string) => number | undefined = socketGidOf,
): DroppedRoot | undefined {
  if (calls.getuid() !== 0) return undefined;
  const socket = socketPathOf(dockerHost);
  const socketGid = socket === undefined ? undefined : statGid(socket);
  try {
    calls.setgroups(socketGid === undefined ? [] : [socketGid]);
    calls.setgid(WORKER_GID);
    calls.setuid(WORKER_UID);
  } catch (err) {
    throw new Error(
      `cannot stop running as root (${(err as Error).message}): give the container CAP_SETUID and CAP_SETGID, or start it as a non-root user in the Docker socket's group`,
    );
  }
  if (calls.getuid() === 0) throw new Error('cannot stop running as root: setuid left the uid at 0');
  return { uid: WORKER_UID, gid: WORKER_GID, socketGid };
}

/** The socket a unix:// DOCKER_HOST names, Docker's default when unset, none for a TCP engine. */
export function socketPathOf(dockerHost: string | undefined): string | undefined {
  if (!dockerHost) return DEFAULT_DOCKER_SOCKET;
  const url = new URL(dockerHost);
  return url.protocol === 'unix:' ? url.pathname : undefined;
}

function socketGidOf(path: string): number | undefined {
  try {
    return statSync(path).gid;
  } catch {
    // No socket here: the worker's own check of the engine, which comes next, says so clearly.
    return undefined;
  }
}
