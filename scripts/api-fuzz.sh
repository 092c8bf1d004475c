#!/usr/bin/env bash
# API fuzzing (issue 11): schemathesis against the OpenAPI document that a
# running wsgate serves at /api/openapi.json, with valid credentials. Fails
# on a 5xx, on any response the document does not describe (status, content
# type, headers, body schema), on an error that is not the JSON error shape,
# on valid input refused or invalid input accepted, on one user reading
# another's thread, and when the server logged a panic or died.
#
# Two runs against one server:
#   1. every operation, with the credentials each one declares: the server
#      API key (X-API-Key) and a bearer JWT of an admin;
#   2. the thread API as two ordinary users, alice and bob, so that
#      schemathesis' object-level authorization check replays each one's
#      reads of their own threads as the other (SPEC §6: owner-only).
#
# usage: scripts/api-fuzz.sh [EXAMPLES]
#   EXAMPLES              test cases per operation in each generating phase
#                         (default 100: about a minute and a half on 2 cores)
#   WSGATE_BIN            the server binary (default target/release/wsgate; not built here)
#   API_FUZZ_SEED         fix the random seed to replay a run
#   API_FUZZ_KEEP=1       keep the work directory (server log, JUnit reports)
#   API_FUZZ_SCHEMA=FILE  test this document instead of the one the server serves
#                         (to try a change of the document before a rebuild)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
examples=${1:-100}
bin=${WSGATE_BIN:-$root/target/release/wsgate}
# The server reads every WSGATE_* variable as configuration and refuses
# unknown ones (WSGATE_BIN is one); the file written below is the whole
# configuration of this run.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^WSGATE_' || true)

if [ ! -x "$bin" ]; then
  echo "api-fuzz: no server binary at $bin (cargo build --release, or set WSGATE_BIN)" >&2
  exit 2
fi

# schemathesis 4: its configuration file and CLI differ from 3.x.
if ! st --version 2>/dev/null | grep -q 'version 4\.'; then
  python3 -m pip install --quiet 'schemathesis>=4.1,<5'
fi
echo "api-fuzz: $(st --version)"

work=$(mktemp -d /tmp/wsgate-api-fuzz.XXXXXX)
server_pid=
fuzz_pid=
# shellcheck disable=SC2317  # reached through the trap, which shellcheck 0.9 does not follow
cleanup() {
  if [ -n "$fuzz_pid" ]; then
    kill "$fuzz_pid" 2>/dev/null || true
  fi
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${API_FUZZ_KEEP:-0}" = 1 ]; then
    echo "api-fuzz: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
# A CI timeout or Ctrl-C stops the server too: exit runs the EXIT trap.
trap 'exit 130' INT TERM

# A free port in the range this project's scripts may use: nothing accepts
# a connection on it. (Another process could take it before the server
# binds; the server then exits and the health wait below says so.)
port=
for p in $(seq 19200 19299); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    port=$p
    break
  fi
done
[ -n "$port" ] || { echo "api-fuzz: no free port in 19200-19299" >&2; exit 2; }
base="http://127.0.0.1:$port"

# Known credentials, made for this run only (the server listens on loopback
# and lives as long as the script).
secret="api-fuzz-hmac-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
api_key="api-fuzz-key-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

# Names without a namespace keep history and presence, so that the history
# and presence endpoints answer 200 to generated channel names and their
# response schemas are checked, not only their 400s. The handshake rate
# limit is raised because every GET of a WebSocket endpoint without an
# upgrade counts as a handshake (it would be 429 after 60 a minute).
cat > "$work/wsgate.toml" <<EOF
listen = "127.0.0.1:$port"

[auth]
hmac_secret = "$secret"

[api]
keys = ["$api_key"]

[limits]
handshakes_per_minute_per_ip = 1000000

[storage]
url = "sqlite://$work/wsgate.db"

[[channels.namespaces]]
name = ""
history_size = 100
history_ttl_secs = 600
presence = true
EOF

# --dev with the keys above set changes one thing: /dashboard/dev.json
# answers its token to loopback clients, so its 200 is checked too.
RUST_LOG=${RUST_LOG:-info} "$bin" serve --dev --config "$work/wsgate.toml" > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/health" > /dev/null 2>&1 && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "api-fuzz: the server exited:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "$base/health" > /dev/null || { echo "api-fuzz: the server did not answer /health" >&2; exit 1; }

token() { "$bin" token --config "$work/wsgate.toml" --ttl 1h "$@"; }
# Run 1: an admin, so that /ws/stats answers 200 with the bearer token too.
export API_FUZZ_TOKEN API_FUZZ_API_KEY=$api_key
API_FUZZ_TOKEN=$(token --sub api-fuzz --role admin)
# Run 2: two users in a Web Fuzzing Commons auth file, schemathesis' way of
# naming identities that must not see each other's objects.
alice=$(token --sub alice)
bob=$(token --sub bob)
export API_FUZZ_WFC="$work/users.json"
cat > "$API_FUZZ_WFC" <<EOF
{"auth": [
  {"name": "alice", "fixedHeaders": [{"name": "Authorization", "value": "Bearer $alice"}]},
  {"name": "bob", "fixedHeaders": [{"name": "Authorization", "value": "Bearer $bob"}]}
]}
EOF
export SCHEMATHESIS_HOOKS="$root/scripts/api-fuzz/hooks.py"

common=(--max-examples "$examples" --request-timeout 10 --no-color)
[ -z "${API_FUZZ_SEED:-}" ] || common+=(--seed "$API_FUZZ_SEED")
schema="$base/api/openapi.json"
if [ -n "${API_FUZZ_SCHEMA:-}" ]; then
  schema=$(realpath "$API_FUZZ_SCHEMA")
  common+=(--url "$base")
fi

# One schemathesis run: NAME CONFIG [OPTION...]. From the work directory,
# because schemathesis keeps its state (.schemathesis/, the example
# database) in the current directory; bounded by `timeout` in case a request
# hangs in a way --request-timeout does not catch. In the background, so
# that a signal to this script is handled at once, not when st is done.
fuzz() {
  local name=$1 config=$2 rc=0
  shift 2
  echo
  echo "=== api-fuzz: $name"
  (
    cd "$work"
    exec timeout 900 st --config-file "$root/scripts/api-fuzz/$config" run "$schema" \
      "${common[@]}" --report junit --report-junit-path "$work/junit-$name.xml" "$@"
  ) &
  fuzz_pid=$!
  wait "$fuzz_pid" || rc=$?
  fuzz_pid=
  return "$rc"
}

status=0
fuzz all-operations schemathesis.toml || status=1
# The coverage phase's deterministic cases ran in the first run already.
fuzz threads-two-users two-users.toml \
  --include-path-regex '^/api/threads' --phases fuzzing,stateful || status=1

# A panic answers 500 where it happens, but one in a background task (an
# agent run, a broker loop) answers nobody: only the log shows it.
if grep -q 'panicked' "$work/server.log"; then
  echo "api-fuzz: the server panicked:" >&2
  grep -A5 'panicked' "$work/server.log" >&2
  status=1
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "api-fuzz: the server died during the run" >&2
  tail -20 "$work/server.log" >&2
  status=1
fi
if [ "$status" = 0 ]; then
  echo "api-fuzz: no failures"
fi
exit "$status"
