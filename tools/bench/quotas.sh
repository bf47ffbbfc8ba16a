#!/usr/bin/env bash
# Issue 10 item 6 probes: memory and CPU exhaustion by one authenticated client.
#
#   tools/bench/quotas.sh [BIN_DIR] [TEST_FILTER]
#
# Runs the ignored probes of tests/tests/quota_probes.rs against the `mq-broker` in BIN_DIR
# (default: target/release, built first). Each probe starts its own broker process, prints RSS
# (before, peak, after), a well-behaved client's receipted round trips during the attack, and
# /metrics size and scrape time. To compare with a broker built before the quotas, build that
# commit's mq-broker into another directory and pass it as BIN_DIR.
#
# The subscription-removal probe uses PROBE_SUBS subscriptions (default 200000); a broker with
# the quotas refuses past quotas.max_subscriptions_per_connection (default 1000), so to measure the
# removal itself run it again with a config raising the quotas:
#
#   printf '[quotas]\nmax_subscriptions_per_connection = 200000\nmax_subscriptions_per_user = 200000\n' > /tmp/raise.toml
#   PROBE_CONFIG=/tmp/raise.toml tools/bench/quotas.sh target/release probe_200k_subscriptions
exec "$(dirname "$0")/probes.sh" quota_probes "$@"
