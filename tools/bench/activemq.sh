#!/usr/bin/env bash
# Run a private ActiveMQ 5.17 (Debian package) instance for benchmarks and
# interoperability checks.
#
#   activemq.sh start|stop|status|restart|install [WORK_DIR]
#
# (install: only make sure Debian's activemq package is installed.)
# WORK_DIR (or env AMQ_WORK_DIR) defaults to /tmp/fabricmq-bench/activemq. It
# holds the instance: conf/activemq.xml, conf/log4j2.properties, data/kahadb,
# tmp/, activemq.pid and console.log.
#
# Environment:
#   AMQ_STOMP_PORT     STOMP port on 127.0.0.1 (default 61623)
#   AMQ_OPENWIRE_PORT  OpenWire port on 127.0.0.1 (default 61626)
#   AMQ_USER           user accepted by simpleAuthenticationPlugin (default admin)
#   AMQ_PASSWORD       its password (default admin)
#   AMQ_START_TIMEOUT  seconds to wait for the STOMP port (default 120)
#   AMQ_FRESH=1        wipe data/ before starting (fresh KahaDB)
#
# The broker is NOT run as a system service: the java process is launched
# directly with the same command line as Debian's /usr/bin/activemq (same JVM
# options from /usr/share/activemq/activemq-options, i.e. the package
# defaults), in the background, and its PID is kept in WORK_DIR/activemq.pid.
# `stop` only ever signals that PID (after checking it still is our java
# process for this WORK_DIR).
#
# `start` prints "activemq: listening on stomp://127.0.0.1:PORT after N ms
# (pid P)" and, as its last stdout line, "startup_ms=N".
set -euo pipefail
export LC_ALL=C   # EPOCHREALTIME must use '.' as decimal separator

CMD="${1:-}"
WORK_DIR="${2:-${AMQ_WORK_DIR:-/tmp/fabricmq-bench/activemq}}"
STOMP_PORT="${AMQ_STOMP_PORT:-61623}"
OPENWIRE_PORT="${AMQ_OPENWIRE_PORT:-61626}"
AMQ_USER="${AMQ_USER:-admin}"
AMQ_PASSWORD="${AMQ_PASSWORD:-admin}"
START_TIMEOUT="${AMQ_START_TIMEOUT:-120}"
ACTIVEMQ_HOME=/usr/share/activemq
PIDFILE="$WORK_DIR/activemq.pid"

die() { echo "activemq.sh: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 start|stop|status|restart|install [WORK_DIR]" >&2
    exit 2
}

ensure_installed() {
    if [[ -f "$ACTIVEMQ_HOME/bin/activemq.jar" ]] && command -v java >/dev/null 2>&1; then
        return 0
    fi
    echo "activemq.sh: installing the Debian activemq package" >&2
    [[ "$(id -u)" == 0 ]] || die "activemq is not installed and we are not root: apt-get install activemq"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # policy-rc.d usually prevents the service from starting in containers;
    # if it did start the packaged "main" instance is not enabled anyway
    # (instances-enabled/ is empty), so nothing listens on a fixed port.
    apt-get install -y -q activemq >&2
    [[ -f "$ACTIVEMQ_HOME/bin/activemq.jar" ]] || die "activemq.jar not found after install"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# PID from the pidfile if that process is alive and is our broker.
our_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # Guard against PID reuse: the command line must name our instance dir.
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-Dactivemq.base=$WORK_DIR" || return 1
    echo "$pid"
}

xml_escape() {
    local s="$1"
    # Replacements are quoted: in bash 5.2 an unquoted '&' there means "the match".
    s="${s//&/"&amp;"}"; s="${s//</"&lt;"}"; s="${s//>/"&gt;"}"; s="${s//\"/"&quot;"}"; s="${s//\'/"&apos;"}"
    printf '%s' "$s"
}

write_config() {
    local user pass
    user="$(xml_escape "$AMQ_USER")"
    pass="$(xml_escape "$AMQ_PASSWORD")"
    mkdir -p "$WORK_DIR/conf" "$WORK_DIR/data" "$WORK_DIR/tmp"
    # Debian's log4j2 config (console + rolling file in ${activemq.data}).
    cp /etc/activemq/instances-available/main/log4j2.properties "$WORK_DIR/conf/log4j2.properties"
    # ...but Debian's package binds slf4j to log4j 1.2 (slf4j-log4j12), which
    # ignores that file and logs nothing. Give log4j 1.2 the same INFO console
    # logging so console.log shows start-up, errors and shutdown.
    cat >"$WORK_DIR/conf/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, console
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.logger.org.apache.activemq.spring=WARN
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %5p | %m%n
L4J
    cat >"$WORK_DIR/conf/activemq.xml" <<EOF
<beans
  xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">

    <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>

    <!-- Generated by fabricmq tools/bench/activemq.sh. Based on Debian's
         instances-available/main/activemq.xml: KahaDB with default settings
         (journal disk syncs on), no JMX, no web console (the Debian package
         ships none); loopback-only connectors; simple authentication. -->
    <broker xmlns="http://activemq.apache.org/schema/core"
            useJmx="false"
            brokerName="fabricmq-bench"
            persistent="true"
            dataDirectory="\${activemq.data}">

        <persistenceAdapter>
            <kahaDB directory="\${activemq.data}/kahadb"/>
        </persistenceAdapter>

        <plugins>
            <simpleAuthenticationPlugin anonymousAccessAllowed="false">
                <users>
                    <authenticationUser username="$user" password="$pass" groups="admins,users"/>
                </users>
            </simpleAuthenticationPlugin>
        </plugins>

        <transportConnectors>
            <transportConnector name="openwire" uri="tcp://127.0.0.1:$OPENWIRE_PORT"/>
            <transportConnector name="stomp" uri="stomp://127.0.0.1:$STOMP_PORT?transport.closeAsync=false"/>
        </transportConnectors>
    </broker>
</beans>
EOF
}

