# syntax=docker/dockerfile:1
#
# The sluice worker (`npm run worker`): polls SLUICE_TASK_QUEUE on TEMPORAL_ADDRESS and loads
# into DATABASE_URL. Stateless, so run as many replicas as you like
# (`docker compose up -d --scale worker=4`).
#
#   docker build -t sluice-worker .
#   docker run --rm -e TEMPORAL_ADDRESS=temporal:7233 -e DATABASE_URL=postgres://... sluice-worker

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- production dependencies ---------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# package.json carries the `allowScripts` policy: npm releases that block dependency install
# scripts by default read it to let the native packages (esbuild, @swc/core, protobufjs, ...)
# set themselves up. It has to be in place before `npm ci`.
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-audit --no-fund

# ---- workflow bundle, built once here instead of by webpack at every worker start -----------
FROM deps AS bundle
COPY tsconfig.json ./
COPY src ./src
COPY scripts/bundle-workflows.ts ./scripts/bundle-workflows.ts
RUN npx tsx scripts/bundle-workflows.ts /app/workflow-bundle.js

# ---- runtime ---------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
# CA roots for TLS connections made by the native Temporal client (e.g. to Temporal Cloud).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# npm runs scripts through `sh -c`; Debian's dash forks for it, and on `docker stop` npm's
# SIGTERM then kills that shell and orphans the worker, which is SIGKILLed unfinished. bash
# execs the single command, so npm -> node pass SIGTERM on and the worker drains (the worker
# script runs node itself, with tsx's CommonJS hook and its memory settings: see package.json).
ENV NODE_ENV=production \
    NPM_CONFIG_SCRIPT_SHELL=/bin/bash \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    SLUICE_TASK_QUEUE=sluice \
    SLUICE_WORKFLOW_BUNDLE=/app/workflow-bundle.js
WORKDIR /app
# Code and dependencies stay owned by root: the worker process (user `node`) can read them,
# not change them. tsx keeps its compile cache in /tmp, npm its logs in /home/node.
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY --from=bundle /app/workflow-bundle.js ./workflow-bundle.js
USER node
CMD ["npm", "run", "worker"]
