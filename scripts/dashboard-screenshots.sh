#!/usr/bin/env bash
# The screenshots of docs/dashboard.md: the dashboard's browser run
# (tests/browser/dashboard.mjs, Debian's Chromium) against a server under a
# light load (`wsgate bench fanout`: 200 subscribers, 50 publications/s),
# so the charts show traffic. Writes docs/img/dashboard-*.png.
# usage: scripts/dashboard-screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-server.sh
export WSGATE_API__KEYS='["shots-api-key-0123456789"]' WSGATE_LIMITS__MAX_CONNECTIONS_PER_USER=20000
export WSGATE_METRICS_INTERVAL_SECS=1 WSGATE_AGENT__ECHO_DELAY_MS=30
export WSGATE_LIMITS__MESSAGES_PER_MINUTE=600 WSGATE_LIMITS__MESSAGE_BURST=100
export RUST_LOG=${RUST_LOG:-warn}
start_bench_server 127.0.0.1:8093 /tmp/wsgate-dashboard-shots.log
BENCH_API_KEY=shots-api-key-0123456789 ./target/release/wsgate bench fanout \
  --url ws://127.0.0.1:8093/ws --api http://127.0.0.1:8093 \
  -n 200 --rate 50 --seconds 120 --warmup-secs 0 > /dev/null &
LOAD=$!
trap 'kill $PID $LOAD 2>/dev/null || true' EXIT
sleep 12   # let the charts fill
TOKEN=$(./target/release/wsgate token --sub ops --role admin --ttl 10m)
out=$(mktemp -d)
MIN_POINTS=40 node tests/browser/dashboard.mjs http://127.0.0.1:8093 "$TOKEN" shots-api-key-0123456789 "$out"
mkdir -p docs/img
for shot in overview events chat chat-reloaded; do
  cp "$out/$shot.png" "docs/img/dashboard-$shot.png"
done
echo "docs/img/dashboard-{overview,events,chat,chat-reloaded}.png written"
