# One image for the api and the worker; the compose `command` picks which one runs.
# The base is an ARG whose default is the official image; CI machines, which reach no container
# registry, pass a local stand-in (see .ci/run).
ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: dev dependencies and the TypeScript compiler ------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
# Only the services: the image runs the api or the worker directly, not `npm start`'s launcher.
COPY services ./services
RUN npm run build

# ---- runtime: production dependencies and the compiled JavaScript only ---------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# npm's cache goes to a throwaway directory removed in the same layer, so the image keeps none of it.
RUN npm ci --omit=dev --no-audit --no-fund --cache /tmp/npm-cache \
 && rm -rf /tmp/npm-cache
COPY --from=build /app/dist ./dist
# The sandbox image's build context: compose's `sandbox` service builds that image from it through
# the Docker Engine API (services/worker/src/sandbox-build.ts).
COPY sandbox-image ./sandbox-image
# The artifacts volume's mount point, owned by uid 1000: a new named volume takes the ownership of
# the directory it is mounted on, so the api and the worker (uid 1000) can write to it.
RUN mkdir -p /var/lib/maestro/artifacts && chown -R 1000:1000 /var/lib/maestro
LABEL org.opencontainers.image.title="maestro"
# Numeric, so orchestrators that insist on a non-root uid (runAsNonRoot) can verify it; uid 1000 is
# the `node` user of the official Node images. Nothing under /app is writable by it.
USER 1000:1000
CMD ["node", "dist/services/api/src/main.js"]
