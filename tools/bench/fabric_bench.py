#!/usr/bin/env python3
"""Failover and recovery timings for fabricmq (driven by failover.sh and recovery.sh).

Sub-commands (each writes raw figures as JSON to --out and a markdown table to stdout):

  failover  --zk HOST:PORT --work DIR [--rounds 5] [--session-timeout 4s]
      2-container group; for SIGTERM then SIGKILL, ROUNDS rounds of: find the master from the
      state files, kill it, time (a) the other container's state file saying role=master and
      (b) the first RECEIPT of a persistent SEND from the new master (raw STOMP client retrying
      connect every 1 ms), then restart the killed container as a slave.

  failover-report --work DIR
      re-derives the log columns of a finished failover run from WORK/failover.json and the broker
      logs, and prints its tables again.

  recovery  --work DIR [--counts 100000,1000000] [--reps 2] [--cold-count 1000000]
      standalone broker: fill a queue with N persistent 1 KiB messages, kill -9, restart on the
      same data directory and time launch -> ready file; parse `journal recovered`; read VmRSS.

  fabric-recovery --zk HOST:PORT --work DIR [--count 100000]
      2 containers, fill via the master, kill -9 the master, time signal -> the slave's state
      file saying master (the slave recovers the store while taking over) and the first RECEIPT.

All times come from time.monotonic_ns() (log columns: broker log timestamps against time.time()
at the signal). --quiet-wait S waits up to S seconds before each kill/restart for a second with the
machine >= 85 % idle; the idle share is recorded either way. Only processes this script started
are signalled.
"""

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

BIN_DIR = os.environ.get("MQ_BIN_DIR", "/work/main/target/release")
MQ_BROKER = os.path.join(BIN_DIR, "mq-broker")
MQ_CLIENT = os.path.join(BIN_DIR, "mq-client")
MQ_FABRIC = os.path.join(BIN_DIR, "mq-fabric")

ROUND_TIMEOUT_S = float(os.environ.get("ROUND_TIMEOUT", "30"))
START_TIMEOUT_S = float(os.environ.get("START_TIMEOUT", "60"))
FILL_TIMEOUT_S = float(os.environ.get("FILL_TIMEOUT", "900"))
SETTLE_RSS_S = float(os.environ.get("SETTLE_RSS", "12"))

BROKERS = []  # every Broker this process started (for cleanup)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def mono():
    return time.monotonic_ns()


def ms(ns):
    return None if ns is None else ns / 1e6


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def cpu_snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def idle_since(snap0):
    t1, i1 = cpu_snap()
    return (i1 - snap0[1]) / max(1, t1 - snap0[0])


def cpu_idle(window_s):
    """Fraction of the machine's CPU time that was idle (idle + iowait) over `window_s`."""
    snap = cpu_snap
    t0, i0 = snap()
    time.sleep(window_s)
    t1, i1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait_s, threshold=0.85, window_s=1.0):
    """Waits (up to max_wait_s) for a `window_s` with the machine at least `threshold` idle.
    Returns (idle fraction of the last window, seconds waited)."""
    start = time.monotonic()
    while True:
        idle = cpu_idle(window_s)
        waited = time.monotonic() - start
        if idle >= threshold or waited >= max_wait_s:
            return idle, waited


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) / 1024.0  # MiB
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------------------------
# Brokers


