#!/usr/bin/env bash
# Agent runs end to end, as recorded in docs/benchmarks.md: N users each keep
# one run going (EVENTS partial results DELAY ms apart) for SECONDS, on a
# fresh SQLite store.
# usage: scripts/bench-agent.sh [N=1000] [EVENTS=50] [DELAY=20] [SECONDS=10] [--echo]
# Default: the bench is also the agent (an NDJSON upstream, `agent.kind =
# "http"`), which measures the event latency; --echo uses the built-in echo
# agent (`agent.echo_delay_ms` = DELAY) instead.
# Server pinned to core 0, load generator (and upstream) to core 1.
set -euo pipefail
N=${1:-1000}
EVENTS=${2:-50}
DELAY=${3:-20}
SECONDS_=${4:-10}
cd "$(dirname "$0")/.."
source scripts/bench-server.sh
store=$(mktemp -d /tmp/wsgate-bench-agent.XXXXXX)
export WSGATE_STORAGE__URL="sqlite://$store/wsgate.db"
export WSGATE_LIMITS__MAX_CONNECTIONS_PER_USER=20000
export RUST_LOG=${RUST_LOG:-warn}
UPSTREAM=()
if [ "${5:-}" = "--echo" ]; then
  export WSGATE_AGENT__KIND=echo WSGATE_AGENT__ECHO_DELAY_MS=$DELAY
else
  export WSGATE_AGENT__KIND=http WSGATE_AGENT__URL=http://127.0.0.1:8093/
  UPSTREAM=(--upstream 127.0.0.1:8093)
fi
start_bench_server 127.0.0.1:8092 /tmp/wsgate-bench-agent.log
taskset -c 1 ./target/release/wsgate bench agent --url ws://127.0.0.1:8092/ws \
  -n "$N" --events "$EVENTS" --delay-ms "$DELAY" --seconds "$SECONDS_" --pid "$PID" "${UPSTREAM[@]}"
rm -rf "$store"