# Milliseconds since the epoch, without forking `date` (bash >= 5).
now_ms() { local t="${EPOCHREALTIME/[.,]/}"; echo $(( t / 1000 )); }

# True if process $1 exists and is not a zombie (the java process is our
# child while `start` waits, so kill -0 alone would not notice it exiting).
alive() {
    local state
    state="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

cmd_start() {
    ensure_installed
    local pid
    if pid="$(our_pid)"; then
        if port_open "$STOMP_PORT"; then
            echo "activemq: already running (pid $pid) on stomp://127.0.0.1:$STOMP_PORT"
            return 0
        fi
        die "broker pid $pid from $PIDFILE is running but port $STOMP_PORT is not open; run '$0 stop' first"
    fi
    if port_open "$STOMP_PORT"; then
        die "port 127.0.0.1:$STOMP_PORT is already in use by another process"
    fi
    if port_open "$OPENWIRE_PORT"; then
        die "port 127.0.0.1:$OPENWIRE_PORT (openwire) is already in use by another process"
    fi
    rm -f "$PIDFILE"
    if [[ "${AMQ_FRESH:-0}" == 1 ]]; then
        rm -rf "$WORK_DIR/data" "$WORK_DIR/tmp"
    fi
    write_config

    # Package-default JVM options, exactly as the Debian launcher uses them.
    local ACTIVEMQ_OPTS="" JAVA_HOME=""
    # shellcheck disable=SC1091
    INSTANCE=fabricmq-bench . "$ACTIVEMQ_HOME/activemq-options"
    local java=java
    if [[ -n "$JAVA_HOME" && -x "$JAVA_HOME/bin/java" ]]; then
        java="$JAVA_HOME/bin/java"
    fi
    local -a opts
    read -r -a opts <<<"$ACTIVEMQ_OPTS"

    local t0
    t0="$(now_ms)"
    # Same flags as invokeJar() in /usr/bin/activemq (Java > 8 branch).
    # setsid: the broker must not die with the calling terminal/script.
    (
        cd "$WORK_DIR"
        exec setsid "$java" "${opts[@]}" \
            --add-reads=java.xml=java.logging \
            --add-opens java.base/java.security=ALL-UNNAMED \
            --add-opens java.base/java.net=ALL-UNNAMED \
            --add-opens java.base/java.lang=ALL-UNNAMED \
            --add-opens java.base/java.util=ALL-UNNAMED \
            --add-opens java.naming/javax.naming.spi=ALL-UNNAMED \
            --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED \
            --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
            --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
            --add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED \
            --add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED \
            --add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED \
            --add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED \
            --add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED \
            "-Dactivemq.classpath=$WORK_DIR/conf:$ACTIVEMQ_HOME/lib/" \
            "-Dactivemq.home=$ACTIVEMQ_HOME" \
            "-Dactivemq.base=$WORK_DIR" \
            "-Dactivemq.conf=$WORK_DIR/conf" \
            "-Dactivemq.data=$WORK_DIR/data" \
            "-Djava.io.tmpdir=$WORK_DIR/tmp" \
            -jar "$ACTIVEMQ_HOME/bin/activemq.jar" \
            start "xbean:file:$WORK_DIR/conf/activemq.xml" \
            </dev/null >>"$WORK_DIR/console.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PIDFILE"

    local deadline=$(( t0 + START_TIMEOUT * 1000 )) t
    while :; do
        if port_open "$STOMP_PORT"; then
            t="$(now_ms)"
            break
        fi
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$PIDFILE"
            echo "---- tail of $WORK_DIR/console.log ----" >&2
            tail -n 30 "$WORK_DIR/console.log" >&2 || true
            die "ActiveMQ exited before listening on port $STOMP_PORT"
        fi
        if (( $(now_ms) > deadline )); then
            echo "---- tail of $WORK_DIR/console.log ----" >&2
            tail -n 30 "$WORK_DIR/console.log" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$PIDFILE"
            die "ActiveMQ did not listen on port $STOMP_PORT within ${START_TIMEOUT}s"
        fi
        sleep 0.01
    done
    echo "activemq: listening on stomp://127.0.0.1:$STOMP_PORT after $(( t - t0 )) ms (pid $pid, dir $WORK_DIR)"
    echo "startup_ms=$(( t - t0 ))"
}

cmd_stop() {
    local pid i
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        echo "activemq: not running (dir $WORK_DIR)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do        # up to 30 s for a clean shutdown
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "activemq: pid $pid did not stop after SIGTERM, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    echo "activemq: stopped (pid $pid)"
}

cmd_status() {
    local pid
    if pid="$(our_pid)"; then
        local listening=no
        port_open "$STOMP_PORT" && listening=yes
        echo "activemq: running pid $pid, dir $WORK_DIR, stomp port $STOMP_PORT listening=$listening"
        return 0
    fi
    echo "activemq: stopped (dir $WORK_DIR)"
    return 3
}

case "$CMD" in
    install) ensure_installed ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) usage ;;
esac
