#!/usr/bin/env bash
# Compare fabricmq's mq-broker with ActiveMQ 5.17 (Debian package) using the
# same `mq-client perf` runs against both. See tools/bench/README.md.
#
#   tools/bench/compare.sh [-r ROUNDS] [-s "SCENARIOS"] [-o results.json] [-d BENCH_DIR]
#
# For every round and scenario, fabricmq runs first, then ActiveMQ (interleaved),
# each on a freshly started broker with a fresh data directory and fresh queue
# names. Reported figures are medians over the rounds; start-up time is the
# median over every broker start; peak RSS is VmHWM read from /proc just before
# each broker is stopped (max over the whole run, and per scenario).
#
# Environment (defaults in brackets):
#   MQ_BROKER     fabricmq broker binary [/work/main/target/release/mq-broker]
#   MQ_CLIENT     perf client binary     [/work/main/target/release/mq-client]
#   ACTIVEMQ_SH   ActiveMQ control script [tools/bench/activemq.sh]
#   ROUNDS        rounds per scenario [3]
#   SCENARIOS     subset of "a b c d_individual d_auto" [all]
#   BROKERS       subset of "fabricmq activemq" [both]
#   BENCH_DIR     work/log directory [/tmp/fabricmq-bench/compare-YYYYmmdd-HHMMSS]
#   OUT_JSON      raw figures [BENCH_DIR/results.json] (markdown also in BENCH_DIR/results.md)
#   BENCH_SCALE   multiply every message count (e.g. 0.01 for a smoke test) [1]
#   WARMUP_COUNT  non-persistent messages sent+received on a throw-away queue
#                 after each broker start, before measuring (JIT warm-up; 0 = off) [5000]
#   CONSUMERS     consumers in scenarios a, b, c [1]
#   FILL_PRODUCERS producers filling the queue in scenario d [1]
#   RUN_TIMEOUT   seconds allowed for one mq-client invocation [900]
#   START_TIMEOUT seconds allowed for a broker to start listening [120]
#   KEEP_DATA=1   keep broker data directories (deleted after each run otherwise)
#   BENCH_USER / BENCH_PASSWORD  credentials for both brokers [admin/admin]
set -euo pipefail
set +m              # no job control: background children stay in our group
export LC_ALL=C     # '.' decimal separator for EPOCHREALTIME and printf

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MQ_BROKER="${MQ_BROKER:-/work/main/target/release/mq-broker}"
MQ_CLIENT="${MQ_CLIENT:-/work/main/target/release/mq-client}"
ACTIVEMQ_SH="${ACTIVEMQ_SH:-$HERE/activemq.sh}"
ROUNDS="${ROUNDS:-3}"
SCENARIOS="${SCENARIOS:-a b c d_individual d_auto}"
BROKERS="${BROKERS:-fabricmq activemq}"
BENCH_DIR="${BENCH_DIR:-/tmp/fabricmq-bench/compare-$(date +%Y%m%d-%H%M%S)}"
OUT_JSON="${OUT_JSON:-}"
BENCH_SCALE="${BENCH_SCALE:-1}"
WARMUP_COUNT="${WARMUP_COUNT:-5000}"
CONSUMERS="${CONSUMERS:-1}"
FILL_PRODUCERS="${FILL_PRODUCERS:-1}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
START_TIMEOUT="${START_TIMEOUT:-120}"
KEEP_DATA="${KEEP_DATA:-0}"
BENCH_USER="${BENCH_USER:-admin}"
BENCH_PASSWORD="${BENCH_PASSWORD:-admin}"
MSG_SIZE=1024

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case "$1" in
        -r|--rounds) ROUNDS="$2"; shift 2 ;;
        -s|--scenarios) SCENARIOS="$2"; shift 2 ;;
        -o|--out) OUT_JSON="$2"; shift 2 ;;
        -d|--dir) BENCH_DIR="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
    esac
done
OUT_JSON="${OUT_JSON:-$BENCH_DIR/results.json}"

die() { echo "compare.sh: error: $*" >&2; exit 1; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- preflight
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ "$BENCH_SCALE" =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SCALE must be a positive number"
[[ "$WARMUP_COUNT" =~ ^[0-9]+$ ]] || die "WARMUP_COUNT must be a non-negative integer"
for s in $SCENARIOS; do
    case "$s" in a|b|c|d_individual|d_auto) ;; *) die "unknown scenario '$s' (a b c d_individual d_auto)" ;; esac
