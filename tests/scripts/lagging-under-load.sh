#!/usr/bin/env bash
# Runs `a_lagging_consumer_gets_each_message_once_through_master_chaos` N times while a CPU hog
# (a busy loop pinned to core 0 with taskset) runs; prints each run's RESULT line and the failure
# count. Usage: tests/scripts/lagging-under-load.sh [N] (from the workspace root).
set -u
N=${1:-10}
cargo build --workspace --bins -q || exit 1
BIN=$(cargo test -p fabricmq-tests --test client_failover --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*client_failover[^"]*"' | cut -d'"' -f4 | tail -1)
[ -x "$BIN" ] || { echo "test binary not found" >&2; exit 1; }
taskset -c 0 sh -c 'while :; do :; done' &
HOG=$!
trap 'kill "$HOG" 2>/dev/null' EXIT
fail=0
for i in $(seq 1 "$N"); do
  out=$("$BIN" --exact a_lagging_consumer_gets_each_message_once_through_master_chaos --nocapture 2>&1)
  rc=$?
  echo "run $i: rc=$rc $(grep -o 'RESULT.*' <<<"$out" | head -1)"
  if [ $rc -ne 0 ]; then
    fail=$((fail + 1))
    grep -E "panicked|application got|messages twice" <<<"$out" | head -3
  fi
done
echo "failed $fail of $N runs"
