#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: drain a full queue through the smtp transport into Postfix's smtp-sink.

Run:
    meson test -C build --benchmark --suite bench bench-smtp --verbose
or directly:
    POSTMUX=build/gateway/postmux POSTMUX_PLUGIN_PATH=build/transports \\
        /usr/bin/python3 tests/bench/bench-smtp.py
Env: BENCH_N (default 20000), BENCH_SIZES (default "1024,10240"), BENCH_FILL,
     BENCH_WORKERS (default "1,8,32"), BENCH_FILL_JOBS (default 2 x CPUs),
     SMTP_SINK (use this smtp-sink binary instead of extracting one).

What it does, for each message size:
1. smtp-sink comes from Debian's postfix package without installing the mail
   server: `apt-get download postfix` into a scratch dir and `dpkg -x` it;
   it runs with LD_LIBRARY_PATH=<extract>/usr/lib/postfix.  The extract is
   cached under the build dir (tests/bench/postfix-deb/).
2. The queue is filled with N messages while no daemon runs, by
   tests/bench/bench-fill: FILL_JOBS threads calling pmx_queue_submit(), the
   queue code every door uses, each message durably group-committed (a few
   seconds for 20,000).  BENCH_FILL=send fills with one `postmux send`
   process per message instead (the real CLI; about 100/s).  The filled state dir is copied aside once, and each
   run below starts from a fresh copy of it, so every run drains the same queue.
3. For 1, 8 and 32 workers (`concurrency`): start `smtp-sink -M N`, start
   `postmux serve` with the smtp transport (security none, auth none) pointed
   at it, and time from starting the daemon until the sink has all N messages
   (it exits on the N-th).  Printed: messages/s and the daemon's CPU time
   (utime+stime from /proc/<pid>/stat) per message, and its peak RSS.
   Afterwards the daemon is stopped and the queue is checked: every message
   the sink acknowledged is recorded delivered.  smtp-sink -M exits on the
   N-th message's final dot before answering it, so that one message is
   deferred, not delivered ("N-1 delivered" is the expected count).