done
for b in $BROKERS; do
    case "$b" in fabricmq|activemq) ;; *) die "unknown broker '$b' (fabricmq activemq)" ;; esac
done
for tool in python3 timeout setsid awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install -y python3 coreutils util-linux gawk)"
done
[[ -x "$MQ_CLIENT" ]] || die "mq-client not found or not executable: $MQ_CLIENT (cargo build --release, or set MQ_CLIENT)"
if [[ " $BROKERS " == *" fabricmq "* ]]; then
    [[ -x "$MQ_BROKER" ]] || die "mq-broker not found or not executable: $MQ_BROKER (cargo build --release, or set MQ_BROKER)"
fi
if [[ " $BROKERS " == *" activemq "* ]]; then
    [[ -x "$ACTIVEMQ_SH" ]] || die "ActiveMQ control script not executable: $ACTIVEMQ_SH"
    "$ACTIVEMQ_SH" install || die "could not install ActiveMQ"
fi
mkdir -p "$BENCH_DIR/runs" || die "cannot create $BENCH_DIR"
BENCH_DIR="$(cd "$BENCH_DIR" && pwd)"
if [[ "$(stat -f -c %T "$BENCH_DIR")" == tmpfs ]]; then
    log "WARNING: $BENCH_DIR is on tmpfs: fsync is free there, persistent figures will not be meaningful"
fi

# ------------------------------------------------------- process bookkeeping
# Only processes started by this script are ever signalled.
BROKER_PID=""        # running fabricmq broker (our child)
AMQ_DIR=""           # work dir of the running ActiveMQ (pid in its pidfile)
CLIENT_PID=""        # running mq-client (under `timeout`)

