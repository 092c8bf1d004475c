#!/usr/bin/env bash
# soak.sh MINUTES [--mode sqlite|redis|both] [--out DIR] [--concurrency N]
#         [--warmup-secs S]
#
# The soak run of docs/reliability.md: steady churn against wsgate for
# MINUTES, sampled every 10 s, then a verdict.
#
#   sqlite  one node, SQLite store (a temp dir), memory broker (port 19101)
#   redis   two nodes sharing Redis DB 7 as the broker (FLUSHDB at start)
#           and one PostgreSQL database, wsgate_soak (dropped and made
#           anew at start: with several nodes threads must live in a shared
#           store, docs/scaling.md) (ports 19111, 19112)
#   both    the two at once (the default), each with its own load
#
# The load (scripts/soak/load.mjs, through the TypeScript SDK): N clients
# (default 100 per mode, split over the nodes) each connecting with a JWT,
# subscribing to two rooms, publishing, running the echo agent on a new or
# an older thread and following its events to the end, reading/renaming/
# deleting threads, and disconnecting after 20-40 s — then again as
# another session (~180 connects/min per mode). One API publisher per
# node adds a publication per second over POST /api/publish. Sampled
# every 10 s (scripts/soak/sample.mjs): RSS, threads, CPU, file
# descriptors by kind, /metrics, /ws/stats, Redis memory, the client
# counters.
#
# Pass criteria (scripts/soak/evaluate.py), per mode:
#   - after warm-up (the first 40 % of the run or 3 min, whichever is
#     larger: it must cover the 10-min history thread channels keep),
#     every RSS sample of each node within +-5 % of the window's start
#     (the mean of its first three samples);
#   - 20 s after the clients left: no client socket open; every fd but the
#     store's exactly as in the baseline taken before the load (the store's
#     pool may keep connections it opened under load: its fds are allowed
#     up to the pool's maximum, its SQLite worker threads likewise);
#     connections (gauge and hub) and users 0;
#   - no WARN/ERROR log line but the expected ones (listed in evaluate.py);
#   - no client error (refused/dropped connection, failed command, run not
#     completed or with a wrong answer, a gap in a subscription's offsets);
#   - in redis mode, publications crossed nodes;
#   - SIGTERM at the end: every server exits with status 0.
# Exit status 0 when every mode passes. Output in DIR (default
# /tmp/soak-<timestamp>): per mode samples.csv, node logs, load stats,
# verdict.txt, summary.json and soak-<mode>.png.
#
# The binary: target/release/wsgate (SOAK_WSGATE_BIN overrides). Needs
# node (>= 18), python3 with matplotlib (the plot), redis-cli and psql
# (redis mode).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${SOAK_WSGATE_BIN:-$ROOT/target/release/wsgate}"
SDK_DIR="$ROOT/clients/typescript"
REDIS_URL="redis://127.0.0.1:6379/7"
PG_ADMIN_URL="${SOAK_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_DB="wsgate_soak"
SQLITE_PORT=19101
REDIS_PORTS=(19111 19112)

usage() {
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

minutes=""
mode="both"
out=""
concurrency=100
warmup_secs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --concurrency) concurrency="${2:?}"; shift 2 ;;
    --warmup-secs) warmup_secs="${2:?}"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "soak.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$minutes" ] || usage; minutes="$1"; shift ;;
  esac
done
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
case "$mode" in sqlite|redis) modes=("$mode") ;; both) modes=(sqlite redis) ;; *) usage ;; esac
duration_secs=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
out="${out:-/tmp/soak-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

[ -x "$BIN" ] || { echo "soak.sh: no binary at $BIN (cargo build --release)" >&2; exit 1; }
# Every WSGATE_* variable is read as configuration by the server: pass only
# what this script sets.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^WSGATE_' || true)
export RUST_LOG=info

