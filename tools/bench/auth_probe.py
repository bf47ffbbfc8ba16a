#!/usr/bin/env python3
"""Issue 10 probes (items 5 and 7): login floods and admin-connection floods against a real
mq-broker on loopback. Starts the broker itself (fresh temporary directory), stops it by PID.

  auth_probe.py logins --broker PATH [--attackers 50] [--addresses 1] [--seconds 15]
      ATTACKERS clients loop over wrong logins (half for an existing user, half for unknown
      names) from ADDRESSES loopback addresses (127.0.1.x), for SECONDS; meanwhile a good
      client logs in from 127.0.2.1 every 0.5 s. Prints the broker's RSS before, its peak
      (VmHWM) and the largest sampled VmRSS, the good client's login times, the attackers'
      outcomes and how much the broker logged.

  auth_probe.py admin --broker PATH [--connections 20000] [--broker-nofile N]
      Holds CONNECTIONS admin connections (each sent a partial request header; at most this
      process's open-file hard limit minus 100), then times a STOMP login and a GET /health on
      a new connection. --broker-nofile lowers the broker's limit so the flood can exceed it.

Exact figures for the issue note: run with release binaries, e.g.
  cargo build --release -p fabricmq-broker
  tools/bench/auth_probe.py logins --broker target/release/mq-broker --attackers 50
"""
import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start_broker(binary, work, extra):
    ready = os.path.join(work, "ready.json")
    log = open(os.path.join(work, "broker.log"), "wb")
    args = [binary, "--listen", "stomp://127.0.0.1:0", "--data", os.path.join(work, "data"),
            "--ready-file", ready, "--admin-listen", "127.0.0.1:0"] + extra
    p = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            sys.exit(f"broker exited: {open(log.name).read()[-2000:]}")
        try:
            r = json.load(open(ready))
            host, port = r["listeners"][0].replace("stomp://", "").rsplit(":", 1)
            ahost, aport = r["admin"].rsplit(":", 1)
            return p, (host, int(port)), (ahost, int(aport)), log.name
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    p.kill()
    sys.exit("broker not ready in 30 s")


def login(addr, src, user, password, timeout=60):
    """(first frame's command, message header, seconds)."""
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect(addr)
        s.sendall(f"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:{user}\npasscode:{password}\n"
                  "heart-beat:0,0\n\n\0".encode())
        buf = b""
        while b"\0" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        return ("IOERROR", str(e), time.monotonic() - t0)
    finally:
        s.close()
    text = buf.decode(errors="replace")
    lines = text.split("\n")
    msg = next((l[8:] for l in lines if l.startswith("message:")), "")
    return (lines[0] if lines else "", msg, time.monotonic() - t0)


def hash_password(binary, pw):
    return subprocess.run([binary, "hash-password"], input=pw.encode(), capture_output=True,
                          check=True).stdout.decode().strip()