alive() {
    local state
    state="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# Stop a child process: SIGTERM, wait up to $2 s, then SIGKILL; reap it.
stop_pid() {
    local pid="$1" grace="${2:-30}" i
    [[ -n "$pid" ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "pid $pid ignored SIGTERM for ${grace}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$CLIENT_PID" ]]; then stop_pid "$CLIENT_PID" 5; fi
    if [[ -n "$BROKER_PID" ]]; then
        log "cleanup: stopping mq-broker pid $BROKER_PID"
        stop_pid "$BROKER_PID" 10
    fi
    if [[ -n "$AMQ_DIR" ]]; then
        log "cleanup: stopping ActiveMQ in $AMQ_DIR"
        AMQ_WORK_DIR="$AMQ_DIR" "$ACTIVEMQ_SH" stop >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ helpers
now_us() { local t="${EPOCHREALTIME/[.,]/}"; echo "$t"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p
    for _ in 1 2 3 4 5; do
        p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        port_open "$p" || { echo "$p"; return 0; }
    done
    die "could not find a free TCP port"
}

scaled() { # scaled COUNT -> max(1, round(COUNT * BENCH_SCALE))
    awk -v n="$1" -v f="$BENCH_SCALE" 'BEGIN { v = int(n * f + 0.5); if (v < 1) v = 1; print v }'
}

vmhwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# meta KEY VALUE: append to the current run's meta file (read by the summary).
meta() { printf '%s=%s\n' "$1" "$2" >>"$RUN_DIR/meta"; }

# Start fabricmq on $1 with data dir $2; sets BROKER_PID and STARTUP_MS.
start_fabricmq() {
    local port="$1" data="$2" t0 t1
    mkdir -p "$data"
    port_open "$port" && { echo "port $port already in use" >"$RUN_DIR/start.err"; return 1; }
    t0="$(now_us)"
    setsid "$MQ_BROKER" --listen "stomp://127.0.0.1:$port" --data "$data" \
        </dev/null >"$RUN_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    while :; do
        if port_open "$port"; then t1="$(now_us)"; break; fi
        if ! alive "$BROKER_PID"; then
            { echo "mq-broker exited before listening on $port; last log lines:"; tail -n 20 "$RUN_DIR/broker.log"; } >"$RUN_DIR/start.err"
            wait "$BROKER_PID" 2>/dev/null || true
            BROKER_PID=""
            return 1
        fi
        if (( $(now_us) - t0 > START_TIMEOUT * 1000000 )); then
            echo "mq-broker did not listen on $port within ${START_TIMEOUT}s" >"$RUN_DIR/start.err"
            stop_pid "$BROKER_PID" 5; BROKER_PID=""
            return 1
        fi
        sleep 0.002
    done
    STARTUP_MS="$(awk -v d="$(( t1 - t0 ))" 'BEGIN { printf "%.1f", d / 1000 }')"
    STARTED_PID="$BROKER_PID"
}

# Start ActiveMQ on STOMP port $1 in work dir $2; sets STARTUP_MS, STARTED_PID.
start_activemq() {
    local port="$1" dir="$2" ow out
    ow="$(free_port)" || return 1
    AMQ_DIR="$dir"
    if ! out="$(AMQ_WORK_DIR="$dir" AMQ_STOMP_PORT="$port" AMQ_OPENWIRE_PORT="$ow" AMQ_FRESH=1 \
                AMQ_USER="$BENCH_USER" AMQ_PASSWORD="$BENCH_PASSWORD" \
                AMQ_START_TIMEOUT="$START_TIMEOUT" "$ACTIVEMQ_SH" start 2>&1)"; then
        printf '%s\n' "$out" >"$RUN_DIR/start.err"
        AMQ_WORK_DIR="$dir" "$ACTIVEMQ_SH" stop >/dev/null 2>&1 || true
        AMQ_DIR=""
        return 1
    fi
    printf '%s\n' "$out" >"$RUN_DIR/activemq-start.out"
    STARTUP_MS="$(printf '%s\n' "$out" | sed -n 's/^startup_ms=//p' | tail -n 1)"
    STARTED_PID="$(cat "$dir/activemq.pid")"
}

# Stop whichever broker is running for this run, recording VmHWM first.
stop_broker() {
    local broker="$1" pid="$2" hwm
    hwm="$(vmhwm_kb "$pid")"
    meta vmhwm_kb "${hwm:-}"
    if [[ "$broker" == fabricmq ]]; then
        stop_pid "$BROKER_PID" 30
        BROKER_PID=""
    else
        AMQ_WORK_DIR="$AMQ_DIR" "$ACTIVEMQ_SH" stop >>"$RUN_DIR/activemq-start.out" 2>&1 || true
        AMQ_DIR=""
    fi
}

# client STEP PORT EXPECT_SENT EXPECT_RECEIVED ARGS... : one mq-client perf run.
client() {
    local step="$1" port="$2" es="$3" er="$4" rc=0
    shift 4
    meta "step.$step.expect_sent" "$es"
    meta "step.$step.expect_received" "$er"
    printf '%q ' "$MQ_CLIENT" perf --brokerUrl "tcp://127.0.0.1:$port" --user "$BENCH_USER" \
        --password "$BENCH_PASSWORD" "$@" --json >"$RUN_DIR/$step.cmd"
    timeout --signal=TERM --kill-after=10 "$RUN_TIMEOUT" \
        "$MQ_CLIENT" perf --brokerUrl "tcp://127.0.0.1:$port" --user "$BENCH_USER" \
        --password "$BENCH_PASSWORD" "$@" --json \
        </dev/null >"$RUN_DIR/$step.json" 2>"$RUN_DIR/$step.err" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    meta "step.$step.rc" "$rc"
    if ((rc != 0)); then
        if ((rc == 124)); then
            log "  $step: mq-client timed out after ${RUN_TIMEOUT}s"
        else
            log "  $step: mq-client exited with $rc: $(tail -n 3 "$RUN_DIR/$step.err" | tr '\n' ' ')"
        fi
        return 1
    fi
    return 0
}

perf_common=(--size "$MSG_SIZE")

# run_one ROUND SCENARIO BROKER
run_one() {
    local round="$1" scen="$2" broker="$3" port queue n p rc=0 step_ok=1
    RUN_DIR="$BENCH_DIR/runs/r${round}-${scen}-${broker}"
    rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
    queue="bench.${scen}.r${round}.${broker}.$$.$RANDOM"
    port="$(free_port)" || return 1
    meta round "$round"; meta scenario "$scen"; meta broker "$broker"; meta port "$port"; meta queue "$queue"
    sync   # don't let the previous run's writeback land in this one's fsyncs
    STARTUP_MS=""; STARTED_PID=""
    if [[ "$broker" == fabricmq ]]; then
        start_fabricmq "$port" "$RUN_DIR/data" || rc=1
    else
        start_activemq "$port" "$RUN_DIR/activemq" || rc=1
    fi
    if ((rc != 0)); then
        meta error "broker start failed: $(head -c 300 "$RUN_DIR/start.err" | tr '\n' ' ')"
        log "  $broker failed to start: $(tail -n 5 "$RUN_DIR/start.err" | tr '\n' ' ')"
        return 1
    fi
    meta startup_ms "$STARTUP_MS"
    meta pid "$STARTED_PID"
    log "r$round $scen $broker: listening on $port after ${STARTUP_MS} ms (pid $STARTED_PID)"

    if ((WARMUP_COUNT > 0)); then
        client warmup "$port" "$WARMUP_COUNT" "$WARMUP_COUNT" \
            --destination "queue://bench.warmup.$$.$RANDOM" --producers 1 --consumers 1 \
            --count "$WARMUP_COUNT" "${perf_common[@]}" --persistent false --receiptEvery 100 --ack auto \
            || log "  warm-up failed (ignored)"
    fi

    case "$scen" in
        a)
            n="$(scaled 20000)"
            client main "$port" "$n" "$(( CONSUMERS > 0 ? n : 0 ))" --destination "queue://$queue" \
                --producers 1 --consumers "$CONSUMERS" --count "$n" "${perf_common[@]}" \
                --persistent true --receiptEvery 1 --ack auto || step_ok=0
            ;;
        b|c)
            n="$(scaled 50000)"; p=4
            client main "$port" "$(( p * n ))" "$(( CONSUMERS > 0 ? p * n : 0 ))" --destination "queue://$queue" \
                --producers "$p" --consumers "$CONSUMERS" --count "$n" "${perf_common[@]}" \
                --persistent "$([[ $scen == b ]] && echo true || echo false)" --receiptEvery 100 --ack auto \
                || step_ok=0
            ;;
        d_individual|d_auto)
            n="$(scaled 100000)"
            local per=$(( (n + FILL_PRODUCERS - 1) / FILL_PRODUCERS ))
            n=$(( per * FILL_PRODUCERS ))
            if client fill "$port" "$n" 0 --destination "queue://$queue" \
                --producers "$FILL_PRODUCERS" --consumers 0 --count "$per" "${perf_common[@]}" \
                --persistent true --receiptEvery 100 --ack auto; then
                client drain "$port" 0 "$n" --destination "queue://$queue" \
                    --producers 0 --consumers 1 --count "$n" "${perf_common[@]}" \
                    --persistent true --receiptEvery 100 --ack "${scen#d_}" || step_ok=0
            else
                step_ok=0
            fi
            ;;
    esac

    stop_broker "$broker" "$STARTED_PID"
    if [[ "$KEEP_DATA" != 1 ]]; then
        rm -rf "$RUN_DIR/data" "$RUN_DIR/activemq/data" "$RUN_DIR/activemq/tmp"
    fi
    ((step_ok)) || { meta error "mq-client step failed (see $RUN_DIR/*.err)"; return 1; }
    return 0
}