class Broker:
    """One mq-broker process (restartable); stderr appended to `log_path`."""

    def __init__(self, name, args, log_path, state_file=None, ready_file=None, port=None):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.state_file = state_file
        self.ready_file = ready_file
        self.port = port
        self.proc = None
        self.launch_ns = None
        self.launch_wall = None
        self.starts = 0
        BROKERS.append(self)

    def start(self):
        self.starts += 1
        for f in (self.ready_file,):
            if f and os.path.exists(f):
                os.unlink(f)
        with open(self.log_path, "ab") as lf:
            lf.write(f"\n===== start #{self.starts} of {self.name} at {dt.datetime.now(dt.timezone.utc).isoformat()} =====\n".encode())
            lf.flush()
            self.launch_wall = time.time()
            self.launch_ns = mono()
            self.proc = subprocess.Popen([MQ_BROKER] + self.args, stdin=subprocess.DEVNULL,
                                         stdout=lf, stderr=lf, env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1"))
        return self.proc.pid

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def state(self):
        return read_json(self.state_file) if self.state_file else None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if not self.alive():
            return
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {self.proc.pid}) did not stop within {timeout}s: SIGKILL")
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wait_state(self, role, timeout=START_TIMEOUT_S):
        """Waits until the state file names this process (pid) with `role`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st and st.get("pid") == self.pid and st.get("role") == role:
                return st
            if not self.alive():
                raise RuntimeError(f"{self.name} exited (rc {self.proc.returncode}) waiting for role {role}; log {self.log_path}")
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} not {role} within {timeout}s; log {self.log_path}")

    def wait_ready_file(self, timeout=START_TIMEOUT_S, poll_s=0.001):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.ready_file):
                t = mono()
                return t
            if not self.alive():
                raise RuntimeError(f"{self.name} exited (rc {self.proc.returncode}) before its ready file; log {self.log_path}")
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name}: no ready file within {timeout}s; log {self.log_path}")


def stop_all(brokers, sig=signal.SIGTERM):
    """Stops slaves first, so that stopping does not hand mastership around."""
    def is_master(b):
        st = b.state()
        return bool(st and st.get("role") == "master" and st.get("pid") == b.pid)
    for b in sorted(brokers, key=is_master):
        b.stop(sig)


def cleanup(*_):
    for b in BROKERS:
        if b.alive():
            try:
                os.kill(b.proc.pid, signal.SIGKILL)
                b.proc.wait(5)
            except Exception:
                pass


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def fabric_auth(work):
    """The fabric's registry credentials: a generated user:password in a 0600 file, given to the
    brokers (and mq-fabric) through FABRIC_ZK_AUTH_FILE."""
    path = os.path.join(work, "zk-auth")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("fabric:%s\n" % os.urandom(16).hex())
    os.environ["FABRIC_ZK_AUTH_FILE"] = path


def fabric_pair(zk, work, session_timeout):
    shared = os.path.join(work, "shared-data")
    os.makedirs(shared, exist_ok=True)
    fabric_auth(work)
    brokers = []
    for i in (1, 2):
        port = free_port()
        name = f"broker{i}"
        state = os.path.join(work, f"{name}.state.json")
        args = ["--zk", zk, "--group", "default", "--container", name,
                "--listen", f"stomp://127.0.0.1:{port}", "--data", shared,
                "--session-timeout", session_timeout, "--state-file", state,
                "--advertise-host", "127.0.0.1",
                # fabric mode refuses the built-in admin/admin login without this (issue 10)
                "--allow-default-admin"]
        brokers.append(Broker(name, args, os.path.join(work, f"{name}.log"), state_file=state, port=port))
    b1, b2 = brokers
    b1.start()
    b1.wait_state("master")
    b2.start()
    b2.wait_state("slave")
    log(f"group up: {b1.name} master on :{b1.port} (pid {b1.pid}), {b2.name} slave on :{b2.port} (pid {b2.pid})")
    return brokers


def cluster_list(zk):
    try:
        r = subprocess.run([MQ_FABRIC, "--zk", zk, "cluster-list", "--json"], capture_output=True,
                           text=True, timeout=20)
        return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


# --------------------------------------------------------------------------------------------
# A minimal STOMP 1.2 client


class StompError(Exception):
    pass


def _read_frame(sock, buf, deadline):
    """Reads one frame (skipping heart-beat EOLs). Returns (command, headers, rest_of_buffer)."""
    while True:
        while buf[:1] in (b"\n", b"\r") and buf:
            buf = buf[1:]
        i = buf.find(b"\0")
        if i >= 0:
            raw, buf = buf[:i], buf[i + 1:]
            head = raw.split(b"\n\n", 1)[0].decode(errors="replace").split("\n")
            hdrs = {}
            for h in head[1:]:
                k, _, v = h.partition(":")
                hdrs.setdefault(k, v)
            return head[0].strip(), hdrs, buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise StompError("timeout waiting for a frame")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise StompError("connection closed by the broker")
        buf += chunk


def stomp_send_once(port, dest, body, frame_timeout=5.0):
    """Connects, sends one persistent SEND with a receipt, waits for the RECEIPT, disconnects."""
    s = socket.create_connection(("127.0.0.1", port), timeout=frame_timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:admin\npasscode:admin\nheart-beat:0,0\n\n\0")
        cmd, h, buf = _read_frame(s, b"", time.monotonic() + frame_timeout)
        if cmd != "CONNECTED":
            raise StompError(f"{cmd}: {h.get('message')}")
        t_connected = mono()
        b = body.encode()
        s.sendall(b"SEND\ndestination:" + dest.encode() + b"\npersistent:true\nreceipt:r1\ncontent-type:text/plain\ncontent-length:"
                  + str(len(b)).encode() + b"\n\n" + b + b"\0")
        cmd, h, buf = _read_frame(s, buf, time.monotonic() + frame_timeout)
        if cmd != "RECEIPT" or h.get("receipt-id") != "r1":
            raise StompError(f"{cmd}: {h.get('message')}")
        t_receipt = mono()
        try:
            s.sendall(b"DISCONNECT\n\n\0")
        except OSError:
            pass
        return t_connected, t_receipt
    finally:
        s.close()


def probe_until_receipt(port, dest, stop_at_ns, result, retry_s=0.001):
    """Retries connect + CONNECT + SEND(receipt) every `retry_s` until a RECEIPT arrives."""
    attempts = 0
    errors = {}
    t_first_tcp = None
    while mono() < stop_at_ns:
        attempts += 1
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            time.sleep(retry_s)
            continue
        if t_first_tcp is None:
            t_first_tcp = mono()
        s.close()
        try:
            t_conn, t_rcpt = stomp_send_once(port, dest, f"failover probe {time.time()}")
            result.update(t_first_tcp=t_first_tcp, t_connected=t_conn, t_receipt=t_rcpt,
                          attempts=attempts, errors=errors)
            return
        except (OSError, StompError) as e:
            k = f"{type(e).__name__}: {e}"[:80]
            errors[k] = errors.get(k, 0) + 1
            time.sleep(retry_s)
    result.update(t_first_tcp=t_first_tcp, attempts=attempts, errors=errors, timeout=True)


def poll_state_master(broker, stop_at_ns, result, poll_s=0.001):
    while mono() < stop_at_ns:
        st = broker.state()
        if st and st.get("role") == "master" and st.get("pid") == broker.pid:
            result.update(t_master=mono(), epoch=st.get("epoch"))
            return
        time.sleep(poll_s)
    result.update(timeout=True)


# --------------------------------------------------------------------------------------------
# Log parsing

FIELD_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S+)')
TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def log_events(text):
    """Yields (wall_ts or None, message, fields) for each tracing line."""
    for line in text.splitlines():
        m = TS_RE.match(line)
        ts = None
        if m:
            ts = dt.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=dt.timezone.utc).timestamp()
        # "<ts>  INFO target: message k=v k=v"
        parts = line.split(": ", 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        fm = FIELD_RE.search(rest)
        msg = rest[:fm.start()].strip() if fm else rest.strip()
        fields = {k: v.strip('"') for k, v in FIELD_RE.findall(rest[len(msg):])}
        yield ts, msg, fields, line


def takeover_details(text, kill_wall):
    """Figures from the new master's log written after the kill."""
    d = {}
    for ts, msg, f, line in log_events(text):
        rel = None if ts is None else round((ts - kill_wall) * 1000, 1)
        if msg.startswith("the master's process released the store lock"):
            # Logged after the lock was taken AND the predecessor's record read from ZooKeeper.
            d.setdefault("lock_seen_ms", rel)
        elif msg == "first in line":
            # fabricmq_registry::election: the member is first (predecessor gone).
            d.setdefault("first_in_line_ms", rel)
        elif msg.startswith("first in line: activating as master"):
            # After the member record update (activating) and the epoch CAS.
            d.setdefault("epoch_claimed_ms", rel)
            d.setdefault("store_locked", f.get("store_locked"))
            d.setdefault("epoch", f.get("epoch"))
        elif msg == "journal recovered" and "messages" in f:
            d.setdefault("recovered_messages", int(f["messages"]))
            d.setdefault("recovery_elapsed_ms", int(f["elapsed_ms"]))
        elif msg.startswith("master: serving"):
            d.setdefault("serving_ms", rel)
            d.setdefault("activation_ms", int(f.get("activation_ms", -1)))
        elif " WARN " in line or " ERROR " in line:
            d.setdefault("warnings", []).append(line[:300])
    return d


