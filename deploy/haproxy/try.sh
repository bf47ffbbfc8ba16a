#!/usr/bin/env bash
# Tries deploy/haproxy/haproxy.cfg on this machine, everything on loopback:
#  1. starts a ZooKeeper and a two-container master/slave group "haproxy" sharing one data
#     directory, each container with its own STOMP port and admin endpoint;
#  2. starts haproxy with the example configuration (server lines and ports rewritten for
#     loopback) and shows which server it routes to;
#  3. a plain client (mq-client, tcp:// URL, no failover) sends COUNT persistent messages through
#     haproxy;
#  4. kills the master with kill -9, waits until haproxy routes to the new master and consumes
#     the COUNT messages through haproxy again (gap and duplicate check by mq-client).
# Everything it starts is stopped again (by PID), also on Ctrl-C.
#
# Environment: BIN (default target/release; built if missing), COUNT (default 200), KEEP=1 keeps
# the work directory (logs, generated haproxy.cfg).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BIN:-target/release}"
count="${COUNT:-200}"

need_apt() {
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}
command -v haproxy >/dev/null || { echo "installing haproxy (Debian package)"; need_apt haproxy; }
[ -e /usr/share/java/zookeeper.jar ] || { echo "installing zookeeper (Debian package)"; need_apt zookeeper; }
if [ ! -x "$bin/mq-broker" ] || [ ! -x "$bin/mq-client" ]; then
  echo "==> building release binaries (the first build takes a few minutes)"
  cargo build --release --locked --bins -q
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
zk_port="$(free_port)"; front="$(free_port)"; hametrics="$(free_port)"
stomp=("$(free_port)" "$(free_port)"); admin=("$(free_port)" "$(free_port)")

# ---- ZooKeeper (as deploy/fabric-dev.sh starts it) ----
mkdir -p "$work/zk/data"
cat >"$work/zk/zoo.cfg" <<CFG
tickTime=500
dataDir=$work/zk/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok
CFG
java -Xmx128m -cp "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
  org.apache.zookeeper.server.ZooKeeperServerMain "$work/zk/zoo.cfg" >"$work/zookeeper.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  [ "$(python3 -c "import socket;s=socket.create_connection(('127.0.0.1',$zk_port),1);s.sendall(b'ruok');print(s.recv(4).decode())" 2>/dev/null)" = imok ] && break
  sleep 0.1
done
echo "==> ZooKeeper on 127.0.0.1:$zk_port"

# ---- the group: two containers, one shared data directory ----
# The registry is secured with a generated user:password (mode 0600 file in the work directory).
(umask 077; echo "fabric:$(python3 -c 'import secrets; print(secrets.token_hex(16))')" >"$work/zk-auth")
export FABRIC_ZK_AUTH_FILE="$work/zk-auth"
for i in 0 1; do
  n=$((i + 1))
  "$bin/mq-broker" --zk "127.0.0.1:$zk_port" --group haproxy --container "broker$n" \
    --listen "stomp://127.0.0.1:${stomp[$i]}" --data "$work/shared" \
    --admin-listen "127.0.0.1:${admin[$i]}" --state-file "$work/broker$n.state" \
    --advertise-host 127.0.0.1 --allow-default-admin >"$work/broker$n.log" 2>&1 &
  pids+=($!)
  echo "$!" >"$work/broker$n.pid"
  disown "$!" # no "Killed" job notice when the master is killed below
  echo "    broker$n: STOMP 127.0.0.1:${stomp[$i]}, admin http://127.0.0.1:${admin[$i]}/health"
done

health() { # prints "broker1=200 broker2=503"
  python3 - "${admin[@]}" <<'PY'
import sys, urllib.request, urllib.error
out = []
for i, port in enumerate(sys.argv[1:], 1):
    try:
        code = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception:
        code = "down"
    out.append(f"broker{i}={code}")
print(" ".join(out))
PY
}
routed() { # haproxy's view: the servers it considers UP
  python3 - "$work/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
rows = [l.split(",") for l in data.decode().splitlines() if l and not l.startswith("#")]
print(" ".join(r[1] for r in rows if r[0] == "stomp_masters" and r[1].startswith("broker") and r[17] == "UP"))
PY
}
wait_routed() { # waits until haproxy routes to exactly one server other than $1; prints it
  for _ in $(seq 400); do
    up="$(routed 2>/dev/null || true)"
    if [ -n "$up" ] && [ "${up// /}" = "$up" ] && [ "$up" != "${1:-}" ]; then echo "$up"; return; fi
    sleep 0.025
  done
  echo "haproxy routes to no single master (up: ${up:-none}); see $work/haproxy.log" >&2; exit 1
}

# ---- haproxy: the example configuration, rewritten for loopback ----
python3 - deploy/haproxy/haproxy.cfg "$work/haproxy.cfg" "$front" "$hametrics" "$work/haproxy.sock" \
  "${stomp[0]}" "${admin[0]}" "${stomp[1]}" "${admin[1]}" <<'PY'
import re, sys
src, dst, front, metrics, sock, s1, a1, s2, a2 = sys.argv[1:]
text = open(src).read()
text = text.replace("bind :61613", f"bind 127.0.0.1:{front}")
text = text.replace("bind :8404", f"bind 127.0.0.1:{metrics}")
text = re.sub(r"# stats socket \S+", f"stats socket {sock}", text)
servers = (f"    server broker1 127.0.0.1:{s1} check port {a1}\n"
           f"    server broker2 127.0.0.1:{s2} check port {a2}\n")
text = re.sub(r"(    server broker\d .*\n)+", servers, text)
assert servers in text and f"bind 127.0.0.1:{front}" in text and f"stats socket {sock}" in text
open(dst, "w").write(text)
PY
haproxy -c -q -f "$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
echo "==> haproxy on 127.0.0.1:$front (config: deploy/haproxy/haproxy.cfg, servers on loopback)"

master="$(wait_routed)"
echo "    /health: $(health); haproxy routes to $master"

url="tcp://127.0.0.1:$front"
echo "==> producer through haproxy ($url): $count persistent messages, a receipt for each"
"$bin/mq-client" producer --brokerUrl "$url" --user admin --password admin \
  --destination queue://haproxy.demo --count "$count" --size 128

echo "==> kill -9 the master ($master)"
start_ns=$(date +%s%N)
kill -KILL "$(cat "$work/$master.pid")"
new_master="$(wait_routed "$master")"
echo "    haproxy routes to $new_master after $(( ($(date +%s%N) - start_ns) / 1000000 )) ms; /health: $(health)"

echo "==> consumer through haproxy ($url), same plain URL: client-individual acks, gap and duplicate check"
"$bin/mq-client" consumer --brokerUrl "$url" --user admin --password admin \
  --destination queue://haproxy.demo --count "$count" --ack individual --timeout 10000

n="${new_master#broker}"
echo "==> /status of $new_master"
python3 -c "import json,urllib.request; s=json.load(urllib.request.urlopen('http://127.0.0.1:${admin[$((n - 1))]}/status')); print({k: s[k] for k in ('container','role','epoch','services','master_terms','connections')})"
echo "==> done"