# ---------------------------------------------------------------------- main
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host_cpus=$(nproc)"
    echo "cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "load_avg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "fs_type=$(df --output=fstype "$BENCH_DIR" | tail -n 1)"
    echo "mq_broker=$MQ_BROKER"
    echo "mq_client=$MQ_CLIENT"
    echo "mq_broker_version=$(timeout 5 "$MQ_BROKER" --version </dev/null 2>/dev/null | head -n 1 || true)"
    echo "mq_client_version=$(timeout 5 "$MQ_CLIENT" --version </dev/null 2>/dev/null | head -n 1 || true)"
    echo "activemq_version=$(dpkg-query -W -f='${Version}' activemq 2>/dev/null || true)"
    echo "java_version=$(java -version 2>&1 | head -n 1 || true)"
    echo "rounds=$ROUNDS"
    echo "scenarios=$SCENARIOS"
    echo "brokers=$BROKERS"
    echo "bench_scale=$BENCH_SCALE"
    echo "warmup_count=$WARMUP_COUNT"
    echo "consumers_abc=$CONSUMERS"
    echo "fill_producers=$FILL_PRODUCERS"
    echo "message_size=$MSG_SIZE"
} >"$BENCH_DIR/env"

log "results in $BENCH_DIR (rounds=$ROUNDS, scenarios: $SCENARIOS)"
failures=0
for ((round = 1; round <= ROUNDS; round++)); do
    for scen in $SCENARIOS; do
        for broker in $BROKERS; do
            run_one "$round" "$scen" "$broker" || failures=$((failures + 1))
        done
    done
