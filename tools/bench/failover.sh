#!/usr/bin/env bash
# Failover timing of a 2-container fabricmq master/slave group (see fabric_bench.py failover).
#
#   tools/bench/failover.sh [ROUNDS]        # ROUNDS per signal kind, default 5
#
# Starts a private ZooKeeper (zk-lib.sh) on a free loopback port, two mq-broker containers
# (group "default", shared data directory, session timeout SESSION_TIMEOUT, default 4s), then for
# SIGTERM and SIGKILL, ROUNDS rounds each: kill the master found from the state files, time
#   (a) signal -> the other container's state file says role=master (polled every 1 ms)
#   (b) signal -> first RECEIPT of a persistent SEND from the new master (raw STOMP client
#       retrying connect every 1 ms)
# and restart the killed container as a slave. Markdown table on stdout, raw JSON in
# WORK/failover.json, broker and ZooKeeper logs in WORK (kept; removed with CLEAN=1).
#
# Environment: MQ_BIN_DIR [/work/main/target/release], SESSION_TIMEOUT [4s],
#   WORK [/tmp/fabricmq-bench/failover-<timestamp>], TOTAL_TIMEOUT seconds for the whole driver
#   [900 + 2 * ROUNDS * QUIET_WAIT],
#   ROUND_TIMEOUT seconds per takeover [30], CLEAN=1 removes WORK at the end,
#   QUIET_WAIT seconds to wait before each kill for a second with both CPUs >= 85 % idle [0]
#   (the CPU idle share of the second before each kill is reported either way).
set -euo pipefail
set +m
export LC_ALL=C
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${1:-${ROUNDS:-5}}"
SESSION_TIMEOUT="${SESSION_TIMEOUT:-4s}"
WORK="${WORK:-/tmp/fabricmq-bench/failover-$(date +%Y%m%d-%H%M%S)}"
QUIET_WAIT="${QUIET_WAIT:-0}"
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-$((900 + 2 * ROUNDS * ${QUIET_WAIT%.*}))}"
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
    rm -rf "$WORK/zk" "$WORK/shared-data"
    [[ "${CLEAN:-0}" == 1 ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK"
binaries_info | tee "$WORK/binaries.txt" >&2
zk_start "$WORK"
echo "work dir: $WORK; ZooKeeper 127.0.0.1:$ZK_PORT; rounds $ROUNDS; session timeout $SESSION_TIMEOUT" >&2
set +e
timeout --kill-after=10 "$TOTAL_TIMEOUT" python3 "$HERE/fabric_bench.py" failover \
    --zk "127.0.0.1:$ZK_PORT" --work "$WORK" --rounds "$ROUNDS" \
    --session-timeout "$SESSION_TIMEOUT" --quiet-wait "$QUIET_WAIT" --out "$WORK/failover.json" >"$WORK/failover.md" &
DRIVER_PID=$!
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=""
set -e
cat "$WORK/failover.md"
[[ $rc -eq 124 ]] && echo "failover.sh: driver timed out after ${TOTAL_TIMEOUT}s" >&2
exit "$rc"
