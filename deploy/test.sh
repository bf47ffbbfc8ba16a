#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs it through .ci/run).
# Installs what the tests need on a fresh Debian machine, then runs format, lint, unit,
# process-level and interoperability tests. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# Real ZooKeeper for the fabric tests (the harness starts its own server on a free loopback port).
[ -e /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
# The chaos test puts ZooKeeper, each broker and the clients in network namespaces (ip netns).
command -v ip >/dev/null || need_apt+=(iproute2)
if ((${#need_apt[@]})); then
  step "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries"
cargo build --workspace --bins --locked

step "unit, in-process and process-level tests"
# The process tests start real mq-broker processes on loopback ports.
cargo test --workspace --locked

step "interoperability: stomp.py against mq-broker"
INTEROP_VENV="$PWD/target/interop-venv" tests/interop/run.sh target/debug/mq-broker
