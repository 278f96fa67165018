// `npm run sandbox:build`: builds the sandbox image (sandbox-image/) through the Docker Engine API, with
// the same code compose's `sandbox` service runs (services/worker/src/sandbox-build.ts), from source.
// SANDBOX_IMAGE names the result (default maestro-sandbox:latest); DEBIAN_IMAGE, when set, replaces
// the official base image (CI machines reach no registry and use a local stand-in). An image already
// built from the same files and DEBIAN_IMAGE is kept; `npm run sandbox:build -- --force` rebuilds it.
import { require as tsxRequire } from 'tsx/cjs/api';

tsxRequire('../services/worker/src/sandbox-build.ts', import.meta.url);
