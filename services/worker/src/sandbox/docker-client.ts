import Docker from 'dockerode';

/** The Docker engine client for `DOCKER_HOST` (`unix:///path` or `tcp://host:port`), else the local socket. */
export function dockerClient(dockerHost: string | undefined): Docker {
  if (!dockerHost) return new Docker();
  const url = new URL(dockerHost);
  if (url.protocol === 'unix:') return new Docker({ socketPath: url.pathname });
  return new Docker({ host: url.hostname, port: Number(url.port || 2375), protocol: url.protocol === 'https:' ? 'https' : 'http' });
}
