#!/usr/bin/env bash
# End-to-end fan-out, as recorded in docs/benchmarks.md: N subscribers on one
# channel, publications through POST /api/publish at RATE/s for SECONDS,
# PAYLOAD bytes of text-like data each.
# usage: scripts/bench-fanout.sh [N=1000] [RATE=500] [SECONDS=8] [PAYLOAD=100] [--deflate]
# --deflate: compression on in the server, and every subscriber negotiates it.
# Server pinned to core 0, load generator to core 1.
set -euo pipefail
N=${1:-1000}
RATE=${2:-500}
SECONDS_=${3:-8}
PAYLOAD=${4:-100}
EXTRA=()
if [ "${5:-}" = "--deflate" ]; then
  export WSGATE_TRANSPORT__COMPRESSION=true
  EXTRA=(--deflate)
fi
cd "$(dirname "$0")/.."
source scripts/bench-server.sh
export WSGATE_API__KEYS='["bench-api-key-0123456789"]' WSGATE_LIMITS__MAX_CONNECTIONS_PER_USER=20000
export RUST_LOG=${RUST_LOG:-warn}
start_bench_server 127.0.0.1:8091 /tmp/wsgate-bench-fanout.log
BENCH_API_KEY=bench-api-key-0123456789 taskset -c 1 ./target/release/wsgate bench fanout \
  --url ws://127.0.0.1:8091/ws --api http://127.0.0.1:8091 \
  -n "$N" --rate "$RATE" --seconds "$SECONDS_" --payload "$PAYLOAD" --pid "$PID" "${EXTRA[@]}"
