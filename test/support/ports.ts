import { createServer, type AddressInfo } from 'node:net';

/** A loopback port the OS says is free now (tests take ports from the OS, never fixed ones). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  await new Promise((ok) => server.close(ok));
  return port;
}
