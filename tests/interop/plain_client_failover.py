#!/usr/bin/env python3
"""What a plain STOMP client (stomp.py, no discovery, no failover) gets when the master dies.

Usage:
    plain_client_failover.py --host 127.0.0.1 --port PORT --user admin --password admin \
        --queue /queue/plain [--deadline 60]

Connected straight to one broker (the group's current master), it loops: SEND message i
(persistent, with a receipt), wait for the RECEIPT, wait for the MESSAGE on its own
client-individual subscription, ACK it. One line on stdout per step, flushed at once, for the
driving test (tests/tests/client_failover.rs):

    CONNECTED <server>
    SENT <i>            the RECEIPT for message i arrived (the broker has it on disk)
    GOT <i>             message i came back and was ACKed
    DISCONNECTED <how>  the connection is gone (the broker died): on_disconnected, a send
                        that raised, or a receipt/message that never came
    RECONNECT_FAILED <error>   one new connection to the same host:port failed: the
                               client has no way to find the new master by itself
    RECONNECTED         (instead) the same host:port answered again
    DONE sent=<n> got=<n>

Exit status 0 once DONE is printed; 3 if --deadline passes first (watchdog), 2 when
stomp.py is missing. Every wait is bounded.
"""

import argparse
import os
import sys
import threading
import time

try:
    import stomp
except ImportError:  # pragma: no cover - environment problem
    print("plain_client_failover: the 'stomp.py' package is not installed "
          "(pip install -r tests/interop/requirements.txt)", file=sys.stderr)
    sys.exit(2)

WAIT = 5.0  # seconds: a live broker answers a receipt or a message much faster


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cv = threading.Condition()
        self.connected = None
        self.receipts = set()
        self.messages = []
        self.errors = []
        self.disconnected = False

    def _update(self, fn):
        with self.cv:
            fn()
            self.cv.notify_all()

    def on_connected(self, frame):
        self._update(lambda: setattr(self, "connected", frame))

    def on_receipt(self, frame):
        self._update(lambda: self.receipts.add(frame.headers.get("receipt-id")))

    def on_message(self, frame):
        self._update(lambda: self.messages.append(frame))

    def on_error(self, frame):
        self._update(lambda: self.errors.append(frame))

    def on_disconnected(self):
        self._update(lambda: setattr(self, "disconnected", True))

    def wait_for(self, pred, timeout=WAIT):
        end = time.monotonic() + timeout
        with self.cv:
            while not pred() and not self.disconnected:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            return pred()


def open_conn(args):
    conn = stomp.Connection12(
        [(args.host, args.port)],
        heartbeats=(0, 0),
        timeout=2.0,
        reconnect_attempts_max=1,
        prefer_localhost=False,
        try_loopback_connect=False,
    )
    lis = Listener()
    conn.set_listener("plain", lis)
    conn.connect(args.user, args.password, wait=True)
    return conn, lis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="admin")
    ap.add_argument("--queue", default="/queue/plain")
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()

    def watchdog():
        time.sleep(args.deadline)
        print(f"DEADLINE {args.deadline}s passed", flush=True)
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    conn, lis = open_conn(args)
    server = lis.connected.headers.get("server", "?") if lis.connected else "?"
    print(f"CONNECTED {server}", flush=True)
    conn.subscribe(args.queue, id="s1", ack="client-individual", receipt="sub")
    if not lis.wait_for(lambda: "sub" in lis.receipts):
        print("DISCONNECTED no receipt for SUBSCRIBE", flush=True)
    sent = got = 0
    how = None
    i = 0
    while how is None:
        try:
            conn.send(args.queue, f"plain-{i}", headers={"persistent": "true", "x-seq": str(i)},
                      receipt=f"r{i}")
        except Exception as e:  # NotConnectedException, socket errors
            how = f"send raised {type(e).__name__}: {e}"
            break
        if not lis.wait_for(lambda: f"r{i}" in lis.receipts):
            how = "on_disconnected" if lis.disconnected else f"no RECEIPT for message {i}"
            break
        sent += 1
        print(f"SENT {i}", flush=True)
        if not lis.wait_for(lambda: len(lis.messages) > got):
            how = "on_disconnected" if lis.disconnected else f"message {i} not delivered"
            break
        msg = lis.messages[got]
        try:
            conn.ack(msg.headers["ack"])
        except Exception as e:
            how = f"ack raised {type(e).__name__}: {e}"
            break
        got += 1
        print(f"GOT {msg.headers.get('x-seq')}", flush=True)
        i += 1
    if lis.errors:
        how += f" (ERROR frames: {[e.headers.get('message') for e in lis.errors]})"
    print(f"DISCONNECTED {how}", flush=True)
    try:
        conn.disconnect()
    except Exception:
        pass
    # The same address again: a plain client knows no other.
    try:
        c2, _ = open_conn(args)
        print("RECONNECTED", flush=True)
        c2.disconnect()
    except Exception as e:
        print(f"RECONNECT_FAILED {type(e).__name__}: {e}", flush=True)
    print(f"DONE sent={sent} got={got}", flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
