# Sourced by scripts/bench-*.sh: builds the release binary and starts
# `wsgate serve` on core 0 with the limits a load test needs (many
# connections from few addresses), listening on $1, logging to $2.
# Sets PID and stops the server when the calling script exits. SERVER_BIN
# runs another build (e.g. an older one, side by side) instead.
start_bench_server() {
  local listen=$1 log=$2
  local bin=${SERVER_BIN:-./target/release/wsgate}
  [ -n "${SERVER_BIN:-}" ] || cargo build --release --quiet
  ulimit -n 20000
  export WSGATE_AUTH__HMAC_SECRET=${WSGATE_AUTH__HMAC_SECRET:-bench-secret-bench-secret-bench-secret}
  export WSGATE_LIMITS__MAX_CONNECTIONS=20000 WSGATE_LIMITS__HANDSHAKES_PER_MINUTE_PER_IP=1000000
  export WSGATE_LIMITS__PENDING_CONNECTIONS_PER_IP=100000
  export WSGATE_LISTEN=$listen
  taskset -c 0 "$bin" serve > "$log" 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null || true' EXIT
  sleep 1
}
