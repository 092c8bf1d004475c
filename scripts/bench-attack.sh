#!/usr/bin/env bash
# Hostile-client runs (issue 11, part 3): every `wsgate bench attack`
# scenario against a fresh release server each, then a summary table.
# usage: scripts/bench-attack.sh [SCENARIO...]
#   SCENARIO: slowloris slowloris-50ips dribble churn never-read max-frames
#             bomb big-token big-token-64k jwks-hang jwks-huge
#             (default: all, in that order)
# Env: SERVER_BIN=… runs another build (no cargo build then); GEN_BIN=… the
#      load generator's binary (default target/release/wsgate); PORT (19300);
#      NICE=-10 runs server and generator at that nice value (root), for
#      figures on a machine that other work shares;
#      OUT=/tmp/attack-results: each run's full output (NAME.txt), its JSON
#      line (NAME.json), the server's log (NAME.server.log), summary.md.
#
# The server runs with the default hostile-facing limits (per-IP pending cap
# 64, 4096 pending in all, 60 handshakes a minute per IP, 8 KiB messages,
# 1 MiB outbound queues) except:
#   - limits.header_timeout_secs = 5 (default 10), so a wave of slow sockets
#     takes seconds;
#   - limits.messages_per_minute / message_burst raised: the probe's
#     clients ping every 20 ms (per-user limits; no attack here relies on
#     them);
#   - transport.compression on, for `bomb`.
# Server pinned to core 0, load generator to core 1, as in
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SERVER_BIN:-./target/release/wsgate}
[ -n "${SERVER_BIN:-}" ] || cargo build --release --quiet --bin wsgate
GEN=${GEN_BIN:-./target/release/wsgate}
PORT=${PORT:-19300}
JWKS_PORT=$((PORT + 91))
OUT=${OUT:-/tmp/attack-results}
NICE=${NICE:-0}
mkdir -p "$OUT"
# 10,000 slowloris sockets on our side, as many accepted on the server's.
ulimit -n "$(ulimit -Hn)"

export WSGATE_AUTH__HMAC_SECRET=${WSGATE_AUTH__HMAC_SECRET:-attack-secret-attack-secret-attack-secret}
export BENCH_API_KEY=${BENCH_API_KEY:-attack-api-key-0123456789}
export WSGATE_API__KEYS="[\"$BENCH_API_KEY\"]"
export WSGATE_LISTEN=127.0.0.1:$PORT
export WSGATE_LIMITS__HEADER_TIMEOUT_SECS=5
export WSGATE_LIMITS__MESSAGES_PER_MINUTE=100000 WSGATE_LIMITS__MESSAGE_BURST=1000
export WSGATE_TRANSPORT__COMPRESSION=true
export RUST_LOG=${RUST_LOG:-info}
COMMON=(--url "ws://127.0.0.1:$PORT/ws")

store=$(mktemp -d /tmp/attack-store.XXXXXX)
SERVER_PID=
JWKS_PID=
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  [ -z "$JWKS_PID" ] || kill "$JWKS_PID" 2>/dev/null || true
  rm -rf "$store"
}
trap cleanup EXIT

