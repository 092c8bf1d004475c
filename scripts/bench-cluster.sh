#!/usr/bin/env bash
# Fan-out across nodes, as recorded in docs/benchmarks.md ("Several nodes"):
# NODES wsgate nodes on one Redis, each with PER_NODE subscribers of one
# channel, publications through POST /api/publish on one more node that has
# no subscriber, RATE/s for SECONDS (every publication crosses Redis either
# way: a node delivers only what Redis's pub/sub hands it). PUBLISHER=self
# publishes through the first node instead (one node with Redis, compared
# with the memory broker on equal terms: one process on core 0).
# BROKER=memory runs one node with the memory broker instead (subscribers
# and publications on that node): the baseline.
# usage: scripts/bench-cluster.sh [NODES=3] [PER_NODE=1000] [RATE=100] [SECONDS=8] [PAYLOAD=100]
# Servers and Redis on core 0, load generator on core 1. Redis: $REDIS_URL
# (default redis://127.0.0.1:6379/0); its CPU comes from INFO cpu.
set -euo pipefail
NODES=${1:-3}
PER_NODE=${2:-1000}
RATE=${3:-100}
SECONDS_=${4:-8}
PAYLOAD=${5:-100}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
cd "$(dirname "$0")/.."
bin=${SERVER_BIN:-./target/release/wsgate}
[ -n "${SERVER_BIN:-}" ] || cargo build --release --quiet
ulimit -n 20000
export WSGATE_AUTH__HMAC_SECRET=${WSGATE_AUTH__HMAC_SECRET:-bench-secret-bench-secret-bench-secret}
export WSGATE_LIMITS__MAX_CONNECTIONS=20000 WSGATE_LIMITS__HANDSHAKES_PER_MINUTE_PER_IP=1000000
export WSGATE_LIMITS__PENDING_CONNECTIONS_PER_IP=100000 WSGATE_LIMITS__MAX_CONNECTIONS_PER_USER=20000
export WSGATE_API__KEYS='["bench-api-key-0123456789"]' RUST_LOG=${RUST_LOG:-warn}
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
# start NAME PORT [BROKER_URL]
start() {
  local port=$2
  WSGATE_LISTEN=127.0.0.1:$port WSGATE_BROKER__URL=$3 WSGATE_BROKER__PREFIX=bench-$$ \
    WSGATE_STORAGE__URL="sqlite:///tmp/wsgate-bench-cluster-$port.db" \
    taskset -c 0 "$bin" serve > "/tmp/wsgate-bench-cluster-$port.log" 2>&1 &
  PIDS+=($!)
}
urls=()
if [ "${BROKER:-redis}" = memory ]; then
  NODES=1
  start node 8190 memory
  urls=(ws://127.0.0.1:8190/ws)
  api=http://127.0.0.1:8190
  sub_pids=${PIDS[0]}
else
  for i in $(seq 1 "$NODES"); do
    start node $((8190 + i)) "$REDIS_URL"
    urls+=("ws://127.0.0.1:$((8190 + i))/ws")
  done
  sub_pids=$(IFS=,; echo "${PIDS[*]}")
  if [ "${PUBLISHER:-node}" = self ]; then
    api=http://127.0.0.1:8191
  else
    start publisher 8190 "$REDIS_URL"
    api=http://127.0.0.1:8190
  fi
fi
sleep 1.5
redis_cpu() {
  redis-cli -u "$REDIS_URL" INFO cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}'
}
[ "${BROKER:-redis}" = memory ] || r0=$(redis_cpu)
t0=$(date +%s.%N)
BENCH_API_KEY=bench-api-key-0123456789 taskset -c 1 "$bin" bench fanout \
  --url "$(IFS=,; echo "${urls[*]}")" --api "$api" \
  -n $((NODES * PER_NODE)) --rate "$RATE" --seconds "$SECONDS_" --payload "$PAYLOAD" \
  --pid "$sub_pids"
if [ "${BROKER:-redis}" != memory ]; then
  r1=$(redis_cpu); t1=$(date +%s.%N)
  awk -v a="$r0" -v b="$r1" -v t0="$t0" -v t1="$t1" 'BEGIN {
    printf "redis CPU: %.2f s over %.1f s of the run, subscribe included (%.0f%%)\n", b - a, t1 - t0, (b - a) / (t1 - t0) * 100 }'
  if [ "${PUBLISHER:-node}" != self ]; then
    awk '{printf "publishing node CPU: %.2f s in all\n", ($14 + $15) / 100}' "/proc/${PIDS[-1]}/stat"
  fi
fi
