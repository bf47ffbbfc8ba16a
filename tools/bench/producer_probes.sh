#!/usr/bin/env bash
# Issue 10 items 1, 2 and 6 (producer ids) probes: a producer table larger than any record,
# graceful restarts, and 300,000 distinct producer ids from one user.
#
#   tools/bench/producer_probes.sh [BIN_DIR] [TEST_FILTER]
#
# Runs the ignored probes of tests/tests/producer_probes.rs against the `mq-broker` in BIN_DIR
# (default: target/release, built first); each starts its own broker process and prints RSS,
# journal size, recovered counts and a good client's round trips. PROBE_N sets item 1's message
# count (default 19600); PROBE_OLD=1 runs item 1 against a broker without the [producers] section.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR=${1:-target/release}
FILTER=${2:-probe_}
if [[ $BIN_DIR == target/release ]]; then
    cargo build --release -p fabricmq-broker --bin mq-broker
fi
# The harness is a debug build (it only encodes frames); the broker is BIN_DIR's.
MQ_BIN_DIR=$(realpath "$BIN_DIR") cargo test -p fabricmq-tests --test producer_probes \
    -- --ignored --nocapture --test-threads 1 "$FILTER" 2>&1 | grep -v '^running\|^test result\|^$'
