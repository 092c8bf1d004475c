#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every target in fuzz/:
#   scripts/fuzz.sh SECONDS [TARGET...]
# runs each target (all of them by default) for SECONDS, starting from its
# committed seeds (fuzz/seeds/TARGET) plus what earlier runs found
# (fuzz/corpus/TARGET, not committed) and every input that once failed
# (fuzz/regressions/TARGET), and prints executions, coverage and
# crashes per target. Exits 1 when any target crashed; the crashing input is
# in fuzz/artifacts/TARGET/ (reproduce with
# `cargo +nightly fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-…`).
# Needs the nightly toolchain; installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# One build for all targets (release with debug assertions, AddressSanitizer);
# the binaries then run directly, so a source edit during a long run does
# not rebuild between targets.
# FUZZ_DEV=1 builds without optimizations: half the build time for a short
# smoke run (CI), at a fraction of the executions per second.
profile=release build_args=()
if [ "${FUZZ_DEV:-}" = 1 ]; then profile=debug build_args=(--dev); fi
cargo +nightly fuzz build --fuzz-dir fuzz "${build_args[@]}"
bin_dir="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/$profile"

failed=0
report=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last-run.log"
  set +e
  # -rss_limit_mb: a leak or an unbounded buffer fails the run instead of
  # the machine; -timeout: one input taking 10 s is a hang.
  # fuzz/regressions/TARGET holds every input that once failed: run first,
  # with the seeds, on every run.
  dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  "$bin_dir/$t" "${dirs[@]}" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -oP '#[0-9]+\s+(DONE|pulse|NEW|REDUCE)\s+cov: \K[0-9]+' "$log" | tail -1 || true)
  crashes=$(find "fuzz/artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' | wc -l)
  status=ok
  if [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
    failed=1
    grep -m 5 -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" || true
  fi
  report+=("$(printf '%-14s %12s execs  cov %6s  artifacts %3s  %s' "$t" "${execs:-?}" "${cov:-?}" "$crashes" "$status")")
done

printf '\nfuzz.sh: %s s per target\n' "$seconds"
printf '%s\n' "${report[@]}"
exit "$failed"