# --------------------------------------------------------------------------------------------
# failover


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def kill_and_measure(killed, other, sig, dest, timeout_s=ROUND_TIMEOUT_S):
    """Sends `sig` to `killed`, measures the takeover by `other`. Returns a dict of ms figures."""
    off = other.log_size()
    off_killed = killed.log_size()
    state_res, probe_res = {}, {}
    t0 = mono()
    t0_wall = time.time()
    stop_at = t0 + int(timeout_s * 1e9)
    th_s = threading.Thread(target=poll_state_master, args=(other, stop_at, state_res))
    th_p = threading.Thread(target=probe_until_receipt, args=(other.port, dest, stop_at, probe_res))
    os.kill(killed.pid, sig)
    th_s.start()
    th_p.start()
    t_exit = None
    try:
        killed.proc.wait(timeout_s)
        t_exit = mono()
    except subprocess.TimeoutExpired:
        log(f"{killed.name} did not exit within {timeout_s}s after {sig.name}: SIGKILL")
        os.kill(killed.pid, signal.SIGKILL)
        killed.proc.wait(10)
    th_s.join()
    th_p.join()
    time.sleep(0.05)  # let the new master finish its log lines
    r = {
        "signal": sig.name,
        "killed": killed.name, "new_master": other.name,
        "old_exit_ms": ms(t_exit - t0) if t_exit else None,
        "state_master_ms": ms(state_res["t_master"] - t0) if "t_master" in state_res else None,
        "first_tcp_ms": ms(probe_res["t_first_tcp"] - t0) if probe_res.get("t_first_tcp") else None,
        "connected_ms": ms(probe_res["t_connected"] - t0) if "t_connected" in probe_res else None,
        "receipt_ms": ms(probe_res["t_receipt"] - t0) if "t_receipt" in probe_res else None,
        "probe_attempts": probe_res.get("attempts"),
        "probe_errors": probe_res.get("errors"),
        "epoch": state_res.get("epoch"),
        "kill_wall": t0_wall,
        "loadavg_1m": loadavg(),
        "log": takeover_details(other.log_since(off), t0_wall),
        "killed_log_tail": [ln[:300] for ln in killed.log_since(off_killed).splitlines()[-8:]],
    }
    return r


