#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: submit-and-deliver into the maildir transport.

Starts `postmux serve` (maildir transport, 4 workers), submits N messages
over the control socket from C concurrent clients (the protocol
`postmux send` speaks, without a process per message), and measures:
  - submissions/s (each answered only after its durable commit)
  - end-to-end messages/s (first submission to last file in Maildir/new)
  - the daemon's peak RSS (VmHWM) and CPU time
It also times 200 `postmux send` processes, the per-message CLI cost.
Run: meson test -C build --suite bench --verbose   (or directly, with
POSTMUX and POSTMUX_PLUGIN_PATH set).  Env: BENCH_N, BENCH_CLIENTS, BENCH_SIZE.
"""
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from pmxtest import Gateway, maildir_files, wait_until  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
SIZE = int(os.environ.get("BENCH_SIZE", "1024"))


def body(n):
    head = ("From: bench@example.test\r\nTo: sink@example.test\r\nSubject: bench %d\r\n"
            "Message-ID: <bench-%d@example.test>\r\n\r\n" % (n, n)).encode()
    return head + (b"x" * 76 + b"\r\n") * max(1, (SIZE - len(head)) // 78)


def client(sock_path, numbers, latencies):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    f = s.makefile("rb")
    for n in numbers:
        data = body(n)
        req = json.dumps({"op": "submit", "sender": "bench@example.test",
                          "recipients": ["sink@example.test"], "size": len(data)}).encode() + b"\n"
        t0 = time.perf_counter()
        s.sendall(req + data)
        answer = json.loads(f.readline())
        latencies.append(time.perf_counter() - t0)
        if not answer.get("ok"):
            raise RuntimeError(answer)
    s.close()


def proc_stat(pid):
    with open("/proc/%d/status" % pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(status["VmHWM"].split()[0]), (int(fields[11]) + int(fields[12])) / ticks


gw = Gateway(name="pmx-bench")
maildir = gw.path("Maildir")
gw.write_config({
    "transports": {"local": {"plugin": "maildir", "options": {"path": maildir}, "concurrency": 4}},
    "default": "local",
})
try:
    gw.start()
    sock_path = os.path.join(gw.state, "postmux.sock")
    # Idle pickup: one message at a time into an idle daemon, from the
    # durable "queued" answer to the file in Maildir/new.
    pickup = []
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    f = s.makefile("rb")
    for n in range(50):
        time.sleep(0.05)
        data = body(N + 1000 + n)
        req = json.dumps({"op": "submit", "sender": "bench@example.test",
                          "recipients": ["sink@example.test"], "size": len(data)}).encode() + b"\n"
        have = n
        s.sendall(req + data)
        json.loads(f.readline())
        t_ack = time.perf_counter()
        wait_until(lambda: len(maildir_files(maildir)) > have, 10, interval=0.0005)
        pickup.append(time.perf_counter() - t_ack)
    s.close()
    pickup.sort()

    for path in maildir_files(maildir):
        os.unlink(path)
    latencies = []
    chunks = [range(i, N, CLIENTS) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(sock_path, c, latencies)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_submit = time.perf_counter() - t0
    wait_until(lambda: len(maildir_files(maildir)) >= N, 600, interval=0.02)
    t_all = time.perf_counter() - t0
    delivered = len(maildir_files(maildir))
    rss_kb, cpu_s = proc_stat(gw.proc.pid)

    t1 = time.perf_counter()
    for n in range(200):
        p = gw.send("bench@example.test", ["sink@example.test"], body(N + n))
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
    t_cli = time.perf_counter() - t1

    latencies.sort()
    print("messages: %d x %d B, %d clients, maildir transport with 4 workers" % (N, len(body(0)), CLIENTS))
    print("submit (durable ack):  %.0f msgs/s   latency p50 %.2f ms, p99 %.2f ms"
          % (N / t_submit, latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3))
    print("submit and deliver:    %.0f msgs/s   (%d delivered in %.2f s)" % (N / t_all, delivered, t_all))
    print("idle pickup:           p50 %.1f ms, max %.1f ms (queued answer -> file in Maildir/new, 50 single messages)"
          % (pickup[len(pickup) // 2] * 1e3, pickup[-1] * 1e3))
    print("daemon CPU:            %.3f ms per message" % (cpu_s * 1e3 / N))
    print("daemon peak RSS:       %.1f MiB" % (rss_kb / 1024))
    print("`postmux send` CLI:    %.0f msgs/s (one process per message, sequential)" % (200 / t_cli))
    gw.stop()
finally:
    gw.cleanup()
