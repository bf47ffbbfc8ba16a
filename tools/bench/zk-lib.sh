# shellcheck shell=bash
# Private ZooKeeper for the fabric benchmarks (sourced by failover.sh and recovery.sh).
#
#   zk_start WORK_DIR      starts a standalone ZooKeeper (Debian's `zookeeper` package) on a free
#                          loopback port, waits until it answers `srvr` with "Mode:", sets ZK_PORT
#                          and ZK_PID; its log goes to WORK_DIR/zk.log
#   zk_stop                kills the ZooKeeper this shell started (ZK_PID only)
#
# Settings: tickTime=200 (so minSessionTimeout=400 ms is allowed), maxSessionTimeout=60000,
# forceSync=no, admin server off, all four-letter words allowed.

ZK_PID=""
ZK_PORT=""
ZK_START_TIMEOUT="${ZK_START_TIMEOUT:-60}"

# The release binaries the benchmarks drive ($MQ_BIN_DIR); exits 2 if one is missing.
require_binaries() {
    local b
    for b in mq-broker mq-client mq-fabric; do
        [[ -x "$MQ_BIN_DIR/$b" ]] || { echo "missing $MQ_BIN_DIR/$b: cargo build --release --bins" >&2; exit 2; }
    done
}

# Which binaries were measured (another build may replace them between runs).
binaries_info() {
    local b
    for b in mq-broker mq-client mq-fabric; do
        printf '%s mtime=%s sha256=%.16s\n' "$b" \
            "$(date -u -r "$MQ_BIN_DIR/$b" +%Y-%m-%dT%H:%M:%SZ)" "$(sha256sum "$MQ_BIN_DIR/$b" | cut -d' ' -f1)"
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

zk_start() {
    local dir="$1"
    mkdir -p "$dir/zk"
    ZK_PORT="$(free_port)"
    cat >"$dir/zoo.cfg" <<EOF
tickTime=200
dataDir=$dir/zk
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
minSessionTimeout=400
maxSessionTimeout=60000
admin.enableServer=false
4lw.commands.whitelist=*
forceSync=no
EOF
    java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar \
        org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" >"$dir/zk.log" 2>&1 &
    ZK_PID=$!
    local deadline=$((SECONDS + ZK_START_TIMEOUT))
    until python3 -c '
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.sendall(b"srvr"); d = b""
    while True:
        c = s.recv(4096)
        if not c: break
        d += c
    sys.exit(0 if b"Mode:" in d else 1)
except OSError:
    sys.exit(1)' "$ZK_PORT" 2>/dev/null; do
        if ! kill -0 "$ZK_PID" 2>/dev/null; then
            echo "ZooKeeper exited during start-up; log: $dir/zk.log" >&2
            tail -20 "$dir/zk.log" >&2
            ZK_PID=""
            return 1
        fi
        if ((SECONDS > deadline)); then
            echo "ZooKeeper not ready after ${ZK_START_TIMEOUT}s; log: $dir/zk.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "ZooKeeper ready on 127.0.0.1:$ZK_PORT (pid $ZK_PID)" >&2
}

zk_stop() {
    if [[ -n "$ZK_PID" ]]; then
        kill "$ZK_PID" 2>/dev/null || true
        local i
        for i in $(seq 50); do
            kill -0 "$ZK_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$ZK_PID" 2>/dev/null || true
        wait "$ZK_PID" 2>/dev/null || true
        ZK_PID=""
    fi
}
