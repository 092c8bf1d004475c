#!/usr/bin/env bash
# Idle-connection memory and handshake CPU, as recorded in docs/benchmarks.md.
# usage: scripts/bench-conns.sh [N=19000] [SOURCES=8] [--deflate]
# --deflate: compression on in the server, and every client negotiates it.
# Server pinned to core 0, load generator to core 1. Needs `ulimit -n` of
# N + some (the hard limit here is 20000 per process).
set -euo pipefail
N=${1:-19000}
SOURCES=${2:-8}
EXTRA=()
if [ "${3:-}" = "--deflate" ]; then
  export WSGATE_TRANSPORT__COMPRESSION=true
  EXTRA=(--deflate)
fi
cd "$(dirname "$0")/.."
cargo build --release --quiet
ulimit -n 20000
export WSGATE_AUTH__HMAC_SECRET=${WSGATE_AUTH__HMAC_SECRET:-bench-secret-bench-secret-bench-secret}
export WSGATE_LIMITS__MAX_CONNECTIONS=20000 WSGATE_LIMITS__HANDSHAKES_PER_MINUTE_PER_IP=1000000
export WSGATE_LISTEN=127.0.0.1:8090 RUST_LOG=${RUST_LOG:-info}
taskset -c 0 ./target/release/wsgate serve > /tmp/wsgate-bench-server.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 1
taskset -c 1 ./target/release/wsgate bench conns --url ws://127.0.0.1:8090/ws \
  -n "$N" --sources "$SOURCES" --pid "$PID" --hold-secs 3 "${EXTRA[@]}"
