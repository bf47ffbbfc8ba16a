#!/usr/bin/env bash
# Journal recovery timing after kill -9 (see fabric_bench.py recovery / fabric-recovery).
#
#   tools/bench/recovery.sh
#
# 1. Standalone mq-broker (no ZooKeeper), for N in COUNTS (default 100000 and 1000000), REPS
#    (default 2) times on a fresh data directory: fill queue://recovery with N persistent 1 KiB
#    messages (`mq-client perf --producers 1 --consumers 0 --receiptEvery 100`), kill -9 the broker,
#    restart it on the same directory and time launch -> --ready-file written (polled every 1 ms);
#    parse the `journal recovered` log line (elapsed_ms, messages) and read VmRSS from /proc.
#    The last rep of each N is also restarted a second time (kill -9, warm cache), and for
#    N=COLD_COUNT once more after `sync; echo 3 > /proc/sys/vm/drop_caches` (if permitted).
# 2. Fabric: a private ZooKeeper (zk-lib.sh), 2 containers sharing a data directory, fill
#    FABRIC_COUNT (100000) messages via the master, kill -9 the master and time signal -> the
#    slave's state file says master (the slave recovers the store while taking over) and the
#    first RECEIPT of a persistent SEND from it.
#
# Markdown on stdout (also WORK/recovery.md), raw JSON in WORK/*.json, logs in WORK.
# Environment: MQ_BIN_DIR [/work/main/target/release], WORK [/tmp/fabricmq-bench/recovery-<ts>]
#   (not on tmpfs), COUNTS [100000,1000000], REPS [2], COLD_COUNT [1000000], FABRIC_COUNT [100000],
#   TOTAL_TIMEOUT seconds per part [1800; raise it with a large QUIET_WAIT], SKIP_STANDALONE=1, SKIP_FABRIC=1, CLEAN=1 removes WORK,
#   QUIET_WAIT seconds to wait before each restart/kill for a second with both CPUs >= 85 % idle
#   [0] (the idle share before and during each restart is reported either way).
set -euo pipefail
set +m
export LC_ALL=C
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-/tmp/fabricmq-bench/recovery-$(date +%Y%m%d-%H%M%S)}"
COUNTS="${COUNTS:-100000,1000000}"
REPS="${REPS:-2}"
COLD_COUNT="${COLD_COUNT:-1000000}"
FABRIC_COUNT="${FABRIC_COUNT:-100000}"
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-1800}"
export MQ_BIN_DIR="${MQ_BIN_DIR:-/work/main/target/release}"
# shellcheck source=zk-lib.sh
source "$HERE/zk-lib.sh"
require_binaries

DRIVER_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill "$DRIVER_PID" 2>/dev/null || true   # the driver kills the brokers it started
        wait "$DRIVER_PID" 2>/dev/null || true
    fi
    zk_stop
    rm -rf "$WORK"/data-* "$WORK/fabric/shared-data" "$WORK/fabric/zk"
    [[ "${CLEAN:-0}" == 1 ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM

run_driver() {   # OUT_MD ARGS...
    local out="$1"; shift
    set +e
    timeout --kill-after=10 "$TOTAL_TIMEOUT" python3 "$HERE/fabric_bench.py" "$@" >"$out" &
    DRIVER_PID=$!
    wait "$DRIVER_PID"
    local rc=$?
    DRIVER_PID=""
    set -e
    [[ $rc -eq 124 ]] && echo "recovery.sh: driver timed out after ${TOTAL_TIMEOUT}s" >&2
    return "$rc"
}

mkdir -p "$WORK"
binaries_info | tee "$WORK/binaries.txt" >&2
if [[ "$(stat -f -c %T "$WORK")" == tmpfs ]]; then
    echo "warning: $WORK is on tmpfs; recovery reads would not touch a disk" >&2
fi
echo "work dir: $WORK" >&2
rc=0
: >"$WORK/recovery.md"
if [[ "${SKIP_STANDALONE:-0}" != 1 ]]; then
    run_driver "$WORK/standalone.md" recovery --work "$WORK" --counts "$COUNTS" --reps "$REPS" \
        --cold-count "$COLD_COUNT" --quiet-wait "${QUIET_WAIT:-0}" --out "$WORK/standalone.json" || rc=$?
    { echo "### Standalone broker: kill -9, restart on the same data directory"; echo; cat "$WORK/standalone.md"; echo; } >>"$WORK/recovery.md"
fi
if [[ "${SKIP_FABRIC:-0}" != 1 ]]; then
    mkdir -p "$WORK/fabric"
    zk_start "$WORK/fabric"
    run_driver "$WORK/fabric.md" fabric-recovery --zk "127.0.0.1:$ZK_PORT" --work "$WORK/fabric" \
        --count "$FABRIC_COUNT" --quiet-wait "${QUIET_WAIT:-0}" --out "$WORK/fabric.json" || rc=$?
    zk_stop
    { echo "### Fabric: kill -9 the master of a 2-container group (session timeout 4s)"; echo; cat "$WORK/fabric.md"; echo; } >>"$WORK/recovery.md"
fi
cat "$WORK/recovery.md"
exit "$rc"
