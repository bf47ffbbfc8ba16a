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
exec "$(dirname "$0")/probes.sh" producer_probes "$@"
