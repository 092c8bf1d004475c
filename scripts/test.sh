#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need
# when it is missing, then runs `cargo nextest run --workspace` (extra
# arguments are passed on, e.g. a test name filter).
#   - cargo-nextest
#   - PostgreSQL on 127.0.0.1:5432 running (started if installed but
#     stopped); the PostgreSQL tests run when TEST_POSTGRES_URL is set
#     (.ci/run sets it) and are reported skipped otherwise
#   - Redis on 127.0.0.1:6379 when TEST_REDIS_URL is set (.ci/run sets it;
#     the Redis tests are reported skipped without it)
#   - Chromium (Debian package) and playwright-core (tests/browser) for the
#     browser test
#   - the npm graphql-ws client and ws (tests/graphql-ws) for the GraphQL
#     client test
#   - the TypeScript SDK's dev dependencies (clients/typescript: typescript,
#     ws) for its suite, which runs against the binary
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "test.sh: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi

# Redis on 127.0.0.1:6379 (the Redis broker's tests, when TEST_REDIS_URL is
# set): installed and started when missing.
if [ -n "${TEST_REDIS_URL:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: installing redis-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
  fi
  echo "test.sh: starting Redis"
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "test.sh: installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "test.sh: installing playwright-core (tests/browser)"
  npm ci --prefix tests/browser --no-audit --no-fund >/dev/null
fi
if [ ! -d clients/typescript/node_modules/typescript ]; then
  echo "test.sh: installing the TypeScript SDK's dev dependencies (clients/typescript)"
  npm ci --prefix clients/typescript --no-audit --no-fund >/dev/null
fi
if [ ! -d tests/graphql-ws/node_modules/graphql-ws ]; then
  echo "test.sh: installing graphql-ws and ws (tests/graphql-ws)"
  npm ci --prefix tests/graphql-ws --no-audit --no-fund >/dev/null
fi

exec cargo nextest run --workspace "$@"
