# syntax=docker/dockerfile:1
# charla: build with the compiler toolchain, run on a slim image as a non-root user.
#   docker build -t charla .
#   docker run -p 3000:3000 -e JWT_SECRET=… -e API_KEY=… -v charla-data:/app/data charla

FROM node:20-slim AS build
WORKDIR /app
# better-sqlite3 compiles from source where no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# Scripts off: `prepare` would build before the sources are here; the native module is built next.
RUN npm install --no-audit --no-fund --ignore-scripts \
 && npm rebuild better-sqlite3
COPY tsconfig.json ./
COPY src ./src
RUN npx tsc -p tsconfig.json \
 && npm prune --omit=dev --no-audit --no-fund --ignore-scripts

FROM node:20-slim AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:/app/data/charla.db
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY package.json ./
COPY bin ./bin
COPY web ./web
COPY docs/openapi.yaml ./docs/openapi.yaml
# The SQLite database (and dev mode's ./data/dev.json) live here, owned by the
# unprivileged `node` user of the base image.
RUN mkdir -p /app/data && chown node:node /app/data
VOLUME ["/app/data"]
USER node
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# charla closes its clients with 1001 and flushes storage on SIGTERM, within 10 s.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/main.js"]
