#!/usr/bin/env bash
# Request/reply round trips as recorded in docs/benchmarks.md: one client,
# `ping` → `pong`, COUNT per spacing (0, 1, 5, 10, 20, 50 ms).
# usage: scripts/bench-rtt.sh [COUNT=200] [BINARY=target/release/wsgate]
# Server pinned to core 0, client to core 1.
set -euo pipefail
COUNT=${1:-200}
cd "$(dirname "$0")/.."
BIN=${2:-./target/release/wsgate}
[ -n "${2:-}" ] || cargo build --release --quiet
export WSGATE_AUTH__HMAC_SECRET=${WSGATE_AUTH__HMAC_SECRET:-bench-secret-bench-secret-bench-secret}
export WSGATE_LIMITS__MESSAGES_PER_MINUTE=1000000 WSGATE_LIMITS__MESSAGE_BURST=100000
export WSGATE_LISTEN=127.0.0.1:8094 RUST_LOG=${RUST_LOG:-warn}
store=$(mktemp -d /tmp/wsgate-bench-rtt.XXXXXX)
export WSGATE_STORAGE__URL="sqlite://$store/wsgate.db"
taskset -c 0 "$BIN" serve > /tmp/wsgate-bench-rtt.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$store"' EXIT
sleep 1
taskset -c 1 ./target/release/wsgate bench rtt --url ws://127.0.0.1:8094/ws --count "$COUNT"