def summarize(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None, None
    return statistics.median(v), max(v), min(v)


def render_failover(meta, results):
    out = []
    out.append(f"Session timeout {meta['session_timeout']} (ZooKeeper tickTime=200, minSessionTimeout=400 ms); "
               f"2 containers sharing one data directory; {meta['rounds']} rounds per signal; state file polled every 1 ms; "
               f"STOMP probe retries connect every 1 ms; quiet wait before each kill up to {meta.get('quiet_wait', 0):g} s. "
               f"Times in ms from the signal (monotonic clock; the log columns use the brokers' wall-clock timestamps).\n")
    out.append("| signal | round | killed → new master | old process exited | state file role=master | first TCP accept | CONNECTED | first RECEIPT | new master log: store lock seen free | first in line | epoch claimed | `journal recovered` elapsed_ms | activation_ms | epoch | cluster-list ok | CPU idle 1 s before kill |")
    out.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        lg = r["log"]
        idle = r.get("idle_before")
        out.append(f"| {r['signal']} | {r['round']} | {r['killed']} → {r['new_master']} | {fmt(r['old_exit_ms'],2)} | "
                   f"{fmt(r['state_master_ms'],2)} | {fmt(r['first_tcp_ms'],2)} | {fmt(r['connected_ms'],2)} | "
                   f"{fmt(r['receipt_ms'],2)} | {fmt(lg.get('lock_seen_ms'))} | {fmt(lg.get('first_in_line_ms'))} | {fmt(lg.get('epoch_claimed_ms'))} | {fmt(lg.get('recovery_elapsed_ms'))} | "
                   f"{fmt(lg.get('activation_ms'))} | {fmt(r['epoch'])} | {'yes' if r['cluster_ok'] else 'NO'} | {'–' if idle is None else f'{idle*100:.0f} %'} |")
    out.append("")
    out.append("| signal | rounds | state file role=master: median / max (min) ms | first RECEIPT: median / max (min) ms | first in line (log): median / max ms | old process exited: median / max ms |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for sig in ("SIGTERM", "SIGKILL"):
        rs = [r for r in results if r["signal"] == sig]
        if not rs:
            continue
        s = summarize([r["state_master_ms"] for r in rs])
        p = summarize([r["receipt_ms"] for r in rs])
        f = summarize([r["log"].get("first_in_line_ms") for r in rs])
        e = summarize([r["old_exit_ms"] for r in rs])
        out.append(f"| {sig} | {len(rs)} | {fmt(s[0],2)} / {fmt(s[1],2)} ({fmt(s[2],2)}) | {fmt(p[0],2)} / {fmt(p[1],2)} ({fmt(p[2],2)}) | "
                   f"{fmt(f[0])} / {fmt(f[1])} | {fmt(e[0],2)} / {fmt(e[1],2)} |")
    return "\n".join(out)


def cmd_failover_report(a):
    """Re-derives the log columns of a finished run from its broker logs and prints the tables."""
    with open(os.path.join(a.work, "failover.json")) as f:
        d = json.load(f)
    results = d["results"]
    kills = sorted(r["kill_wall"] for r in results)
    logs = {}
    for r in results:
        name = r["new_master"]
        if name not in logs:
            with open(os.path.join(a.work, f"{name}.log"), errors="replace") as f:
                logs[name] = f.read().splitlines()
        nxt = next((k for k in kills if k > r["kill_wall"]), r["kill_wall"] + ROUND_TIMEOUT_S)
        window = []
        for line in logs[name]:
            m = TS_RE.match(line)
            if m:
                ts = dt.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=dt.timezone.utc).timestamp()
                if r["kill_wall"] <= ts < min(nxt, r["kill_wall"] + ROUND_TIMEOUT_S):
                    window.append(line)
        r["log"] = takeover_details("\n".join(window), r["kill_wall"])
    d.setdefault("quiet_wait", a.quiet_wait)
    print(render_failover(d, results))
    return 0


def cmd_failover(a):
    os.makedirs(a.work, exist_ok=True)
    brokers = fabric_pair(a.zk, a.work, a.session_timeout)
    results = []
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for rnd in range(1, a.rounds + 1):
                masters = [b for b in brokers if (st := b.state()) and st.get("role") == "master"
                           and st.get("pid") == b.pid and b.alive()]
                if len(masters) != 1:
                    raise RuntimeError(f"expected one master from the state files, got {[b.name for b in masters]}")
                m = masters[0]
                o = [b for b in brokers if b is not m][0]
                ost = o.state()
                if not (ost and ost.get("role") == "slave" and ost.get("pid") == o.pid):
                    raise RuntimeError(f"{o.name} is not a slave: {ost}")
                # The master serves (and the probe connection is closed before the signal).
                stomp_send_once(m.port, "/queue/failover", "before kill")
                time.sleep(a.settle)
                # Idle share of both CPUs in the second before the kill (the machine is shared);
                # with --quiet-wait, wait up to that long for a second that is >= 85 % idle.
                idle, waited = wait_quiet(a.quiet_wait)
                r = kill_and_measure(m, o, sig, "/queue/failover")
                r["round"] = rnd
                r["idle_before"] = idle
                r["quiet_waited_s"] = waited
                # Restart the killed container: it must come back as a slave.
                t_r = mono()
                m.start()
                m.wait_state("slave")
                r["restart_as_slave_ms"] = ms(mono() - t_r)
                cl = cluster_list(a.zk)
                r["cluster_list"] = cl
                row = next((c for c in cl if c.get("cluster") == "default"), None) if isinstance(cl, list) else None
                r["cluster_ok"] = bool(row and row.get("master") == o.name and m.name in (row.get("slaves") or []))
                results.append(r)
                log(f"{sig.name} round {rnd}: {m.name}->{o.name} state=master {fmt(r['state_master_ms'],2)} ms, "
                    f"receipt {fmt(r['receipt_ms'],2)} ms, old exit {fmt(r['old_exit_ms'],2)} ms, "
                    f"log {json.dumps({k: v for k, v in r['log'].items() if k != 'warnings'})}, cluster_ok={r['cluster_ok']}")
                time.sleep(a.settle)
    finally:
        stop_all(brokers)
        with open(a.out, "w") as f:
            json.dump({"session_timeout": a.session_timeout, "rounds": a.rounds, "quiet_wait": a.quiet_wait,
                       "results": results}, f, indent=1)

    print(render_failover({"session_timeout": a.session_timeout, "rounds": a.rounds,
                           "quiet_wait": a.quiet_wait}, results))
    bad = [r for r in results if r["state_master_ms"] is None or r["receipt_ms"] is None or not r["cluster_ok"]]
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------
# recovery


def fill(port, n, dest):
    cmd = [MQ_CLIENT, "perf", "--brokerUrl", f"tcp://127.0.0.1:{port}", "--user", "admin", "--password", "admin",
           "--destination", dest, "--producers", "1", "--consumers", "0", "--count", str(n), "--size", "1024",
           "--receiptEvery", "100", "--json"]
    t = mono()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=FILL_TIMEOUT_S)
    el = ms(mono() - t)
    if r.returncode != 0:
        raise RuntimeError(f"fill failed rc={r.returncode}: {r.stderr[-2000:]}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    if rep.get("sent") != n:
        raise RuntimeError(f"fill sent {rep.get('sent')} of {n}")
    return rep, el, " ".join(cmd)


def recovered_from_log(text):
    out = {}
    for _ts, msg, f, line in log_events(text):
        if msg == "journal recovered" and "messages" in f:
            out["messages"] = int(f["messages"])
            out["elapsed_ms"] = int(f["elapsed_ms"])
            out["segments"] = int(f.get("segments", -1))
            out["records"] = int(f.get("records", -1))
        elif msg == "journal recovered" and f.get("dir", "").endswith("/journal"):
            out["bytes_scanned"] = int(f.get("bytes", -1))
        elif msg == "broker ready":
            out["startup_ms_logged"] = int(f.get("startup_ms", -1))
        elif "torn journal tail" in msg:
            out["torn_tail"] = line[:300]
    return out


def dir_bytes(path):
    total = 0
    for root, _d, files in os.walk(path):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(root, fn))
            except OSError:
                pass
    return total


