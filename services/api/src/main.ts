import { ConfigError } from '../../shared/src/config';
import { loadApiConfig } from './api-config';
import { startApi } from './api-service';

async function main(): Promise<void> {
  const api = await startApi(loadApiConfig(process.env));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      // A stuck close must not keep the process alive past a supervisor's patience.
      setTimeout(() => process.exit(1), 10_000).unref();
      void api.close().then(() => process.exit(0));
    });
  }
}

main().catch((err: unknown) => {
  // One clear line for configuration mistakes; other start-up failures get their message, not a stack.
  const message = err instanceof ConfigError ? err.message : `start-up failed: ${(err as Error).message}`;
  console.error(`maestro api: ${message.replace(/\n/g, '\nmaestro api: ')}`);
  process.exit(1);
});