log() { printf '%s soak: %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------- cleanup
# Every process this script starts is recorded in $out/pids; on any exit
# whatever is still running of them gets SIGTERM, then SIGKILL.
: >"$out/pids"
track() { echo "$1" >>"$out/pids"; }
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  local pid alive=()
  while read -r pid; do
    if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); kill -TERM "$pid" 2>/dev/null || true; fi
  done <"$out/pids"
  [ ${#alive[@]} -eq 0 ] && return 0
  for _ in $(seq 1 50); do
    local any=0
    for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
    [ "$any" -eq 0 ] && return 0
    sleep 0.2
  done
  for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A sleep a signal interrupts at once (the trap runs without waiting for it).
pause() { sleep "$1" & track $!; wait $! || true; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- the SDK
# Bundled from clients/typescript/src with its own esbuild (no dist/ is
# written into the SDK's tree); `ws` is loaded from its node_modules.
if [ ! -x "$SDK_DIR/node_modules/.bin/esbuild" ] || [ ! -d "$SDK_DIR/node_modules/ws" ]; then
  log "installing the SDK's dev dependencies (npm ci in clients/typescript)"
  npm ci --prefix "$SDK_DIR" --no-audit --no-fund >/dev/null
fi
"$SDK_DIR/node_modules/.bin/esbuild" "$SDK_DIR/src/index.ts" --bundle --format=esm \
  --platform=neutral --log-level=warning --outfile="$out/sdk/wsgate-client.mjs"

secret="soak-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
api_key="soak-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# ---------------------------------------------------------------- one mode
write_config() { # dir storage_url broker_url
  cat >"$1/wsgate.toml" <<EOF
shutdown_grace_secs = 10

[log]
format = "json"

[auth]
hmac_secret = "$secret"

[api]
keys = ["$api_key"]

[limits]
# Every soak client comes from 127.0.0.1: the per-IP handshake limit (60/min
# by default, meant for one client) would refuse most of the churn.
handshakes_per_minute_per_ip = 100000

[storage]
url = "$2"

[broker]
url = "$3"
prefix = "soak"

[agent]
kind = "echo"

[[channels.namespaces]]
name = "soak"
subscribe = "any"
publish = "any"
history_size = 100
history_ttl_secs = 300
presence = true
join_leave = true
EOF
}

write_json() { # file key=value... (values already JSON)
  local file="$1" first=1 kv
  shift
  {
    printf '{'
    for kv in "$@"; do
      [ $first -eq 1 ] || printf ','
      first=0
      printf '"%s":%s' "${kv%%=*}" "${kv#*=}"
    done
    printf '}\n'
  } >"$file"
}

run_mode() { # mode
  local m="$1" dir="$out/$1" ports=() names=() storage broker redis_json="null"
  mkdir -p "$dir"
  case "$m" in
    sqlite)
      ports=("$SQLITE_PORT"); names=(a)
      storage="sqlite://$dir/data/wsgate.db"; broker="memory" ;;
    redis)
      ports=("${REDIS_PORTS[@]}"); names=(a b)
      redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
      psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
      storage="${PG_ADMIN_URL%/*}/$PG_DB"; broker="$REDIS_URL"
      redis_json='{"host":"127.0.0.1","port":6379,"db":7}' ;;
  esac
  write_config "$dir" "$storage" "$broker"

  local i port pids=()
  for i in "${!ports[@]}"; do
    port="${ports[$i]}"
    port_free "$port" || { echo "soak.sh: port $port is in use" >&2; return 1; }
    # Its own working directory: nothing lands in the repository.
    (cd "$dir" && exec "$BIN" serve --config "$dir/wsgate.toml" --listen "127.0.0.1:$port") \
      >"$dir/node-${names[$i]}.log" 2>&1 &
    pids+=($!); track $!
    echo $! >"$dir/node-${names[$i]}.pid"
  done
  for i in "${!ports[@]}"; do
    for _ in $(seq 1 150); do
      curl -fsS -o /dev/null "http://127.0.0.1:${ports[$i]}/ready" 2>/dev/null && break
      kill -0 "${pids[$i]}" 2>/dev/null || { echo "soak.sh: node ${names[$i]} ($m) exited:" >&2; tail "$dir/node-${names[$i]}.log" >&2; return 1; }
      sleep 0.2
    done
    curl -fsS -o /dev/null "http://127.0.0.1:${ports[$i]}/ready" || { echo "soak.sh: node ${names[$i]} ($m) not ready" >&2; return 1; }
  done
  log "$m: ${#ports[@]} node(s) ready on ${ports[*]}"

  local nodes_json="" sample_nodes_json=""
  for i in "${!ports[@]}"; do
    nodes_json+="${nodes_json:+,}{\"name\":\"${names[$i]}\",\"ws\":\"ws://127.0.0.1:${ports[$i]}/ws\",\"http\":\"http://127.0.0.1:${ports[$i]}\"}"
    sample_nodes_json+="${sample_nodes_json:+,}{\"name\":\"${names[$i]}\",\"pidFile\":\"$dir/node-${names[$i]}.pid\",\"http\":\"http://127.0.0.1:${ports[$i]}\",\"port\":${ports[$i]}}"
  done
  local t0
  t0=$(date +%s%3N)
  write_json "$dir/sample.json" "csv=\"$dir/samples.csv\"" "t0=$t0" "every=10" \
    "phaseFile=\"$dir/phase\"" "statsFile=\"$dir/load-stats.json\"" "loadPidFile=\"$dir/load.pid\"" \
    "apiKey=\"$api_key\"" "redis=$redis_json" "nodes=[$sample_nodes_json]"
  write_json "$dir/load.json" "mode=\"$m\"" "sdk=\"$out/sdk/wsgate-client.mjs\"" \
    "wsFrom=\"$SDK_DIR/package.json\"" "secret=\"$secret\"" "apiKey=\"$api_key\"" \
    "stats=\"$dir/load-stats.json\"" "concurrency=$concurrency" "nodes=[$nodes_json]"

  # Baseline: the idle servers, before any client.
  echo baseline >"$dir/phase"
  pause 10
  node "$ROOT/scripts/soak/sample.mjs" --config "$dir/sample.json" --once --phase baseline

  echo load >"$dir/phase"
  node "$ROOT/scripts/soak/sample.mjs" --config "$dir/sample.json" >"$dir/sampler.log" 2>&1 &
  local sampler=$!
  track $sampler
  node "$ROOT/scripts/soak/load.mjs" --config "$dir/load.json" >"$dir/load.log" 2>&1 &
  local load=$!
  track $load
  echo $load >"$dir/load.pid"
  echo "$(( ($(date +%s%3N) - t0) / 1000 ))" >"$dir/load-start-secs"
  log "$m: load started ($concurrency clients), running ${minutes} min"
  pause "$duration_secs"

  # The clients leave: running sessions finish their run and close.
  echo drain >"$dir/phase"
  echo "$(( ($(date +%s%3N) - t0) / 1000 ))" >"$dir/load-end-secs"
  kill -TERM "$load" 2>/dev/null || true
  wait "$load" || echo "load exited with $?" >>"$dir/load.log"
  log "$m: load stopped; waiting 20 s"
  pause 20
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  node "$ROOT/scripts/soak/sample.mjs" --config "$dir/sample.json" --once --phase after

  # SIGTERM: each must exit 0 within the grace period.
  : >"$dir/exit-codes"
  for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}"; done
  for i in "${!pids[@]}"; do
    local code=0
    wait "${pids[$i]}" || code=$?
    echo "${names[$i]} $code" >>"$dir/exit-codes"
  done
  log "$m: servers stopped (exit codes: $(tr '\n' ' ' <"$dir/exit-codes"))"

  local title="wsgate soak, $m"
  [ "$m" = sqlite ] && title+=": one node, SQLite, memory broker" || title+=": two nodes, Redis broker, PostgreSQL"
  python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib >/dev/null 2>&1 || true
  python3 "$ROOT/scripts/soak/plot.py" "$dir/samples.csv" "$dir/soak-$m.png" --title "$title, ${minutes} min" \
    ${warmup_secs:+--warmup-secs "$warmup_secs"} || echo "soak.sh: plot failed" >&2
  local verdict=0
  python3 "$ROOT/scripts/soak/evaluate.py" "$dir" --mode "$m" --minutes "$minutes" \
    ${warmup_secs:+--warmup-secs "$warmup_secs"} >"$dir/verdict.txt" || verdict=$?
  return $verdict
}

# ---------------------------------------------------------------- run
log "output in $out; modes: ${modes[*]}; ${minutes} min; binary $BIN"
{
  echo "command: $0 $minutes --mode $mode --concurrency $concurrency${warmup_secs:+ --warmup-secs $warmup_secs}"
  echo "binary: $BIN ($(sha256sum "$BIN" | cut -c1-16), built $(date -r "$BIN" -u +%FT%TZ))"
  echo "repository: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes in crates/')"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
  echo "started: $(date -u +%FT%TZ)"
} >"$out/run-info"
declare -A runners=()
for m in "${modes[@]}"; do
  run_mode "$m" >"$out/$m.log" 2>&1 &
  runners[$m]=$!
  track $!
done
status=0
for m in "${modes[@]}"; do
  code=0
  wait "${runners[$m]}" || code=$?
  cat "$out/$m.log"
  [ -f "$out/$m/verdict.txt" ] && cat "$out/$m/verdict.txt"
  [ $code -eq 0 ] || { status=1; echo "soak.sh: $m FAILED (status $code)"; }
done
[ $status -eq 0 ] && echo "soak.sh: PASS (${modes[*]})" || echo "soak.sh: FAIL"
exit $status
