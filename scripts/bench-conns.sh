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
source scripts/bench-server.sh
export RUST_LOG=${RUST_LOG:-info}
start_bench_server 127.0.0.1:8090 /tmp/wsgate-bench-server.log
taskset -c 1 ./target/release/wsgate bench conns --url ws://127.0.0.1:8090/ws \
  -n "$N" --sources "$SOURCES" --pid "$PID" --hold-secs ${HOLD:-3} "${EXTRA[@]}"