def drop_caches():
    try:
        subprocess.run(["sync"], timeout=120)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, "ok"
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"


def restart_measure(b, expect, label, quiet_wait=0.0):
    """kill -9 the running broker, restart it on the same data, time launch -> ready file."""
    if b.alive():
        b.stop(signal.SIGKILL)
    idle_before, _ = wait_quiet(quiet_wait)
    off = b.log_size()
    s0 = cpu_snap()
    b.start()
    t_ready = b.wait_ready_file()
    idle_during = idle_since(s0)
    st0 = proc_status(b.pid)
    time.sleep(1.0)
    st1 = proc_status(b.pid)
    # tokio's blocking pool keeps the thread that ran the recovery for 10 s; its allocator heap
    # (mimalloc) is only given back when it exits, so the settled RSS is read after that.
    time.sleep(SETTLE_RSS_S - 1.0)
    st2 = proc_status(b.pid)
    rec = recovered_from_log(b.log_since(off))
    r = {"label": label, "ready_ms": ms(t_ready - b.launch_ns), "rss_at_ready_mib": st0.get("VmRSS"),
         "hwm_at_ready_mib": st0.get("VmHWM"), "rss_1s_mib": st1.get("VmRSS"), "hwm_1s_mib": st1.get("VmHWM"),
         "rss_settled_mib": st2.get("VmRSS"), "hwm_settled_mib": st2.get("VmHWM"), "loadavg_1m": loadavg(),
         "idle_before": idle_before, "idle_during": idle_during, **rec}
    if rec.get("messages") != expect:
        r["mismatch"] = f"expected {expect} messages, log says {rec.get('messages')}"
    log(f"  {label}: ready {r['ready_ms']:.1f} ms, recovered {rec.get('messages')} msgs in {rec.get('elapsed_ms')} ms, "
        f"RSS {st0.get('VmRSS')} -> {st1.get('VmRSS')} -> {st2.get('VmRSS')} MiB (HWM {st2.get('VmHWM')})")
    return r