# start_server LOG [VAR=VALUE…]: a fresh server (and store) with extra
# settings; sets SERVER_PID and STARTUP_SECS once /health answers.
start_server() {
  local log=$1
  shift
  rm -rf "$store"/*
  local t0
  t0=$(date +%s.%N)
  env WSGATE_STORAGE__URL="sqlite://$store/wsgate.db" "$@" \
    nice -n "$NICE" taskset -c 0 "$BIN" serve > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 200); do
    if curl -fs "http://127.0.0.1:$PORT/health" > /dev/null; then
      STARTUP_SECS=$(echo "$(date +%s.%N) - $t0" | bc)
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited at start; see $log" >&2; return 1; }
    sleep 0.1
  done
  echo "server not answering /health after 20 s; see $log" >&2
  return 1
}

# stop_server LOG: stops it; says whether it was still alive and whether
# the log holds a panic.
stop_server() {
  local log=$1
  SERVER_STATE=alive
  kill -0 "$SERVER_PID" 2>/dev/null || SERVER_STATE=dead
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  if grep -q "panicked" "$log"; then SERVER_STATE="$SERVER_STATE, panicked"; fi
}

# run NAME SCENARIO [ARGS…] [-- SERVER SETTINGS…]
run() {
  local name=$1 scenario=$2
  shift 2
  local args=() settings=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ $# -eq 0 ] || { shift; settings=("$@"); }
  local log=$OUT/$name.server.log
  echo "=== $name: wsgate bench attack $scenario ${args[*]}" >&2
  start_server "$log" "${settings[@]}"
  local status=0 load
  load=$(cut -d' ' -f1 /proc/loadavg)
  nice -n "$NICE" taskset -c 1 "$GEN" bench attack "$scenario" "${COMMON[@]}" --pid "$SERVER_PID" "${args[@]}" \
    2>&1 | tee "$OUT/$name.txt" || status=$?
  stop_server "$log"
  local json
  json=$(grep '^{' "$OUT/$name.txt" | tail -n 1 || true)
  [ -n "$json" ] || json='{}'
  echo "$json" | jq -c --arg name "$name" --arg server "$SERVER_STATE" \
    --arg startup "$STARTUP_SECS" --arg status "$status" --arg load "$load" \
    '. + {name: $name, server_state: $server, startup_secs: ($startup | tonumber),
          exit: ($status | tonumber), loadavg_before: ($load | tonumber)}' \
    > "$OUT/$name.json"
}

start_jwks() {
  [ -n "$JWKS_PID" ] && return 0
  taskset -c 1 "$GEN" bench attack jwks-serve --listen "127.0.0.1:$JWKS_PORT" \
    > "$OUT/jwks-serve.log" 2>&1 &
  JWKS_PID=$!
  sleep 0.5
}

JWKS_COMMON=(--jwks-stats "http://127.0.0.1:$JWKS_PORT/stats")
JWKS_SERVER=(WSGATE_AUTH__ALGORITHMS='["HS256","RS256"]')

ALL=(slowloris slowloris-50ips dribble churn never-read max-frames bomb big-token big-token-64k
     jwks-hang jwks-huge)
[ $# -gt 0 ] && ALL=("$@")
for name in "${ALL[@]}"; do
  case $name in
    slowloris|dribble|churn|never-read|max-frames|bomb|big-token) run "$name" "$name" ;;
    # 50 addresses × 64 = 3,200 pending: under the global cap (4,096), so
    # the per-IP cap alone bounds the attack.
    slowloris-50ips) run "$name" slowloris --sources 50 ;;
    big-token-64k) run "$name" big-token --token-bytes 65536 ;;
    jwks-hang)
      start_jwks
      run "$name" jwks "${JWKS_COMMON[@]}" -- "${JWKS_SERVER[@]}" \
        WSGATE_AUTH__JWKS_URL="http://127.0.0.1:$JWKS_PORT/hang" ;;
    jwks-huge)
      start_jwks
      run "$name" jwks "${JWKS_COMMON[@]}" -- "${JWKS_SERVER[@]}" \
        WSGATE_AUTH__JWKS_URL="http://127.0.0.1:$JWKS_PORT/huge" ;;
    *) echo "unknown scenario $name" >&2; exit 2 ;;
  esac
done

# The summary: one row per run, from the JSON lines.
{
  echo "| run | server handled it | others unaffected | what the server did | RSS before / peak / after (MiB) | CPU (s) | probe p99 before / during (ms) | fresh handshakes failed | server | load avg |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for name in "${ALL[@]}"; do
    jq -r '
      def mib: . / 1024 * 10 | round / 10;
      def r2: . * 100 | round / 100;
      "| \(.name) | \(.server_verdict // "no report") | \(.probe_verdict // "-") | \((.counts // {}) | to_entries | map("\(.key): \(.value)") | join("; ")) | \(.server.rss_kib_before | mib) / \(.server.rss_kib_peak | mib) / \(.server.rss_kib_after | mib) | \(.server.cpu_secs | r2) | \(.probe.before.p99_ms | r2) / \(.probe.during.p99_ms | r2) | \(.probe.during.connects_failed) of \(.probe.during.connects_failed + .probe.during.connects_ok) | \(.server_state), start \(.startup_secs | r2) s | \(.loadavg_before) |"
    ' "$OUT/$name.json" 2>/dev/null || echo "| $name | no report | | | | | | | | |"
  done
} | tee "$OUT/summary.md"
