#!/usr/bin/env bash
# Runs the cargo-fuzz targets of tests/fuzz one after the other with the nightly toolchain.
# Usage: deploy/fuzz.sh [seconds-per-target (default 60)] [target...] (default: all targets).
# Installs cargo-fuzz if missing. Seeds (tests/fuzz/seeds/<target>) are copied into the working
# corpus (tests/fuzz/corpus/<target>, not committed); crashes land in tests/fuzz/artifacts/<target>,
# logs in tests/fuzz/logs/<target>.log. Exits non-zero if any target crashed or failed to run.
# Environment: CARGO_BUILD_JOBS (default 1), FUZZ_SANITIZER (default address).
set -euo pipefail
cd "$(dirname "$0")/../tests/fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(stomp_decoder journal_records journal_open)
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}

rustup run nightly rustc --version >/dev/null 2>&1 || {
  echo "fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# journal_open writes its segment files here (tmpfs when there is one).
scratch_base=/dev/shm
[ -d "$scratch_base" ] && [ -w "$scratch_base" ] || scratch_base=${TMPDIR:-/tmp}
FABRICMQ_FUZZ_DIR=$(mktemp -d "$scratch_base/fabricmq-fuzz.XXXXXX")
export FABRICMQ_FUZZ_DIR
trap 'rm -rf "$FABRICMQ_FUZZ_DIR"' EXIT

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
  echo "==> $t: ${seconds}s"
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true; fi
  log="logs/$t.log"
  set +e
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[A-Za-z]*' "$log" | tail -n1 || true)
  files=$(find "corpus/$t" -type f | wc -l)
  line="$t: status $status, ${runs:-?} execs, ${rate:-?} exec/s, corpus $files files, ${cov:-no coverage line}"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    line+=" -- FAILED (artifacts/$t, $log)"
  fi
  summary+=("$line")
done

echo
echo "==> summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz.sh: crashes or failures in: ${failed[*]}" >&2
  exit 1
fi