def logins(a):
    work = tempfile.mkdtemp(prefix="auth-probe-")
    users = os.path.join(work, "users.toml")
    with open(users, "w") as f:
        f.write(f'[users.app]\npassword = "{hash_password(a.broker, "right")}"\n')
    p, addr, _, logpath = start_broker(a.broker, work, ["--users", users])
    try:
        ok = login(addr, "127.0.2.1", "app", "right")
        assert ok[0] == "CONNECTED", ok
        time.sleep(0.5)
        base = kib(p.pid, "VmRSS")
        base_log = os.path.getsize(logpath)
        stop = time.monotonic() + a.seconds
        outcomes = {}
        lock = threading.Lock()
        max_rss = [base]

        def attacker(i):
            src = f"127.0.1.{1 + i % a.addresses}"
            user = "app" if i % 2 == 0 else f"ghost{i}"
            while time.monotonic() < stop:
                cmd, msg, _ = login(addr, src, user, "wrong")
                with lock:
                    k = f"{cmd} {msg}".strip()
                    outcomes[k] = outcomes.get(k, 0) + 1

        def sampler():
            while time.monotonic() < stop + 1:
                try:
                    max_rss[0] = max(max_rss[0], kib(p.pid, "VmRSS"))
                except OSError:
                    return
                time.sleep(0.05)

        threads = [threading.Thread(target=attacker, args=(i,)) for i in range(a.attackers)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        good = []
        time.sleep(0.2)
        while time.monotonic() < stop:
            cmd, msg, dt = login(addr, "127.0.2.1", "app", "right")
            good.append((cmd, msg, dt))
            time.sleep(0.5)
        for t in threads:
            t.join()
        hwm = kib(p.pid, "VmHWM")
        times = [dt for c, _, dt in good if c == "CONNECTED"]
        print(json.dumps({
            "attackers": a.attackers, "addresses": a.addresses, "seconds": a.seconds,
            "rss_before_kib": base, "vmhwm_kib": hwm, "max_sampled_rss_kib": max_rss[0],
            "rss_growth_mib": round((max_rss[0] - base) / 1024, 1),
            "hwm_growth_mib": round((hwm - base) / 1024, 1),
            "good_logins": len(good), "good_connected": len(times),
            "good_refused": [f"{c} {m}" for c, m, _ in good if c != "CONNECTED"][:5],
            "good_login_s": {"median": round(statistics.median(times), 3) if times else None,
                             "max": round(max(times), 3) if times else None},
            "attacker_outcomes": outcomes,
            "log_bytes": os.path.getsize(logpath) - base_log,
        }, indent=1))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def http_get(addr, path, timeout=30):
    t0 = time.monotonic()
    try:
        s = socket.create_connection(addr, timeout=timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        s.close()
        return (buf.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - t0)
    except OSError as e:
        return (f"IOERROR {e}", time.monotonic() - t0)


def admin(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="admin-probe-")
    p, addr, aaddr, logpath = start_broker(a.broker, work, [])
    held = []
    try:
        if a.broker_nofile:
            # The broker raised its soft limit to the hard one at start-up; lower both so that
            # the held connections can exceed it (this process's own limit is the ceiling).
            subprocess.run(["prlimit", f"--pid={p.pid}", f"--nofile={a.broker_nofile}:{a.broker_nofile}"],
                           check=True)
        base = kib(p.pid, "VmRSS")
        want = min(a.connections, hard - 100)
        errors = 0
        consecutive = 0
        t0 = time.monotonic()
        for _ in range(want):
            if consecutive >= 10:
                break  # the broker's accept backlog is full: it stopped accepting
            try:
                s = socket.create_connection(aaddr, timeout=2)
                s.setblocking(False)
                try:
                    s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    pass
                held.append(s)
                consecutive = 0
            except OSError:
                errors += 1
                consecutive += 1
        opened = time.monotonic() - t0
        time.sleep(1)
        fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        cmd, msg, dt = login(addr, "127.0.0.1", "admin", "admin", timeout=30)
        health = http_get(aaddr, "/health")
        rss = kib(p.pid, "VmRSS")
        log = open(logpath, errors="replace").read()
        print(json.dumps({
            "held_connections_attempted": want, "held_connections_open": len(held),
            "connect_errors": errors,
            "open_seconds": round(opened, 1), "broker_fds_after": fds,
            "stomp_login": {"first_frame": cmd, "message": msg, "seconds": round(dt, 3)},
            "health_new_connection": {"status": health[0], "seconds": round(health[1], 3)},
            "rss_before_kib": base, "rss_after_kib": rss,
            "too_many_open_files_in_log": log.count("Too many open files"),
        }, indent=1))
    finally:
        for s in held:
            s.close()
        p.send_signal(signal.SIGKILL)
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("logins")
    l.add_argument("--broker", required=True)
    l.add_argument("--attackers", type=int, default=50)
    l.add_argument("--addresses", type=int, default=1)
    l.add_argument("--seconds", type=float, default=15)
    d = sub.add_parser("admin")
    d.add_argument("--broker", required=True)
    d.add_argument("--connections", type=int, default=20000)
    d.add_argument("--broker-nofile", type=int, default=0,
                   help="lower the broker's open-file limit to this (prlimit) before the flood")
    a = ap.parse_args()
    {"logins": logins, "admin": admin}[a.cmd](a)


if __name__ == "__main__":
    main()
