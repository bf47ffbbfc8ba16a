#!/usr/bin/env bash
# Starts mq-broker on a free loopback port with a temporary data directory, runs the stomp.py
# interoperability check against it, and stops the broker (only the PID it started).
# Usage: tests/interop/run.sh [path/to/mq-broker]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
broker="${1:-$here/../../target/debug/mq-broker}"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
"$broker" --listen stomp://127.0.0.1:0 --data "$work/data" --ready-file "$work/ready.json" \
  >"$work/broker.log" 2>&1 &
pid=$!
for _ in $(seq 400); do
  [[ -s "$work/ready.json" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/broker.log"; echo "mq-broker exited" >&2; exit 1; }
  sleep 0.025
done
[[ -s "$work/ready.json" ]] || { cat "$work/broker.log"; echo "mq-broker not ready" >&2; exit 1; }
port="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listeners"][0].rsplit(":",1)[1])' "$work/ready.json")"
status=0
"$here/run_stomp_py_check.sh" --host 127.0.0.1 --port "$port" --user admin --password admin || status=$?
if grep -q "panicked at" "$work/broker.log"; then
  cat "$work/broker.log"; echo "mq-broker panicked" >&2; status=1
fi
exit "$status"