def cmd_recovery(a):
    os.makedirs(a.work, exist_ok=True)
    counts = [int(x) for x in a.counts.split(",")]
    results, cold_note = [], None
    fill_cmds = []
    for n in counts:
        for rep in range(1, a.reps + 1):
            data = os.path.join(a.work, f"data-{n}-{rep}")
            port = free_port()
            ready = os.path.join(a.work, f"ready-{n}-{rep}.json")
            b = Broker(f"standalone-{n}-{rep}", ["--listen", f"stomp://127.0.0.1:{port}", "--data", data,
                                                  "--ready-file", ready],
                       os.path.join(a.work, f"broker-{n}-{rep}.log"), ready_file=ready, port=port)
            try:
                b.start()
                t_empty = b.wait_ready_file()
                empty_ms = ms(t_empty - b.launch_ns)
                log(f"N={n} rep {rep}: empty start {empty_ms:.1f} ms; filling")
                rep_json, fill_ms, fcmd = fill(port, n, "queue://recovery")
                fill_cmds.append(fcmd)
                journal_bytes = dir_bytes(os.path.join(data, "journal"))
                r = restart_measure(b, n, "warm, 1st restart after fill", a.quiet_wait)
                r.update(n=n, rep=rep, empty_start_ms=empty_ms, fill_ms=fill_ms, fill_rate=rep_json.get("send_rate"),
                         journal_mib=journal_bytes / 2**20)
                results.append(r)
                if rep == a.reps:
                    r2 = restart_measure(b, n, "warm, 2nd restart, same dir", a.quiet_wait)
                    r2.update(n=n, rep=rep, journal_mib=dir_bytes(os.path.join(data, "journal")) / 2**20)
                    results.append(r2)
                    if n == a.cold_count:
                        b.stop(signal.SIGKILL)
                        ok, why = drop_caches()
                        cold_note = {"n": n, "drop_caches_worked": ok, "detail": why}
                        log(f"  drop_caches: {ok} ({why})")
                        r3 = restart_measure(b, n, "cold (after drop_caches)" if ok else "3rd restart (drop_caches FAILED: warm)", a.quiet_wait)
                        r3.update(n=n, rep=rep, drop_caches=ok, journal_mib=dir_bytes(os.path.join(data, "journal")) / 2**20)
                        results.append(r3)
            finally:
                b.stop(signal.SIGKILL)
                if not a.keep:
                    subprocess.run(["rm", "-rf", data])
    with open(a.out, "w") as f:
        json.dump({"results": results, "cold": cold_note, "fill_commands": fill_cmds}, f, indent=1)
    out = ["| N (1 KiB persistent) | rep | restart | journal on disk (MiB) | launch → ready file (ms) | `journal recovered` elapsed_ms | rest of start-up (ms) | messages recovered | records | VmRSS at ready (MiB) | VmRSS +1 s (MiB) | VmRSS +12 s (MiB) | VmHWM (MiB) | CPU idle 1 s before / during |",
           "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rest = r["ready_ms"] - r["elapsed_ms"] if r.get("elapsed_ms") is not None else None
        out.append(f"| {r['n']:,} | {r['rep']} | {r['label']} | {fmt(r.get('journal_mib'),0)} | {fmt(r['ready_ms'],1)} | {fmt(r.get('elapsed_ms'))} | "
                   f"{fmt(rest,0)} | {fmt(r.get('messages'))} | {fmt(r.get('records'))} | {fmt(r.get('rss_at_ready_mib'))} | "
                   f"{fmt(r.get('rss_1s_mib'))} | {fmt(r.get('rss_settled_mib'))} | {fmt(r.get('hwm_settled_mib'))} | {r['idle_before']*100:.0f} % / {r['idle_during']*100:.0f} % |")
    out.append("")
    fills = [r for r in results if "fill_ms" in r]
    out.append("Fill (1 producer, receipt every 100): " + "; ".join(
        f"N={r['n']:,} rep {r['rep']}: {r['fill_ms']/1000:.1f} s ({fmt(r['fill_rate'],0)} msg/s), empty start {r['empty_start_ms']:.1f} ms"
        for r in fills))
    if cold_note:
        out.append("")
        out.append(f"drop_caches (N={cold_note['n']:,}): {'worked' if cold_note['drop_caches_worked'] else 'did NOT work'} ({cold_note['detail']}).")
    bad = [r for r in results if "mismatch" in r]
    for r in bad:
        out.append(f"\nMISMATCH: N={r['n']} {r['label']}: {r['mismatch']}")
    print("\n".join(out))
    return 1 if bad else 0


def cmd_fabric_recovery(a):
    os.makedirs(a.work, exist_ok=True)
    brokers = fabric_pair(a.zk, a.work, a.session_timeout)
    m, o = brokers
    res = {}
    try:
        log(f"filling {a.count} messages via the master {m.name}")
        rep, fill_ms, fcmd = fill(m.port, a.count, "queue://recovery")
        res.update(n=a.count, fill_ms=fill_ms, fill_rate=rep.get("send_rate"), fill_cmd=fcmd,
                   journal_mib=dir_bytes(os.path.join(a.work, "shared-data", "journal")) / 2**20)
        time.sleep(a.settle)
        res["slave_rss_before_mib"] = proc_status(o.pid).get("VmRSS")
        res["idle_before"], _ = wait_quiet(a.quiet_wait)
        r = kill_and_measure(m, o, signal.SIGKILL, "/queue/failover-probe", timeout_s=120)
        st = proc_status(o.pid)
        time.sleep(1.0)
        st1 = proc_status(o.pid)
        time.sleep(SETTLE_RSS_S - 1.0)
        st2 = proc_status(o.pid)
        res.update(r)
        res.update(rss_at_takeover_mib=st.get("VmRSS"), rss_1s_mib=st1.get("VmRSS"), hwm_1s_mib=st2.get("VmHWM"),
                   rss_settled_mib=st2.get("VmRSS"))
        # A consumer-less check that the messages survived: the log's recovered count.
        m.start()
        m.wait_state("slave")
        res["cluster_list"] = cluster_list(a.zk)
    finally:
        stop_all(brokers)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    lg = res.get("log", {})
    out = ["| N (1 KiB persistent) | journal (MiB) | kill -9 → slave's state file role=master (ms) | → first RECEIPT (ms) | slave log: store lock seen free (ms) | first in line (ms) | epoch claimed (ms) | `journal recovered` elapsed_ms | messages recovered | activation_ms | new master VmRSS at takeover / +1 s / +12 s (MiB) | VmHWM (MiB) |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           f"| {res['n']:,} | {fmt(res.get('journal_mib'),0)} | {fmt(res.get('state_master_ms'),1)} | {fmt(res.get('receipt_ms'),1)} | "
           f"{fmt(lg.get('lock_seen_ms'))} | {fmt(lg.get('first_in_line_ms'))} | {fmt(lg.get('epoch_claimed_ms'))} | {fmt(lg.get('recovery_elapsed_ms'))} | {fmt(lg.get('recovered_messages'))} | "
           f"{fmt(lg.get('activation_ms'))} | {fmt(res.get('rss_at_takeover_mib'))} / {fmt(res.get('rss_1s_mib'))} / {fmt(res.get('rss_settled_mib'))} | {fmt(res.get('hwm_1s_mib'))} |",
           "", f"Slave VmRSS before the kill (store not loaded): {fmt(res.get('slave_rss_before_mib'))} MiB; "
           f"CPU idle in the second before the kill: {res.get('idle_before', 0)*100:.0f} %; "
           f"fill {fmt(res.get('fill_ms', 0) / 1000, 1)} s ({fmt(res.get('fill_rate'), 0)} msg/s); epoch after takeover {fmt(res.get('epoch'))}."]
    print("\n".join(out))
    ok = res.get("state_master_ms") is not None and lg.get("recovered_messages", -1) >= a.count
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest="cmd", required=True)
    f = sp.add_parser("failover")
    f.add_argument("--zk", required=True)
    f.add_argument("--work", required=True)
    f.add_argument("--rounds", type=int, default=5)
    f.add_argument("--session-timeout", default="4s")
    f.add_argument("--settle", type=float, default=0.5)
    f.add_argument("--quiet-wait", type=float, default=0.0,
                   help="wait up to this many seconds before each kill for a >=85%% idle second")
    f.add_argument("--out", required=True)
    fr0 = sp.add_parser("failover-report", help="re-derive the log columns of a failover run and print its tables")
    fr0.add_argument("--work", required=True)
    fr0.add_argument("--quiet-wait", type=float, default=0.0, help="for runs whose JSON lacks it")
    r = sp.add_parser("recovery")
    r.add_argument("--work", required=True)
    r.add_argument("--counts", default="100000,1000000")
    r.add_argument("--reps", type=int, default=2)
    r.add_argument("--cold-count", type=int, default=1000000)
    r.add_argument("--keep", action="store_true")
    r.add_argument("--quiet-wait", type=float, default=0.0)
    r.add_argument("--out", required=True)
    fr = sp.add_parser("fabric-recovery")
    fr.add_argument("--zk", required=True)
    fr.add_argument("--work", required=True)
    fr.add_argument("--count", type=int, default=100000)
    fr.add_argument("--session-timeout", default="4s")
    fr.add_argument("--settle", type=float, default=0.5)
    fr.add_argument("--quiet-wait", type=float, default=0.0)
    fr.add_argument("--out", required=True)
    a = p.parse_args()
    sys.setswitchinterval(0.0005)
    try:
        rc = {"failover": cmd_failover, "failover-report": cmd_failover_report, "recovery": cmd_recovery, "fabric-recovery": cmd_fabric_recovery}[a.cmd](a)
    finally:
        cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    main()