done

# ------------------------------------------------------------------ summary
python3 - "$BENCH_DIR" "$OUT_JSON" <<'PY'
import json, os, statistics, sys

bench_dir, out_json = sys.argv[1], sys.argv[2]

def read_kv(path):
    d = {}
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    d[k] = v
    return d

def read_client_json(path):
    """mq-client --json output: the whole file, or else its last JSON line."""
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return None
    try:
        v = json.loads(text)
        return v if isinstance(v, dict) else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

env = read_kv(os.path.join(bench_dir, "env"))
runs = []
runs_dir = os.path.join(bench_dir, "runs")
for name in sorted(os.listdir(runs_dir)):
    d = os.path.join(runs_dir, name)
    m = read_kv(os.path.join(d, "meta"))
    if not m:
        continue
    run = {
        "round": int(m.get("round", 0)), "scenario": m.get("scenario"), "broker": m.get("broker"),
        "port": m.get("port"), "queue": m.get("queue"),
        "startup_ms": num(m.get("startup_ms")), "vmhwm_kb": num(m.get("vmhwm_kb")),
        "errors": [m["error"]] if m.get("error") else [], "steps": {}, "dir": d,
    }
    steps = sorted({k.split(".")[1] for k in m if k.startswith("step.")})
    for s in steps:
        res = read_client_json(os.path.join(d, s + ".json"))
        es, er = int(m.get(f"step.{s}.expect_sent", 0)), int(m.get(f"step.{s}.expect_received", 0))
        rc = int(m.get(f"step.{s}.rc", -1))
        ok = rc == 0 and res is not None
        problem = None
        if rc != 0:
            problem = f"{s}: mq-client exit status {rc}"
        elif res is None:
            problem = f"{s}: no JSON in {s}.json"
        else:
            if es and res.get("sent") != es:
                problem = f"{s}: sent {res.get('sent')} != expected {es}"
            elif er and res.get("received") != er:
                problem = f"{s}: received {res.get('received')} != expected {er}"
        if problem:
            ok = False
            if s != "warmup":
                run["errors"].append(problem)
        run["steps"][s] = {"ok": ok, "rc": rc, "expect_sent": es, "expect_received": er, "result": res}
    runs.append(run)

BROKERS = ["fabricmq", "activemq"]

def values(scenario, step, path, broker):
    out = []
    for r in runs:
        if r["broker"] != broker or (scenario and r["scenario"] != scenario):
            continue
        st = r["steps"].get(step)
        if not st or not st["ok"]:
            continue
        v = st["result"]
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        v = num(v)
        if v is not None:
            out.append(v)
    return out

metrics = []   # (key, label, unit, better, {broker: [values]}, reducer)

def add(key, label, unit, better, vals, how="median"):
    metrics.append((key, label, unit, better, vals, how))

scen_names = {
    "a": "a) 1 producer, persistent 1 KiB, receipt every message",
    "b": "b) 4 producers, persistent 1 KiB, receipt every 100",
    "c": "c) 4 producers, non-persistent 1 KiB, receipt every 100",
    "d_individual": "d) drain 100k queued persistent 1 KiB, ack individual",
    "d_auto": "d) drain 100k queued persistent 1 KiB, ack auto",
}
present = {r["scenario"] for r in runs}
for s in ["a", "b", "c"]:
    if s not in present:
        continue
    n = scen_names[s]
    V = lambda *path: {b: values(s, "main", path, b) for b in BROKERS}
    add(f"{s}.send_rate", f"{n}: send", "msg/s", "higher", V("send_rate"))
    add(f"{s}.recv_rate", f"{n}: receive", "msg/s", "higher", V("recv_rate"))
    add(f"{s}.receipt_p50", f"{n}: receipt latency p50", "ms", "lower", V("receipt_latency_ms", "p50"))
    add(f"{s}.receipt_p99", f"{n}: receipt latency p99", "ms", "lower", V("receipt_latency_ms", "p99"))
    add(f"{s}.delivery_p50", f"{n}: delivery latency p50", "ms", "lower", V("delivery_latency_ms", "p50"))
    add(f"{s}.delivery_p99", f"{n}: delivery latency p99", "ms", "lower", V("delivery_latency_ms", "p99"))