"""
import concurrent.futures
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
sys.path.insert(0, os.path.dirname(__file__))
from pmxtest import POSTMUX, Gateway  # noqa: E402
import benchlib  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1024,10240").split(",")]
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,8,32").split(",")]
FILL_JOBS = int(os.environ.get("BENCH_FILL_JOBS", str(2 * (os.cpu_count() or 2))))
TICKS = os.sysconf("SC_CLK_TCK")


def build_dir():
    exe = os.path.abspath(POSTMUX)
    return os.path.dirname(os.path.dirname(exe)) if os.path.isabs(POSTMUX) else tempfile.gettempdir()


def smtp_sink():
    """Path to smtp-sink and the LD_LIBRARY_PATH it needs."""
    if os.environ.get("SMTP_SINK"):
        return os.environ["SMTP_SINK"], None
    root = os.path.join(build_dir(), "tests", "bench", "postfix-deb")
    sink = os.path.join(root, "x", "usr", "sbin", "smtp-sink")
    libs = os.path.join(root, "x", "usr", "lib", "postfix")
    if not os.path.exists(sink):
        os.makedirs(root, exist_ok=True)
        for old in glob.glob(os.path.join(root, "postfix_*.deb")):
            os.unlink(old)
        subprocess.run(["apt-get", "download", "postfix"], cwd=root, check=True, capture_output=True)
        deb = glob.glob(os.path.join(root, "postfix_*.deb"))[0]
        subprocess.run(["dpkg", "-x", deb, os.path.join(root, "x")], check=True)
        print("# extracted %s" % os.path.basename(deb), flush=True)
    return sink, libs


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def body(size):
    head = b"From: bench@example.test\r\nTo: sink@example.net\r\nSubject: bench\r\n\r\n"
    lines = max(1, (size - len(head)) // 78)
    return head + (b"x" * 76 + b"\r\n") * lines


def proc_cpu_rss(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/%d/status" % pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    return (int(fields[11]) + int(fields[12])) / TICKS, int(status["VmHWM"].split()[0])


def config(state, port, workers):
    return {
        "state_dir": state,
        "transports": {"sink": {"plugin": "smtp", "concurrency": workers, "options": {
            "host": "127.0.0.1", "port": port, "security": "none", "auth": "none",
            "helo_name": "bench.test"}}},
        "default": "sink",
        "retry": {"initial_delay": "1h"},
    }


def fill(gw, size):
    """N messages into the queue with no daemon running.

    BENCH_FILL=helper (default): tests/bench/bench-fill, which submits through
    pmx_queue_submit() from FILL_JOBS threads -- the queue code and durable
    group commit every door uses, without a process per message.
    BENCH_FILL=send: one `postmux send` process per message (the real CLI; ~100/s).
    """
    data = body(size)
    helper = os.path.join(build_dir(), "tests", "bench", "bench-fill")
    t0 = time.time()
    if os.environ.get("BENCH_FILL", "helper") == "helper" and os.path.exists(helper):
        os.makedirs(gw.state, exist_ok=True)
        subprocess.run([helper, os.path.join(gw.state, "queue.db"), str(N), str(size), str(FILL_JOBS)],
                       check=True, capture_output=True)
        return time.time() - t0

    def one(i):
        p = subprocess.run([POSTMUX, "send", "--config", gw.config_path, "--from", "bench@example.test",
                            "--to", "sink%d@example.net" % i], input=data, capture_output=True, env=gw.env())
        if p.returncode != 0:
            raise RuntimeError(p.stderr.decode())

    with concurrent.futures.ThreadPoolExecutor(FILL_JOBS) as pool:
        list(pool.map(one, range(N)))
    return time.time() - t0


def queue_count(gw, state):
    p = gw.run("queue", "list", "--state", state, timeout=600)
    last = p.stdout.decode().strip().splitlines()[-1:] or ["0"]
    return int(last[0].split()[0])


def run(snapshot, size, workers, sink, libs):
    gw = Gateway(name="pmx-bench-smtp")
    try:
        shutil.copytree(snapshot, gw.state)
        port = free_port()
        gw.write_config(config(gw.state, port, workers))
        env = dict(os.environ)
        if libs:
            env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        cmd = [sink] + (["-u", "nobody"] if os.geteuid() == 0 else []) + \
            ["-M", str(N), "127.0.0.1:%d" % port, "1000"]
        sink_log = open(gw.path("sink.log"), "wb")
        sinkp = subprocess.Popen(cmd, stdout=sink_log, stderr=sink_log, env=env)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        # The probe above was one connection; smtp-sink counts messages, not connections.
        benchlib.wait_quiet()   # the fill's checkpoint and the last run have settled
        t0 = time.perf_counter()
        proc = gw.start(wait=False)
        rc = sinkp.wait(timeout=1800)
        elapsed = time.perf_counter() - t0
        cpu, rss = proc_cpu_rss(proc.pid)
        sink_log.close()
        gw.stop()
        if rc != 0:
            raise RuntimeError("smtp-sink exited %d: %s" % (rc, open(gw.path("sink.log")).read()))
        delivered = queue_count(gw, "delivered")
        print("size %6d B  workers %2d  %6d msgs in %7.2f s  = %8.0f msgs/s   daemon CPU %.3f ms/msg"
              "   peak RSS %d MB   delivered in queue %d" %
              (size, workers, N, elapsed, N / elapsed, cpu * 1000 / N, rss // 1024, delivered), flush=True)
        if delivered < N - 1:
            print("# WARNING: only %d of %d recorded delivered" % (delivered, N), flush=True)
        return N / elapsed
    finally:
        gw.cleanup()


def main():
    sink, libs = smtp_sink()
    print("# smtp-sink: %s; N=%d; sizes %s; workers %s; %d CPUs" % (sink, N, SIZES, WORKERS, os.cpu_count()),
          flush=True)
    results = {}
    for size in SIZES:
        gw = Gateway(name="pmx-bench-fill")
        try:
            gw.write_config(config(gw.state, 9, 1))
            secs = fill(gw, size)
            print("# filled %d x %d B with no daemon running in %.1f s (%.0f submissions/s, %d jobs)"
                  % (N, size, secs, N / secs, FILL_JOBS), flush=True)
            queued = queue_count(gw, "queued")
            if queued != N:
                raise RuntimeError("%d queued after the fill, want %d" % (queued, N))
            for workers in WORKERS:
                results[(size, workers)] = run(gw.state, size, workers, sink, libs)
        finally:
            gw.cleanup()
    print("# summary (msgs/s): " + ", ".join("%d B x %d workers: %.0f" % (s, w, r)
                                             for (s, w), r in sorted(results.items())), flush=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
