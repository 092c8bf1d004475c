#!/usr/bin/env bash
# GraphQL fan-out, as recorded in docs/benchmarks.md ("GraphQL fan-out"): N
# identical subscriptions (graphql-transport-ws, one document) to one
# channel, publications through POST /api/publish at RATE/s for SECONDS,
# PAYLOAD bytes of data each; the same load as scripts/bench-fanout.sh, over
# /graphql. SHARED=false turns shared resolution off (graphql.shared_resolution)
# to show what it buys.
# usage: [SHARED=false] scripts/bench-graphql.sh [N=1000] [RATE=500] [SECONDS=8] [PAYLOAD=100]
# Server pinned to core 0, load generator to core 1.
set -euo pipefail
N=${1:-1000}
RATE=${2:-500}
SECONDS_=${3:-8}
PAYLOAD=${4:-100}
cd "$(dirname "$0")/.."
source scripts/bench-server.sh
export WSGATE_API__KEYS='["bench-api-key-0123456789"]' WSGATE_LIMITS__MAX_CONNECTIONS_PER_USER=20000
export WSGATE_GRAPHQL__SHARED_RESOLUTION=${SHARED:-true}
export RUST_LOG=${RUST_LOG:-warn}
start_bench_server 127.0.0.1:8092 /tmp/wsgate-bench-graphql.log
BENCH_API_KEY=bench-api-key-0123456789 taskset -c 1 ./target/release/wsgate bench fanout --graphql \
  --url ws://127.0.0.1:8092/graphql --api http://127.0.0.1:8092 \
  -n "$N" --rate "$RATE" --seconds "$SECONDS_" --payload "$PAYLOAD" --pid "$PID"
