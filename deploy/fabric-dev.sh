#!/usr/bin/env bash
# Local development fabric: a ZooKeeper and the containers of a master/slave profile, all on
# loopback, in the background, under one work directory.
#
#   deploy/fabric-dev.sh start [N]    ZooKeeper on 127.0.0.1:$ZK_PORT + N containers (default 2)
#   deploy/fabric-dev.sh status       cluster-list and container list
#   deploy/fabric-dev.sh stop         stops what start started (by PID)
#
# Environment: FABRIC_DIR (default /tmp/fabricmq-dev), ZK_PORT (default 2181), STOMP_PORT
# (default 61613; the group's listener, only the master binds it), BIN (default target/release).
# The registry is secured: a random user:password is generated once into $FABRIC_DIR/zk-auth
# (mode 0600) and given to mq-fabric and the brokers through FABRIC_ZK_AUTH_FILE; use it for
# mq-fabric commands that write (e.g. FABRIC_ZK_AUTH_FILE=$FABRIC_DIR/zk-auth mq-fabric master yield default).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${FABRIC_DIR:-/tmp/fabricmq-dev}"
zk_port="${ZK_PORT:-2181}"
stomp_port="${STOMP_PORT:-61613}"
bin="${BIN:-target/release}"
zk="127.0.0.1:${zk_port}"

# The fabric's registry credentials (generated once per work directory, readable by us only).
ensure_auth() {
  if [ ! -s "$dir/zk-auth" ]; then
    (umask 077; echo "fabric:$(python3 -c 'import secrets; print(secrets.token_hex(16))')" >"$dir/zk-auth")
  fi
  export FABRIC_ZK_AUTH_FILE="$dir/zk-auth"
}

zk_classpath() {
  # zookeeper.jar's manifest lists its dependencies; the two logging jars give it a log4j binding.
  echo "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
}

start_zk() {
  if [ ! -e /usr/share/java/zookeeper.jar ]; then
    echo "installing zookeeper (Debian package)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq zookeeper
  fi
  mkdir -p "$dir/zk/data"
  cat >"$dir/zk/zoo.cfg" <<CFG
tickTime=500
dataDir=$dir/zk/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
CFG
  cat >"$dir/zk/log4j.properties" <<L4J
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1} - %m%n
L4J
  java -Xmx128m -Dlog4j.configuration="file:$dir/zk/log4j.properties" -cp "$(zk_classpath)" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zk/zoo.cfg" \
    >"$dir/zk/zookeeper.log" 2>&1 &
  echo $! >"$dir/zk/pid"
  for _ in $(seq 200); do
    if [ "$(python3 -c "import socket;s=socket.create_connection(('127.0.0.1',$zk_port),1);s.sendall(b'ruok');print(s.recv(4).decode())" 2>/dev/null)" = imok ]; then
      echo "ZooKeeper ready on $zk"; return
    fi
    sleep 0.1
  done
  echo "ZooKeeper did not start; see $dir/zk/zookeeper.log" >&2; exit 1
}

case "${1:-}" in
  start)
    n="${2:-2}"
    mkdir -p "$dir"
    [ -x "$bin/mq-broker" ] || cargo build --release --locked --bins -q
    ensure_auth
    start_zk
    "$bin/mq-fabric" --zk "$zk" profile create dev --group default --kind master-slave \
      --containers "$n" --listen "stomp://127.0.0.1:$stomp_port" --data "$dir/shared" 2>/dev/null \
      || "$bin/mq-fabric" --zk "$zk" profile edit dev --containers "$n" --data "$dir/shared"
    for i in $(seq "$n"); do
      # Each container gets its own admin endpoint on a free port (see `status`). A dev fabric on
      # loopback logs in as admin/admin: fabric mode refuses that without --allow-default-admin.
      "$bin/mq-broker" --zk "$zk" --profile dev --container "broker$i" \
        --admin-listen 127.0.0.1:0 --allow-default-admin \
        --state-file "$dir/broker$i.state" >"$dir/broker$i.log" 2>&1 &
      echo $! >"$dir/broker$i.pid"
    done
    for _ in $(seq 200); do
      "$bin/mq-fabric" --zk "$zk" status >/dev/null 2>&1 && break
      sleep 0.05
    done
    "$bin/mq-fabric" --zk "$zk" cluster-list
    ;;
  status)
    "$bin/mq-fabric" --zk "$zk" cluster-list
    "$bin/mq-fabric" --zk "$zk" container list
    python3 - "$dir" <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "broker*.state"))):
    s = json.load(open(f))
    name = os.path.basename(f)[: -len(".state")]
    admin = s.get("admin")
    where = "admin http://%s/health" % admin if admin else "no admin endpoint"
    print("%s: %s, %s" % (name, s.get("role"), where))
PY
    ;;
  stop)
    for f in "$dir"/broker*.pid "$dir/zk/pid"; do
      [ -f "$f" ] || continue
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$f"
    done
    echo "stopped"
    ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
