#!/usr/bin/env bash
# The project's demo (README "Run the demo"): builds the release binaries, starts an mq-broker on
# a free loopback port with a temporary data directory, sends 1000 persistent messages with
# mq-client, kills the broker with SIGKILL, restarts it on the same data, and consumes the 1000
# messages (the consumer checks every producer sequence for gaps and duplicates).
# Stops only the broker it started, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

count="${COUNT:-1000}"
echo "==> building release binaries (first run takes a few minutes)"
cargo build --release --locked --bins -q
bin=target/release
work="$(mktemp -d)"
pid=""
stop() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap 'stop; rm -rf "$work"' EXIT INT TERM

start() {
  rm -f "$work/ready.json"
  "$bin/mq-broker" --listen "stomp://127.0.0.1:${port:-0}" --data "$work/data" \
    --ready-file "$work/ready.json" >>"$work/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do
    [[ -s "$work/ready.json" ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/broker.log"; exit 1; }
    sleep 0.025
  done
  url="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listeners"][0])' "$work/ready.json")"
  port="${url##*:}"
  url="tcp://127.0.0.1:$port"
}

echo "==> starting mq-broker"
start
echo "    listening on $url (data in $work/data, log in $work/broker.log)"

echo "==> producer: $count persistent messages, a receipt for each"
"$bin/mq-client" producer --brokerUrl "$url" --user admin --password admin \
  --destination queue://demo.orders --count "$count" --size 256

echo "==> kill -9 the broker, then restart it on the same data directory"
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
start
grep -o 'journal recovered.*' "$work/broker.log" | tail -1 || true

echo "==> consumer: client-individual acks, checking sequences for gaps and duplicates"
"$bin/mq-client" consumer --brokerUrl "$url" --user admin --password admin \
  --destination queue://demo.orders --count "$count" --ack individual --timeout 10000

echo "==> browse (should be empty now)"
"$bin/mq-client" browse --brokerUrl "$url" --user admin --password admin \
  --destination queue://demo.orders --timeout 2000
echo "==> demo done: every receipted message came back after kill -9"