d_present = [s for s in ["d_individual", "d_auto"] if s in present]
if d_present:
    add("d.fill_send_rate", "d) fill 100k persistent 1 KiB, receipt every 100: send", "msg/s", "higher",
        {b: sum((values(s, "fill", ("send_rate",), b) for s in d_present), []) for b in BROKERS})
for s in d_present:
    add(f"{s}.drain_rate", f"{scen_names[s]}: drain rate", "msg/s", "higher",
        {b: values(s, "drain", ("recv_rate",), b) for b in BROKERS})
    add(f"{s}.drain_s", f"{scen_names[s]}: drain time", "s", "lower",
        {b: values(s, "drain", ("elapsed_s",), b) for b in BROKERS})
add("startup_ms", "start-up to listening (median of all starts)", "ms", "lower",
    {b: [r["startup_ms"] for r in runs if r["broker"] == b and r["startup_ms"] is not None] for b in BROKERS})
add("peak_rss_mib", "peak RSS, whole run (max VmHWM)", "MiB", "lower",
    {b: [r["vmhwm_kb"] / 1024 for r in runs if r["broker"] == b and r["vmhwm_kb"]] for b in BROKERS}, "max")
for s in ["a", "b", "c", "d_individual", "d_auto"]:
    if s in present:
        add(f"{s}.peak_rss_mib", f"peak RSS during scenario {s} (median of VmHWM)", "MiB", "lower",
            {b: [r["vmhwm_kb"] / 1024 for r in runs if r["broker"] == b and r["scenario"] == s and r["vmhwm_kb"]]
             for b in BROKERS})

summary = []
for key, label, unit, better, vals, how in metrics:
    row = {"key": key, "label": label, "unit": unit, "better": better, "aggregate": how}
    agg = {}
    for b in BROKERS:
        v = vals.get(b, [])
        a = (max(v) if how == "max" else statistics.median(v)) if v else None
        agg[b] = a
        row[b] = {"value": a, "values": v, "n": len(v)}
    f, q = agg["fabricmq"], agg["activemq"]
    row["ratio_fabricmq_over_activemq"] = (f / q) if (f is not None and q not in (None, 0)) else None
    if all(row[b]["n"] == 0 for b in BROKERS):
        continue
    summary.append(row)

problems = [f"r{r['round']} {r['scenario']} {r['broker']}: {e}" for r in runs for e in r["errors"]]
doc = {"meta": env, "summary": summary, "problems": problems, "runs": runs}
os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
with open(out_json, "w") as f:
    json.dump(doc, f, indent=2)

def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "msg/s":
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"

lines = [
    f"Rounds: {env.get('rounds')}, medians unless noted; host: {env.get('host_cpus')} CPUs "
    f"({env.get('cpu_model')}), {env.get('fs_type')}; ActiveMQ {env.get('activemq_version')}; "
    f"scale {env.get('bench_scale')}; warm-up {env.get('warmup_count')} msgs.",
    "",
    "| scenario | fabricmq | ActiveMQ | ratio (fabricmq/ActiveMQ) |",
    "| --- | ---: | ---: | ---: |",
]
legend = "\u2191 higher is better, \u2193 lower is better; ratio = fabricmq / ActiveMQ."
for row in summary:
    arrow = "\u2191" if row["better"] == "higher" else "\u2193"
    r = row["ratio_fabricmq_over_activemq"]
    lines.append(f"| {row['label']} ({row['unit']} {arrow}) | {fmt(row['fabricmq']['value'], row['unit'])} | "
                 f"{fmt(row['activemq']['value'], row['unit'])} | {'n/a' if r is None else f'{r:.2f}x'} |")
lines += ["", legend]
if problems:
    lines += ["", "Problems (failed steps are left out of the figures above):"] + [f"- {p}" for p in problems]
md = "\n".join(lines) + "\n"
with open(os.path.join(bench_dir, "results.md"), "w") as f:
    f.write(md)
sys.stdout.write(md)
PY

log "raw figures: $OUT_JSON"
if ((failures > 0)); then
    log "$failures run(s) failed; see the Problems list and $BENCH_DIR/runs/*/"
    exit 1
fi
