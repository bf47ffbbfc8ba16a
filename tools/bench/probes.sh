#!/usr/bin/env bash
# Runs the ignored measurement probes of one test file against a chosen mq-broker binary.
#
#   tools/bench/probes.sh TEST_FILE [BIN_DIR] [TEST_FILTER]
#
# TEST_FILE is a file of tests/tests/ without `.rs` (quota_probes, producer_probes). BIN_DIR
# (default target/release, built first) holds the `mq-broker` the probes start; pass a directory
# holding an older build to measure before and after. The harness itself is a debug build: it
# only encodes frames.
set -euo pipefail
cd "$(dirname "$0")/../.."
TEST=${1:?usage: probes.sh TEST_FILE [BIN_DIR] [TEST_FILTER]}
BIN_DIR=${2:-target/release}
FILTER=${3:-probe_}
if [[ $BIN_DIR == target/release ]]; then
    cargo build --release -p fabricmq-broker --bin mq-broker
fi
MQ_BIN_DIR=$(realpath "$BIN_DIR") cargo test -p fabricmq-tests --test "$TEST" \
    -- --ignored --nocapture --test-threads 1 "$FILTER" 2>&1 | grep -v '^running\|^test result\|^$'
