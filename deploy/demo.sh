#!/usr/bin/env bash
# The project's demo (README "Run the demo"): the fabric in action on this machine.
#  1. builds the release binaries (and installs Debian's zookeeper package if missing);
#  2. starts a ZooKeeper and a two-container master/slave group "default" (deploy/fabric-dev.sh)
#     sharing one data directory, on free loopback ports;
#  3. prints cluster-list, sends 1000 persistent messages to the master (a receipt for each);
#  4. kills the master with kill -9: the slave takes over within a fraction of a second;
#  5. prints cluster-list again and consumes the 1000 messages from the new master (the consumer
#     checks every producer sequence for gaps and duplicates).
# Everything it starts is stopped again (by PID), also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${COUNT:-1000}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export FABRIC_DIR="$(mktemp -d)"
export ZK_PORT="$(free_port)" STOMP_PORT="$(free_port)"
export BIN=target/release
trap 'deploy/fabric-dev.sh stop >/dev/null; [ -n "${KEEP_LOGS:-}" ] && cp "$FABRIC_DIR"/*.log /tmp/ 2>/dev/null; rm -rf "$FABRIC_DIR"' EXIT INT TERM

echo "==> building release binaries (the first build takes a few minutes)"
cargo build --release --locked --bins -q

echo "==> ZooKeeper on 127.0.0.1:$ZK_PORT and the group 'default' (broker1, broker2)"
deploy/fabric-dev.sh start 2 >/dev/null
zk="127.0.0.1:$ZK_PORT"
# The container reporting master with the highest epoch, other than "$1" (a killed master's state
# file still says master). Polls for up to 20 s in one process.
wait_master() { python3 - "$FABRIC_DIR" "${1:-}" <<'PY'
import json, glob, sys, time
deadline = time.time() + 20
while time.time() < deadline:
    best = None
    for f in glob.glob(sys.argv[1] + "/broker*.state"):
        name = f.rsplit("/", 1)[1].split(".")[0]
        try:
            s = json.load(open(f))
        except Exception:
            continue
        if name != sys.argv[2] and s.get("role") == "master" and s.get("listeners"):
            if best is None or (s.get("epoch") or 0) > best[0]:
                best = (s.get("epoch") or 0, name, s["listeners"][0].replace("stomp://", "tcp://"))
    if best:
        print(best[1], best[2])
        sys.exit(0)
    time.sleep(0.01)
print("no master", file=sys.stderr)
sys.exit(1)
PY
}
read -r master url <<<"$(wait_master)"
"$BIN/mq-fabric" --zk "$zk" cluster-list

echo "==> producer: $count persistent messages to $url ($master), a receipt for each"
"$BIN/mq-client" producer --brokerUrl "$url" --user admin --password admin \
  --destination queue://demo.orders --count "$count" --size 256

echo "==> kill -9 the master ($master)"
start_ns=$(date +%s%N)
kill -KILL "$(cat "$FABRIC_DIR/$master.pid")"
read -r new_master new_url <<<"$(wait_master "$master")"
echo "    $new_master is master after $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
"$BIN/mq-fabric" --zk "$zk" cluster-list

echo "==> consumer on the new master $new_url: client-individual acks, gap and duplicate check"
"$BIN/mq-client" consumer --brokerUrl "$new_url" --user admin --password admin \
  --destination queue://demo.orders --count "$count" --ack individual --timeout 10000
echo "==> demo done: every receipted message survived the master's kill -9"
